"""Write the small example data sets shipped in vpop/data/examples/ (docs/observations.md, docs/fitting.md).

    python scripts/make_examples.py

* observations.csv: the bedside observation table (docs/observations.md) of 4
  virtual patients of the axicel preset, one row per 12 h over 10 days, the
  contract's columns only, for `vpop grade`;
* timecourses.csv: IL-6, CRP and ferritin of the same patients in the
  NONMEM-style long format `vpop fit` reads (daily samples, IL-6 below its
  5 pg/mL limit of quantification flagged BLQ with DV = LLOQ, tocilizumab
  doses as EVID=1 rows, tumour burden and the observed maximum CRS grade).

Fixed seed: running it again writes the same files.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

import vpop
from vpop.grading.table import COLUMNS

OUT = Path(__file__).resolve().parents[1] / "vpop" / "data" / "examples"
IL6_LLOQ = 5.0  # pg/mL (a typical clinical IL-6 assay limit)
N, SEED, DAYS = 4, 11, 10.0


def main() -> None:
    cfg = vpop.load_config("axicel")
    cfg = replace(cfg, engine=replace(cfg.engine, days=DAYS))
    res = vpop.simulate(cfg, n=N, seed=SEED)
    obs = res.observations
    contract = [c.name for c in COLUMNS[:21] if c.name in obs.columns]  # the contract's columns, not legacy extras
    every_12h = np.isclose((obs["time_day"] * 2) % 1, 0) | np.isclose((obs["time_day"] * 2) % 1, 1)
    table = obs.loc[every_12h, contract].copy()
    table["patient_id"] = "P" + table["patient_id"].astype(str)
    for col in ("temp_c", "fio2", "o2_flow_lpm", "time_day", "age_years"):
        if col in table:
            table[col] = table[col].round(1 if col == "age_years" else 2)
    for col in ("ice_score", "capd_score"):
        if col in table:
            table[col] = table[col].astype("Int64")
    for col in table.columns:
        if table[col].dtype == bool:
            table[col] = table[col].map({True: "true", False: "false"})
    OUT.mkdir(parents=True, exist_ok=True)
    table.to_csv(OUT / "observations.csv", index=False)

    rows = []
    daily = obs[np.isclose(obs["time_day"] % 1, 0) & (obs["time_day"] > 0)]
    pats = res.patients.set_index("patient_id")
    for pid, g in daily.groupby("patient_id", sort=True):
        extra = {"CRS_GRADE": int(pats.loc[pid, "crs_max_grade"]),
                 "tumor_burden": round(float(pats.loc[pid, "tumor_burden"]), 3)}
        toci_days = g.loc[g["tocilizumab_given"].astype(bool), "time_day"]
        first_toci = float(toci_days.min()) if len(toci_days) else None
        for _, r in g.iterrows():
            t = float(r["time_day"])
            if first_toci is not None and np.isclose(t, first_toci):
                mg = round(min(8.0 * float(pats.loc[pid, "weight_kg"]), 800.0), 1)
                rows.append(dict(ID=f"P{pid}", TIME=t, EVID=1, DVID="toci", DV="", AMT=mg, LLOQ="", BLQ=0, **extra))
            il6 = float(r["il6_pg_ml"])
            blq = il6 < IL6_LLOQ
            rows.append(dict(ID=f"P{pid}", TIME=t, EVID=0, DVID="il6", DV=IL6_LLOQ if blq else round(il6, 2), AMT="",
                             LLOQ=IL6_LLOQ, BLQ=int(blq), **extra))
            rows.append(dict(ID=f"P{pid}", TIME=t, EVID=0, DVID="crp", DV=round(float(r["crp_mg_l"]), 2), AMT="",
                             LLOQ="", BLQ=0, **extra))
            rows.append(dict(ID=f"P{pid}", TIME=t, EVID=0, DVID="ferritin", DV=round(float(r["ferritin_ng_ml"]), 1),
                             AMT="", LLOQ="", BLQ=0, **extra))
    pd.DataFrame(rows).to_csv(OUT / "timecourses.csv", index=False)
    print(f"wrote {OUT}/observations.csv ({len(table)} rows), timecourses.csv ({len(rows)} rows)")


if __name__ == "__main__":
    main()

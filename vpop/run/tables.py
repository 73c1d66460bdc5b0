"""The output tables of a run: one row per patient, and the observation table of the contract.

Both are built from one batch's engine outputs with per-row NumPy operations,
so a table built batch by batch equals the table built at once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vpop.engine import course as engine_mod
from vpop.grading.episodes import episode_summary_grid
from vpop.observation.encoding import CEREBRAL_EDEMA, CONSCIOUSNESS, DEATH_CAUSE, O2_DEVICES, SEIZURE
from vpop.observation.readouts import ICE_LOSS_ORDER
from vpop.population.sampler import COVARIATES

ENUM_COLUMNS = {
    "o2_device": O2_DEVICES,
    "consciousness": CONSCIOUSNESS,
    "seizure": SEIZURE,
    "cerebral_edema": CEREBRAL_EDEMA,
    "death_cause": DEATH_CAUSE,
}


def patient_table(ids, cov, rows, summ, settings) -> pd.DataFrame:
    """One row per patient: covariates, graded episodes, drugs, peaks, solver status."""
    times = settings.times()
    alive = rows["alive"]
    df = {"patient_id": ids}
    for name in (*COVARIATES, "easix", "m_easix", "car_dose_per_kg", "ld_intensity"):
        df[name] = cov[name].astype(np.float64)
    df["sex"] = np.where(cov["female"] > 0.5, "F", "M")
    scales = [("crs", s) for s in settings.crs_scales] + [("icans", s) for s in settings.neuro_scales]
    for kind, scale in scales:
        grade = np.where(alive, rows[f"{kind}_grade_{scale}"], 0).astype(np.int64)
        ep = episode_summary_grid(times, grade)
        suffix = "" if scale == "astct" else f"_{scale}"
        df[f"{kind}_max_grade{suffix}"] = ep["max_grade"]
        df[f"{kind}_onset_day{suffix}"] = ep["onset_day"]
        df[f"{kind}_resolution_day{suffix}"] = ep["resolution_day"]
        df[f"{kind}_duration_days{suffix}"] = ep["duration_days"]
        df[f"{kind}_episodes{suffix}"] = ep["episodes"]
        if scale == "astct":
            for g in range(1, 6):
                df[f"{kind}_days_grade{g}"] = ep["days_grade"][:, g - 1]
    died = ~alive[:, -1]
    cause = rows.get("death_cause")
    if cause is not None:
        code = np.max(np.where(alive, cause, 0), axis=1)
        df["death_cause"] = np.asarray(DEATH_CAUSE, dtype=object)[code]
    else:
        df["death_cause"] = np.where(died, np.where(df["crs_max_grade"] == 5, "crs", "icans"), "none")
    last = np.where(died, times[np.argmin(alive, axis=1) - 1], np.nan)
    df["death_day"] = last
    df["tocilizumab_doses"] = summ["tocilizumab_doses"].astype(np.int64)
    for name in ("tocilizumab_mg", "dexamethasone_mg", "methylprednisolone_mg", "anakinra_mg"):
        df[name] = summ[name].astype(np.float64)
    df["steroids_given"] = (summ["dexamethasone_mg"] + summ["methylprednisolone_mg"]) > 0
    df["max_vasopressors"] = summ["max_vasopressors"].astype(np.int64)
    df["positive_pressure_ventilation"] = summ["positive_pressure_ventilation"].astype(bool)
    support = summ["organ_support_day"].astype(np.float64)
    df["organ_support_onset_day"] = np.where(np.isfinite(support), support, np.nan)
    for key, value in summ.items():
        if key.startswith(("peak_", "nadir_", "auc_")):
            df[key] = value.astype(np.float64)
    df["solver_status"] = np.asarray([engine_mod.STATUS_NAMES.get(s, "unknown") for s in range(max(engine_mod.STATUS_NAMES) + 1)],
                                     dtype=object)[summ["solver_status"]]
    df["solver_max_error"] = summ["solver_max_error"].astype(np.float64)
    return pd.DataFrame(df)


def observation_table(ids, rows, settings) -> pd.DataFrame:
    """The contract's observation table (rows after a death are not written)."""
    n, n_rows = rows["alive"].shape
    keep = rows["alive"].reshape(-1)
    df = {"patient_id": np.repeat(ids, n_rows)[keep]}
    skip = {"alive"}
    for name, value in rows.items():
        if name in skip:
            continue
        flat = value.reshape(-1)[keep]
        if name in ENUM_COLUMNS:
            df[name] = pd.Categorical.from_codes(flat.astype(np.int64), categories=list(ENUM_COLUMNS[name]))
        elif name == "time_day":
            df[name] = np.round(flat.astype(np.float64), 6)
        elif name == "fio2":
            # float32 0.21 is 0.2099999934; write the room-air value exactly.
            df[name] = np.clip(flat.astype(np.float64), 0.21, 1.0)
        elif flat.dtype == np.bool_:
            df[name] = flat
        elif np.issubdtype(flat.dtype, np.integer):
            df[name] = flat.astype(np.int64)
        else:
            df[name] = flat.astype(np.float64)
    out = pd.DataFrame(df)
    first = ["patient_id", "time_day", "age_years", "temp_c", "hypotension", "vasopressors", "vasopressin",
             "o2_device", "o2_flow_lpm", "fio2", "antipyretics_given", "tocilizumab_given", "steroids_given",
             "ice_score", "capd_score", "consciousness", "seizure", "motor_weakness", "cerebral_edema",
             "raised_icp_signs", "death_cause"]
    ice_cols = [f"ice_{name}" for name in ICE_LOSS_ORDER]
    rest = [c for c in out.columns if c not in first and c not in ice_cols]
    return out[first + ice_cols + rest]

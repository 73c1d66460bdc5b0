"""Benchmark the grading table path on a synthetic observation table.

Generates a table of `--rows` rows (default 1,000,000: `--rows / 50`
patients with 50 assessments each, string enums and boolean columns as they
arrive from a CSV, all optional legacy columns present), then times each
stage: validation and encoding, row grading (first call = compile + run,
then steady-state runs), and per-patient episodes. Prints a table.

    python scripts/bench_grading.py --rows 1000000
    python scripts/bench_grading.py --rows 20000 --repeat 1   # smoke test
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import pandas as pd


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vpop.observation import encoding as enc  # noqa: E402
from vpop.grading.table import (  # noqa: E402
    grade_arrays,
    resolve_scales,
    summarise_patients,
    validate_observations,
)


ALL_SCALES = ("astct", "lee2014", "penn", "mskcc", "cartox", "ctcae5", "ctcae")


def synthetic_table(rows: int, seed: int = 0, per_patient: int = 50) -> pd.DataFrame:
    """A plausible-looking observation table (not a physiological simulation)."""
    rng = np.random.default_rng(seed)
    n_pat = max(1, rows // per_patient)
    rows = n_pat * per_patient
    pid = np.repeat(np.array([f"P{i:06d}" for i in range(n_pat)], dtype=object), per_patient)
    step = np.tile(np.arange(per_patient), n_pat)
    time_day = step * 0.5 + rng.uniform(0, 0.2, rows)
    # A smooth severity bump per patient drives every finding.
    peak = np.repeat(rng.uniform(1, 10, n_pat), per_patient)
    height = np.repeat(rng.gamma(1.5, 1.0, n_pat), per_patient)
    sev = height * np.exp(-0.5 * ((time_day - peak) / 1.5) ** 2) + rng.normal(0, 0.1, rows)
    device = np.clip((sev * 2.5).astype(int), 0, 9)
    loc = np.clip((sev - 1).astype(int), 0, 4)
    seizure = np.where(sev > 3.5, 1, 0) + (sev > 4.5)
    edema = np.where(sev > 4, 1, 0) + (sev > 5)
    yesno = np.array(["no", "yes"], dtype=object)
    df = pd.DataFrame(
        {
            "patient_id": pid,
            "time_day": time_day,
            "age_years": np.repeat(rng.uniform(3, 80, n_pat), per_patient),
            "temp_c": np.clip(36.8 + 1.2 * sev + rng.normal(0, 0.2, rows), 35.0, 42.0),
            "hypotension": yesno[(sev > 1.5).astype(int)],
            "vasopressors": np.clip((sev - 2).astype(int), 0, 3),
            "vasopressin": sev > 3.8,
            "o2_device": np.asarray(enc.O2_DEVICES, dtype=object)[device],
            "o2_flow_lpm": np.where(device == 2, rng.uniform(1, 10, rows), np.nan),
            "fio2": np.where(rng.uniform(size=rows) < 0.5, np.nan, np.clip(0.21 + 0.1 * sev, 0.21, 1)),
            "antipyretics_given": sev > 1.0,
            "tocilizumab_given": sev > 2.0,
            "steroids_given": np.zeros(rows, bool),
            "ice_score": np.where(rng.uniform(size=rows) < 0.2, np.nan, np.clip(np.round(10 - 2 * sev), 0, 10)),
            "capd_score": np.clip(np.round(3 * sev), 0, 32),
            "consciousness": np.asarray(enc.CONSCIOUSNESS, dtype=object)[loc],
            "seizure": np.asarray(enc.SEIZURE, dtype=object)[seizure],
            "motor_weakness": sev > 5,
            "cerebral_edema": np.asarray(enc.CEREBRAL_EDEMA, dtype=object)[edema],
            "raised_icp_signs": sev > 5.5,
            "death_cause": np.where(sev > 6, "crs", "none").astype(object),
            "vasopressor_dose_ne": np.where(sev > 2, 8 * sev, np.nan),
            "creatinine_grade": np.clip((sev - 1).astype(int), 0, 4),
            "transaminitis_grade": np.clip((sev - 1.5).astype(int), 0, 4),
            "organ_toxicity_grade": np.clip((sev - 2).astype(int), 0, 4),
            "iv_therapy": sev > 1.2,
            "coagulopathy_treated": sev > 3,
            "tremor_grade": np.clip((sev - 1).astype(int), 0, 3),
            "headache_grade": np.clip((sev - 2).astype(int), 0, 3),
        }
    )
    # Death only at a patient's last row, so the table stays plausible.
    last = np.r_[pid[1:] != pid[:-1], True]
    df.loc[~last, "death_cause"] = "none"
    return df


def _time(fn, repeat):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="steady-state repeats (best is reported)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import jax

    df = synthetic_table(args.rows, args.seed)
    n = len(df)
    print(f"rows {n:,}, patients {df['patient_id'].nunique():,}, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU(s)")

    results = []
    t_val, arrays = _time(lambda: validate_observations(df, "synthetic"), args.repeat)
    results.append(("validate + encode (pandas/numpy)", t_val))

    for label, scales in (("ASTCT only", ("astct",)), ("ASTCT + all legacy", ALL_SCALES)):
        t0 = time.perf_counter()
        grade_arrays(arrays, scales)
        first = time.perf_counter() - t0
        t_run, grades = _time(lambda s=scales: grade_arrays(arrays, s), args.repeat)
        results.append((f"grade rows, {label}: first call (compile + run)", first))
        results.append((f"grade rows, {label}: steady state", t_run))

    graded = df[["patient_id", "time_day"]].copy()
    for k, v in grades.items():
        graded[k] = v
    t_epi, summary = _time(lambda: summarise_patients(graded, ALL_SCALES), args.repeat)
    results.append((f"episodes, {len(resolve_scales(ALL_SCALES)[0]) + len(resolve_scales(ALL_SCALES)[1])} "
                    "grade columns (numpy)", t_epi))

    total_steady = t_val + results[-2][1] + t_epi
    total_first = t_val + results[-3][1] + t_epi
    width = max(len(r[0]) for r in results) + 2
    print(f"{'stage':<{width}}{'seconds':>10}")
    for name, sec in results:
        print(f"{name:<{width}}{sec:>10.3f}")
    print(f"{'TOTAL validate + all scales + episodes (steady)':<{width}}{total_steady:>10.3f}")
    print(f"{'TOTAL validate + all scales + episodes (incl. compile)':<{width}}{total_first:>10.3f}")
    print(f"summary: {len(summary):,} patients x {summary.shape[1]} columns")
    return 0


if __name__ == "__main__":
    sys.exit(main())

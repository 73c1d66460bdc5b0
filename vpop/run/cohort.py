"""Run a cohort from a config: batches of patients through the engine, into tables.

`simulate(config)` is the Python entry point behind `vpop simulate`:

    import vpop
    cfg = vpop.load_config("configs/default.yaml")
    result = vpop.simulate(cfg, n=200, seed=1)
    result.patients        # one row per patient (pandas)
    result.observations    # the observation table of the shared contract
    result.summary_table() # the rates printed by the command line

Patient i is simulated from `fold_in(PRNGKey(seed), i)` whatever the batch
size; the last batch is padded to the batch size so every batch reuses one
compiled function.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from vpop.engine import course as engine_mod
from vpop.policy import rules as policy_mod
from vpop.population import patient_table as patient_table_mod
from vpop.run.config import SimulationConfig
from vpop.observation.encoding import CEREBRAL_EDEMA, CONSCIOUSNESS, DEATH_CAUSE, O2_DEVICES, SEIZURE
from vpop.grading.episodes import episode_summary_grid
from vpop.population.sampler import COVARIATES, PopulationSampler, patient_keys
from vpop.observation.readouts import ICE_LOSS_ORDER
from vpop.stats import wilson_interval

ENUM_COLUMNS = {
    "o2_device": O2_DEVICES,
    "consciousness": CONSCIOUSNESS,
    "seizure": SEIZURE,
    "cerebral_edema": CEREBRAL_EDEMA,
    "death_cause": DEATH_CAUSE,
}


@dataclass
class CohortResult:
    config: SimulationConfig
    patients: pd.DataFrame
    observations: pd.DataFrame | None
    compile_seconds: float
    run_seconds: float

    @property
    def n_failed(self) -> int:
        return int((self.patients["solver_status"] == "nonfinite").sum())

    @property
    def n_inaccurate(self) -> int:
        return int((self.patients["solver_status"] == "inaccurate").sum())

    def summary_table(self) -> pd.DataFrame:
        """Rates with 95% Wilson intervals, onset medians and drug use (ASTCT)."""
        return cohort_summary(self.patients)


def cohort_summary(patients: pd.DataFrame) -> pd.DataFrame:
    ok = patients[patients["solver_status"] != "nonfinite"]
    n = len(ok)
    rows = []

    def rate(label, mask):
        k = int(mask.sum())
        lo, hi = wilson_interval(k, n)
        rows.append({"endpoint": label, "value": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi,
                     "count": k, "n": n, "unit": "fraction"})

    def median(label, values):
        v = values.dropna()
        rows.append({"endpoint": label, "value": float(v.median()) if len(v) else float("nan"),
                     "ci_low": float(v.quantile(0.25)) if len(v) else float("nan"),
                     "ci_high": float(v.quantile(0.75)) if len(v) else float("nan"),
                     "count": len(v), "n": n, "unit": "day (IQR)"})

    rate("CRS any grade", ok["crs_max_grade"] >= 1)
    rate("CRS grade >= 3", ok["crs_max_grade"] >= 3)
    rate("ICANS any grade", ok["icans_max_grade"] >= 1)
    rate("ICANS grade >= 3", ok["icans_max_grade"] >= 3)
    median("CRS onset", ok["crs_onset_day"])
    median("ICANS onset", ok["icans_onset_day"])
    rate("tocilizumab given", ok["tocilizumab_doses"] > 0)
    rate("corticosteroids given", ok["steroids_given"])
    rate("died of CRS or ICANS", ok["death_cause"].isin(["crs", "icans"]))
    return pd.DataFrame(rows)


def padded_ids(start: int, stop: int, batch: int) -> np.ndarray:
    ids = np.arange(start, start + batch)
    return np.minimum(ids, stop - 1)  # padding repeats the last patient; trimmed after


def simulate(
    config: SimulationConfig,
    n: int | None = None,
    seed: int | None = None,
    record_rows: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> CohortResult:
    """Simulate the config's cohort. Returns patients (and observations if `record_rows`)."""
    if config.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if config.dtype == "float64" else jnp.float32
    table = patient_table_mod.table_of(config)  # population.patients_file: covariates as given
    n = (config.n if n is None else int(n)) if table is None else table.cohort_size(n)
    seed = config.seed if seed is None else int(seed)
    from vpop.engine import sharding  # every local device; one device: engine.compiled_batch

    batch = sharding.global_batch(config.batch_size, n)  # batch_size per device
    settings = replace(config.engine, record_rows=record_rows)
    sampler = PopulationSampler(config.population, config.parameters)
    policy_mod.check_scales(config.policy, config.engine.crs_scales, config.engine.neuro_scales,
                            f"policy {config.policy.name!r}")
    policy = config.policy.to_arrays(dtype)
    sample = compiled_sampler(sampler, dtype)
    sample_given = patient_table_mod.given_sampler(sampler, dtype) if table is not None else None
    run = sharding.batch_function(settings)

    t_start = time.perf_counter()
    compile_seconds = 0.0
    cov_parts, row_parts, sum_parts = [], [], []
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        ids = padded_ids(start, n, batch)
        if table is None:
            keys = patient_keys(seed, ids)
            pop_keys, event_keys = split_keys(keys)
            cov, p = sample(pop_keys)
        else:
            keys, given, eta = patient_table_mod.batch_rows(table, ids, seed)
            pop_keys, event_keys = split_keys(keys)
            cov, p = sample_given(pop_keys, given, eta)
        if start == 0:
            t0 = time.perf_counter()
            run = executable(run, settings, p, event_keys, policy)
            compile_seconds = time.perf_counter() - t0
        rows, summ = run(p, event_keys, policy)
        take = stop - start
        cov_parts.append({k: np.asarray(v)[:take] for k, v in cov.items()})
        row_parts.append({k: np.asarray(v)[:take] for k, v in rows.items()})
        sum_parts.append({k: np.asarray(v)[:take] for k, v in summ.items()})
        if progress is not None:
            progress(stop, n)
    elapsed = time.perf_counter() - t_start

    cov = {k: np.concatenate([c[k] for c in cov_parts]) for k in cov_parts[0]}
    rows = {k: np.concatenate([r[k] for r in row_parts]) for k in row_parts[0]}
    summ = {k: np.concatenate([s[k] for s in sum_parts]) for k in sum_parts[0]}
    ids = np.arange(n) if table is None else table.ids[:n]
    patients = patient_table(ids, cov, rows, summ, settings)
    observations = observation_table(ids, rows, settings) if record_rows else None
    return CohortResult(config, patients, observations, compile_seconds, elapsed - compile_seconds)


_EXECUTABLES: dict = {}


def executable(jitted, settings, *args):
    """Compiled engine for these settings and argument shapes (compiled once per process)."""
    leaves, tree = jax.tree_util.tree_flatten(args)
    key = (jitted, settings, tree, tuple((x.shape, str(x.dtype)) for x in leaves))
    if key not in _EXECUTABLES:
        _EXECUTABLES[key] = jitted.lower(*args).compile()
    return _EXECUTABLES[key]


def compiled_sampler(sampler: PopulationSampler, dtype):
    def sample(keys):
        cov, p = jax.vmap(sampler.individual)(keys)
        return cov, jax.tree_util.tree_map(lambda x: x.astype(dtype), p)
    return jax.jit(sample)


@jax.jit
def split_keys(keys):
    both = jax.vmap(lambda k: jax.random.split(k, 2))(keys)
    return both[:, 0], both[:, 1]


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
    for key, value in summ.items():
        if key.startswith(("peak_", "nadir_")):
            df[key] = value.astype(np.float64)
    df["solver_status"] = np.asarray([engine_mod.STATUS_NAMES[s] for s in range(3)], dtype=object)[summ["solver_status"]]
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

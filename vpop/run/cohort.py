"""Run a cohort in memory: `vpop.simulate(config)` and `vpop.simulate_patient(config)`.

    import vpop
    cfg = vpop.load_config()            # the default config (or a preset name, a YAML path)
    result = vpop.simulate(cfg, n=200, seed=1)
    result                   # CohortResult(config='default', n=200, seed=1, CRS any grade: 87.5%, ...)
    result.patients          # one row per patient (pandas)
    result.observations      # the observation table of the contract (docs/observations.md)
    result.summary_table()   # the rates printed by the command line
    result.plot_grades(); result.plot_biomarkers()   # matplotlib Figures
    vpop.simulate_patient(cfg, seed=1, patient=3, tumor_burden=5.0)  # one course, a DataFrame

The batch loop is `vpop.run.driver`'s, with a memory sink; `vpop simulate`
writes the same tables to Parquet as batches finish instead (bounded memory).
Patient i is simulated from `fold_in(PRNGKey(seed), i)` whatever the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import pandas as pd

from vpop.errors import UserError
from vpop.population.sampler import COVARIATES as COVARIATES
from vpop.run import budget, driver
from vpop.run.config import SimulationConfig
from vpop.run.driver import (
    EXECUTABLES as _EXECUTABLES,  # noqa: F401 - tests clear it
    compiled_sampler as compiled_sampler,
    executable as executable,
    padded_ids as padded_ids,
    split_keys as split_keys,
)
from vpop.run.endpoints import cohort_summary as cohort_summary, failed, summary_endpoints, trial_scales
from vpop.run.tables import (
    ENUM_COLUMNS as ENUM_COLUMNS,
    observation_table as observation_table,
    patient_table as patient_table,
)


@dataclass(repr=False)
class CohortResult:
    config: SimulationConfig
    patients: pd.DataFrame
    observations: pd.DataFrame | None
    compile_seconds: float
    run_seconds: float
    seed: int | None = None

    @property
    def n(self) -> int:
        return len(self.patients)

    @property
    def n_failed(self) -> int:
        return int(failed(self.patients).sum())

    @property
    def n_inaccurate(self) -> int:
        return int((self.patients["solver_status"] == "inaccurate").sum())

    def summary_table(self) -> pd.DataFrame:
        """Rates with 95% Wilson intervals, onset medians and drug use (ASTCT)."""
        return cohort_summary(self.patients)

    def trial_summary_table(self) -> pd.DataFrame | None:
        """The graded rates under the scales the config's trial reported with (None without a trial)."""
        trial = trial_scales(self.config)
        if trial is None:
            return None
        return cohort_summary(self.patients, summary_endpoints(trial[1], trial[2], drugs=False))

    def __repr__(self) -> str:
        ok = self.patients[~failed(self.patients)]
        rates = []
        for e in summary_endpoints()[:4:2] + summary_endpoints()[1:4:2]:  # any grade, then >= 3
            if len(ok):
                rates.append(f"{e.name}: {100 * e(ok).mean():.1f}%")
        return (f"CohortResult(config={self.config.name!r}, n={self.n}, seed={self.seed}, "
                + ", ".join(rates) + f", failed solves={self.n_failed})")

    def plot_grades(self, scale: str = "astct"):
        """Bar chart: share of patients by worst CRS and ICANS grade under `scale`. Returns a Figure."""
        from vpop.run import plots

        return plots.grade_bars(self.patients[~failed(self.patients)], scale, self.config.name)

    def plot_biomarkers(self, names: Sequence[str] = ("il6_pg_ml", "crp_mg_l", "ferritin_ng_ml", "temp_c")):
        """Median and interquartile band over time of observation columns. Returns a Figure."""
        from vpop.run import plots

        if self.observations is None:
            raise UserError("plot_biomarkers needs the observation table (simulate with record_rows=True)")
        return plots.biomarker_bands(self.observations, names, self.config.name)


def simulate(
    config: SimulationConfig,
    n: int | None = None,
    seed: int | None = None,
    record_rows: bool = True,
    progress: Callable[[int, int], None] | None = None,
    stage: Callable[[str], None] | None = None,
) -> CohortResult:
    """Simulate the config's cohort in memory. Returns patients (and observations if `record_rows`).

    Refuses (UserError) a cohort whose tables would not fit in this machine's
    memory; `vpop simulate` (Parquet, bounded memory) has no such limit.
    """
    plan = driver.plan(config, n, seed, record_rows)
    budget.check(plan, out=None, in_memory=True)
    sink = driver.MemorySink()
    stats = driver.run(plan, [(0, 0, plan.n)], sink, progress=progress, stage=stage)
    return CohortResult(config, sink.patients(), sink.observations(), stats.compile_seconds, stats.run_seconds,
                        plan.seed)


def simulate_patient(config: SimulationConfig, seed: int | None = None, patient: int = 0, **overrides) -> pd.DataFrame:
    """One patient's time course (the observation table's rows, biomarkers included) as a DataFrame.

    Patient `patient` of seed `seed` is the same virtual patient as in
    `simulate(config, seed=seed)` (outputs agree to float rounding: the
    batch shape differs). `overrides` set, by name, model parameters
    (`il6_per_myeloid=2e5`), covariates (`tumor_burden=5.0`: the covariate
    is fixed at that value), `days`, or `policy` (a preset name).
    """
    from vpop.model.parameters import TABLE
    from vpop.policy.settings import PRESETS, PolicySettings

    params, marginals = dict(config.parameters), dict(config.population.marginals)
    engine = config.engine
    policy = config.policy
    for name, value in overrides.items():
        if name in TABLE:
            params[name] = float(value)
        elif name in COVARIATES:
            m = marginals[name]
            v = float(value)
            marginals[name] = replace(m, dist="normal", center=v, spread=0.0, low=min(m.low, v), high=max(m.high, v))
        elif name == "days":
            engine = replace(engine, days=float(value))
        elif name == "policy":
            if not isinstance(value, PolicySettings) and value not in PRESETS:
                raise UserError(f"simulate_patient: policy {value!r}; allowed: {', '.join(PRESETS)}")
            policy = value if isinstance(value, PolicySettings) else PRESETS[value]
        else:
            raise UserError(f"simulate_patient: unknown override {name!r}; allowed: a model parameter "
                            f"(docs/model.md), a covariate ({', '.join(COVARIATES)}), days or policy")
    cfg = replace(config, parameters=params, population=replace(config.population, marginals=marginals),
                  engine=engine, policy=policy, batch_size=1)
    plan = driver.plan(cfg, n=int(patient) + 1, seed=seed, record_rows=True)
    sink = driver.MemorySink()
    driver.run(plan, [(0, int(patient), int(patient) + 1)], sink)
    return sink.observations()

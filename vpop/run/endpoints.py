"""Endpoint definitions: each endpoint of a cohort, defined once, computed from the patient table.

An `Endpoint` is a name, a kind and a function of the patient table (one row
per patient, `docs/outputs.md`):

* ``rate``: yes/no per patient (e.g. "CRS grade >= 3"); summaries give the
  fraction with a Wilson 95% interval;
* ``median``: a day per patient, NaN when the event never happened (e.g.
  "CRS onset"); summaries give the median among patients with the event.

The terminal summary (`summary_endpoints`), the streamed summary, policy
comparisons, sweeps, dose escalation and early-risk models all take their
endpoints from here, so "CRS grade >= 3" means the same thing everywhere.

`Summary` accumulates a summary table over parts of a cohort (batches,
Parquet parts) with exact counts and exact quartiles (a histogram of the
distinct onset days, which lie on the assessment grid), so a cohort summarised
part by part gives the same numbers as summarised whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from vpop.stats import wilson_interval

KINDS = ("crs", "icans")
# Solver outcomes left out of every endpoint (the patient's course is not a result).
FAILED_STATUSES = ("nonfinite", "out_of_range")  # vpop.engine.course.STATUS_NAMES: excluded from rates


def grade_column(kind: str, scale: str = "astct") -> str:
    """The patient-table column of the worst grade of `kind` (crs/icans) under `scale`."""
    return f"{kind}_max_grade" if scale == "astct" else f"{kind}_max_grade_{scale}"


def day_column(kind: str, what: str, scale: str = "astct") -> str:
    """`what` (onset_day, resolution_day, duration_days) of `kind` under `scale`."""
    return f"{kind}_{what}" if scale == "astct" else f"{kind}_{what}_{scale}"


def failed(patients: pd.DataFrame) -> np.ndarray:
    """Patients whose solve failed: excluded from every endpoint, counted apart."""
    return patients["solver_status"].isin(FAILED_STATUSES).to_numpy()


@dataclass(frozen=True)
class Endpoint:
    name: str
    kind: str  # "rate" or "median"
    columns: tuple[str, ...]  # patient-table columns it reads
    compute: Callable[[pd.DataFrame], np.ndarray]  # bool (rate) or float days with NaN (median)

    def __call__(self, patients: pd.DataFrame) -> np.ndarray:
        return self.compute(patients)


def grade_words(grade: int) -> str:
    return {1: "any grade", 4: "grade 4-5"}.get(grade, f"grade >= {grade}")


def _label(kind: str, words: str, scale: str, show_scale: bool) -> str:
    base = f"{kind.upper()} {words}"
    return f"{base} ({scale})" if show_scale else base


def grade_at_least(kind: str, grade: int, scale: str = "astct", show_scale: bool | None = None) -> Endpoint:
    """Worst grade of `kind` under `scale` >= `grade` ("CRS grade >= 3"; "CRS any grade (lee2014)")."""
    col = grade_column(kind, scale)
    show = scale != "astct" if show_scale is None else show_scale
    return Endpoint(_label(kind, grade_words(grade), scale, show), "rate", (col,),
                    lambda p: p[col].to_numpy() >= grade)


def event_day(kind: str, what: str = "onset_day", scale: str = "astct", show_scale: bool | None = None) -> Endpoint:
    """Day of onset (or duration) of the first episode of `kind` under `scale`; NaN without one."""
    col = day_column(kind, what, scale)
    show = scale != "astct" if show_scale is None else show_scale
    words = {"onset_day": "onset", "duration_days": "duration", "resolution_day": "resolution"}[what]
    return Endpoint(_label(kind, words, scale, show), "median", (col,),
                    lambda p: p[col].to_numpy(np.float64))


TOCILIZUMAB = Endpoint("tocilizumab given", "rate", ("tocilizumab_doses",),
                       lambda p: p["tocilizumab_doses"].to_numpy() > 0)
STEROIDS = Endpoint("corticosteroids given", "rate", ("steroids_given",),
                    lambda p: p["steroids_given"].to_numpy().astype(bool))
DIED = Endpoint("died of CRS or ICANS", "rate", ("death_cause",),
                lambda p: p["death_cause"].isin(["crs", "icans"]).to_numpy())
# ICU-level support, from the engine's per-patient record (no observation table needed).
VASOPRESSORS = Endpoint("vasopressors", "rate", ("max_vasopressors",),
                        lambda p: p["max_vasopressors"].to_numpy() >= 1)
POSITIVE_PRESSURE = Endpoint("positive-pressure ventilation", "rate", ("positive_pressure_ventilation",),
                             lambda p: p["positive_pressure_ventilation"].to_numpy().astype(bool))
ICU_LEVEL = Endpoint("ICU-level support", "rate", ("max_vasopressors", "positive_pressure_ventilation"),
                     lambda p: VASOPRESSORS(p) | POSITIVE_PRESSURE(p))
ICU_ENDPOINTS = (VASOPRESSORS, POSITIVE_PRESSURE, ICU_LEVEL)
DRUG_AND_DEATH = (TOCILIZUMAB, STEROIDS, DIED)


def severe(patients: pd.DataFrame, grade: int = 3, scale: str = "astct") -> np.ndarray:
    """CRS or ICANS of at least `grade` under `scale` (early-risk outcome, DLT-like)."""
    return grade_at_least("crs", grade, scale)(patients) | grade_at_least("icans", grade, scale)(patients)


def summary_endpoints(crs_scale: str = "astct", icans_scale: str = "astct", drugs: bool = True) -> list[Endpoint]:
    """The terminal summary: any / >= 3 CRS and ICANS, onset medians, drugs given, deaths."""
    out = [grade_at_least("crs", 1, crs_scale), grade_at_least("crs", 3, crs_scale),
           grade_at_least("icans", 1, icans_scale), grade_at_least("icans", 3, icans_scale),
           event_day("crs", "onset_day", crs_scale), event_day("icans", "onset_day", icans_scale)]
    return out + list(DRUG_AND_DEATH) if drugs else out


def graded_endpoints(kind: str, scales: Sequence[str]) -> list[Endpoint]:
    """Any grade, grade >= 3 and grade 4-5 of `kind` under each scale, named with the scale."""
    return [grade_at_least(kind, g, s, show_scale=True) for s in scales for g in (1, 3, 4)]


def flags(patients: pd.DataFrame, endpoints: Iterable[Endpoint]) -> pd.DataFrame:
    """One column per endpoint, one row per patient (index: patient_id)."""
    data = {e.name: e(patients) for e in endpoints}
    return pd.DataFrame(data, index=pd.Index(patients["patient_id"].to_numpy(), name="patient_id"))


class Histogram:
    """Exact counts per distinct value: mergeable, exact quantiles."""

    def __init__(self):
        self.counts: dict[float, int] = {}

    def add(self, values: np.ndarray) -> None:
        values = values[~np.isnan(values)]
        for v, k in zip(*np.unique(values, return_counts=True)):
            self.counts[float(v)] = self.counts.get(float(v), 0) + int(k)

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def quantile(self, q: float) -> float:
        """As `pandas.Series.quantile(q)` (linear interpolation) of the values counted."""
        m = self.n
        if m == 0:
            return float("nan")
        values = np.array(sorted(self.counts))
        cum = np.cumsum([self.counts[v] for v in values])
        h = (m - 1) * q
        lo = int(np.floor(h))
        hi = min(lo + 1, m - 1)
        at = lambda r: values[np.searchsorted(cum, r, side="right")]
        return float(np.quantile(np.array([at(lo), at(hi)]), h - lo))


class Summary:
    """Rates (Wilson 95%) and medians (IQR) of `endpoints`, accumulated part by part."""

    def __init__(self, endpoints: Sequence[Endpoint]):
        self.endpoints = list(endpoints)
        self.counts = {e.name: 0 for e in self.endpoints if e.kind == "rate"}
        self.days = {e.name: Histogram() for e in self.endpoints if e.kind == "median"}
        self.n_all = self.n_ok = self.n_failed = self.n_inaccurate = 0

    @property
    def columns(self) -> list[str]:
        """The patient-table columns `add` reads."""
        cols = ["solver_status"]
        for e in self.endpoints:
            cols += [c for c in e.columns if c not in cols]
        return cols

    def add(self, patients: pd.DataFrame) -> "Summary":
        bad = failed(patients)
        self.n_all += len(patients)
        self.n_failed += int(bad.sum())
        self.n_inaccurate += int((patients["solver_status"] == "inaccurate").sum())
        ok = patients[~bad]
        self.n_ok += len(ok)
        for e in self.endpoints:
            if e.kind == "rate":
                self.counts[e.name] += int(np.sum(e(ok)))
            else:
                self.days[e.name].add(e(ok))
        return self

    def table(self) -> pd.DataFrame:
        n = self.n_ok
        rows = []
        for e in self.endpoints:
            if e.kind == "rate":
                k = self.counts[e.name]
                lo, hi = wilson_interval(k, n)
                rows.append({"endpoint": e.name, "value": k / n if n else float("nan"), "ci_low": lo,
                             "ci_high": hi, "count": k, "n": n, "unit": "fraction"})
            else:
                h = self.days[e.name]
                rows.append({"endpoint": e.name, "value": h.quantile(0.5), "ci_low": h.quantile(0.25),
                             "ci_high": h.quantile(0.75), "count": h.n, "n": n, "unit": "day (IQR)"})
        return pd.DataFrame(rows)


def cohort_summary(patients: pd.DataFrame, endpoints: Sequence[Endpoint] | None = None) -> pd.DataFrame:
    """The summary table of a whole patient table (default: the terminal summary, ASTCT)."""
    return Summary(summary_endpoints() if endpoints is None else endpoints).add(patients).table()


def trial_scales(config) -> tuple[str, str, str] | None:
    """(trial, CRS scale, ICANS scale) the config's trial (`trial:`) reported with, when simulated; else None.

    The scales come from the shipped published-cohort table (`vpop.data`);
    a neurotoxicity scale written ``ctcae_neuro`` there is vpop's ``ctcae``.
    """
    from vpop.data import trial_scales as reported

    trial = getattr(config, "trial", None)
    if not trial:
        return None
    scales = reported(trial)
    crs = scales.get("crs", "astct")
    neuro = scales.get("neuro", "astct").removesuffix("_neuro")
    if crs not in config.engine.crs_scales or neuro not in config.engine.neuro_scales:
        return None
    if crs == "astct" and neuro == "astct":
        return None
    return trial, crs, neuro

"""Data shipped with vpop: the published-cohort table and small example data sets.

* `published_cohorts.csv`: rates reported by the pivotal CAR-T trials (one row
  per cohort × endpoint, with the grading scale the trial used and its source),
  the table `vpop fit --cohort-table` and the calibration read;
* `examples/`: a small observation table for `vpop grade` and a NONMEM-style
  time-course file for `vpop fit` (docs/observations.md, docs/fitting.md).

    from vpop.data import published_cohorts_path, example_path
    vpop fit --cohort-table "$(python -m vpop.data published_cohorts.csv)" ...
"""

from __future__ import annotations

import csv
from functools import lru_cache
from importlib import resources
from pathlib import Path


def data_path(name: str) -> Path:
    """Path of a file shipped in vpop/data (e.g. `published_cohorts.csv`, `examples/observations.csv`)."""
    return Path(str(resources.files("vpop.data") / name))


def published_cohorts_path() -> Path:
    return data_path("published_cohorts.csv")


def example_path(name: str) -> Path:
    return data_path(f"examples/{name}")


@lru_cache(maxsize=1)
def _cohort_rows() -> tuple[dict, ...]:
    with open(published_cohorts_path(), newline="") as f:
        return tuple(csv.DictReader(f))


def cohort_names() -> list[str]:
    """The cohorts of the published table, in file order."""
    return list(dict.fromkeys(r["cohort"] for r in _cohort_rows()))


def trial_scales(cohort: str) -> dict[str, str]:
    """The grading scales a cohort's rates were reported with: {"crs": ..., "neuro": ...} (missing kinds left out).

    CRS scales are vpop's scale names (lee2014, penn, astct, ...); neurotoxicity
    scales as the table writes them (ctcae_neuro, cartox_neuro, astct).
    """
    out: dict[str, str] = {}
    for r in _cohort_rows():
        if r["cohort"] != cohort or not r["scale"]:
            continue
        kind = "crs" if r["endpoint"].startswith("crs") else "neuro" if r["endpoint"].startswith(("neuro", "icans")) else None
        if kind is not None:
            out.setdefault(kind, r["scale"])
    return out

"""Scenario sweeps: cross products, doses, populations, policies; one tidy table out.

A sweep file (YAML, strictly checked like a config) names a base config and
the factors to cross:

    name: dose x policy
    config: axicel.yaml            # base config: beside the sweep file, or a shipped one
    cohort: {n: 2000, seed: 0}     # optional: overrides the config's cohort
    schedule: {days: 28}           # optional: overrides the config's days
    factors:                       # every factor is optional; cells = their cross product
      config: [axicel.yaml, lisocel.yaml]     # product presets (replaces `config`)
      dose_multiplier: [0.5, 1, 2]            # x the config's dose ... or
      dose: [1.0e6, 2.0e6]                    # absolute dose in the config's units
      covariate: {name: tumor_burden, field: center, values: [0.5, 1.0, 2.0]}
      policy: [asco2021, none, {name: toci g1, preset: asco2021, toci_trigger_grade: 1}]
    scales: [astct, penn, cartox]  # grading scales of the graded endpoints (no re-simulation)
    posterior:                     # optional: a `vpop fit --out` directory (or its posterior.nc), or
      path: fit_zuma1              # `calibration`: the joint calibration's posterior of each cell's trial
      draws: 20                    # posterior draws of the fitted typical values
      n: 500                       # fresh virtual patients per draw

`run_sweep(path, out)` simulates every cell (the same seed and patient ids in
every cell, so cells are paired) and writes `out/cells/<cell>.csv` atomically
(a temporary file, then a rename). A cell whose file exists is skipped, so an
interrupted sweep resumes where it stopped; the cell file name carries a hash
of everything that determines its result, so editing the sweep never reuses a
stale cell. At the end `out/sweep.csv` gathers every cell: one row per cell x
endpoint x scale with the rate and its Wilson 95% interval (`kind == "rate"`),
or the median onset/duration day among patients with the event and the
distribution-free 95% interval of the median from order statistics
(`kind == "median"`).

With a posterior, every cell is also simulated at `draws` posterior draws
of the fitted typical values (fresh patients for each draw), and each rate row
gains `post_value`, `post_low`, `post_high`: the median and 95% interval of
the Jeffreys-beta mixture over draws (`vpop.fitting.posterior`), which carries
the parameter uncertainty as well as the sampling noise. The main columns stay
those of the config's own parameter values.

The ICU-level endpoints (vasopressors, positive-pressure ventilation) come
from the engine's per-patient record, so no observation table is kept.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from vpop.trials.compare import patient_endpoints, resolve_policy
from vpop.errors import ConfigError

CALIBRATION = "calibration"  # posterior.path naming the shipped joint calibration (vpop/data/calibration/)
from vpop.fitting.posterior import file_digest
from vpop.model.parameters import TABLE
from vpop.run import endpoints, folder
from vpop.stats import wilson_interval

MARGINAL_FIELDS = ("center", "spread", "low", "high")


# --- the sweep file -----------------------------------------------------------------


def _fail(source, where, msg):
    raise ConfigError(f"{source}: {where}: {msg}")


def _num_list(source, where, v, positive=True):
    if not isinstance(v, list) or not v or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and (x > 0 or not positive)
            for x in v):
        _fail(source, where, f"got {v!r}; allowed: a non-empty list of {'positive ' if positive else ''}numbers")
    return [float(x) for x in v]


def _mapping(source, where, v, allowed):
    if not isinstance(v, dict):
        _fail(source, where, f"expected a mapping, got {type(v).__name__}")
    for key in v:
        if key not in allowed:
            _fail(source, f"{where}.{key}" if where else str(key),
                  f"unknown key {key!r} (check the spelling); allowed keys here: {', '.join(allowed)}")
    return v


@dataclass(frozen=True)
class SweepSpec:
    name: str
    source: Path
    configs: list[str]
    n: int | None
    seed: int | None
    days: float | None
    dose_kind: str | None  # "dose" | "dose_multiplier" | None
    doses: list[float]
    covariate: dict | None  # {name, field, values}
    policies: list  # raw specs (None: the config's own)
    policy_names: list[str]
    scales: list[str]
    posterior: dict | None = None  # {path: Path, draws: int, n: int}


def load_sweep(path: str | Path) -> SweepSpec:
    from vpop.run.config import load_yaml_file  # YAML 1.2 floats (2e6)
    from vpop.grading.legacy import CRS_SCALES, NEURO_SCALES
    from vpop.population.sampler import COVARIATES

    path = Path(path)
    src = str(path)
    data = load_yaml_file(path, "sweep")
    data = _mapping(src, "", data or {}, ("name", "description", "config", "cohort", "schedule", "factors",
                                          "scales", "posterior"))
    factors = _mapping(src, "factors", data.get("factors", {}) or {},
                       ("config", "dose", "dose_multiplier", "covariate", "policy"))
    cohort = _mapping(src, "cohort", data.get("cohort", {}) or {}, ("n", "seed"))
    schedule = _mapping(src, "schedule", data.get("schedule", {}) or {}, ("days",))
    for key, low in (("n", 1), ("seed", 0)):
        v = cohort.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            _fail(src, f"cohort.{key}", f"got {v!r}; allowed: an integer >= {low}")
    days = schedule.get("days")
    if days is not None and (isinstance(days, bool) or not isinstance(days, (int, float)) or not 0.25 <= days <= 365):
        _fail(src, "schedule.days", f"got {days!r}; allowed: a number from 0.25 to 365")

    if "config" in factors:
        configs = factors["config"]
        if not isinstance(configs, list) or not configs or not all(isinstance(c, str) for c in configs):
            _fail(src, "factors.config", f"got {configs!r}; allowed: a non-empty list of config file names")
        if "config" in data:
            _fail(src, "config", "give the base config either here or as factors.config, not both")
    else:
        if not isinstance(data.get("config"), str):
            _fail(src, "config", "missing: the base config file (e.g. axicel.yaml)")
        configs = [data["config"]]
    resolved = []
    for i, c in enumerate(configs):
        p = _find_config(path, c)
        if p is None:
            _fail(src, "factors.config" if "config" in factors else "config",
                  f"{c}: config file not found (looked beside the sweep file and among the shipped configs)")
        resolved.append(str(p))

    if "dose" in factors and "dose_multiplier" in factors:
        _fail(src, "factors", "give dose or dose_multiplier, not both")
    dose_kind = "dose" if "dose" in factors else "dose_multiplier" if "dose_multiplier" in factors else None
    doses = _num_list(src, f"factors.{dose_kind}", factors[dose_kind]) if dose_kind else []

    cov = None
    if "covariate" in factors:
        cov = _mapping(src, "factors.covariate", factors["covariate"], ("name", "field", "values"))
        if cov.get("name") not in COVARIATES:
            _fail(src, "factors.covariate.name", f"got {cov.get('name')!r}; allowed: {', '.join(COVARIATES)}")
        if cov.get("field", "center") not in MARGINAL_FIELDS:
            _fail(src, "factors.covariate.field", f"got {cov.get('field')!r}; allowed: {', '.join(MARGINAL_FIELDS)}")
        cov = {"name": cov["name"], "field": cov.get("field", "center"),
               "values": _num_list(src, "factors.covariate.values", cov.get("values"), positive=False)}

    policies, names = [None], ["(config)"]
    if "policy" in factors:
        raw = factors["policy"]
        if not isinstance(raw, list) or not raw:
            _fail(src, "factors.policy", "expected a non-empty list of preset names or policy mappings")
        policies, names = [], []
        for i, spec in enumerate(raw):
            pol = resolve_policy(spec, f"{src}: factors.policy[{i}]")
            policies.append(spec)
            names.append(pol.name)
        if len(set(names)) != len(names):
            _fail(src, "factors.policy", f"policy names must differ (give each a name:), got {names}")

    scales = data.get("scales", ["astct"])
    allowed = sorted(set(CRS_SCALES) | set(NEURO_SCALES))
    if not isinstance(scales, list) or not scales or not all(isinstance(s, str) and s in allowed for s in scales):
        _fail(src, "scales", f"got {scales!r}; allowed: a list of: {', '.join(allowed)}")
    posterior = _posterior_spec(src, path, data.get("posterior"))
    name = data.get("name", path.stem)
    if not isinstance(name, str):
        _fail(src, "name", f"got {name!r}; allowed: a string")
    return SweepSpec(name, path, resolved, cohort.get("n"), cohort.get("seed"),
                     float(days) if days is not None else None, dose_kind, doses, cov, policies, names,
                     list(scales), posterior)


def _posterior_spec(src, sweep_path: Path, raw) -> dict | None:
    from vpop.fitting.posterior import posterior_file

    if raw is None:
        return None
    raw = _mapping(src, "posterior", raw, ("path", "draws", "n"))
    if not isinstance(raw.get("path"), str):
        _fail(src, "posterior.path", f"got {raw.get('path')!r}; allowed: a `vpop fit --out` directory or posterior.nc")
    if raw["path"] == CALIBRATION:
        from vpop.fitting.posterior import calibration_digest

        out = {"path": CALIBRATION, "digest": calibration_digest()}
    else:
        where = Path(raw["path"])
        where = where if where.is_absolute() else sweep_path.parent / where
        try:
            file = posterior_file(where)
        except Exception as err:
            _fail(src, "posterior.path", str(err))
        out = {"path": file, "digest": file_digest(file)}  # hashed once: the posterior is part of every cell key
    for key, default, low in (("draws", 20, 2), ("n", 500, 10)):
        v = raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            _fail(src, f"posterior.{key}", f"got {v!r}; allowed: an integer >= {low}")
        out[key] = v
    return out


def _find_config(sweep_path: Path, name: str) -> Path | None:
    from vpop.run.config import shipped_config

    for p in (sweep_path.parent / name, shipped_config(name)):
        if p.is_file():
            return p
    return None


# --- cells ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    index: int
    config: str
    dose: float | None
    covariate_value: float | None
    policy_spec: Any
    policy_name: str

    def factors(self, spec: SweepSpec) -> dict:
        out = {"cell": self.index, "config": Path(self.config).stem}
        if spec.dose_kind:
            out[spec.dose_kind] = self.dose
        if spec.covariate:
            out[f"{spec.covariate['name']}_{spec.covariate['field']}"] = self.covariate_value
        out["policy"] = self.policy_name
        return out


def cells_of(spec: SweepSpec) -> list[Cell]:
    doses = spec.doses or [None]
    covs = spec.covariate["values"] if spec.covariate else [None]
    out = []
    for i, (cfg, dose, cov, (pol, pname)) in enumerate(itertools.product(
            spec.configs, doses, covs, list(zip(spec.policies, spec.policy_names)))):
        out.append(Cell(i, cfg, dose, cov, pol, pname))
    return out


def cell_config(spec: SweepSpec, cell: Cell):
    """The simulation config of one cell."""
    from vpop.run.config import load_config
    from vpop.trials.designs import with_dose

    cfg = load_config(cell.config)
    if spec.days is not None:
        cfg = replace(cfg, engine=replace(cfg.engine, days=spec.days))
    if spec.dose_kind == "dose":
        cfg = with_dose(cfg, cell.dose)
    elif spec.dose_kind == "dose_multiplier":
        pop = cfg.population
        base = pop.dose_per_kg if pop.dose_per_kg is not None else pop.flat_dose
        cfg = with_dose(cfg, base * cell.dose)
    if spec.covariate:
        pop = cfg.population
        name, field = spec.covariate["name"], spec.covariate["field"]
        m = replace(pop.marginals[name], **{field: cell.covariate_value})
        if m.low >= m.high or (m.dist == "lognormal" and m.center <= 0) or m.spread < 0:
            raise ConfigError(f"{spec.source}: factors.covariate: {name}.{field} = {cell.covariate_value:g} "
                              "gives an invalid distribution")
        cfg = replace(cfg, population=replace(pop, marginals={**pop.marginals, name: m}))
    if cell.policy_spec is not None:
        cfg = replace(cfg, policy=resolve_policy(cell.policy_spec, f"{spec.source}: factors.policy"))
    crs = [s for s in spec.scales if s in cfg.engine.crs_scales]
    neuro = [s for s in spec.scales if s in cfg.engine.neuro_scales]
    missing = [s for s in spec.scales if s not in crs and s not in neuro]
    if missing:
        raise ConfigError(f"{spec.source}: scales: {', '.join(missing)} not simulated by {cell.config} "
                          "(its grading.scales)")
    return cfg


def cell_key(spec: SweepSpec, cell: Cell, cfg) -> str:
    """File stem of a cell: its index and a hash of what determines its result."""
    blob = json.dumps({
        "config": cfg.resolved_dict(), "days": cfg.engine.days, "n": spec.n or cfg.n,
        "seed": cfg.seed if spec.seed is None else spec.seed, "scales": spec.scales,
        "dose": [cfg.population.dose_per_kg, cfg.population.flat_dose],
        "marginals": {k: repr(v) for k, v in cfg.population.marginals.items()},
        "posterior": None if spec.posterior is None else {
            "digest": spec.posterior["digest"], "draws": spec.posterior["draws"], "n": spec.posterior["n"]},
    }, sort_keys=True, default=str)
    return f"cell-{cell.index:04d}-{hashlib.sha1(blob.encode()).hexdigest()[:12]}"


# --- endpoints ---------------------------------------------------------------------------


def median_ci(values: np.ndarray, z: float = 1.959963984540054) -> tuple[float, float, float]:
    """Median and its distribution-free ~95% interval from order statistics (normal approximation)."""
    v = np.sort(np.asarray(values, dtype=float))
    v = v[np.isfinite(v)]
    m = len(v)
    if m == 0:
        return (float("nan"),) * 3
    half = z * math.sqrt(m) / 2.0
    lo = max(0, int(math.floor(m / 2.0 - half)))
    hi = min(m - 1, int(math.ceil(m / 2.0 + half)) - 1 if m > 1 else 0)
    return float(np.median(v)), float(v[lo]), float(v[max(lo, hi)])


_SCALED = re.compile(r"^(.*) \((\w+)\)$")


def cell_table(patients: pd.DataFrame, scales: list[str], crs_scales, neuro_scales) -> pd.DataFrame:
    """Tidy endpoint rows of one simulated cell (without the factor columns)."""
    crs = [s for s in scales if s in crs_scales]
    neuro = [s for s in scales if s in neuro_scales]
    pts = patients[~endpoints.failed(patients)]
    ep = patient_endpoints(pts, None, crs, neuro)
    n = len(pts)
    rows = []
    for col in ep.columns:
        k = int(ep[col].sum())
        lo, hi = wilson_interval(k, n)
        m = _SCALED.match(col)
        endpoint, scale = (m.group(1), m.group(2)) if m else (col, "")
        rows.append({"endpoint": endpoint, "scale": scale, "kind": "rate", "value": k / n if n else float("nan"),
                     "ci_low": lo, "ci_high": hi, "count": k, "n": n})
    for kind, ss in (("crs", crs), ("icans", neuro)):
        for s in ss:
            for what in ("onset_day", "duration_days"):
                col = endpoints.day_column(kind, what, s)
                if col not in pts.columns:
                    continue
                vals = pts[col].dropna().to_numpy()
                med, lo, hi = median_ci(vals)
                label = f"{kind.upper()} {'onset day' if what == 'onset_day' else 'duration (days)'} (median)"
                rows.append({"endpoint": label, "scale": s, "kind": "median", "value": med, "ci_low": lo,
                             "ci_high": hi, "count": len(vals), "n": n})
    return pd.DataFrame(rows)


def with_posterior_intervals(table: pd.DataFrame, spec: SweepSpec, cfg, seed: int, draws: dict) -> pd.DataFrame:
    """Add the posterior-predictive median and 95% interval to every rate row of a cell.

    `draws`: the posterior's typical-value draws ({parameter: array}).
    """
    from vpop.run.cohort import simulate
    from vpop.fitting.posterior import pick_draws, predictive_rate_interval

    post = spec.posterior
    counts = []
    for j, params in enumerate(pick_draws(draws, post["draws"], seed)):
        c = replace(cfg, parameters={**cfg.parameters, **params})
        # fresh patients per draw, never the main cohort's (seed offset far from any cell seed)
        res = simulate(c, n=post["n"], seed=seed + 104729 * (j + 1), record_rows=False)
        t = cell_table(res.patients, spec.scales, cfg.engine.crs_scales, cfg.engine.neuro_scales)
        counts.append(t[t["kind"] == "rate"].set_index(["endpoint", "scale"])[["count", "n"]])
    table = table.copy()
    for col in ("post_value", "post_low", "post_high"):
        table[col] = np.nan
    table["post_draws"] = 0
    for i, row in table.iterrows():
        if row["kind"] != "rate":
            continue
        key = (row["endpoint"], row["scale"])
        k = [c.loc[key, "count"] for c in counts if key in c.index]
        n = [c.loc[key, "n"] for c in counts if key in c.index]
        med, lo, hi = predictive_rate_interval(k, n, seed=i)
        table.loc[i, ["post_value", "post_low", "post_high", "post_draws"]] = [med, lo, hi, len(k)]
    return table


def _posterior_draws(spec: SweepSpec) -> Callable[[Any], dict]:
    """cfg -> the typical-value draws its cells use: one fitted posterior for every cell, or, with
    `path: calibration`, the joint calibration's posterior of the trial each cell's config is modelled on."""
    from vpop.fitting.posterior import load_theta_draws

    def checked(draws, where):
        unknown = sorted(set(draws) - set(TABLE))
        if unknown:
            raise ConfigError(f"{spec.source}: posterior.path: {where} fits {', '.join(unknown)}, "
                              "which are not model parameters")
        return draws

    if spec.posterior["path"] != CALIBRATION:
        draws = checked(load_theta_draws(spec.posterior["path"]), spec.posterior["path"])
        return lambda cfg: draws
    cache: dict[str, dict] = {}

    def of(cfg):
        from vpop.trials.joint_calibration import calibration_draws

        if cfg.trial not in cache:
            try:
                cache[cfg.trial] = checked(calibration_draws(cfg), f"calibration ({cfg.trial})")
            except ConfigError as err:
                raise ConfigError(f"{spec.source}: posterior.path: calibration: {err}") from None
        return cache[cfg.trial]
    return of


def _write_atomic(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


# --- running --------------------------------------------------------------------------------


@dataclass
class SweepRun:
    table: pd.DataFrame
    ran: int
    skipped: int
    out: Path


def run_sweep(path: str | Path, out: str | Path, n: int | None = None,
              progress: Callable[[str], None] | None = None) -> SweepRun:
    """Run (or resume) a sweep; returns the tidy table (also written to out/sweep.csv)."""
    spec = load_sweep(path)
    if n is not None:
        spec = replace(spec, n=int(n))
    out = Path(out)
    cells_dir = out / "cells"
    cells = cells_of(spec)
    configs = [cell_config(spec, c) for c in cells]  # every cell checked before anything is written
    draws = _posterior_draws(spec) if spec.posterior is not None else None
    if draws is not None:
        for cfg in configs:  # every cell's posterior found before anything is written
            draws(cfg)
    with folder.claim(cells_dir, flag="OUT"):  # writable, one sweep at a time; removed if it fails empty
        return _run_cells(spec, out, cells, configs, draws, progress)


def _run_cells(spec, out: Path, cells, configs, draws, progress) -> SweepRun:
    from vpop.run.cohort import simulate

    cells_dir = out / "cells"
    parts, ran, skipped = [], 0, 0
    for cell, cfg in zip(cells, configs):
        file = cells_dir / f"{cell_key(spec, cell, cfg)}.csv"
        if file.exists():
            skipped += 1
            parts.append(pd.read_csv(file, keep_default_na=False, na_values=[""]))
            if progress:
                progress(f"cell {cell.index + 1}/{len(cells)}: done before, skipped")
            continue
        n_cell = spec.n or cfg.n
        seed = cfg.seed if spec.seed is None else spec.seed
        result = simulate(cfg, n=n_cell, seed=seed, record_rows=False)
        table = cell_table(result.patients, spec.scales, cfg.engine.crs_scales, cfg.engine.neuro_scales)
        if spec.posterior is not None:
            table = with_posterior_intervals(table, spec, cfg, seed, draws(cfg))
        factors = cell.factors(spec)
        for i, (k, v) in enumerate(factors.items()):
            table.insert(i, k, v)
        _write_atomic(table, file)
        parts.append(table)
        ran += 1
        if progress:
            progress(f"cell {cell.index + 1}/{len(cells)}: {n_cell} patients in {result.run_seconds:.1f} s")
    tidy = pd.concat(parts, ignore_index=True)
    tidy["scale"] = tidy["scale"].fillna("")
    _write_atomic(tidy, out / "sweep.csv")
    (out / "sweep.yaml").write_text(spec.source.read_text())
    return SweepRun(tidy, ran, skipped, out)

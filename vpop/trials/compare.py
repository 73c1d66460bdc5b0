"""Paired policy comparisons: the same virtual patients under several management policies.

Patient i of a cohort is fully determined by (seed, i): its covariates, its
random effects and its random events. Simulating one config with the same
seed and size under two policies therefore gives the *same* patients treated
two ways, and the comparison is paired (each patient is their own control).

    from vpop.trials.compare import compare_policies
    cmp = compare_policies(cfg, ["asco2021", "prophylactic_dex", "early_toci"], n=2000)
    cmp.rates          # one row per policy x endpoint: rate and Wilson 95% CI
    cmp.differences    # one row per (policy vs reference) x endpoint

Difference = rate(policy) - rate(reference). Its 95% interval is Newcombe's
hybrid score interval for paired proportions (Newcombe, Stat Med 1998;
17:2635-50, method 10: Wilson intervals of the two marginal rates combined
with the phi correlation of the paired table; no continuity correction).
The Wald interval with the McNemar variance is also given
(`wald_low`/`wald_high`: d +/- z sqrt((b + c - (b - c)^2 / n)) / n).

Number needed to treat: NNT = 1 / (rate(reference) - rate(policy)), the
number of patients managed with the policy instead of the reference to
prevent one event; a negative value is a number needed to harm (the policy
causes one extra event per |NNT| patients). Its interval is the reciprocal
of the difference's interval (Altman, BMJ 1998) and is given only when that
interval excludes 0; otherwise the NNT and its interval run through infinity
and `nnt`, `nnt_low`, `nnt_high` are NaN (empty in differences.csv).

Endpoints (`patient_endpoints`), each a yes/no per patient: any-grade,
grade >= 3 and grade 4-5 CRS and ICANS under each requested scale,
tocilizumab given, corticosteroids given, vasopressors (any assessment with
>= 1 vasopressor), positive-pressure ventilation (CPAP, BiPAP or mechanical
ventilation), ICU-level support (either of the last two) and death from CRS or
ICANS. The last three need the observation table. Patients whose solver
failed (`solver_status == "nonfinite"`) under any of the policies are left
out of every comparison, so the pairs stay complete.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from vpop.errors import ConfigError, UserError
from vpop.observation.encoding import POSITIVE_PRESSURE
from vpop.policy.settings import PRESETS, PolicySettings, with_overrides
from vpop.run import endpoints
from vpop.stats import wilson_interval

Z95 = 1.959963984540054


# --- endpoints -------------------------------------------------------------------


def endpoint_names(crs_scales: Sequence[str] = ("astct",), icans_scales: Sequence[str] = ("astct",),
                   observations: bool = True) -> list[str]:
    names = [e.name for e in _graded(crs_scales, icans_scales)] + [e.name for e in endpoints.DRUG_AND_DEATH]
    if observations:
        names += [e.name for e in endpoints.ICU_ENDPOINTS]
    return names


def _graded(crs_scales, icans_scales) -> list:
    return endpoints.graded_endpoints("crs", crs_scales) + endpoints.graded_endpoints("icans", icans_scales)


def patient_endpoints(patients: pd.DataFrame, observations: pd.DataFrame | None = None,
                      crs_scales: Sequence[str] = ("astct",), icans_scales: Sequence[str] = ("astct",)) -> pd.DataFrame:
    """Yes/no endpoints per patient (index: patient_id; columns: `endpoint_names`), from `vpop.run.endpoints`."""
    for kind, scales in (("crs", crs_scales), ("icans", icans_scales)):
        for s in scales:
            col = endpoints.grade_column(kind, s)
            if col not in patients.columns:
                raise UserError(f"endpoint: the {kind.upper()} scale {s!r} was not simulated (column {col} missing)")
    chosen = _graded(crs_scales, icans_scales) + list(endpoints.DRUG_AND_DEATH)
    if "max_vasopressors" in patients.columns:  # the engine tracks ICU-level support itself
        chosen += list(endpoints.ICU_ENDPOINTS)
    df = endpoints.flags(patients, chosen)
    if "max_vasopressors" not in patients.columns and observations is not None:
        # patient tables from elsewhere: derive ICU-level support from the charted rows
        g = observations.groupby("patient_id", observed=True)
        vaso = (g["vasopressors"].max() >= 1)
        ppv = observations["o2_device"].astype(str).isin(POSITIVE_PRESSURE).groupby(observations["patient_id"]).any()
        ids = patients["patient_id"]
        vaso = vaso.reindex(ids).fillna(False).to_numpy().astype(bool)
        ppv = ppv.reindex(ids).fillna(False).to_numpy().astype(bool)
        df[endpoints.VASOPRESSORS.name] = vaso
        df[endpoints.POSITIVE_PRESSURE.name] = ppv
        df[endpoints.ICU_LEVEL.name] = vaso | ppv
    df.attrs["ok"] = ~endpoints.failed(patients) if "solver_status" in patients else None
    return df


# --- paired statistics -----------------------------------------------------------------


@dataclass(frozen=True)
class PairedDifference:
    n: int
    rate_reference: float
    rate_policy: float
    difference: float  # policy - reference
    ci_low: float
    ci_high: float
    wald_low: float
    wald_high: float
    only_policy: int  # discordant pairs: event under the policy only
    only_reference: int  # event under the reference only
    nnt: float
    nnt_low: float
    nnt_high: float


def paired_difference(policy: np.ndarray, reference: np.ndarray, z: float = Z95) -> PairedDifference:
    """Rate difference (policy - reference) of paired yes/no outcomes with Newcombe's interval."""
    x = np.asarray(policy, dtype=bool)
    r = np.asarray(reference, dtype=bool)
    if x.shape != r.shape or x.ndim != 1:
        raise ValueError("paired outcomes must be two 1-D arrays of equal length")
    n = len(x)
    if n == 0:
        nan = float("nan")
        return PairedDifference(0, nan, nan, nan, nan, nan, nan, nan, 0, 0, nan, nan, nan)
    a = int(np.sum(x & r))
    b = int(np.sum(x & ~r))  # policy only
    c = int(np.sum(~x & r))  # reference only
    d = n - a - b - c
    p1, p2 = (a + b) / n, (a + c) / n
    diff = (b - c) / n
    l1, u1 = wilson_interval(a + b, n, z)
    l2, u2 = wilson_interval(a + c, n, z)
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(denom) if denom > 0 else 0.0
    lo = diff - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    hi = diff + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    lo, hi = max(-1.0, lo), min(1.0, hi)
    se = math.sqrt(max(0.0, b + c - (b - c) ** 2 / n)) / n
    if lo > 0 or hi < 0:  # an NNT only where the difference's interval excludes 0
        nnt = 1.0 / -diff
        nnt_low, nnt_high = sorted((1.0 / -lo, 1.0 / -hi))
    else:
        nnt = nnt_low = nnt_high = float("nan")
    return PairedDifference(n, p2, p1, diff, lo, hi, diff - z * se, diff + z * se, b, c, nnt, nnt_low, nnt_high)


# --- policies --------------------------------------------------------------------------


def resolve_policy(spec, source: str = "<policy>") -> PolicySettings:
    """A `PolicySettings` from a preset name, a mapping ({preset: ..., field: value}) or itself."""
    if isinstance(spec, PolicySettings):
        return spec
    from vpop.run.config import Checker

    clean = Checker(source).policy(spec, "policy")
    preset = clean.pop("preset", "asco2021")
    name = clean.pop("name", preset if isinstance(spec, str) or len(clean) == 0 else preset + "+custom")
    return with_overrides(PRESETS[preset], clean, name)


def load_policies_file(path) -> list | dict:
    """Policy specs from a YAML file: a list (each a preset name or a mapping) or a mapping name -> spec."""
    from vpop.run.config import load_yaml_file

    data = load_yaml_file(path, "policies")
    if isinstance(data, dict) and set(data) == {"policies"}:
        data = data["policies"]
    if isinstance(data, list):
        return [resolve_policy(spec, f"{path}: policies[{i}]") for i, spec in enumerate(data)]
    if isinstance(data, dict):
        return {str(k): resolve_policy(v, f"{path}: policies.{k}") for k, v in data.items()}
    raise ConfigError(f"{path}: expected a list of policies (preset names or mappings) or a mapping name -> policy")


def _named_policies(policies) -> dict[str, PolicySettings]:
    if isinstance(policies, Mapping):
        items = [(str(k), resolve_policy(v, f"policy {k}")) for k, v in policies.items()]
    else:
        items = []
        for spec in policies:
            p = resolve_policy(spec)
            items.append((p.name, p))
    names = [k for k, _ in items]
    if len(set(names)) != len(names):
        raise ConfigError(f"policies: names must be different, got {names}")
    if len(items) < 2:
        raise UserError("a comparison needs at least two policies")
    return dict(items)


# --- comparisons -------------------------------------------------------------------------


@dataclass
class Comparison:
    reference: str
    rates: pd.DataFrame
    differences: pd.DataFrame
    n: int
    policies: dict = None  # name -> PolicySettings, when the comparison simulated them
    posterior_draws: int = 0  # parameter draws behind the post_* columns of `differences` (0: none)


def compare_endpoints(endpoints: Mapping[str, pd.DataFrame], reference: str | None = None) -> Comparison:
    """Compare per-patient endpoint tables (one per policy, same patients) against the reference."""
    names = list(endpoints)
    reference = names[0] if reference is None else reference
    if reference not in endpoints:
        raise UserError(f"reference policy {reference!r} is not among {names}")
    ref = endpoints[reference]
    ok = np.ones(len(ref), dtype=bool)
    for name, table in endpoints.items():
        if not table.index.equals(ref.index):
            raise UserError(f"policy {name!r}: not the same patients as {reference!r} (a paired comparison "
                            "needs the same seed and cohort size)")
        if table.attrs.get("ok") is not None:
            ok &= table.attrs["ok"]
    n = int(ok.sum())
    cols = [c for c in ref.columns if all(c in t.columns for t in endpoints.values())]
    rate_rows, diff_rows = [], []
    for name, table in endpoints.items():
        for col in cols:
            v = table[col].to_numpy()[ok]
            k = int(v.sum())
            lo, hi = wilson_interval(k, n)
            rate_rows.append({"policy": name, "endpoint": col, "rate": k / n if n else float("nan"),
                              "ci_low": lo, "ci_high": hi, "count": k, "n": n})
            if name == reference:
                continue
            pd_ = paired_difference(v, ref[col].to_numpy()[ok])
            row = {"policy": name, "reference": reference, "endpoint": col}
            row.update(asdict(pd_))
            diff_rows.append(row)
    return Comparison(reference, pd.DataFrame(rate_rows), pd.DataFrame(diff_rows), n)


def compare_results(results: Mapping[str, object], reference: str | None = None,
                    crs_scales: Sequence[str] = ("astct",), icans_scales: Sequence[str] = ("astct",)) -> Comparison:
    """Compare `CohortResult`s of the same patients (one per policy)."""
    tables = {name: patient_endpoints(r.patients, r.observations, crs_scales, icans_scales)
              for name, r in results.items()}
    return compare_endpoints(tables, reference)


def compare_policies(config, policies, reference: str | None = None, n: int | None = None,
                     seed: int | None = None, crs_scales: Sequence[str] = ("astct",),
                     icans_scales: Sequence[str] = ("astct",), record_rows: bool = True,
                     progress=None, posterior: dict | None = None) -> Comparison:
    """Simulate the same virtual patients under each policy and compare them with the reference.

    `policies`: a list of preset names / mappings / `PolicySettings` (named by
    their `name`), or a mapping name -> spec. The reference is the first policy
    unless named. The ICU-level endpoints come from the engine's per-patient
    record, so `record_rows=False` (no observation table) loses none of them. With `posterior`
    (`with_posterior_differences`), the differences also carry the parameters' uncertainty.
    """
    from vpop.run.cohort import simulate

    named = _named_policies(policies)
    n = config.n if n is None else int(n)
    seed = config.seed if seed is None else int(seed)
    results = {}
    for name, pol in named.items():
        results[name] = simulate(replace(config, policy=pol), n=n, seed=seed, record_rows=record_rows)
        if progress is not None:
            progress(name)
    out = compare_results(results, reference, crs_scales, icans_scales)
    out = replace(out, policies=named)
    if posterior is not None:
        out = with_posterior_differences(out, config, named, posterior, seed, crs_scales, icans_scales, progress)
    return out


def with_posterior_differences(cmp: Comparison, config, named: dict, posterior: dict, seed: int,
                               crs_scales, icans_scales, progress=None) -> Comparison:
    """Add `post_difference`, `post_low`, `post_high`: the paired difference with parameter uncertainty.

    `posterior`: {"draws": {parameter: array}, "k": draws to use, "n": fresh patients per draw}. Every
    draw simulates every policy on the same fresh patients (paired within the draw); the interval is the
    2.5-97.5 % range of the mixture over draws of Normal(d_k, se_k), d_k the draw's paired difference and
    se_k its paired standard error: the spread between draws is the parameter uncertainty.
    """
    from vpop.fitting.posterior import pick_draws
    from vpop.run.cohort import simulate

    picked = pick_draws(posterior["draws"], posterior["k"], seed)
    per_draw = []
    for j, params in enumerate(picked):
        cfg = replace(config, parameters={**config.parameters, **params})
        res = {name: simulate(replace(cfg, policy=pol), n=posterior["n"], seed=seed + 104729 * (j + 1),
                              record_rows=True) for name, pol in named.items()}
        per_draw.append(compare_results(res, cmp.reference, crs_scales, icans_scales).differences)
        if progress is not None:
            progress(f"posterior draw {j + 1}/{len(picked)}")
    rng = np.random.default_rng(seed)
    diff = cmp.differences.copy()
    for col in ("post_difference", "post_low", "post_high"):
        diff[col] = np.nan
    for i, row in diff.iterrows():
        d, se = [], []
        for table in per_draw:
            hit = table[(table["policy"] == row["policy"]) & (table["endpoint"] == row["endpoint"])]
            if len(hit):
                d.append(float(hit["difference"].iloc[0]))
                se.append(float(hit["wald_high"].iloc[0] - hit["difference"].iloc[0]) / Z95)
        if d:
            mix = rng.normal(np.repeat(d, 2000), np.repeat(se, 2000))
            diff.loc[i, ["post_difference", "post_low", "post_high"]] = [
                float(np.median(mix)), float(np.quantile(mix, 0.025)), float(np.quantile(mix, 0.975))]
    return replace(cmp, differences=diff, posterior_draws=len(picked))

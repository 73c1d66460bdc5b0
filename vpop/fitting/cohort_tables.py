"""Published cohort tables in, and their smoothed simulated likelihood.

Table format (/work/shared/data/published_cohorts.csv):
`cohort,product,construct,disease,n,scale,endpoint,value,unit,source,note`.

`scale` names the grading scale the trial used and maps to vpop's per-scale
columns (`SCALE_COLUMNS`): lee2014 -> crs_max_grade_lee2014, penn ->
crs_max_grade_penn, astct -> crs_max_grade (CRS); ctcae_neuro ->
icans_max_grade_ctcae, cartox_neuro -> icans_max_grade_cartox, astct_neuro ->
icans_max_grade (neurotoxicity). Drug-use endpoints have no scale.

Likelihood (docs/fitting.md §Cohort tables). A fixed set of virtual patients
(fixed keys: patient i = fold_in(PRNGKey(seed), i) of the config's population,
with all its random effects) runs the one course of treatment
(`vpop.engine.course`, the course `vpop.simulate` runs) under the config's own
management policy and grading scales, at the candidate population parameters.
Each rate endpoint has a continuous severity surrogate s_i, one of the course's
worst signs (summary `worst_*`), the smooth quantities the grades threshold:

* crs_any: peak temperature rise (deg C) from the pyrogen signal;
* crs_grade{k}plus, crs_grade{k} (k >= 2) and tocilizumab_use: peak fall of
  the mean arterial pressure (mmHg below baseline: leak + vasoplegia);
* neuro_any, neuro_grade{k}plus: peak neuronal dysfunction.

The threshold c of each endpoint is set once, at the reference parameters,
so that the fraction of virtual patients with s_i >= c equals the rate that
the full engine (grading under the trial's scale, with management) gives for
the same patients. During fitting the indicator s_i >= c is replaced by
sigmoid((log s_i - log c) / tau), and the table's count k of n is binomial
with the mean smoothed indicator as probability. `smoothing_bias` measures
the difference between the smoothed rate and the unsmoothed (hard threshold)
rate, and `engine_rates` the full engine's graded rate for a comparison at any
parameter value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pandas as pd

from vpop.engine.course import EngineSettings
from vpop.errors import DataError, show_value

REQUIRED_COLUMNS = ("cohort", "product", "construct", "disease", "n", "scale", "endpoint", "value", "unit", "source", "note")
# scale -> (kind, vpop patients column)
SCALE_COLUMNS: dict[str, tuple[str, str]] = {
    "lee2014": ("crs", "crs_max_grade_lee2014"),
    "penn": ("crs", "crs_max_grade_penn"),
    "mskcc": ("crs", "crs_max_grade_mskcc"),
    "cartox": ("crs", "crs_max_grade_cartox"),
    "ctcae5": ("crs", "crs_max_grade_ctcae5"),
    "astct": ("crs", "crs_max_grade"),
    "ctcae_neuro": ("neuro", "icans_max_grade_ctcae"),
    "cartox_neuro": ("neuro", "icans_max_grade_cartox"),
    "astct_neuro": ("neuro", "icans_max_grade"),
}
ENDPOINT_PATTERNS = (
    r"crs_any", r"crs_grade[1-5]plus", r"crs_grade[1-5]", r"neuro_any", r"neuro_grade[1-5]plus", r"neuro_grade[1-5]",
    r"tocilizumab_use", r"steroid_use", r"(crs|neuro)_(onset|duration)_median", r"neuro_grade3plus_preceded_by_crs",
    r"fever_onset_median",
)
# Cellular-kinetic and serum-kinetic rows (CAR-T peak, Tmax, AUC, half-life; analyte peak times): read, with
# their units as written, for the validation scorecard (vpop validate); no likelihood uses them.
KINETIC_ENDPOINTS = r"(car|serum)_[A-Za-z0-9_]+"
# ICANS rows graded by ASTCT are written `icans_...` with scale `astct`: read as vpop's neuro endpoint.
ICANS_ALIAS = r"icans_(any|grade[1-5]plus|grade[1-5])"
# endpoints the smoothed likelihood can use
LIKELIHOOD_ENDPOINTS = re.compile(r"^(crs_any|crs_grade[2-5]plus|crs_grade[1-5]|neuro_any|neuro_grade[1-5]plus|tocilizumab_use)$")


@dataclass(frozen=True)
class Target:
    cohort: str
    scale: str  # "" for drug use
    endpoint: str
    n: int
    value: float  # fraction for rates, days for medians
    unit: str
    row: int

    @property
    def count(self) -> int:
        return int(round(self.value * self.n)) if self.unit == "percent" or self.unit == "fraction" else -1

    @property
    def is_rate(self) -> bool:
        return self.unit in ("percent", "fraction")


def read_cohort_table(path, cohort: str | None = None) -> list[Target]:
    """Rows of a cohort table (all cohorts, or the one named), validated."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: cohort table not found")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in REQUIRED_COLUMNS:
        if col not in df.columns:
            raise DataError(f"{path}: column {col}: missing required column; the columns are {list(df.columns)}")
    out = []
    for i in range(len(df)):
        r = df.iloc[i]
        row = i + 1

        def fail(col, msg):
            raise DataError(f"{path}: row {row}, column {col}: {msg}")

        if not r["n"].strip():
            n = 0  # not reported (e.g. a matched historical control): no binomial data, no interval
        else:
            try:
                n = int(r["n"])
            except ValueError:
                fail("n", f"got {show_value(r['n'])}; allowed: a whole number of patients > 0, or empty when not reported")
            if n <= 0:
                fail("n", f"got {n}; allowed: a whole number of patients > 0, or empty when not reported")
        try:
            value = float(r["value"])
        except ValueError:
            fail("value", f"got {show_value(r['value'])}; allowed: a number")
        scale = r["scale"].strip()
        endpoint = r["endpoint"].strip()
        unit = r["unit"].strip()
        if re.fullmatch(ICANS_ALIAS, endpoint) and scale == "astct":
            endpoint, scale = "neuro" + endpoint[len("icans"):], "astct_neuro"
        kinetic = re.fullmatch(KINETIC_ENDPOINTS, endpoint) is not None
        if kinetic:  # units as written (cells/uL, copies/ug gDNA, day, ...)
            out.append(Target(r["cohort"].strip(), scale, endpoint, n, value, unit, row))
            continue
        if scale and scale not in SCALE_COLUMNS:
            fail("scale", f"unknown scale {scale!r}; allowed: {', '.join(SCALE_COLUMNS)} (or empty for drug use)")
        if not any(re.fullmatch(p, endpoint) for p in ENDPOINT_PATTERNS):
            fail("endpoint", f"unknown endpoint {endpoint!r}; allowed: crs_any, crs_grade<k>plus, crs_grade<k>, neuro_any, "
                             "neuro_grade<k>plus, neuro_grade<k>, icans_... (scale astct), tocilizumab_use, steroid_use, "
                             "crs/neuro_onset_median, crs/neuro_duration_median, fever_onset_median, car_... or "
                             "serum_... (kinetics)")
        if unit not in ("percent", "fraction", "day"):
            fail("unit", f"got {unit!r}; allowed: percent, fraction, day")
        if unit in ("percent", "fraction"):
            top = 100.0 if unit == "percent" else 1.0
            if not 0.0 <= value <= top:
                fail("value", f"got {value:g}; allowed: a rate between 0 and {top:g} {unit}")
            value = value / top
        elif value < 0:
            fail("value", f"got {value:g}; allowed: days >= 0")
        kind = endpoint.split("_")[0]
        if endpoint.startswith(("crs", "neuro")) and endpoint != "neuro_grade3plus_preceded_by_crs":
            if not scale:
                fail("scale", f"endpoint {endpoint} needs a grading scale")
            want = "crs" if kind == "crs" else "neuro"
            if SCALE_COLUMNS[scale][0] != want:
                fail("scale", f"scale {scale!r} grades {SCALE_COLUMNS[scale][0]}, not the {want} endpoint {endpoint}")
        out.append(Target(r["cohort"].strip(), scale, endpoint, n, value, unit, row))
    if cohort is not None:
        names = sorted({t.cohort for t in out})
        out = [t for t in out if t.cohort == cohort]
        if not out:
            raise DataError(f"{path}: no rows for cohort {cohort!r}; the cohorts are {', '.join(names)}")
    return out


# --- engine rates (exact grades) ---------------------------------------------------------


def _threshold(endpoint: str) -> tuple[int, bool]:
    """(grade k, exact) of a graded endpoint: grade >= k, or == k when exact."""
    if endpoint.endswith("_any"):
        return 1, False
    m = re.search(r"grade([1-5])(plus)?$", endpoint)
    return int(m.group(1)), m.group(2) is None


def engine_indicator(patients: pd.DataFrame, t: Target) -> np.ndarray:
    """Per-patient 0/1 of a rate endpoint from vpop's engine patient table."""
    if t.endpoint == "tocilizumab_use":
        return (patients["tocilizumab_doses"] > 0).to_numpy()
    if t.endpoint == "steroid_use":
        return patients["steroids_given"].to_numpy().astype(bool)
    col = SCALE_COLUMNS[t.scale][1]
    k, exact = _threshold(t.endpoint)
    g = patients[col].to_numpy()
    return (g == k) if exact else (g >= k)


def engine_median(patients: pd.DataFrame, t: Target) -> float:
    if t.scale not in SCALE_COLUMNS:  # fever onset and kinetics: vpop.trials.validation scores them
        return float("nan")
    kind, what = t.endpoint.split("_")[:2]
    col = SCALE_COLUMNS[t.scale][1]
    suffix = col.replace(f"{'crs' if kind == 'crs' else 'icans'}_max_grade", "")
    name = f"{'crs' if kind == 'crs' else 'icans'}_{'onset_day' if what == 'onset' else 'duration_days'}{suffix}"
    v = patients[name].dropna()
    return float(v.median()) if len(v) else float("nan")


def engine_rates(config, targets, n: int, seed: int, parameters: dict | None = None) -> pd.DataFrame:
    """Exact engine rates/medians of every target (full simulation with grading and management)."""
    from vpop.run.cohort import simulate

    cfg = config if parameters is None else replace(config, parameters={**config.parameters, **parameters})
    pts = simulate(cfg, n=n, seed=seed, record_rows=False).patients
    pts = pts[pts["solver_status"] != "nonfinite"]
    rows = []
    for t in targets:
        if t.is_rate and t.endpoint != "neuro_grade3plus_preceded_by_crs":
            rows.append((t.endpoint, t.scale, float(engine_indicator(pts, t).mean())))
        elif t.endpoint.endswith("_median"):
            rows.append((t.endpoint, t.scale, engine_median(pts, t)))
        else:
            rows.append((t.endpoint, t.scale, float("nan")))
    return pd.DataFrame(rows, columns=["endpoint", "scale", "simulated"]), pts


# --- the smoothed likelihood ---------------------------------------------------------------


def _surrogate_kind(endpoint: str) -> str:
    if endpoint == "crs_any":
        return "fever"
    if endpoint.startswith("crs") or endpoint == "tocilizumab_use":
        return "map_drop"
    return "neuro"


SURROGATES = ("fever", "map_drop", "neuro")
SURROGATE_FLOOR = {"fever": 1e-3, "map_drop": 1e-2, "neuro": 1e-4}


def virtual_parameters(config, n: int, seed: int, dtype=jnp.float64) -> dict:
    """Individual parameters of virtual patients 0..n-1 (fixed keys, as `vpop.run.cohort.simulate` draws them)."""
    from vpop.run.cohort import compiled_sampler, split_keys
    from vpop.population.sampler import PopulationSampler, patient_keys

    sampler = PopulationSampler(config.population, config.parameters)
    pop_keys, _ = split_keys(patient_keys(seed, np.arange(n)))
    _, p = compiled_sampler(sampler, dtype)(pop_keys)
    return {k: np.asarray(v, dtype=np.float64) for k, v in p.items()}


SURROGATE_SIGN = {"fever": "fever_rise_c", "map_drop": "map_drop_mmhg", "neuro": "neuro_dysfunction"}


def course_settings(config, days: float) -> EngineSettings:
    """The trial's course: the config's engine settings and scales, `days` long, no observation rows."""
    return replace(config.engine, days=days, record_rows=False)


def surrogates(p_batch: dict, free, log_factor, policy, settings: EngineSettings):
    """(n, 3) surrogate severities of virtual patients at population factors exp(log_factor).

    Every patient runs the one course (`vpop.fitting.model.run_course`, structure-of-arrays
    layout) with the trial's management `policy`.
    """
    from vpop.fitting.model import individual, run_course

    p = individual({k: jnp.asarray(v) for k, v in p_batch.items()}, free, log_factor)
    _, summary = run_course(p, None, settings, policy=policy)
    return jnp.stack([summary[f"worst_{SURROGATE_SIGN[k]}"] for k in SURROGATES], axis=-1)


def forward_mode(f):
    """`f(x)` for a small parameter vector x, differentiated by forward-mode sensitivities.

    One JVP per parameter (all virtual patients at once) gives the Jacobian; the
    vector-Jacobian product reverse-mode callers (SVI, NUTS) ask for is its contraction.
    Reverse mode through the course would store every solver step.
    """

    @jax.custom_vjp
    def g(x):
        return f(x)

    def g_fwd(x):
        out, jac = jax.vmap(lambda e: jax.jvp(f, (x,), (e,)), out_axes=(None, 0))(jnp.eye(x.shape[0], dtype=x.dtype))
        return out, jac

    def g_bwd(jac, ct):
        return (jnp.sum(jac * ct[None], axis=tuple(range(1, jac.ndim))),)

    g.defvjp(g_fwd, g_bwd)
    return g


@dataclass
class CohortLikelihood:
    """Binomial likelihood of cohort-table rates through smoothed surrogate thresholds."""

    targets: list  # the rate targets used
    thresholds: np.ndarray  # (T,) c of each target (surrogate units)
    surrogate_index: np.ndarray  # (T,) column of the surrogate
    exact: np.ndarray  # (T,) bool, grade == k (difference of two thresholds)
    upper_thresholds: np.ndarray  # (T,) c of grade k+1 for exact-grade targets
    p_virtual: dict
    free: tuple
    log_ref: np.ndarray
    policy: object  # the trial's PolicySettings
    settings: EngineSettings  # the trial's course
    tau: float = 0.1
    reference_rates: np.ndarray = field(default=None)  # engine rates at the reference
    weight: float = 1.0

    def _surrogates(self, log_factor):
        if getattr(self, "_jit_surrogates", None) is None:
            p, free, policy, settings = self.p_virtual, self.free, self.policy, self.settings
            self._jit_surrogates = jax.jit(forward_mode(lambda lf: surrogates(p, free, lf, policy, settings)))
        return self._jit_surrogates(log_factor)

    def rates(self, log_factor, tau=None, hard=False):
        tau = self.tau if tau is None else tau
        s = self._surrogates(jnp.asarray(log_factor))
        floors = jnp.asarray([SURROGATE_FLOOR[k] for k in SURROGATES])
        log_s = jnp.log(jnp.maximum(s, floors))[:, jnp.asarray(self.surrogate_index)]  # (n, T)

        def ind(c):
            z = log_s - jnp.log(jnp.asarray(c))[None, :]
            return (z >= 0).astype(log_s.dtype) if hard else jax.nn.sigmoid(z / tau)

        above = ind(self.thresholds)
        above_next = ind(self.upper_thresholds)
        per = jnp.where(jnp.asarray(self.exact)[None, :], above - above_next, above)
        return jnp.mean(per, axis=0)

    def loglik(self, log_factor):
        r = jnp.clip(self.rates(log_factor), 1e-4, 1.0 - 1e-4)
        k = jnp.asarray([t.count for t in self.targets], dtype=r.dtype)
        n = jnp.asarray([t.n for t in self.targets], dtype=r.dtype)
        return jnp.sum(k * jnp.log(r) + (n - k) * jnp.log1p(-r))

    def add_likelihood(self, log_theta, log_ref, free):
        log_factor = log_theta - jnp.asarray(self.log_ref)
        numpyro.factor("cohort_table", self.weight * self.loglik(log_factor))

    def smoothing_bias(self, log_factor=None, taus=(0.02, 0.05, 0.1, 0.2, 0.4)) -> pd.DataFrame:
        """Smoothed minus hard-threshold surrogate rate, per target and tau."""
        lf = jnp.zeros(len(self.free)) if log_factor is None else jnp.asarray(log_factor)
        hard = np.asarray(self.rates(lf, hard=True))
        rows = []
        for tau in taus:
            soft = np.asarray(self.rates(lf, tau=tau))
            for t, h, s in zip(self.targets, hard, soft):
                rows.append({"tau": tau, "endpoint": t.endpoint, "scale": t.scale, "hard": h, "smoothed": s, "bias": s - h})
        return pd.DataFrame(rows)


def build_cohort_likelihood(config, targets, free, n_virtual: int = 200, seed: int = 12345, tau: float = 0.1,
                            days: float = 21.0, settings=None, reference_patients: pd.DataFrame | None = None,
                            weight: float = 1.0) -> CohortLikelihood:
    """Set thresholds against the engine at the reference parameters; return the likelihood.

    Targets whose endpoint the surrogate does not cover (medians, steroid use)
    are left out of the likelihood (they are still compared by `engine_rates`).
    """
    from vpop.fitting.model import check_free
    from vpop.population.sampler import PopulationSampler

    settings = settings or course_settings(config, days)
    free = check_free(free)
    used = [t for t in targets if t.is_rate and LIKELIHOOD_ENDPOINTS.match(t.endpoint)]
    if not used:
        raise DataError("cohort table: no rate endpoint the likelihood can use (crs_any, crs_grade<k>plus, "
                        "neuro_any, neuro_grade<k>plus, tocilizumab_use)")
    if reference_patients is None:
        _, reference_patients = engine_rates(config, used, n_virtual, seed)
    pts = reference_patients
    p_virtual = virtual_parameters(config, n_virtual, seed)
    typical = PopulationSampler(config.population, config.parameters).typical
    log_ref = np.log([float(typical.get(f, 1.0)) for f in free])
    s = np.asarray(jax.jit(lambda lf: surrogates(p_virtual, free, lf, config.policy, settings))(jnp.zeros(len(free))))
    floors = np.asarray([SURROGATE_FLOOR[k] for k in SURROGATES])
    s = np.maximum(s, floors)
    ok = (pts["solver_status"] != "nonfinite").to_numpy()

    def threshold(col, rate):
        v = np.sort(s[ok, col])
        m = len(v)
        k = int(round(rate * m))  # k patients at or above c
        if k <= 0:
            return v[-1] * 1.05
        if k >= m:
            return v[0] * 0.95
        return float(np.sqrt(v[m - k - 1] * v[m - k]))  # geometric midpoint

    thr, up, idx, exact, ref = [], [], [], [], []
    for t in used:
        col = SURROGATES.index(_surrogate_kind(t.endpoint))
        idx.append(col)
        rate = float(engine_indicator(pts[ok], t).mean())
        ref.append(rate)
        if t.endpoint.startswith(("crs", "neuro")) and not t.endpoint.endswith("_any"):
            k, is_exact = _threshold(t.endpoint)
            col_name = SCALE_COLUMNS[t.scale][1]
            g = pts.loc[ok, col_name].to_numpy()
            thr.append(threshold(col, float((g >= k).mean())))
            up.append(threshold(col, float((g >= k + 1).mean())) if is_exact else 1e30)
            exact.append(is_exact)
        else:
            thr.append(threshold(col, rate))
            up.append(1e30)  # no upper threshold
            exact.append(False)
    return CohortLikelihood(used, np.asarray(thr), np.asarray(idx), np.asarray(exact), np.asarray(up), p_virtual,
                            free, log_ref, config.policy, settings, tau, np.asarray(ref), weight)

"""Selecting a virtual population to match observed distributions (Allen, Rieger & Musante 2016).

Allen RJ, Rieger TR, Musante CJ. Efficient generation and selection of
virtual populations in quantitative systems pharmacology models. CPT
Pharmacometrics Syst Pharmacol 2016;5(3):140-146 (doi:10.1002/psp4.12063).

1. *Plausible patients* (PPs): simulate N patients from the config's
   population (`vpop.run.cohort.simulate(..., record_rows=False)`), keep those with
   a finite solve and outputs inside optional plausibility bounds.
2. *Inclusion probability* of PP i with outputs y_i:
   p_i = rho_target(y_i) / rho_PP(y_i). With `density: marginal` (default)
   both densities are products over the targets of one-dimensional densities
   computed in each target's space (log for `lognormal` and log-scaled
   samples, linear otherwise): rho_target is the target's own density
   (normal/log-normal summaries) or a Gaussian KDE of its samples; rho_PP is a
   Gaussian KDE of the PP outputs (Silverman bandwidth, binned on a 2,048-point
   grid). Categorical targets (e.g. the CRS grade) contribute
   target probability / PP frequency of the patient's category. With
   `density: joint`, rho_PP of the continuous outputs is one multivariate
   Gaussian KDE on standardised outputs (Scott bandwidth), so that the ratio
   also corrects the PP correlations toward independence of the targeted
   outputs (the targets are marginals). PPs with a missing or out-of-space
   output (NaN; <= 0 on a log scale) get p_i = 0.
3. *Acceptance*: PP i is selected when U_i < sf * p_i. The scale factor sf
   is chosen to minimise the weighted sum of Kolmogorov-Smirnov statistics
   between the selected outputs and the targets, averaged over `repeats`
   independent draws of U (common random numbers across sf values): a grid
   over log10 sf from sf_max*10^-decades to sf_max*sf_max_factor
   (sf_max = 1/max p_i, Allen's bound), then a golden-section refinement
   around the best grid point. Of the draws at the chosen sf, the one with the
   smallest summed KS is kept (Allen keeps the best of 100).
   KS: one-sample against the target CDF for summaries, two-sample against
   the target samples, and for a categorical target the largest difference
   of the cumulative distributions over the ordered categories.
4. *Prevalence weighting* (alternative): weights w_i = p_i / sum p; the
   weighted KS statistics and the effective sample size
   ESS = (sum w)^2 / sum w^2 are reported.

Targets come from a YAML file (`load_targets`), validated strictly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from vpop.errors import ConfigError

TARGET_KINDS = ("lognormal", "normal", "samples", "categorical")
DENSITIES = ("marginal", "joint")
_SQRT2 = math.sqrt(2.0)


def _norm_cdf(z):
    from math import erf
    return 0.5 * (1.0 + np.vectorize(erf)(np.asarray(z, dtype=np.float64) / _SQRT2))


def _norm_pdf(z):
    return np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


# --- targets -------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A marginal target distribution of one output column.

    kind: `lognormal` (median, sd_log), `normal` (mean, sd), `samples`
    (observed values; `scale` log or linear) or `categorical` (probabilities
    of ordered categories, e.g. grades 0-5).
    """

    output: str
    kind: str
    median: float | None = None
    sd_log: float | None = None
    mean: float | None = None
    sd: float | None = None
    samples: np.ndarray | None = None
    probabilities: dict[int, float] | None = None
    scale: str = "linear"
    weight: float = 1.0

    @staticmethod
    def lognormal(output, median, sd_log, weight=1.0):
        return Target(output, "lognormal", median=float(median), sd_log=float(sd_log), scale="log", weight=weight)

    @staticmethod
    def normal(output, mean, sd, weight=1.0):
        return Target(output, "normal", mean=float(mean), sd=float(sd), scale="linear", weight=weight)

    @staticmethod
    def from_samples(output, samples, scale=None, weight=1.0):
        s = np.asarray(samples, dtype=np.float64)
        s = s[np.isfinite(s)]
        if scale is None:
            scale = "log" if (s > 0).all() else "linear"
        return Target(output, "samples", samples=np.sort(s), scale=scale, weight=weight)

    @staticmethod
    def categorical(output, probabilities, weight=1.0):
        probs = {int(k): float(v) for k, v in probabilities.items()}
        total = sum(probs.values())
        return Target(output, "categorical", probabilities={k: v / total for k, v in sorted(probs.items())},
                      weight=weight)

    # values -> the space densities are computed in (NaN where impossible)
    def transform(self, y):
        y = np.asarray(y, dtype=np.float64)
        if self.scale == "log":
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(y > 0, np.log(np.where(y > 0, y, 1.0)), np.nan)
        return y

    def density(self, y) -> np.ndarray:
        """Target density at y, in the transformed space (continuous targets)."""
        t = self.transform(y)
        if self.kind == "lognormal":
            return _norm_pdf((t - math.log(self.median)) / self.sd_log) / self.sd_log
        if self.kind == "normal":
            return _norm_pdf((t - self.mean) / self.sd) / self.sd
        if self.kind == "samples":
            return kde1d(self.transform(self.samples))(t)
        raise ValueError("categorical targets have no density")

    def cdf(self, y) -> np.ndarray:
        """Target CDF at y (right-continuous for samples)."""
        if self.kind == "lognormal":
            return _norm_cdf((self.transform(y) - math.log(self.median)) / self.sd_log)
        if self.kind == "normal":
            return _norm_cdf((np.asarray(y, np.float64) - self.mean) / self.sd)
        if self.kind == "samples":
            return np.searchsorted(self.samples, y, side="right") / len(self.samples)
        raise ValueError("categorical")

    def describe(self) -> str:
        if self.kind == "lognormal":
            return f"lognormal(median {self.median:g}, sd_log {self.sd_log:g})"
        if self.kind == "normal":
            return f"normal(mean {self.mean:g}, sd {self.sd:g})"
        if self.kind == "samples":
            return f"{len(self.samples)} samples ({self.scale} scale)"
        return "categorical(" + ", ".join(f"{k}: {v:.3f}" for k, v in self.probabilities.items()) + ")"


@dataclass(frozen=True)
class SelectionOptions:
    density: str = "marginal"
    repeats: int = 20
    seed: int = 0
    grid: int = 41
    decades: float = 4.0  # grid starts at sf_max * 10**-decades
    sf_max_factor: float = 1.0  # grid ends at sf_max * sf_max_factor (1 = Allen's bound)
    min_selected: int = 10  # draws selecting fewer patients score as the worst KS (1 per target)


@dataclass
class TargetSet:
    targets: list[Target]
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    options: SelectionOptions = field(default_factory=SelectionOptions)
    source: str = "<targets>"


# --- one-dimensional KDE ---------------------------------------------------------


def kde1d(x, weights=None, bandwidth=None, n_grid=2048):
    """Gaussian KDE of x (binned on a grid, linear interpolation): returns f(t)."""
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x)
    x = x[ok]
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)[ok]
    if len(x) == 0 or w.sum() <= 0:
        return lambda t: np.zeros_like(np.asarray(t, dtype=np.float64))
    w = w / w.sum()
    n_eff = 1.0 / np.sum(w * w)
    mean = np.sum(w * x)
    sd = math.sqrt(max(np.sum(w * (x - mean) ** 2), 0.0))
    q75, q25 = np.quantile(x, [0.75, 0.25]) if len(x) > 1 else (0.0, 0.0)
    spread = min(sd, (q75 - q25) / 1.349) if q75 > q25 else sd
    if bandwidth is None:
        bandwidth = 0.9 * (spread if spread > 0 else max(sd, 1e-3)) * n_eff ** (-0.2)  # Silverman
    bandwidth = max(bandwidth, 1e-6)
    lo, hi = x.min() - 4 * bandwidth, x.max() + 4 * bandwidth
    grid = np.linspace(lo, hi, n_grid)
    step = grid[1] - grid[0]
    # linear binning
    pos = (x - lo) / step
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, n_grid - 2)
    frac = pos - i0
    counts = np.bincount(i0, w * (1 - frac), minlength=n_grid) + np.bincount(i0 + 1, w * frac, minlength=n_grid)
    half = int(min(n_grid - 1, math.ceil(5 * bandwidth / step)))
    kernel = _norm_pdf(np.arange(-half, half + 1) * step / bandwidth) / bandwidth
    dens = np.convolve(counts, kernel, mode="same")

    def f(t):
        t = np.asarray(t, dtype=np.float64)
        out = np.interp(t, grid, dens, left=0.0, right=0.0)
        return np.where(np.isfinite(t), out, 0.0)

    return f


def _joint_kde(z, m_ref=5000, seed=0):
    """Multivariate Gaussian KDE (Scott bandwidth) of standardised rows z, evaluated at z."""
    n, d = z.shape
    rng = np.random.default_rng(seed)
    ref = z if n <= m_ref else z[rng.choice(n, m_ref, replace=False)]
    h = len(ref) ** (-1.0 / (d + 4))
    out = np.empty(n)
    norm = (2 * math.pi) ** (d / 2) * h**d * len(ref)
    for s in range(0, n, 2048):
        diff = (z[s:s + 2048, None, :] - ref[None, :, :]) / h
        out[s:s + 2048] = np.exp(-0.5 * np.sum(diff * diff, axis=-1)).sum(axis=1) / norm
    return out


# --- inclusion probabilities ------------------------------------------------------


def inclusion_probabilities(outputs: pd.DataFrame, targets: list[Target], density: str = "marginal") -> np.ndarray:
    """p_i = rho_target(y_i) / rho_PP(y_i) (unnormalised; 0 where an output is missing)."""
    n = len(outputs)
    p = np.ones(n)
    continuous = []
    for tg in targets:
        y = outputs[tg.output].to_numpy(dtype=np.float64)
        if tg.kind == "categorical":
            cats = np.where(np.isfinite(y), np.round(y), -1).astype(np.int64)
            ratio = np.zeros(n)
            for c, prob in tg.probabilities.items():
                m = cats == c
                if m.any():
                    ratio[m] = prob / (m.sum() / n)
            p *= ratio
        else:
            t = tg.transform(y)
            continuous.append((tg, t))
            ok = np.isfinite(t)
            p *= np.where(ok, tg.density(y), 0.0)
            if density == "marginal":
                pp = kde1d(t)(t)
                p *= np.where(ok & (pp > 0), 1.0 / np.where(pp > 0, pp, 1.0), 0.0)
    if density == "joint" and continuous:
        z = np.stack([t for _, t in continuous], axis=1)
        ok = np.isfinite(z).all(axis=1)
        zs = z[ok]
        zs = (zs - zs.mean(axis=0)) / np.where(zs.std(axis=0) > 0, zs.std(axis=0), 1.0)
        pp = np.zeros(n)
        pp[ok] = _joint_kde(zs)
        # back from standardised to transformed space: divide by the product of SDs
        sds = np.where(z[ok].std(axis=0) > 0, z[ok].std(axis=0), 1.0)
        pp = pp / np.prod(sds)
        p *= np.where(pp > 0, 1.0 / np.where(pp > 0, pp, 1.0), 0.0)
    p[~np.isfinite(p)] = 0.0
    return p


# --- KS statistics on weight matrices ---------------------------------------------


class _KS:
    """Weighted KS statistic of one target for many weight vectors at once (rows of W)."""

    def __init__(self, target: Target, y: np.ndarray):
        self.target = target
        y = np.asarray(y, dtype=np.float64)
        if target.kind == "categorical":
            cats = np.where(np.isfinite(y), np.round(y), -10**9).astype(np.int64)
            levels = sorted(set(target.probabilities) | set(np.unique(cats[cats > -10**9]).tolist()))
            self.onehot = np.stack([(cats == c) for c in levels], axis=1).astype(np.float64)  # N x K
            self.cum_target = np.cumsum([target.probabilities.get(c, 0.0) for c in levels])
            return
        self.valid = np.isfinite(target.transform(y))
        order = np.argsort(np.where(self.valid, y, np.inf), kind="stable")
        self.order = order
        ys = y[order]
        if target.kind == "samples":
            self.g = target.cdf(ys)  # right-continuous target ECDF at PP points
            # selected ECDF at target sample points: index of the last PP <= t
            finite = np.where(np.isfinite(ys), ys, np.inf)
            self.sample_idx = np.searchsorted(finite, target.samples, side="right") - 1
            self.g_samples = np.arange(1, len(target.samples) + 1) / len(target.samples)
        else:
            self.g = np.where(np.isfinite(ys), target.cdf(np.where(np.isfinite(ys), ys, 1.0)), 1.0)

    def __call__(self, W: np.ndarray) -> np.ndarray:
        """KS per row of W (R x N non-negative weights); rows with zero total give 1."""
        if self.target.kind == "categorical":
            counts = W @ self.onehot
            tot = counts.sum(axis=1, keepdims=True)
            cum = np.cumsum(counts, axis=1) / np.where(tot > 0, tot, 1.0)
            d = np.abs(cum - self.cum_target[None, :]).max(axis=1)
            return np.where(tot[:, 0] > 0, d, 1.0)
        Ws = (W * self.valid[None, :])[:, self.order]
        tot = Ws.sum(axis=1, keepdims=True)
        safe = np.where(tot > 0, tot, 1.0)
        c = np.cumsum(Ws, axis=1) / safe
        if self.target.kind == "samples":
            d = np.abs(c - self.g[None, :]).max(axis=1)
            idx = self.sample_idx
            fs = np.where(idx[None, :] >= 0, c[:, np.clip(idx, 0, None)], 0.0)
            d = np.maximum(d, np.abs(fs - self.g_samples[None, :]).max(axis=1))
        else:
            d_plus = (c - self.g[None, :]).max(axis=1)
            d_minus = (self.g[None, :] - (c - Ws / safe)).max(axis=1)
            d = np.maximum(d_plus, d_minus)
        return np.where(tot[:, 0] > 0, d, 1.0)


def ks_statistics(outputs: pd.DataFrame, targets: list[Target], weights=None) -> dict[str, float]:
    """KS of each target for one population (weights: None = all equal, or a vector)."""
    n = len(outputs)
    w = np.ones((1, n)) if weights is None else np.asarray(weights, dtype=np.float64)[None, :]
    return {tg.output: float(_KS(tg, outputs[tg.output].to_numpy(np.float64))(w)[0]) for tg in targets}


# --- selection ------------------------------------------------------------------


@dataclass
class SelectionResult:
    selected: np.ndarray  # bool per plausible patient
    p: np.ndarray  # inclusion probability ratio per plausible patient
    sf: float
    sf_max: float
    ks: dict[str, float]  # chosen draw
    ks_mean: dict[str, float]  # mean over the draws at sf
    ks_plausible: dict[str, float]  # all plausible patients (no selection)
    objective_grid: list[tuple[float, float, float]]  # (log10 sf, mean summed KS, mean selected)
    n_plausible: int
    repeats: int

    @property
    def n_selected(self) -> int:
        return int(self.selected.sum())

    @property
    def yield_fraction(self) -> float:
        return self.n_selected / self.n_plausible if self.n_plausible else 0.0

    def report(self) -> dict:
        return {
            "n_plausible": self.n_plausible,
            "n_selected": self.n_selected,
            "yield": round(self.yield_fraction, 6),
            "scale_factor": float(self.sf),
            "scale_factor_max": float(self.sf_max),
            "repeats": self.repeats,
            "ks_selected": {k: round(v, 6) for k, v in self.ks.items()},
            "ks_selected_mean_over_draws": {k: round(v, 6) for k, v in self.ks_mean.items()},
            "ks_plausible_unselected": {k: round(v, 6) for k, v in self.ks_plausible.items()},
            "ks_sum_selected": round(sum(self.ks.values()), 6),
            "ks_sum_plausible": round(sum(self.ks_plausible.values()), 6),
        }


@dataclass
class WeightingResult:
    weights: np.ndarray
    ess: float
    ks: dict[str, float]

    def report(self) -> dict:
        return {"effective_sample_size": round(float(self.ess), 3), "ks_weighted": {k: round(v, 6) for k, v in self.ks.items()}}


def _check_outputs(outputs: pd.DataFrame, targets: list[Target]):
    for tg in targets:
        if tg.output not in outputs.columns:
            raise ConfigError(f"targets: {tg.output}: not an output of the simulated patients")


def select(outputs: pd.DataFrame, targets: list[Target], options: SelectionOptions | None = None,
           p: np.ndarray | None = None) -> SelectionResult:
    """Allen-Rieger-Musante selection of rows of `outputs` (one row per plausible patient)."""
    opt = options or SelectionOptions()
    _check_outputs(outputs, targets)
    n = len(outputs)
    if p is None:
        p = inclusion_probabilities(outputs, targets, opt.density)
    if n == 0 or not (p > 0).any():
        raise ConfigError("targets: no plausible patient has a positive inclusion probability "
                          "(targets far outside the plausible outputs?)")
    ks_fns = [_KS(tg, outputs[tg.output].to_numpy(np.float64)) for tg in targets]
    wts = np.array([tg.weight for tg in targets])
    rng = np.random.default_rng(opt.seed)
    U = rng.random((opt.repeats, n))
    sf_max = 1.0 / p.max()

    def per_draw(log_sf):
        sel = (U < (10.0 ** log_sf) * p[None, :]).astype(np.float64)
        ks = np.stack([f(sel) for f in ks_fns], axis=1)  # R x K
        total = ks @ wts
        few = sel.sum(axis=1) < opt.min_selected
        total = np.where(few, wts.sum(), total)
        return sel, ks, total

    cache = {}

    def objective(log_sf):
        if log_sf not in cache:
            sel, _, total = per_draw(log_sf)
            cache[log_sf] = (float(total.mean()), float(sel.sum(axis=1).mean()))
        return cache[log_sf][0]

    hi = math.log10(sf_max * opt.sf_max_factor)
    lo = math.log10(sf_max) - opt.decades
    grid = np.linspace(lo, hi, opt.grid)
    values = [objective(float(g)) for g in grid]
    k = int(np.argmin(values))
    a, b = float(grid[max(k - 1, 0)]), float(grid[min(k + 1, len(grid) - 1)])
    # golden-section refinement in [a, b]
    gr = (math.sqrt(5) - 1) / 2
    c, d = b - gr * (b - a), a + gr * (b - a)
    for _ in range(12):
        if objective(c) < objective(d):
            b = d
        else:
            a = c
        c, d = b - gr * (b - a), a + gr * (b - a)
    best = min(cache, key=lambda s: cache[s][0])
    sel, ks, total = per_draw(best)
    j = int(np.argmin(total))
    selected = sel[j] > 0.5
    return SelectionResult(
        selected=selected,
        p=p,
        sf=10.0 ** best,
        sf_max=sf_max,
        ks={tg.output: float(ks[j, i]) for i, tg in enumerate(targets)},
        ks_mean={tg.output: float(ks[:, i].mean()) for i, tg in enumerate(targets)},
        ks_plausible=ks_statistics(outputs, targets),
        objective_grid=sorted((s, v[0], v[1]) for s, v in cache.items()),
        n_plausible=n,
        repeats=opt.repeats,
    )


def prevalence_weights(outputs: pd.DataFrame, targets: list[Target], options: SelectionOptions | None = None,
                       p: np.ndarray | None = None) -> WeightingResult:
    """Prevalence weighting: w_i = p_i / sum p, with weighted KS and effective sample size."""
    opt = options or SelectionOptions()
    _check_outputs(outputs, targets)
    if p is None:
        p = inclusion_probabilities(outputs, targets, opt.density)
    total = p.sum()
    if total <= 0:
        raise ConfigError("targets: no plausible patient has a positive inclusion probability")
    w = p / total
    ess = 1.0 / float(np.sum(w * w))
    return WeightingResult(w, ess, ks_statistics(outputs, targets, w))


def plausible_mask(outputs: pd.DataFrame, bounds: dict[str, tuple[float, float]]) -> np.ndarray:
    """Finite solve and every bounded output inside [low, high]."""
    ok = np.ones(len(outputs), dtype=bool)
    if "solver_status" in outputs.columns:
        ok &= (outputs["solver_status"] != "nonfinite").to_numpy()
    for name, (low, high) in bounds.items():
        if name not in outputs.columns:
            raise ConfigError(f"targets: plausible.{name}: not an output of the simulated patients")
        y = outputs[name].to_numpy(np.float64)
        ok &= np.isfinite(y) & (y >= low) & (y <= high)
    return ok


# --- targets file -----------------------------------------------------------------

_SPEC_KEYS = {
    "lognormal": ("median", "sd_log"),
    "normal": ("mean", "sd"),
    "samples": (),
    "categorical": ("probabilities",),
}
_ALLOWED = ("dist", "median", "sd_log", "mean", "sd", "samples", "samples_file", "column", "scale",
            "probabilities", "weight")
_OPTIONS = {f: SelectionOptions.__dataclass_fields__[f].default for f in SelectionOptions.__dataclass_fields__}


def load_targets(path: str | Path, allowed_outputs=None) -> TargetSet:
    """Read and validate a targets YAML file (ConfigError naming the file and the field)."""
    from vpop.run.config import load_yaml_file

    path = Path(path)
    data = load_yaml_file(path, "targets")
    return targets_from_dict(data, str(path), path.parent, allowed_outputs)


def targets_from_dict(data, src="<targets>", base: Path | None = None, allowed_outputs=None) -> TargetSet:
    def fail(where, msg):
        raise ConfigError(f"{src}: {where}: {msg}")

    def num(v, where, low=None, low_open=False):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if ok and low is not None:
            ok = v > low if low_open else v >= low
        if not ok:
            fail(where, f"got {v!r}; allowed: a finite number" + (f" {'>' if low_open else '>='} {low}" if low is not None else ""))
        return float(v)

    if not isinstance(data, dict):
        fail("top level", "expected a mapping with keys: targets, plausible, options")
    for key in data:
        if key not in ("targets", "plausible", "options"):
            fail(str(key), f"unknown key {key!r}; allowed keys here: targets, plausible, options")
    if not isinstance(data.get("targets"), dict) or not data["targets"]:
        fail("targets", "missing or empty; allowed: a mapping of output name to its target distribution")
    targets = []
    for output, spec in data["targets"].items():
        where = f"targets.{output}"
        if allowed_outputs is not None and output not in allowed_outputs:
            fail(where, f"unknown output; allowed: {', '.join(sorted(allowed_outputs))}")
        if not isinstance(spec, dict):
            fail(where, "expected a mapping with dist and its parameters")
        for key in spec:
            if key not in _ALLOWED:
                fail(f"{where}.{key}", f"unknown key {key!r}; allowed keys here: {', '.join(_ALLOWED)}")
        kind = spec.get("dist")
        if kind not in TARGET_KINDS:
            fail(f"{where}.dist", f"got {kind!r}; allowed: one of: {', '.join(TARGET_KINDS)}")
        for key in _SPEC_KEYS[kind]:
            if key not in spec:
                fail(f"{where}.{key}", f"missing; a {kind} target needs {', '.join(_SPEC_KEYS[kind])}")
        extra = [k for k in spec if k not in ("dist", "weight", *_SPEC_KEYS[kind])
                 and not (kind == "samples" and k in ("samples", "samples_file", "column", "scale"))]
        if extra:
            fail(f"{where}.{extra[0]}", f"not used by a {kind} target; allowed: dist, weight, "
                 + ", ".join(_SPEC_KEYS[kind] or ("samples or samples_file (+ column)", "scale")))
        weight = num(spec.get("weight", 1.0), f"{where}.weight", 0.0, low_open=True)
        if kind == "lognormal":
            targets.append(Target.lognormal(output, num(spec["median"], f"{where}.median", 0.0, True),
                                            num(spec["sd_log"], f"{where}.sd_log", 0.0, True), weight))
        elif kind == "normal":
            targets.append(Target.normal(output, num(spec["mean"], f"{where}.mean"),
                                         num(spec["sd"], f"{where}.sd", 0.0, True), weight))
        elif kind == "categorical":
            probs = spec["probabilities"]
            if not isinstance(probs, dict) or not probs:
                fail(f"{where}.probabilities", "expected a mapping of category (integer) to probability")
            clean = {}
            for c, v in probs.items():
                if isinstance(c, bool) or not isinstance(c, int):
                    fail(f"{where}.probabilities.{c}", "category must be an integer (e.g. a grade 0-5)")
                clean[c] = num(v, f"{where}.probabilities.{c}", 0.0)
            total = sum(clean.values())
            if abs(total - 1.0) > 0.01:
                fail(f"{where}.probabilities", f"sum to {total:.4f}; allowed: probabilities summing to 1 (within 0.01)")
            targets.append(Target.categorical(output, clean, weight))
        else:
            if ("samples" in spec) == ("samples_file" in spec):
                fail(where, "give exactly one of samples (a list of numbers) or samples_file (a CSV file)")
            if "samples" in spec:
                s = spec["samples"]
                if not isinstance(s, list) or len(s) < 2:
                    fail(f"{where}.samples", "expected a list of at least 2 numbers")
                vals = [num(v, f"{where}.samples[{i}]") for i, v in enumerate(s)]
            else:
                f = Path(spec["samples_file"])
                if not f.is_absolute() and base is not None:
                    f = base / f
                if not f.is_file():
                    fail(f"{where}.samples_file", f"{f} not found")
                col = spec.get("column", output)
                try:
                    df = pd.read_csv(f)
                except Exception as err:  # noqa: BLE001
                    fail(f"{where}.samples_file", f"{f} cannot be read as CSV: {err}")
                if col not in df.columns:
                    fail(f"{where}.column", f"{f} has no column {col!r}; columns: {', '.join(map(str, df.columns))}")
                vals = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
                bad = ~np.isfinite(vals)
                if bad.any():
                    fail(f"{where}.samples_file", f"{f} row {int(np.argmax(bad)) + 1}, column {col}: not a finite number")
            scale = spec.get("scale")
            if scale is not None and scale not in ("log", "linear"):
                fail(f"{where}.scale", f"got {scale!r}; allowed: log, linear")
            if scale == "log" and min(vals) <= 0:
                fail(f"{where}.scale", "log scale needs samples > 0")
            targets.append(Target.from_samples(output, vals, scale, weight))

    bounds = {}
    plaus = data.get("plausible", {}) or {}
    if not isinstance(plaus, dict):
        fail("plausible", "expected a mapping of output name to [low, high]")
    for output, b in plaus.items():
        where = f"plausible.{output}"
        if allowed_outputs is not None and output not in allowed_outputs:
            fail(where, f"unknown output; allowed: {', '.join(sorted(allowed_outputs))}")
        if not (isinstance(b, list) and len(b) == 2):
            fail(where, f"got {b!r}; allowed: [low, high]")
        lo, hi = num(b[0], where), num(b[1], where)
        if lo >= hi:
            fail(where, f"low ({lo}) must be below high ({hi})")
        bounds[output] = (lo, hi)

    opts = dict(_OPTIONS)
    given = data.get("options", {}) or {}
    if not isinstance(given, dict):
        fail("options", "expected a mapping")
    for key, v in given.items():
        where = f"options.{key}"
        if key not in _OPTIONS:
            fail(where, f"unknown key {key!r}; allowed keys here: {', '.join(_OPTIONS)}")
        if key == "density":
            if v not in DENSITIES:
                fail(where, f"got {v!r}; allowed: {', '.join(DENSITIES)}")
            opts[key] = v
        elif key in ("repeats", "seed", "grid", "min_selected"):
            low = {"repeats": 1, "seed": 0, "grid": 3, "min_selected": 1}[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                fail(where, f"got {v!r}; allowed: an integer >= {low}")
            opts[key] = v
        else:
            opts[key] = num(v, where, 0.0, low_open=True)
    if opts["sf_max_factor"] < 1.0:
        fail("options.sf_max_factor", f"got {opts['sf_max_factor']}; allowed: a number >= 1")
    return TargetSet(targets, bounds, SelectionOptions(**opts), src)


# --- end to end on the simulator ----------------------------------------------------


def patient_outputs(config) -> set[str]:
    """Columns of `simulate(config).patients` that a target or a plausibility bound may name."""
    from vpop.engine.course import NADIR_BIOMARKERS, PEAK_BIOMARKERS
    from vpop.population.sampler import COVARIATES

    out = set(COVARIATES) | {"easix", "m_easix", "car_dose_per_kg", "ld_intensity", "death_day",
                             "tocilizumab_doses", "tocilizumab_mg", "dexamethasone_mg", "methylprednisolone_mg",
                             "anakinra_mg", "peak_car_t_day", "auc_car_t_cells_per_ul_day", "organ_support_onset_day",
                             "solver_max_error"}
    out |= {f"peak_{n}" for n in PEAK_BIOMARKERS} | {f"nadir_{n}" for n in NADIR_BIOMARKERS}
    scales = [("crs", s) for s in config.engine.crs_scales] + [("icans", s) for s in config.engine.neuro_scales]
    for kind, scale in scales:
        suffix = "" if scale == "astct" else f"_{scale}"
        for what in ("max_grade", "onset_day", "resolution_day", "duration_days", "episodes"):
            out.add(f"{kind}_{what}{suffix}")
    for kind in ("crs", "icans"):
        out |= {f"{kind}_days_grade{g}" for g in range(1, 6)}
    return out



@dataclass
class PopulationSelection:
    """Plausible cohort, selection and weighting, and the selected patients as a patient table."""

    plausible: pd.DataFrame  # all simulated patients (outputs)
    plausible_ok: np.ndarray  # plausibility mask
    selection: SelectionResult
    weighting: WeightingResult
    table: pd.DataFrame  # selected patients: patient table usable as population.patients_file
    seed: int

    def report(self) -> dict:
        out = {"seed": self.seed, "n_simulated": int(len(self.plausible)),
               "n_plausible": int(self.plausible_ok.sum())}
        out["selection"] = self.selection.report()
        out["prevalence_weighting"] = self.weighting.report()
        return out


def select_population(config, targets: TargetSet, n_plausible: int, seed: int | None = None,
                      progress=None) -> PopulationSelection:
    """Simulate `n_plausible` patients from `config`, select to match `targets`."""
    from vpop.run.cohort import simulate

    seed = config.seed if seed is None else int(seed)
    result = simulate(config, n=n_plausible, seed=seed, record_rows=False, progress=progress)
    outputs = result.patients
    _check_outputs(outputs, targets.targets)
    ok = plausible_mask(outputs, targets.bounds)
    pp = outputs[ok].reset_index(drop=True)
    sel = select(pp, targets.targets, targets.options)
    wt = prevalence_weights(pp, targets.targets, targets.options, p=sel.p)
    table = selected_patient_table(config, pp[sel.selected], seed)
    return PopulationSelection(outputs, ok, sel, wt, table, seed)


def selected_patient_table(config, patients: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Patient table of chosen simulated patients: ids, covariates, eta_* (and param_* for information).

    Read back through `population.patients_file` with the same seed, each row is
    the same patient (same key from its patient_id, same random effects).
    """
    import jax

    from vpop.run.cohort import split_keys
    from vpop.population.sampler import COVARIATES, PopulationSampler, patient_keys

    ids = patients["patient_id"].to_numpy()
    out = pd.DataFrame({"patient_id": ids.astype(np.int64)})
    for name in COVARIATES:
        out[name] = patients[name].to_numpy(np.float64)
    out["sex"] = patients["sex"].to_numpy()
    out["car_dose_per_kg"] = patients["car_dose_per_kg"].to_numpy(np.float64)
    out["ld_intensity"] = patients["ld_intensity"].to_numpy(np.float64)
    if len(ids):
        sampler = PopulationSampler(config.population, config.parameters)
        pop_keys, _ = split_keys(patient_keys(seed, ids))
        eta = jax.jit(jax.vmap(sampler.patient_random_effects))(pop_keys)
        _, params = jax.jit(jax.vmap(sampler.individual))(pop_keys)
        for name, v in eta.items():
            out[f"eta_{name}"] = np.asarray(v, dtype=np.float64)
        for name in sampler.eta_names:
            out[f"param_{name}"] = np.asarray(params[name], dtype=np.float64)
    return out

"""One joint calibration across every trial: engine design, emulator, hierarchical posterior (issue 12 §3).

Every rate row of the published-cohort table is fitted at once, each under its own trial's management
policy and grading scale (`vpop.trials.validation.COHORTS`), on the full engine: the one course of
treatment, management included. Three steps make it tractable:

1. **Design.** For each product preset, `points` parameter sets (a scrambled Sobol design) in a box
   around the current values of the free typical values `FREE` and of the scales of the
   between-patient variability (`VARIABILITY`: each group's SDs multiplied by its scale). At each point the
   engine simulates the preset's trial arms on the same virtual patients (common random numbers) and
   counts the events of every row.
2. **Emulator.** Per row, a quadratic response surface in the five log inputs, fitted to the logit of the
   simulated rates by weighted least squares (binomial weights). Its leave-one-out error is reported:
   it is the part of the fit's uncertainty the posterior does not carry.
3. **Posterior.** A hierarchical model in NumPyro, sampled with NUTS: log typical values shared by all
   products (`mu`), effects of construct (CD28 vs 4-1BB), antigen/disease (BCMA in myeloma; the two
   coincide in the table, so one effect) and B-ALL on top (`delta`), a product-level deviation with its
   own scale (`tau`, `z`), the shared variability scales, and every published count as binomial data
   at the emulated rate. The posterior is confined to the design box (a steep penalty outside it),
   where the emulator was fitted, and to the parameter table's plausible ranges; draws on the edge
   of the box are reported.

Timing medians (CRS and neurologic-event onset and duration, fever onset) with a published IQR or range
enter the same posterior: per row a quadratic surface of the log simulated median, and the published
median as a normal observation on the log scale with the standard error of a sample median
(1.2533 sigma / sqrt(n), sigma from the IQR or range, `timing_targets`), the surface's leave-one-out
error and a shared, fitted model discrepancy (`timing_discrepancy`) added in quadrature.

`coverage` refits synthetic tables drawn from known parameters (the emulator as the simulator, the
table's own trial sizes) and reports how often the 90 % intervals cover the truth.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field, replace
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd

from vpop.fitting.cohort_tables import Target, read_cohort_table
from vpop.trials.validation import COHORTS, Runner, cohort_patients, median_values, published_spread, rate_count

FREE = ("fever_drive_ec50", "leak_rate", "neuro_injury_rate")
# Between-patient variability, free in groups: each group's sensitivities' SDs are multiplied by one scale.
# Susceptibility to neuronal dysfunction has its own scale: how often a neurologic event becomes severe
# (grade >= 3 among any grade: 0.17 in KarMMa, 0.44 in ZUMA-1, 0.57 in JULIET) is a property of its spread
# across patients, which the inflammatory sensitivities' common scale cannot carry.
VARIABILITY = (("iiv_scale", ("cytokine_sensitivity", "myeloid_sensitivity", "endothelial_sensitivity",
                              "bbb_sensitivity", "cns_sensitivity")),
               ("neuro_iiv_scale", ("neuro_sensitivity",)))
SENSITIVITIES = tuple(name for _, group in VARIABILITY for name in group)
# The priors stay where they are from wave to wave. A wave writes its posterior medians into the presets (the
# constants) and into axicel.yaml (the SDs), and the next wave's design is centred there; a prior centred there
# too would move with each wave's output and count the same rows again at every wave. So the constants' prior
# is centred on the parameter table's values and the SDs' on VARIABILITY_ANCHOR, both fixed, and both wide
# enough (SD 1 in log, a factor of e) that the rows decide.
# The SDs the sensitivities had before the first joint calibration (ZUMA-1 alone, 2026-11-23; docs/calibration.md).
VARIABILITY_ANCHOR = {"cytokine_sensitivity": 0.715, "myeloid_sensitivity": 0.55, "endothelial_sensitivity": 0.45,
                      "bbb_sensitivity": 0.4, "cns_sensitivity": 0.781, "neuro_sensitivity": 0.6}
VARIABILITY_PRIOR_SD = (1.0, 1.0)  # of each log scale
TYPICAL_PRIOR_SD = 1.0  # of each log constant's shared typical value (mu)
N_SCALES = len(VARIABILITY)
EFFECTS = ("CD28 costimulation", "BCMA / myeloma", "B-ALL")
N_INPUTS = len(FREE) + N_SCALES  # the free typical values and the variability scales, all in log


def product_effects(config) -> tuple[float, float, float]:
    """Which effects apply to a preset, from what it declares (construct, antigen, disease)."""
    return (float(str(config.product.get("costimulation", "")).upper() == "CD28"),
            float(str(config.product.get("target", "")).upper() == "BCMA"),
            float(str(config.disease).upper() == "B-ALL"))


def preset_centre(preset: str):
    """(config, log inputs now): the preset's log constants and log 1 for each variability scale,
    the centre of its design box."""
    from vpop.population.sampler import PopulationSampler
    from vpop.run.config import load_config

    cfg = load_config(preset)
    typical = PopulationSampler(cfg.population, cfg.parameters).typical
    return cfg, np.log([float(typical[k]) for k in FREE] + [1.0] * N_SCALES)


def calibration_targets(table) -> list[Target]:
    """Rate rows with a trial size and a preset (graded rates and drug use alike), then CONSTRAINTS."""
    rows = [t for t in read_cohort_table(table) if t.is_rate and t.n > 0 and t.cohort in COHORTS]
    return rows + constraint_targets()


# Physiology no row of the table sees, fitted as if it were one. Oxygen and vasopressors after CAR-T are CRS's,
# and CRS begins with fever (ASTCT 2019), so every patient who needs them has had CRS first. Patients who go
# into shock without a fever are graded as nothing, and left alone the fit used them: its B-ALL constants gave
# 88 % of patients oxygen or vasopressors, two thirds of them before any fever (docs/model.md). One pseudo-row
# per preset, on its main trial's run: all of PSEUDO_N patients with CRS first, as strong as Gust 2017's 28 of
# 28 for ICANS (the one count of the same kind of fact).
CONSTRAINT_ENDPOINT = "organ_support_preceded_by_crs"
CONSTRAINT_COHORTS = ("ZUMA-1", "JULIET", "TRANSCEND-NHL-001", "KarMMa", "CARTITUDE-1", "ELIANA")
PSEUDO_N = 28


def is_constraint(t: Target) -> bool:
    return t.endpoint == CONSTRAINT_ENDPOINT


def constraint_targets() -> list[Target]:
    """The constraint rows: negative row numbers, so they never collide with the table's."""
    return [Target(cohort, "astct", CONSTRAINT_ENDPOINT, PSEUDO_N, 1.0, "fraction", -(i + 1))
            for i, cohort in enumerate(CONSTRAINT_COHORTS)]


# Medians whose spread across patients the three constants move (CAR-T kinetics rows are set apart).
TIMING_ENDPOINTS = ("crs_onset_median", "crs_duration_median", "neuro_onset_median", "neuro_duration_median",
                    "fever_onset_median")
_SHORTEST_DAY = 0.25  # the assessment grid: a published "0" or a day-0 bound is read as the first assessment


class TimingTarget(NamedTuple):
    target: Target
    log_se: float  # standard error of the published median, on the log scale


def median_log_se(low: float, high: float, kind: str, n: int) -> float:
    """Standard error of a sample median of n on the log scale, 1.2533 sigma / sqrt(n), with sigma of log days
    from an IQR (width / 1.349) or a range (width / twice the expected largest normal score of n, Blom)."""
    from scipy.stats import norm

    width = np.log(max(high, _SHORTEST_DAY)) - np.log(max(low, _SHORTEST_DAY))
    scores = 2 * 0.6745 if kind == "IQR" else 2 * norm.ppf((n - 0.375) / (n + 0.25))
    return float(1.2533 * (width / scores) / np.sqrt(n))


# The rows whose count is the number of patients a timing median is taken over, most direct first: a
# median onset or duration is the median among the patients who had the event, not among all treated.
EVENT_ROWS = {"crs": ("crs_any", "crs_grade1plus", "crs_grade2plus"), "neuro": ("neuro_any", "neuro_grade1plus")}


def patients_with_event(t: Target, rows: list[Target]) -> int:
    """How many of the trial's patients a timing median `t` is taken over: the count of the same cohort's
    any-grade row of that event (or, failing it, of the widest grade row the table has: fewer patients,
    a larger standard error), and the trial size where the table has none."""
    kind = "neuro" if t.endpoint.startswith("neuro") else "crs"  # fever onset is CRS's onset
    counts = {r.endpoint: r.count for r in rows if r.cohort == t.cohort and r.is_rate and r.n > 0}
    for endpoint in EVENT_ROWS[kind]:
        if counts.get(endpoint, 0) > 0:
            return counts[endpoint]
    return t.n


def timing_targets(table) -> list[TimingTarget]:
    """Timing-median rows with a trial size, a preset and a published IQR or range; each median's standard
    error counts the patients who had the event (`patients_with_event`)."""
    notes = pd.read_csv(table, dtype=str, keep_default_na=False)["note"].tolist()
    rows = read_cohort_table(table)
    out = []
    for t in rows:
        spread = published_spread(notes[t.row - 1])
        if t.endpoint in TIMING_ENDPOINTS and t.n > 0 and t.cohort in COHORTS and spread is not None:
            out.append(TimingTarget(t, median_log_se(spread[0], spread[1], spread[2], patients_with_event(t, rows))))
    return out


def simulated_log_median(t: Target, runner: Runner) -> float:
    """log median of the row's per-patient days among its scored virtual patients (NaN if none had the event)."""
    values = median_values(t, cohort_patients(t, runner))
    values = values[np.isfinite(values)]
    return float(np.log(max(np.median(values), _SHORTEST_DAY))) if len(values) else float("nan")


def with_inputs(config, values: dict[str, float], scales):
    """A preset's config at one calibration point; `scales` per variability group (one number: all groups)."""
    pop = config.population
    scales = np.broadcast_to(np.asarray(scales, float), (N_SCALES,))
    factor = {name: float(scales[i]) for i, (_, group) in enumerate(VARIABILITY) for name in group}
    omega = {k: v * factor.get(k, 1.0) for k, v in pop.omega.items()}
    return replace(config, parameters={**config.parameters, **values}, population=replace(pop, omega=omega))


def calibration_draws(config) -> dict[str, np.ndarray]:
    """The joint calibration's draws of the constants of the trial `config` is modelled on (its `trial:`)."""
    from vpop.errors import ConfigError
    from vpop.fitting.posterior import calibration_posterior

    cohort = COHORTS.get(config.trial or "")
    if cohort is None:
        raise ConfigError(f"{config.source}: trial: {config.trial!r} is not a calibrated trial, so there is no "
                          "calibration posterior for it; allowed: a config whose trial is one of "
                          f"{', '.join(sorted(k for k, c in COHORTS.items() if c.subset == 'all'))}")
    return calibration_posterior(cohort.product)


# --- the emulator --------------------------------------------------------------------------------------


def quadratic_features(x):
    """1, x_i, x_i x_j (i <= j) of the last axis; works on NumPy and JAX arrays."""
    import jax.numpy as jnp

    xp = jnp if not isinstance(x, np.ndarray) else np
    n = x.shape[-1]
    cols = [xp.ones(x.shape[:-1])] + [x[..., i] for i in range(n)]
    cols += [x[..., i] * x[..., j] for i, j in itertools.combinations_with_replacement(range(n), 2)]
    return xp.stack(cols, axis=-1)


class Emulator(NamedTuple):
    """Per-row quadratic surfaces of logit(rate) in (log inputs - centre)."""

    coef: np.ndarray  # (rows, features)
    loo_rmse: np.ndarray  # (rows,) leave-one-out error of the logit


def fit_emulator(x: np.ndarray, events: np.ndarray, patients: np.ndarray, ridge: float = 1e-6) -> Emulator:
    """x (points, inputs); events and patients (points, rows)."""
    p = (events + 0.5) / (patients + 1.0)
    return _weighted_quadratic(x, np.log(p / (1 - p)), np.maximum(patients * p * (1 - p), 1e-3), ridge)


def fit_timing_emulator(x: np.ndarray, log_medians: np.ndarray, ridge: float = 1e-6) -> Emulator:
    """x (points, inputs); log_medians (points, rows): unweighted quadratic surfaces of the log median (a design
    point where no patient had the event is left out of that row's fit)."""
    return _weighted_quadratic(x, np.nan_to_num(log_medians), np.isfinite(log_medians).astype(float), ridge)


def _weighted_quadratic(x, y, w, ridge) -> Emulator:
    F = quadratic_features(x)
    coef, loo = [], []
    for r in range(y.shape[1]):
        W = w[:, r]
        A = F.T @ (F * W[:, None]) + ridge * np.eye(F.shape[1])
        b = np.linalg.solve(A, F.T @ (W * y[:, r]))
        hat = np.einsum("ij,jk,ik->i", F, np.linalg.inv(A), F) * W
        resid = (y[:, r] - F @ b) / np.maximum(1 - hat, 1e-3)
        coef.append(b)
        fitted = W > 0  # a left-out point (weight 0) has no residual to speak of
        loo.append(float(np.sqrt(np.mean(resid[fitted] ** 2))) if fitted.any() else float("nan"))
    return Emulator(np.asarray(coef).reshape(len(coef), F.shape[1]), np.asarray(loo))


# --- the design ----------------------------------------------------------------------------------------


@dataclass
class Design:
    """Everything the posterior needs, and nothing from the engine."""

    presets: list[str]
    centre: np.ndarray  # (presets, inputs) log centre of each preset's box
    half_width: np.ndarray  # (inputs,)
    effects: np.ndarray  # (presets, effects) 0/1
    targets: list[Target]
    row_preset: np.ndarray  # (rows,) index into presets
    x: dict[str, np.ndarray]  # preset -> (points, inputs) design in log - centre
    events: dict[str, np.ndarray]  # preset -> (points, rows of that preset)
    patients: dict[str, np.ndarray]
    seconds: float = 0.0
    timing: list[TimingTarget] = field(default_factory=list)
    timing_preset: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # (timing rows,)
    log_medians: dict[str, np.ndarray] = field(default_factory=dict)  # preset -> (points, its timing rows)
    # timing rows left out: their event had a median at too few design points to fit a surface
    timing_left_out: list[TimingTarget] = field(default_factory=list)
    # the sensitivities' SDs the design was run around (log scale 0 in x): where the fixed prior sits from here
    sds: dict[str, float] = field(default_factory=dict)

    def rows_of(self, g: int) -> np.ndarray:
        return np.flatnonzero(self.row_preset == g)

    def timing_emulator(self) -> Emulator:
        coef = np.zeros((len(self.timing), len(quadratic_features(np.zeros((1, N_INPUTS)))[0])))
        loo = np.zeros(len(self.timing))
        for g, preset in enumerate(self.presets):
            rows = np.flatnonzero(self.timing_preset == g)
            if len(rows):
                em = fit_timing_emulator(self.x[preset], self.log_medians[preset])
                coef[rows], loo[rows] = em.coef, em.loo_rmse
        return Emulator(coef, loo)

    def emulator(self) -> Emulator:
        coef = np.zeros((len(self.targets), len(quadratic_features(np.zeros((1, N_INPUTS)))[0])))
        loo = np.zeros(len(self.targets))
        for g, preset in enumerate(self.presets):
            rows = self.rows_of(g)
            em = fit_emulator(self.x[preset], self.events[preset], self.patients[preset])
            coef[rows], loo[rows] = em.coef, em.loo_rmse
        return Emulator(coef, loo)


def run_design(table, presets: list[str] | None = None, points: int = 32, n: int = 800, seed: int = 1,
               half_width=(0.6, 0.6, 0.6, 0.35, 0.6), progress: Callable[[str], None] | None = None) -> Design:
    """Simulate every preset's trial arms at `points` design points (Sobol in the box)."""
    from scipy.stats import qmc

    t0 = time.perf_counter()
    targets = calibration_targets(table)
    presets = presets or list(dict.fromkeys(COHORTS[t.cohort].product for t in targets))
    targets = [t for t in targets if COHORTS[t.cohort].product in presets]
    row_preset = np.asarray([presets.index(COHORTS[t.cohort].product) for t in targets])
    timing = [tt for tt in timing_targets(table) if COHORTS[tt.target.cohort].product in presets]
    timing_preset = np.asarray([presets.index(COHORTS[tt.target.cohort].product) for tt in timing], int)
    log_medians = {}
    hw = np.asarray(half_width, float)
    unit = qmc.Sobol(N_INPUTS, scramble=True, seed=seed).random(points)
    offsets = (2 * unit - 1) * hw
    centre, effects, xs, events, patients = [], [], {}, {}, {}
    for g, preset in enumerate(presets):
        cfg, c = preset_centre(preset)
        centre.append(c)
        effects.append(product_effects(cfg))
        rows = [targets[r] for r in np.flatnonzero(row_preset == g)]
        t_rows = [timing[r].target for r in np.flatnonzero(timing_preset == g)]
        ev = np.zeros((points, len(rows)))
        pa = np.zeros((points, len(rows)))
        lm = np.zeros((points, len(t_rows)))
        for i, off in enumerate(offsets):
            vals = dict(zip(FREE, np.exp(c[:3] + off[:3]).tolist()))
            scale = np.exp(off[3:])
            runner = Runner(n, seed, adjust=lambda product, config, v=vals, s=scale: with_inputs(config, v, s))
            for j, t in enumerate(rows):
                k, m = rate_count(t, cohort_patients(t, runner))
                ev[i, j], pa[i, j] = k, m
            for j, t in enumerate(t_rows):
                lm[i, j] = simulated_log_median(t, runner)
            if progress is not None:
                progress(f"{preset}: point {i + 1}/{points}")
        xs[preset], events[preset], patients[preset], log_medians[preset] = offsets.copy(), ev, pa, lm
    keep = rows_with_enough_medians(log_medians, timing_preset, presets)
    left_out = [tt for tt, k in zip(timing, keep) if not k]
    if left_out and progress is not None:
        progress(f"timing rows left out (a median at too few design points): {timing_labels(left_out)}")
    timing, timing_preset = [tt for tt, k in zip(timing, keep) if k], timing_preset[keep]
    return Design(presets, np.asarray(centre), hw, np.asarray(effects), targets, row_preset, xs, events, patients,
                  time.perf_counter() - t0, timing, timing_preset, log_medians, left_out, shipped_sds())


def shipped_sds() -> dict[str, float]:
    """The sensitivities' SDs every preset inherits from axicel.yaml."""
    from vpop.run.config import load_config

    omega = load_config("axicel").population.omega
    return {k: float(omega[k]) for k in SENSITIVITIES}


def scale_prior_centre(sds: dict[str, float]) -> np.ndarray:
    """(N_SCALES,) the log variability scale, relative to `sds`, that puts each group at VARIABILITY_ANCHOR
    (a group's SDs move together, so any of its sensitivities gives the same value; the mean is taken)."""
    return np.asarray([np.mean([np.log(VARIABILITY_ANCHOR[k] / sds[k]) for k in names]) for _, names in VARIABILITY])


def timing_labels(rows: list[TimingTarget]) -> str:
    """'cohort endpoint (row N)' for each timing row, for messages and the calibration page."""
    return "; ".join(f"{tt.target.cohort} {tt.target.endpoint} (row {tt.target.row})" for tt in rows)


def rows_with_enough_medians(log_medians: dict[str, np.ndarray], timing_preset: np.ndarray,
                             presets: list[str]) -> np.ndarray:
    """Which timing rows have a median at more design points than a surface has coefficients; drops the
    others' columns from `log_medians` in place."""
    n_feat = quadratic_features(np.zeros((1, N_INPUTS))).shape[1]
    keep = np.ones(len(timing_preset), bool)
    for g, preset in enumerate(presets):
        enough = np.isfinite(log_medians[preset]).sum(axis=0) > n_feat
        keep[timing_preset == g] = enough
        log_medians[preset] = log_medians[preset][:, enough]
    return keep


# --- the posterior -------------------------------------------------------------------------------------


class PosteriorData(NamedTuple):
    """Arrays of the hierarchical model (so one compiled sampler serves every data set)."""

    coef: object  # (rows, features)
    row_preset: object  # (rows,)
    centre: object  # (presets, inputs)
    half_width: object  # (inputs,)
    effects: object  # (presets, effects)
    n: object  # (rows,) trial sizes
    bounds: object  # (3, 2) log of the parameter table's plausible range of each constant
    # timing medians (none: a table of rates only)
    t_coef: object = None  # (timing rows, features)
    t_preset: object = None  # (timing rows,)
    t_sd: object = None  # (timing rows,) the published median's standard error and the emulator's, log scale
    # the fixed priors' centres (log): the constants' shared typical values (3,) and the variability scales
    # relative to the design's SDs (N_SCALES,); synthetic tables built around 0 keep the defaults
    mu_prior: object = 0.0
    scale_prior: object = 0.0


def posterior_data(design: Design, emulator: Emulator, timing_emulator: Emulator | None = None) -> PosteriorData:
    import jax.numpy as jnp

    from vpop.model.parameters import TABLE

    bounds = np.log([[TABLE[k].low, TABLE[k].high] for k in FREE])
    data = PosteriorData(jnp.asarray(emulator.coef), jnp.asarray(design.row_preset), jnp.asarray(design.centre),
                         jnp.asarray(design.half_width), jnp.asarray(design.effects),
                         jnp.asarray([t.n for t in design.targets], jnp.float64), jnp.asarray(bounds),
                         mu_prior=jnp.asarray(np.log([TABLE[k].value for k in FREE])),
                         scale_prior=jnp.asarray(scale_prior_centre(design.sds or shipped_sds())))
    if timing_emulator is None or not len(design.timing):
        return data
    se = np.asarray([tt.log_se for tt in design.timing])
    return data._replace(t_coef=jnp.asarray(timing_emulator.coef), t_preset=jnp.asarray(design.timing_preset),
                         t_sd=jnp.asarray(np.sqrt(se ** 2 + timing_emulator.loo_rmse ** 2)))


def published_log_medians(design: Design) -> np.ndarray:
    return np.log(np.maximum([tt.target.value for tt in design.timing], _SHORTEST_DAY))


def emulated_logits(data: PosteriorData, phi, log_scales):
    """logit rate of every row at the presets' log typical values phi (presets, 3) and the log variability
    scales (N_SCALES,), shared by every preset."""
    import jax.numpy as jnp

    x = jnp.concatenate([phi - data.centre[:, :3],
                         jnp.broadcast_to(log_scales, (phi.shape[0], N_SCALES)) - data.centre[:, 3:]], axis=-1)
    feats = quadratic_features(x[data.row_preset])
    return jnp.sum(feats * data.coef, axis=-1), x


def emulated_log_medians(data: PosteriorData, x):
    """log median of every timing row at the inputs x (presets, inputs) of `emulated_logits`."""
    import jax.numpy as jnp

    return jnp.sum(quadratic_features(x[data.t_preset]) * data.t_coef, axis=-1)


def model(data: PosteriorData, counts=None, log_medians=None):
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    n_presets = data.centre.shape[0]
    mu = numpyro.sample("mu", dist.Normal(jnp.broadcast_to(data.mu_prior, (len(FREE),)), TYPICAL_PRIOR_SD).to_event(1))
    delta = numpyro.sample("delta", dist.Normal(0.0, 0.5).expand([len(EFFECTS), len(FREE)]).to_event(2))
    tau = numpyro.sample("tau", dist.HalfNormal(0.3).expand([len(FREE)]).to_event(1))
    z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([n_presets, len(FREE)]).to_event(2))
    log_scale = numpyro.sample("log_iiv_scale", dist.Normal(jnp.broadcast_to(data.scale_prior, (N_SCALES,)),
                                                            jnp.asarray(VARIABILITY_PRIOR_SD)).to_event(1))
    phi = numpyro.deterministic("phi", mu + data.effects @ delta + tau * z)
    logits, x = emulated_logits(data, phi, log_scale)
    # the emulator holds inside the design box only
    outside = jnp.maximum(jnp.abs(x) - data.half_width, 0.0) / 0.02
    numpyro.factor("design_box", -0.5 * jnp.sum(outside ** 2))
    # and a constant stays inside the parameter table's plausible range: a rate the biology cannot reach is
    # not bought with an implausible constant (the row is reported as missed instead)
    implausible = (jnp.maximum(phi - data.bounds[:, 1], 0.0) + jnp.maximum(data.bounds[:, 0] - phi, 0.0)) / 0.02
    numpyro.factor("plausible_range", -0.5 * jnp.sum(implausible ** 2))
    numpyro.sample("k", dist.Binomial(total_count=data.n, logits=logits), obs=counts)
    if data.t_coef is not None:
        # how far the model's medians may sit from the published ones beyond sampling error: onset in the
        # model is bimodal (from the first-activation burst or from expansion), so a median can jump between
        # modes; without this term a few tight medians would outweigh every rate row
        discrepancy = numpyro.sample("timing_discrepancy", dist.HalfNormal(0.5))
        sd = jnp.sqrt(data.t_sd ** 2 + discrepancy ** 2)
        numpyro.sample("log_median", dist.Normal(emulated_log_medians(data, x), sd), obs=log_medians)


@dataclass
class JointPosterior:
    presets: list[str]
    phi: np.ndarray  # (draws, presets, 3) log typical values
    log_iiv_scale: np.ndarray  # (draws, N_SCALES): the log variability scales, in VARIABILITY's order
    delta: np.ndarray  # (draws, effects, 3)
    tau: np.ndarray  # (draws, 3)
    diagnostics: dict
    timing_discrepancy: np.ndarray | None = None  # (draws,) when timing medians were fitted

    def values(self, preset: str, q: float = 0.5) -> dict[str, float]:
        g = self.presets.index(preset)
        return {k: float(np.exp(np.quantile(self.phi[:, g, j], q))) for j, k in enumerate(FREE)}

    def iiv_scales(self, q: float = 0.5) -> dict[str, float]:
        """Each variability group's scale at quantile q, by group name."""
        return {name: float(np.exp(np.quantile(self.log_iiv_scale[:, i], q)))
                for i, (name, _) in enumerate(VARIABILITY)}


def sample_posterior(data: PosteriorData, counts, warmup: int = 500, draws: int = 500, chains: int = 2,
                     seed: int = 0, progress_bar: bool = False, log_medians=None) -> JointPosterior:
    import jax
    import numpyro
    from numpyro.infer import MCMC, NUTS

    kernel = NUTS(model, target_accept_prob=0.9, dense_mass=False)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=chains, chain_method="sequential",
                progress_bar=progress_bar, jit_model_args=True)
    medians = None if log_medians is None else jax.numpy.asarray(log_medians, jax.numpy.float64)
    mcmc.run(jax.random.PRNGKey(seed), data, counts=jax.numpy.asarray(counts, jax.numpy.float64),
             log_medians=medians)
    s = mcmc.get_samples()
    grouped = mcmc.get_samples(group_by_chain=True)
    summary = numpyro.diagnostics.summary({k: grouped[k] for k in ("phi", "log_iiv_scale", "mu", "delta", "tau")})
    rhat = max(float(np.nanmax(v["r_hat"])) for v in summary.values())
    ess = min(float(np.nanmin(v["n_eff"])) for v in summary.values())
    div = int(np.sum(mcmc.get_extra_fields()["diverging"]))
    return JointPosterior([], np.asarray(s["phi"]), np.asarray(s["log_iiv_scale"]), np.asarray(s["delta"]),
                          np.asarray(s["tau"]), {"max_rhat": rhat, "min_ess": ess, "divergences": div,
                                                 "draws": int(len(s["log_iiv_scale"]))},
                          np.asarray(s["timing_discrepancy"]) if "timing_discrepancy" in s else None)


def published_counts(design: Design) -> np.ndarray:
    return np.asarray([t.count for t in design.targets], float)


def fit(design: Design, **kw) -> tuple[JointPosterior, Emulator]:
    emulator = design.emulator()
    data = posterior_data(design, emulator, design.timing_emulator())
    medians = published_log_medians(design) if data.t_coef is not None else None
    post = sample_posterior(data, published_counts(design), log_medians=medians, **kw)
    post.presets = list(design.presets)
    return post, emulator


def timing_fit(post: JointPosterior, design: Design, emulator: Emulator, timing_emulator: Emulator) -> pd.DataFrame:
    """Each timing row: published median, its standard error (log), the surface's LOO error, and the median
    the emulator gives at the posterior median of the presets' constants and the scales."""
    import jax.numpy as jnp

    if not design.timing:
        return pd.DataFrame()
    em = timing_emulator
    data = posterior_data(design, emulator, em)
    _, x = emulated_logits(data, jnp.asarray(np.median(post.phi, axis=0)),
                           jnp.asarray(np.median(post.log_iiv_scale, axis=0)))
    fitted = np.exp(np.asarray(emulated_log_medians(data, x)))
    return pd.DataFrame({"cohort": [tt.target.cohort for tt in design.timing],
                         "endpoint": [tt.target.endpoint for tt in design.timing],
                         "n": [tt.target.n for tt in design.timing],
                         "published": [tt.target.value for tt in design.timing],
                         "log_se": [tt.log_se for tt in design.timing], "loo": em.loo_rmse, "fitted": fitted})


def at_edge(post: JointPosterior, design: Design, margin: float = 0.05) -> list[str]:
    """Inputs whose central 90 % reaches the edge of the design box (the emulator's range)."""
    out = []
    for g, preset in enumerate(design.presets):
        for j, k in enumerate(FREE):
            lo, hi = np.quantile(post.phi[:, g, j] - design.centre[g, j], [0.05, 0.95])
            if lo < -design.half_width[j] + margin or hi > design.half_width[j] - margin:
                out.append(f"{preset}.{k}")
    for i, (name, _) in enumerate(VARIABILITY):
        j = len(FREE) + i
        lo, hi = np.quantile(post.log_iiv_scale[:, i] - design.centre[0, j], [0.05, 0.95])
        if lo < -design.half_width[j] + margin or hi > design.half_width[j] - margin:
            out.append(name)
    return out


# --- coverage on synthetic tables ----------------------------------------------------------------------


def coverage(design: Design, emulator: Emulator, replicates: int = 50, level: float = 0.9, seed: int = 0,
             warmup: int = 300, draws: int = 300, shrink: float = 0.6,
             timing_emulator: Emulator | None = None) -> pd.DataFrame:
    """Refit synthetic tables drawn at known parameters; how often does each 90 % interval cover the truth?

    Truth: each preset's log typical values and the variability scale uniform in the inner `shrink` of
    the design box, the constants also inside the parameter table's plausible range, which the fitting
    model's prior holds them to (a truth outside the prior's support cannot be covered: the B-ALL fever
    constant sits near the top of its range, and half its box lay above it); counts Binomial(trial size,
    emulated rate; timing medians, when the design has them, normal at the emulated log median with their
    standard error). The fitting model is the one above, so this checks the inference (priors, hierarchy,
    sampler), with the emulator standing in for the engine.
    """
    import jax.numpy as jnp

    data = posterior_data(design, emulator, timing_emulator)
    rng = np.random.default_rng(seed)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    low = design.centre - design.half_width * shrink
    high = design.centre + design.half_width * shrink
    bounds = np.asarray(data.bounds)  # (3, 2): log of each constant's plausible range
    low[:, :3] = np.maximum(low[:, :3], bounds[:, 0])
    high[:, :3] = np.minimum(high[:, :3], bounds[:, 1])
    records = []
    for r in range(replicates):
        truth = rng.uniform(low, high)
        truth[:, 3:] = truth[0, 3:]  # variability scales shared by every preset
        logits, x = emulated_logits(data, jnp.asarray(truth[:, :3]), jnp.asarray(truth[0, 3:]))
        prob = 1 / (1 + np.exp(-np.asarray(logits)))
        counts = rng.binomial([t.n for t in design.targets], prob)
        medians = None
        if data.t_coef is not None:
            medians = np.asarray(emulated_log_medians(data, x)) + np.asarray(data.t_sd) * rng.normal(
                size=len(design.timing))
        post = sample_posterior(data, counts, warmup=warmup, draws=draws, chains=1, seed=r, log_medians=medians)
        for g, preset in enumerate(design.presets):
            for j, k in enumerate(FREE):
                a, b = np.quantile(post.phi[:, g, j], [lo_q, hi_q])
                records.append({"replicate": r, "preset": preset, "parameter": k, "truth": truth[g, j],
                                "low": a, "high": b, "covered": a <= truth[g, j] <= b,
                                "error": float(np.median(post.phi[:, g, j]) - truth[g, j])})
        for i, (name, _) in enumerate(VARIABILITY):
            j = len(FREE) + i
            a, b = np.quantile(post.log_iiv_scale[:, i], [lo_q, hi_q])
            records.append({"replicate": r, "preset": "all", "parameter": name, "truth": truth[0, j], "low": a,
                            "high": b, "covered": a <= truth[0, j] <= b,
                            "error": float(np.median(post.log_iiv_scale[:, i]) - truth[0, j])})
    return pd.DataFrame(records)

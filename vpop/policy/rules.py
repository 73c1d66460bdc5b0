"""Management rules: pure `(init, update)` pairs, one per drug, composed with `chain`.

A rule is a `Rule(init, update)`:

    state = rule.init(dtype, shape)                      # shape () for one patient, (N,) for a batch
    doses, state = rule.update(settings, state, assessment, doses)

`settings` is the policy's `PolicyArrays` (`vpop.policy.settings`), `assessment` an
`Assessment` (time, grades under the policy's trigger scales, hypotension, weight,
biomarker read-outs, tocilizumab doses so far) and `doses` the mapping drug dose name ->
mg decided so far at this assessment; a rule adds its own drug and passes the mapping on.
`chain(*rules)` is again a rule (as optax's `chain` composes gradient transformations),
so a user adds a drug by chaining one more rule (docs/extending.md). Rules are pure jnp
functions of arrays: changing the settings never recompiles the simulator.

The standard chain follows the ASCO 2021 guideline (Santomasso, J Clin Oncol 2021),
graded by ASTCT; docs/model.md §Management describes each rule and where the
simulation simplifies it (every dose is given at an assessment).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax.numpy as jnp

from vpop.policy.settings import (  # noqa: F401  (the settings' names, re-exported for the rules' users)
    BIOMARKER_TRIGGERS,
    CRS_TRIGGER_SCALES,
    ICANS_TRIGGER_SCALES,
    MAX_PROPHYLAXIS_DAYS,
    NEVER,
    OFF,
    PRESETS,
    PolicyArrays,
    PolicySettings,
    check_scales,
    with_overrides,
)

HOUR = 1.0 / 24.0
EPS = 1e-6  # days: comparisons of times that are multiples of the assessment interval
NEVER_GIVEN = -1e9  # time of a dose never given


def run_start(on, since, t):
    """When the current run of `on` began: `since` carried on, `t` if it starts now, NEVER_GIVEN once it ends."""
    return jnp.where(on, jnp.where(since < -1e8, t, since), NEVER_GIVEN)


class Assessment(NamedTuple):
    """What a rule sees at one assessment (after grading, before this assessment's doses)."""

    t: Any  # day
    crs_grade: Any  # under the policy's CRS trigger scale
    icans_grade: Any  # under the policy's ICANS trigger scale
    hypotension: Any  # bool
    weight_kg: Any
    biomarkers: dict  # read-out name -> value (`vpop.observation.readouts.biomarkers`)
    toci_doses: Any  # tocilizumab doses given before this assessment


class Rule(NamedTuple):
    init: Callable[..., Any]
    update: Callable[..., tuple[dict, Any]]


def chain(*rules: Rule) -> Rule:
    """One rule that runs `rules` in order; its state is the tuple of theirs."""

    def init(dtype=jnp.float32, shape=()):
        return tuple(r.init(dtype, shape) for r in rules)

    def update(settings, state, a: Assessment, doses):
        new = []
        for rule, s in zip(rules, state):
            doses, s = rule.update(settings, s, a, doses)
            new.append(s)
        return doses, tuple(new)

    return Rule(init, update)


def _window(a: Assessment, start, end):
    return (a.t >= start - EPS) & (a.t <= end + EPS)


def _biomarker_hit(settings, a: Assessment, drug: str):
    """Any biomarker at or over the drug's threshold (`<drug>_<marker>_trigger_...` fields)."""
    hit = jnp.zeros(jnp.shape(a.crs_grade), bool)
    for suffix, name in BIOMARKER_TRIGGERS.items():
        hit = hit | (a.biomarkers[name] >= getattr(settings, f"{drug}_{suffix}"))
    return hit


def _grades(a: Assessment):
    return a.crs_grade.astype(a.t.dtype), a.icans_grade.astype(a.t.dtype)


# --- tocilizumab ----------------------------------------------------------------------------


FEVER_MEMORY = 8  # febrile assessments remembered (a 24 h look-back at 6-hourly or slower assessments)


class TocilizumabState(NamedTuple):
    times: Any  # (4, *shape) the last four dose times
    count: Any
    crs_since: Any  # start of the current run of CRS grade >= 1
    febrile: Any = None  # (FEVER_MEMORY, *shape) times of the last febrile (CRS grade >= 1) assessments


def _toci_init(dtype=jnp.float32, shape=()):
    return TocilizumabState(jnp.full((4, *shape), NEVER_GIVEN, dtype), jnp.zeros(shape, dtype),
                            jnp.full(shape, NEVER_GIVEN, dtype), jnp.full((FEVER_MEMORY, *shape), NEVER_GIVEN, dtype))


def _toci_update(s: PolicyArrays, state: TocilizumabState, a: Assessment, doses):
    """Grade-, persistence-, fever-count- or biomarker-triggered, or scheduled on a prophylaxis day, within the
    label's dose limits (8 mg/kg, max 800 mg)."""
    crs, _ = _grades(a)
    t = a.t
    crs_since = run_start(crs >= 1.0, state.crs_since, t)
    in_24h = jnp.sum(state.times > t - 24.0 * HOUR + EPS, axis=0)
    since_last = t - jnp.max(state.times, axis=0)
    persistent_g1 = (crs >= 1.0) & (t - crs_since >= s.toci_grade1_after_days - EPS)
    # fever counted over 24 h, not in a row: an antipyretic masks it at the next assessment
    now_ = jnp.broadcast_to(t, state.febrile.shape[1:])[None]
    febrile = jnp.where(crs >= 1.0, jnp.concatenate([state.febrile[1:], now_]), state.febrile)
    fevers_24h = jnp.sum(febrile > t - 24.0 * HOUR + EPS, axis=0)
    persistent_fever = fevers_24h >= s.toci_fever_assessments_in_24h
    prophylaxis = jnp.abs(t - s.toci_prophylaxis_day) < 1e-3  # a scheduled dose, outside the trigger window
    want = prophylaxis | (_window(a, s.toci_from_day, s.toci_until_day) & (
        (crs >= s.toci_trigger_grade) | persistent_g1 | persistent_fever | _biomarker_hit(s, a, "toci")))
    give = (want & (since_last >= s.toci_min_interval_hours * HOUR - EPS) & (in_24h < s.toci_max_per_24h)
            & (state.count < s.toci_max_total))
    per_kg = jnp.where(a.weight_kg < 30.0, s.toci_mg_per_kg_under_30kg, s.toci_mg_per_kg)
    mg = jnp.where(give, jnp.minimum(per_kg * a.weight_kg, s.toci_max_dose_mg), 0.0)
    now = jnp.broadcast_to(t, state.times.shape[1:])[None]
    times = jnp.where(give, jnp.concatenate([state.times[1:], now]), state.times)
    return {**doses, "toci_mg": mg}, TocilizumabState(times, state.count + give, crs_since, febrile)


tocilizumab = Rule(_toci_init, _toci_update)


# --- corticosteroids ------------------------------------------------------------------------


def _last_dose_init(dtype=jnp.float32, shape=()):
    return jnp.full(shape, NEVER_GIVEN, dtype)


def wants_methylprednisolone(s: PolicyArrays, a: Assessment):
    """Grade 4 CRS or ICANS inside the steroid window: high-dose methylprednisolone, not dexamethasone."""
    crs, icans = _grades(a)
    return _window(a, s.steroid_from_day, s.steroid_until_day) & (
        (crs >= s.mp_crs_trigger_grade) | (icans >= s.mp_icans_trigger_grade))


def _mp_update(s: PolicyArrays, last, a: Assessment, doses):
    give = wants_methylprednisolone(s, a) & (a.t - last >= s.mp_interval_hours * HOUR - EPS)
    return {**doses, "mp_mg": jnp.where(give, s.mp_dose_mg, 0.0)}, jnp.where(give, a.t, last)


methylprednisolone = Rule(_last_dose_init, _mp_update)


class DexamethasoneState(NamedTuple):
    last: Any
    count: Any
    crs_since: Any = None  # start of the current run of CRS grade >= 1
    icans_since: Any = None  # start of the current run of ICANS at or above the steroid trigger grade


def _dex_init(dtype=jnp.float32, shape=()):
    return DexamethasoneState(jnp.full(shape, NEVER_GIVEN, dtype), jnp.zeros(shape, dtype),
                              jnp.full(shape, NEVER_GIVEN, dtype), jnp.full(shape, NEVER_GIVEN, dtype))


def _dex_update(s: PolicyArrays, state: DexamethasoneState, a: Assessment, doses):
    """Dexamethasone for CRS >= 3, ICANS >= 2 (lasting `dex_icans_after_hours`, or one grade higher at once),
    CRS at `dex_refractory_grade` (2) with hypotension after tocilizumab, CRS grade 1 lasting `dex_grade1_after_days`, or a biomarker."""
    crs, icans = _grades(a)
    refractory = (crs >= s.dex_refractory_grade) & a.hypotension & (a.toci_doses >= s.dex_crs2_after_toci_doses)
    crs_since = run_start(crs >= 1.0, state.crs_since, a.t)
    persistent_g1 = (crs >= 1.0) & (a.t - crs_since >= s.dex_grade1_after_days - EPS)
    at_trigger = icans >= s.dex_icans_trigger_grade
    icans_since = run_start(at_trigger, state.icans_since, a.t)
    neuro = at_trigger & ((a.t - icans_since >= s.dex_icans_after_hours * HOUR - EPS)
                          | (icans >= s.dex_icans_trigger_grade + 1.0))
    want = _window(a, s.steroid_from_day, s.steroid_until_day) & (
        (crs >= s.dex_crs_trigger_grade) | neuro | refractory | persistent_g1
        | _biomarker_hit(s, a, "dex"))
    give = (want & ~wants_methylprednisolone(s, a) & (a.t - state.last >= s.dex_interval_hours * HOUR - EPS)
            & (state.count < s.dex_max_doses))
    mg = jnp.where(give, s.dex_dose_mg, 0.0)
    return {**doses, "dex_iv_mg": mg}, DexamethasoneState(jnp.where(give, a.t, state.last), state.count + give,
                                                          crs_since, icans_since)


dexamethasone = Rule(_dex_init, _dex_update)


def _no_state(dtype=jnp.float32, shape=()):
    return ()


def _prophylactic_dex_update(s: PolicyArrays, state, a: Assessment, doses):
    """Oral dexamethasone on the listed days (ZUMA-1 cohort 6: days 0, 1, 2)."""
    on_day = jnp.any(jnp.abs(s.prophylactic_dex_days - a.t) < 1e-3)
    mg = jnp.where(on_day, s.prophylactic_dex_mg, 0.0) * jnp.ones(jnp.shape(a.crs_grade), a.t.dtype)
    return {**doses, "dex_oral_mg": mg}, state


prophylactic_dexamethasone = Rule(_no_state, _prophylactic_dex_update)


# --- anakinra -------------------------------------------------------------------------------


def _anakinra_update(s: PolicyArrays, last, a: Assessment, doses):
    """Prophylaxis up to a day, or a CRS / ICANS grade trigger; one dose per interval."""
    crs, icans = _grades(a)
    want = ((a.t <= s.anakinra_prophylaxis_until_day + EPS) | (icans >= s.anakinra_icans_trigger_grade)
            | (crs >= s.anakinra_crs_trigger_grade))
    give = want & (a.t - last >= s.anakinra_interval_hours * HOUR - EPS)
    return {**doses, "anakinra_mg": jnp.where(give, s.anakinra_dose_mg, 0.0)}, jnp.where(give, a.t, last)


anakinra = Rule(_last_dose_init, _anakinra_update)


# The standard management: every drug's rule, methylprednisolone before dexamethasone.
STANDARD = chain(tocilizumab, methylprednisolone, dexamethasone, prophylactic_dexamethasone, anakinra)

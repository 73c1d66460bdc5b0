"""A modeller adds a drug through the public API alone: siltuximab, an anti-IL-6 antibody.

Nothing in the package is edited: the model is extended by name (a state, its parameters,
a drug and one equation term), the standard management is chained with one more rule, and
the engine runs the extended course. The checks are oracles: the antibody's PK follows its
closed form, and its effect on free IL-6 and on CRS has the direction its mechanism implies.
"""

from __future__ import annotations

import math
from dataclasses import replace

import jax.numpy as jnp
import numpy as np
import pytest

from vpop.engine.course import EngineSettings, compiled_batch
from vpop.model.drugs import Drug
from vpop.model.spec import BASE
from vpop.model.states import State
from vpop.policy import rules

# Siltuximab (Sylvant label): 11 mg/kg IV, central volume ~4.5 L, clearance ~0.23 L/day (t1/2 ~ 21 days).
SILTUXIMAB = {"siltuximab_clearance_l_day": 0.23, "siltuximab_volume_l": 4.5,
              # neutralisation: extra first-order loss of free IL-6 per ug/mL of antibody (binding ~ instant)
              "siltuximab_il6_neutralisation": 50.0}


def siltuximab_terms(t, s, p):
    """The antibody's own elimination, and the loss of free IL-6 it binds."""
    conc_ug_ml = s["siltuximab"] / p["siltuximab_volume_l"]  # mg/L = ug/mL
    return {
        "siltuximab": (0.0, p["siltuximab_clearance_l_day"] / p["siltuximab_volume_l"]),
        "il6": (0.0, p["siltuximab_il6_neutralisation"] * conc_ug_ml),
    }


MODEL = BASE.extend(
    states=[State("siltuximab", "mg", "siltuximab in the body", "drugs")],
    parameters=SILTUXIMAB,
    drugs=[Drug("siltuximab_mg", "siltuximab", None, "siltuximab, intravenous")],
    terms=[siltuximab_terms],
)


def give_at_crs2_once(mg_per_kg: float):
    """A management rule: one dose of siltuximab at the first CRS grade >= 2."""

    def init(dtype=jnp.float32, shape=()):
        return jnp.zeros(shape, bool)  # given already?

    def update(settings, given, a: rules.Assessment, doses):
        give = (a.crs_grade >= 2) & ~given
        return {**doses, "siltuximab_mg": jnp.where(give, mg_per_kg * a.weight_kg, 0.0)}, given | give

    return rules.Rule(init, update)


def give_on_day0(mg: float):
    def update(settings, state, a, doses):
        return {**doses, "siltuximab_mg": jnp.where(a.t < 1e-6, mg, 0.0) * jnp.ones_like(a.weight_kg)}, state

    return rules.Rule(lambda dtype=jnp.float32, shape=(): (), update)


@pytest.fixture(scope="module")
def patients(default_config):
    from vpop.run.cohort import compiled_sampler, split_keys
    from vpop.population.sampler import PopulationSampler, patient_keys

    sampler = PopulationSampler(default_config.population, default_config.parameters)
    pop_keys, event_keys = split_keys(patient_keys(3, np.arange(64)))
    _, p = compiled_sampler(sampler, jnp.float64)(pop_keys)
    return p, event_keys


def run(default_config, p, keys, model, rule, days=14.0, policy="none"):
    from vpop.policy.settings import PRESETS

    settings = replace(default_config.engine, days=days, record_rows=True, model=model, rule=rule)
    rows, summary = compiled_batch(settings)(p, keys, PRESETS[policy].to_arrays(jnp.float64))
    return rows, summary


def test_an_extension_naming_an_unknown_state_or_an_undriven_state_is_refused(patients):
    with pytest.raises(ValueError, match="not declared"):
        BASE.extend(drugs=[Drug("x_mg", "nowhere")])
    with pytest.raises(ValueError, match="already declared"):
        BASE.extend(states=[State("il6", "pg/mL", "a second IL-6", "cytokines")])
    p, _ = patients
    lonely = BASE.extend(states=[State("lonely", "mg", "no equation drives it", "drugs")])
    with pytest.raises(ValueError, match="no equation term: lonely"):
        lonely.production_loss(0.0, lonely.initial_state(p), p)
    stray = BASE.extend(terms=[lambda t, s, p: {"nowhere": (0.0, 1.0)}])
    with pytest.raises(KeyError, match="nowhere"):
        stray.production_loss(0.0, stray.initial_state(p), p)


def test_the_added_drug_follows_its_closed_form_pk(default_config, patients):
    """770 mg (11 mg/kg at 70 kg) decays as 770 exp(-CL/V t) in the extended model; the engine gives the dose."""
    from vpop.observation import readouts
    from vpop.solver.etdrk import integrate_interval

    p, keys = patients
    _, summary = run(default_config, p, keys, MODEL, rules.chain(rules.STANDARD, give_on_day0(770.0)), days=2.0)
    np.testing.assert_allclose(np.asarray(summary["dose_siltuximab_mg"]), 770.0)
    p1 = MODEL.with_defaults({**p, "car_dose_per_kg": jnp.zeros_like(p["car_dose_per_kg"])})
    y = MODEL.give(MODEL.initial_state(p1), {"siltuximab_mg": jnp.full(p["tumor_burden"].shape, 770.0)}, p1)
    y7, _, _ = integrate_interval(MODEL.production_loss, readouts.interval_signs, 0.0, 7.0, y, p1, 168, 0.1, 0.05, 168)
    k = SILTUXIMAB["siltuximab_clearance_l_day"] / SILTUXIMAB["siltuximab_volume_l"]
    np.testing.assert_allclose(np.asarray(y7[MODEL.index("siltuximab")]), 770.0 * math.exp(-k * 7.0), rtol=1e-6)


@pytest.mark.slow
def test_the_added_drug_lowers_free_il6_and_crs_on_the_same_patients(default_config, patients):
    p, keys = patients
    rows0, s0 = run(default_config, p, keys, MODEL, rules.STANDARD)
    rows1, s1 = run(default_config, p, keys, MODEL, rules.chain(rules.STANDARD, give_at_crs2_once(11.0)))
    treated = np.asarray(s1["dose_siltuximab_mg"]) > 0
    assert treated.sum() >= 5, "the rule must fire for some patients"
    assert np.all(np.asarray(s0["dose_siltuximab_mg"]) == 0)
    il6_0 = np.asarray(rows0["il6_pg_ml"])[treated]
    il6_1 = np.asarray(rows1["il6_pg_ml"])[treated]
    # after the dose, free IL-6 is lower than on the same patient's untreated course (paired, every patient)
    first = np.argmax(np.asarray(rows1["crs_grade_astct"])[treated] >= 2, axis=1)
    later = np.arange(il6_0.shape[1])[None, :] > first[:, None] + 1
    ratio = np.where(later, il6_1 / il6_0, np.nan)
    assert np.nanmax(ratio) <= 1.0 + 1e-6 and np.nanmedian(ratio) < 0.5
    # untreated patients are untouched: the extension changes nothing until its drug is given
    np.testing.assert_allclose(np.asarray(rows1["il6_pg_ml"])[~treated], np.asarray(rows0["il6_pg_ml"])[~treated])


@pytest.mark.slow
def test_the_base_model_runs_unchanged_when_not_extended(default_config, patients):
    p, keys = patients
    _, a = run(default_config, p, keys, BASE, rules.STANDARD, days=5.0)
    _, b = run(default_config, p, keys, MODEL, rules.STANDARD, days=5.0)
    np.testing.assert_allclose(np.asarray(a["peak_il6_pg_ml"]), np.asarray(b["peak_il6_pg_ml"]), rtol=1e-12)

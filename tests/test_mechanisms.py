"""Mechanisms behind the counterfactuals (issue 12), each checked where it acts.

- Engraftment: fewer than one infused CAR-T cell cannot expand, so it causes no CRS and no ICANS;
  at clinical doses the engraftment factor is exactly 1 (and finite at the carrying capacity).
- Loop ignition: without CAR-T cells no patient's self-amplifying loop ignites, however sensitive.
- Masked fever: after a fever-masking drug, hypotension alone makes the policy treat CRS.
- Physical range: a patient whose read-outs leave their physical range is flagged and excluded.
"""

from __future__ import annotations

from dataclasses import replace

import jax.numpy as jnp
import numpy as np
import pytest

import vpop
from vpop.model import equations
from vpop.policy.settings import PRESETS, with_overrides


def test_less_than_one_cell_per_patient_gives_no_crs_and_no_icans(default_config):
    cfg = replace(default_config, population=replace(default_config.population, dose_per_kg=1e-3))  # ~0.07 cells
    pts = vpop.simulate(cfg, n=400, seed=5, record_rows=False).patients
    assert (pts["crs_max_grade"] == 0).all() and (pts["icans_max_grade"] == 0).all()
    assert pts["peak_car_t_cells_per_ul"].max() <= 2e-9  # no expansion above the infused level


def test_engraftment_factor_is_one_at_clinical_levels_and_finite_at_capacity(default_config):
    from vpop.population.sampler import PopulationSampler, patient_keys
    from vpop.run.cohort import compiled_sampler, split_keys

    keys, _ = split_keys(patient_keys(0, np.arange(4)))
    _, p = compiled_sampler(PopulationSampler(default_config.population, default_config.parameters), jnp.float32)(keys)
    y = equations.initial_state(p)
    e = equations.IDX["car_effector"]
    for level in (y[e], jnp.full_like(y[e], 1500.0), jnp.full_like(y[e], 5e4)):  # infused, capacity, beyond
        P, D = equations.production_loss(0.0, y.at[e].set(level), p)
        assert np.all(np.isfinite(np.asarray(P))) and np.all(np.isfinite(np.asarray(D)))
    # at the infused level the factor is 1: removing the threshold changes nothing in float32
    P1, _ = equations.production_loss(0.0, y, p)
    P0, _ = equations.production_loss(0.0, y, {**p, "car_engraftment_cells": jnp.zeros_like(p["weight_kg"])})
    np.testing.assert_array_equal(np.asarray(P1[e]), np.asarray(P0[e]))


@pytest.mark.slow
def test_no_patient_ignites_without_car_t_cells(default_config):
    """2,000 sampled patients, the most sensitive included: no CRS, no ICANS, IL-6 and CRP at baseline."""
    cfg = replace(default_config, population=replace(default_config.population, dose_per_kg=1e-12))
    pts = vpop.simulate(cfg, n=2000, seed=9, record_rows=False).patients
    assert (pts["crs_max_grade"] == 0).all() and (pts["icans_max_grade"] == 0).all()
    np.testing.assert_allclose(pts["peak_ferritin_ng_ml"], pts["ferritin0"], rtol=1e-5)


def test_masked_fever_lets_the_policy_treat_hypotension():
    """Hypotension needing a vasopressor without fever: ASTCT grade 0, but after a fever-masking drug the
    policy acts on it as grade 3; with `act_on_masked_fever` off, or before any drug, it does not."""
    from vpop.engine.course import policy_crs_grade

    row = {"temp_c": jnp.asarray([37.2]), "hypotension": jnp.asarray([True]), "vasopressors": jnp.asarray([1]),
           "vasopressin": jnp.asarray([False]), "o2_device": jnp.asarray([0]), "o2_flow_lpm": jnp.asarray([0.0]),
           "death_cause": jnp.asarray([0])}
    grades = {"crs_grade_astct": jnp.asarray([0], jnp.int8)}
    on = PRESETS["asco2021"].to_arrays()
    off = with_overrides(PRESETS["asco2021"], {"act_on_masked_fever": False}).to_arrays()
    assert int(policy_crs_grade(grades, row, jnp.asarray([True]), on)[0]) == 3
    assert int(policy_crs_grade(grades, row, jnp.asarray([False]), on)[0]) == 0
    assert int(policy_crs_grade(grades, row, jnp.asarray([True]), off)[0]) == 0


def test_a_blow_up_is_flagged_out_of_range_and_excluded(default_config):
    from vpop.engine.course import PHYSICAL_RANGE

    assert PHYSICAL_RANGE["map_mmhg"][0] == 0.0
    cfg = replace(default_config, population=replace(default_config.population, dose_per_kg=1e13))
    res = vpop.simulate(cfg, n=16, seed=1, record_rows=False)
    status = res.patients["solver_status"]
    assert status.isin(["out_of_range", "nonfinite"]).any()
    assert res.n_failed == int(status.isin(["out_of_range", "nonfinite"]).sum())
    table = res.summary_table()
    assert int(table["n"].iloc[0]) == 16 - res.n_failed  # rates are over the patients kept

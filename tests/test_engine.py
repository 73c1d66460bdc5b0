"""The engine: vmap equivalence, reproducibility, precision, failure flags, gradients, no recompiles."""

from __future__ import annotations

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from vpop.run import cohort

from vpop.engine import course as engine

from vpop.policy import rules as policy
from vpop.engine.course import EngineSettings, simulate_patient

from helpers import one, sample_patients

SETTINGS = EngineSettings(days=10.0, record_rows=True)


def test_vmap_of_patients_equals_single_solves(default_config):
    _, p, keys = sample_patients(default_config, np.arange(5))
    pol = policy.PRESETS["asco2021"].to_arrays(jnp.float64)
    batch_rows, batch_sum = engine.compiled_batch(SETTINGS)(p, keys, pol)
    single = jax.jit(lambda pi, ki: simulate_patient(pi, ki, pol, SETTINGS))
    for i in range(5):
        rows, summ = single(one(p, i), keys[i])
        for name in ("il6_pg_ml", "crp_mg_l", "nfl_pg_ml", "temp_c"):
            np.testing.assert_allclose(batch_rows[name][i], rows[name], rtol=1e-10, atol=1e-12)
        for name in ("crs_grade_astct", "icans_grade_astct", "crs_grade_penn"):
            np.testing.assert_array_equal(batch_rows[name][i], rows[name])
        np.testing.assert_allclose(batch_sum["tocilizumab_mg"][i], summ["tocilizumab_mg"])


def test_structure_of_arrays_batch_equals_vmap(default_config):
    _, p, keys = sample_patients(default_config, np.arange(6))
    pol = policy.PRESETS["asco2021"].to_arrays(jnp.float64)
    soa = jax.jit(lambda p, k: engine.simulate_batch(p, k, pol, SETTINGS))(p, keys)
    ref = jax.jit(lambda p, k: engine.vmapped_batch(p, k, pol, SETTINGS))(p, keys)
    for got, want in zip(jax.tree_util.tree_leaves(soa), jax.tree_util.tree_leaves(ref)):
        assert got.shape == want.shape
        np.testing.assert_allclose(np.asarray(got, float), np.asarray(want, float), rtol=1e-9, atol=1e-12)


def _small(config, **engine_changes):
    return replace(config, engine=replace(config.engine, days=10.0, **engine_changes))


@pytest.mark.slow
def test_patient_is_determined_by_seed_and_index(default_config):
    cfg = _small(default_config)
    a = cohort.simulate(replace(cfg, batch_size=16), n=40, seed=3, record_rows=False).patients
    b = cohort.simulate(replace(cfg, batch_size=7), n=20, seed=3, record_rows=False).patients
    pd.testing.assert_frame_equal(a.iloc[:20].reset_index(drop=True), b)
    c = cohort.simulate(replace(cfg, batch_size=16), n=40, seed=4, record_rows=False).patients
    assert not np.allclose(a["tumor_burden"], c["tumor_burden"])


def test_same_seed_same_cohort(default_config):
    cfg = _small(default_config)
    a = cohort.simulate(cfg, n=24, seed=11)
    b = cohort.simulate(cfg, n=24, seed=11)
    pd.testing.assert_frame_equal(a.patients, b.patients)
    pd.testing.assert_frame_equal(a.observations, b.observations)


@pytest.mark.slow
def test_float32_and_float64_both_work_and_agree(default_config):
    cfg = _small(default_config)
    r32 = cohort.simulate(replace(cfg, dtype="float32"), n=32, seed=0, record_rows=False).patients
    r64 = cohort.simulate(replace(cfg, dtype="float64"), n=32, seed=0, record_rows=False).patients
    assert (r32.solver_status != "nonfinite").all() and (r64.solver_status != "nonfinite").all()
    np.testing.assert_allclose(r32.peak_il6_pg_ml, r64.peak_il6_pg_ml, rtol=2e-3)
    same = (r32.crs_max_grade == r64.crs_max_grade) & (r32.icans_max_grade == r64.icans_max_grade)
    assert same.mean() >= 31 / 32


def test_failed_solve_is_flagged_and_counted_not_nan(default_config):
    _, p, keys = sample_patients(default_config, np.arange(4))
    p = dict(p)
    p["il6_per_myeloid"] = p["il6_per_myeloid"].at[2].set(jnp.inf)  # breaks patient 2 only
    pol = policy.PRESETS["asco2021"].to_arrays(jnp.float64)
    rows, summ = engine.compiled_batch(SETTINGS)(p, keys, pol)
    status = np.asarray(summ["solver_status"])
    assert status[2] == engine.STATUS_NONFINITE
    assert (status[[0, 1, 3]] != engine.STATUS_NONFINITE).all()
    # The failure stays with patient 2: the others' courses are those of a run where nothing broke.
    clean_rows, _ = engine.compiled_batch(SETTINGS)(sample_patients(default_config, np.arange(4))[1], keys, pol)
    for name in ("crs_grade_astct", "icans_grade_astct", "il6_pg_ml", "temp_c"):
        np.testing.assert_array_equal(np.asarray(rows[name])[[0, 1, 3]], np.asarray(clean_rows[name])[[0, 1, 3]])
    # Patient 2 is frozen at its last finite state (here the initial one), so its read-outs stay finite and
    # its grades stay at the infusion-day grade instead of taking whatever a NaN compares to.
    assert np.isfinite(np.asarray(rows["il6_pg_ml"])[2]).all()
    for name in ("crs_grade_astct", "icans_grade_astct"):
        assert (np.asarray(rows[name])[2] == np.asarray(rows[name])[2, 0]).all(), name
        assert np.asarray(rows[name])[2, 0] == 0, name
    table = cohort.patient_table(np.arange(4), {k: np.ones(4) for k in (*cohort.COVARIATES, "easix", "m_easix",
                                 "car_dose_per_kg", "ld_intensity", "female")},
                                 {k: np.asarray(v) for k, v in rows.items()},
                                 {k: np.asarray(v) for k, v in summ.items()}, SETTINGS)
    result = cohort.CohortResult(default_config, table, None, 0.0, 0.0)
    assert result.n_failed == 1
    summary = result.summary_table()
    assert (summary["n"] == 3).all()  # the failed patient is excluded from rates, not counted as 0


@pytest.mark.slow  # ~20 s cold: compiles the course's reverse-mode gradient
def test_reverse_mode_gradient_matches_finite_differences(default_config):
    _, p, keys = sample_patients(default_config, np.arange(1))
    p0, key = one(p, 0), keys[0]
    settings = EngineSettings(days=6.0, record_rows=True)
    pol = policy.PRESETS["none"].to_arrays(jnp.float64)

    def output(theta):
        q = dict(p0)
        q["il6_per_myeloid"] = p0["il6_per_myeloid"] * jnp.exp(theta[0])
        q["car_prolif_max"] = p0["car_prolif_max"] * jnp.exp(theta[1])
        q["endo_activation_rate"] = p0["endo_activation_rate"] * jnp.exp(theta[2])
        rows, _ = simulate_patient(q, key, pol, settings)
        return jnp.log(jnp.sum(rows["crp_mg_l"]) + jnp.sum(rows["ang2_ng_ml"]))

    theta = jnp.zeros(3)
    grad = jax.jit(jax.grad(output))(theta)
    f = jax.jit(output)
    eps = 1e-5
    fd = np.array([(f(theta.at[i].add(eps)) - f(theta.at[i].add(-eps))) / (2 * eps) for i in range(3)])
    assert np.all(np.abs(fd) > 1e-4)  # every parameter matters to the output
    np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-4, atol=1e-8)


def test_changing_n_seed_or_parameters_never_recompiles(default_config):
    traces = []
    original = engine.simulate_patient

    def counting(*args, **kwargs):
        traces.append(1)
        return original(*args, **kwargs)

    settings = EngineSettings(days=2.0, record_rows=False, substeps=6)
    cfg = replace(default_config, engine=settings, batch_size=8)
    engine.compiled_batch.cache_clear()
    cohort._EXECUTABLES.clear()
    engine.simulate_patient = counting
    try:
        cohort.simulate(cfg, n=8, seed=0, record_rows=False)
        assert len(traces) == 1
        cohort.simulate(cfg, n=20, seed=5, record_rows=False)
        cohort.simulate(replace(cfg, parameters={"il6_per_myeloid": 1.0e5}), n=13, seed=1, record_rows=False)
        cohort.simulate(replace(cfg, policy=policy.PRESETS["prophylactic_dex"]), n=9, seed=2, record_rows=False)
        assert len(traces) == 1
    finally:
        engine.simulate_patient = original
        engine.compiled_batch.cache_clear()
        cohort._EXECUTABLES.clear()


def test_patients_do_not_depend_on_the_x64_mode(default_config):
    """Random draws are float32 in both modes, so float32 and float64 runs simulate the same patients."""
    import json
    import subprocess
    import sys

    code = (
        "import json, numpy as np, jax.numpy as jnp\n"
        "from vpop.run.config import load_config\n"
        "from vpop.run.cohort import compiled_sampler, split_keys\n"
        "from vpop.population.sampler import PopulationSampler, patient_keys\n"
        "cfg = load_config(None)\n"
        "k, _ = split_keys(patient_keys(0, np.arange(6)))\n"
        "cov, p = compiled_sampler(PopulationSampler(cfg.population, cfg.parameters), jnp.float32)(k)\n"
        "print(json.dumps({n: np.asarray(cov[n], float).tolist() for n in ('tumor_burden', 'age_years')}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "JAX_ENABLE_X64": "0"})
    no_x64 = json.loads(out.stdout.strip().splitlines()[-1])
    cov, _, _ = sample_patients(default_config, np.arange(6), dtype=jnp.float32)
    for name, values in no_x64.items():
        np.testing.assert_allclose(np.asarray(cov[name], float), values, rtol=1e-6)


def test_car_t_auc_is_the_trapezoid_of_the_charted_counts(default_config):
    """The engine's running AUC equals the trapezoid rule over the observation table's CAR-T counts."""
    res = cohort.simulate(_small(default_config), n=12, seed=5)
    obs, pts = res.observations, res.patients.set_index("patient_id")
    survivors = pts.index[pts["death_day"].isna()]
    assert len(survivors) >= 10
    for pid in survivors:
        o = obs[obs["patient_id"] == pid].sort_values("time_day")
        assert o["time_day"].iloc[-1] == pytest.approx(10.0)
        want = np.trapezoid(o["car_t_cells_per_ul"].to_numpy(float), o["time_day"].to_numpy(float))
        assert want > 0
        np.testing.assert_allclose(pts.loc[pid, "auc_car_t_cells_per_ul_day"], want, rtol=1e-6)


def test_organ_support_onset_is_the_first_charted_oxygen_or_vasopressor(default_config):
    """The engine's running first day of oxygen or vasopressors equals the observation table's."""
    res = cohort.simulate(_small(default_config), n=24, seed=7)
    obs, pts = res.observations, res.patients.set_index("patient_id")
    supported = obs[(obs["o2_device"].astype(str) != "none") | (obs["vasopressors"] > 0)]
    first = supported.groupby("patient_id")["time_day"].min()
    assert 3 <= len(first) < len(pts)  # some patients need support, some never do
    np.testing.assert_allclose(pts.loc[first.index, "organ_support_onset_day"], first.to_numpy(float), atol=1e-6)
    never = pts.index.difference(first.index)
    assert pts.loc[never, "organ_support_onset_day"].isna().all()

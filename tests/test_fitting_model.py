"""Fitting: parameter recovery (SVI), censoring, cohort-table likelihood (small, fast settings)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from vpop.fitting import cohort_tables as ct
from vpop.fitting import infer, synthetic
from vpop.fitting import model as fm
from vpop.fitting import statistical_model as sm

FREE = ("car_prolif_max", "crp_max")
TRUTH = {"car_prolif_max": 1.2, "crp_max": 250.0}  # reference (config) values: 1.0 and 350
OMEGA = {"car_prolif_max": 0.15, "crp_max": 0.25}
SIGMA = 0.2


@pytest.fixture(scope="module")
def dataset(default_config, tmp_path_factory):
    path = tmp_path_factory.mktemp("fit") / "data.csv"
    data, truth = synthetic.simulate_dataset(
        default_config, 30, FREE, TRUTH, OMEGA, SIGMA, times=[1, 2, 3, 5, 7, 10], analytes=["car_t", "crp", "il6"],
        seed=3, lloq={"il6": 100.0}, path=path)
    return data, truth, path


@pytest.mark.slow
def test_svi_recovers_typical_values(default_config, dataset):
    """30 patients, 2 free parameters: SVI (AutoNormal) medians within 10 % of the truth."""
    data, truth, _ = dataset
    assert data.n_censored() > 20  # the IL-6 LLOQ censors part of the data
    problem = fm.build_problem(data, default_config, FREE)
    fit = infer.run_svi(problem, steps=300, lr=0.04, draws=300)
    assert fit.diagnostics["finite"]
    med = fit.theta_summary().set_index("parameter")["median"]
    # the realised typical value of the simulated patients (the sample mean of z shifts it)
    for j, name in enumerate(FREE):
        realised = TRUTH[name] * np.exp(OMEGA[name] * truth["z"][:, j].mean())
        assert med[name] == pytest.approx(realised, rel=0.10), (name, med[name], realised)
        assert abs(np.log(med[name] / fm.reference_value(name, {"car_prolif_max": 1.0, "crp_max": 350.0}))) > 0.1
    sigma = np.median(fit.samples["sigma"].reshape(-1, 3), axis=0)
    assert np.all(np.abs(sigma - SIGMA) < 0.08), sigma
    assert fit.idata.posterior["theta"].shape[-1] == 2


@pytest.mark.slow
def test_censoring_changes_the_estimate(default_config):
    """Profile likelihood of il6_per_myeloid with 40-60 % of IL-6 below the LLOQ.

    With censoring (M3) the maximum is near the truth; treating BLQ values as
    observed at the LLOQ biases it upwards. The test fails if the censored rows
    are treated as observed.
    """
    free = ("il6_per_myeloid",)
    truth = {"il6_per_myeloid": 68830.3227 * 0.6}
    data, _ = synthetic.simulate_dataset(default_config, 12, free, truth, {"il6_per_myeloid": 1e-6}, 0.2,
                                         times=[1, 2, 3, 4, 6, 8], analytes=["il6"], seed=5, lloq={"il6": 150.0})
    frac = data.n_censored() / data.n_observations()
    assert 0.3 < frac < 0.8, frac
    problem = fm.build_problem(data, default_config, free)
    grid = np.log(truth["il6_per_myeloid"]) - problem.log_ref[0] + np.linspace(-1.0, 1.0, 21)
    mu = np.asarray(jax.jit(jax.vmap(lambda g: fm.predictions(problem, jnp.full((problem.n, 1), g))[0]))(jnp.asarray(grid)))
    y, cens, mask = problem.obs_logv, problem.obs_cens, problem.obs_mask
    sd = 0.2
    obs_ll = -0.5 * ((y - mu) / sd) ** 2
    cen_ll = np.asarray(sm.censored_normal_loglik(jnp.asarray(y), jnp.asarray(mu), sd))
    right = np.sum(np.where(mask & ~cens, obs_ll, 0.0) + np.where(mask & cens, cen_ll, 0.0), axis=(1, 2))
    naive = np.sum(np.where(mask, obs_ll, 0.0), axis=(1, 2))
    est_right = np.exp(grid[np.argmax(right)] + problem.log_ref[0])
    est_naive = np.exp(grid[np.argmax(naive)] + problem.log_ref[0])
    assert est_right == pytest.approx(truth["il6_per_myeloid"], rel=0.11)
    assert est_naive > 1.2 * truth["il6_per_myeloid"]


@pytest.mark.slow
def test_cohort_likelihood_recovers_known_rate(default_config):
    """Targets from a known parameter: the smoothed binomial likelihood recovers the rate and the parameter."""
    free = ("car_prolif_max",)
    n_virtual = 60
    targets = [ct.Target("T", "lee2014", "crs_grade3plus", 1000, 0.0, "percent", 1),
               ct.Target("T", "ctcae_neuro", "neuro_any", 1000, 0.0, "percent", 2)]
    # reference grades for the thresholds: any fixed table works for the test (the engine's in real use)
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"crs_max_grade_lee2014": rng.choice([0, 1, 2, 3], n_virtual, p=[0.1, 0.4, 0.3, 0.2]),
                        "icans_max_grade_ctcae": rng.choice([0, 1, 3], n_virtual, p=[0.5, 0.3, 0.2]),
                        "solver_status": "ok"})
    lik = ct.build_cohort_likelihood(default_config, targets, free, n_virtual=n_virtual, days=10.0, reference_patients=ref)
    engine_like = [(ref["crs_max_grade_lee2014"] >= 3).mean(), (ref["icans_max_grade_ctcae"] >= 1).mean()]
    np.testing.assert_allclose(np.asarray(lik.rates(jnp.zeros(1), hard=True)), engine_like, atol=1e-9)
    true_lf = np.log(1.3)
    rate_true = np.asarray(lik.rates(jnp.array([true_lf])))
    lik.targets = [ct.Target(t.cohort, t.scale, t.endpoint, t.n, float(r), "fraction", t.row) for t, r in zip(targets, rate_true)]
    grid = np.linspace(-0.3, 0.6, 19)
    ll = np.asarray([float(lik.loglik(jnp.array([g]))) for g in grid])
    best = grid[np.argmax(ll)]
    assert best == pytest.approx(true_lf, abs=0.06)
    np.testing.assert_allclose(np.asarray(lik.rates(jnp.array([best]))), rate_true, atol=0.03)
    # the gradient exists and points towards the truth
    g = jax.grad(lambda x: lik.loglik(jnp.array([x])))(0.0)
    assert np.isfinite(g) and g > 0
    bias = lik.smoothing_bias(taus=(0.05, 0.1))
    assert np.all(np.abs(bias["bias"]) < 0.1)

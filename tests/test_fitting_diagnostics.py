"""Fit diagnostics and statistical-model options: oracles that need no fit."""

from __future__ import annotations

import numpy as np
import pytest

from vpop.errors import UserError
from vpop.fitting import diagnostics, infer
from vpop.fitting import statistical_model as sm
from vpop.fitting.data import PatientData


def test_npde_is_standard_normal_when_the_model_is_right_and_shifted_when_wrong():
    rng = np.random.default_rng(1)
    sims = rng.normal(0.0, 1.0, (200, 4000))
    y = rng.normal(0.0, 1.0, 4000)
    n = diagnostics.npde(y, sims, np.zeros(4000, bool), rng)
    assert abs(n.mean()) < 0.06 and abs(n.std() - 1) < 0.05
    bad = diagnostics.npde(y + 0.5, sims, np.zeros(4000, bool), rng)
    assert bad.mean() > 0.4
    # censored values: a pd drawn below the LLOQ's; still standard normal when the censoring is right
    lloq = -0.5
    cens = y < lloq
    yc = np.where(cens, lloq, y)
    nc = diagnostics.npde(yc, sims, cens, rng)
    assert abs(nc.mean()) < 0.06 and abs(nc.std() - 1) < 0.06


def test_shrinkage_zero_when_etas_are_recovered_and_one_when_pulled_to_the_mean():
    rng = np.random.default_rng(0)
    n, F, D = 200, 2, 50
    omega = np.array([0.3, 0.5])
    z_true = rng.standard_normal((n, F))
    samples = {"omega": np.broadcast_to(omega, (1, D, F)), "z": np.broadcast_to(z_true, (1, D, n, F))}
    s = diagnostics.shrinkage(samples, ("a", "b"))
    assert np.all(np.abs(s["shrinkage"]) < 0.1)
    flat = {"omega": samples["omega"], "z": 0.05 * rng.standard_normal((1, D, n, F))}
    s2 = diagnostics.shrinkage(flat, ("a", "b"))
    assert np.all(s2["shrinkage"] > 0.9)


def test_tree_depth_from_leapfrog_steps():
    assert list(infer.tree_depth([1, 3, 7, 8, 63, 127, 255])) == [1, 2, 3, 4, 6, 7, 8]


def _data(cov):
    n = len(cov)
    z = [np.zeros(0)] * n
    return PatientData("<t>", list(range(n)), (), z, z, z, z, z, z, z, cov, {})


def test_covariate_design_is_centred_and_refuses_constant_or_unknown(default_config):
    names, x = sm.covariate_design(_data([{"weight_kg": 50.0, "female": 1}, {"weight_kg": 100.0, "female": 0},
                                          {"weight_kg": 70.0, "female": 0}]), default_config, ["weight_kg", "female"])
    assert names == ("weight_kg", "female")
    np.testing.assert_allclose(x[:, 0], np.log([50 / 70, 100 / 70, 1.0]))  # log(c / median)
    np.testing.assert_allclose(x[:, 1], [2 / 3, -1 / 3, -1 / 3])  # c - mean (has zeros)
    with pytest.raises(UserError, match="same value"):
        sm.covariate_design(_data([{"weight_kg": 70.0}, {"weight_kg": 70.0}]), default_config, ["weight_kg"])
    with pytest.raises(UserError, match="not a covariate"):
        sm.covariate_design(_data([{"weight_kg": 70.0}]), default_config, ["shoe_size"])


def test_derived_sites_recover_z_from_centred_eta_with_a_correlation():
    rng = np.random.default_rng(0)
    L = np.linalg.cholesky(np.array([[1.0, 0.6], [0.6, 1.0]]))
    omega = np.array([0.2, 0.4])
    z = rng.standard_normal((5, 2))
    eta = omega * (z @ L.T)
    out = sm.derived_sites({"eta": eta, "omega": omega, "L_corr": L, "log_theta": np.zeros(2)})
    np.testing.assert_allclose(out["z"], z, atol=1e-12)
    np.testing.assert_allclose(out["corr"], L @ L.T, atol=1e-12)
    np.testing.assert_allclose(out["theta"], [1.0, 1.0])

"""Nuisance random effects: the config's between-patient variability on parameters that are not fitted,
integrated with fixed SDs (`vpop fit --nuisance`, docs/fitting.md "Nuisance random effects")."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vpop.errors import UserError
from vpop.fitting import laplace
from vpop.fitting import model as fm
from vpop.fitting import statistical_model as sm


def test_config_choice_takes_every_configured_variability_that_is_not_free(default_config):
    """'config' gives the population's variability names in order, less the free ones, with the configured
    SDs on the Cholesky diagonal; named choices are checked against the configuration."""
    omega = default_config.population.omega
    names, chol = fm.nuisance_effects(default_config, ("car_prolif_max", "cytokine_sensitivity"), "config")
    assert names == tuple(n for n in omega if n != "cytokine_sensitivity")
    np.testing.assert_allclose(np.diag(chol), [omega[n] for n in names])
    np.testing.assert_allclose(chol, np.diag(np.diag(chol)))  # the default population has no correlations
    assert fm.nuisance_effects(default_config, ("crp_max",), "none")[0] == ()
    for bad, word in ((("crp_max",), "no between-patient variability"), (("myeloid_sensitivity",), "free parameter"),
                      (("cns_sensitivity", "cns_sensitivity"), "repeated")):
        with pytest.raises(UserError, match=word):
            fm.nuisance_effects(default_config, ("myeloid_sensitivity",), bad)
    with pytest.raises(UserError, match="--nuisance 'all'"):
        fm.nuisance_effects(default_config, ("crp_max",), "all")


def test_correlated_variability_gives_the_cholesky_factor_of_the_chosen_block(default_config):
    """With a configured correlation between two sensitivities, the nuisance Cholesky factor reproduces their
    covariance (SD_a SD_b r off the diagonal)."""
    pop = dataclasses.replace(default_config.population,
                              omega_correlations={("cytokine_sensitivity", "myeloid_sensitivity"): 0.6})
    cfg = dataclasses.replace(default_config, population=pop)
    names, chol = fm.nuisance_effects(cfg, ("crp_max",), ("myeloid_sensitivity", "cytokine_sensitivity"))
    sd = np.array([pop.omega[n] for n in names])
    np.testing.assert_allclose(chol @ chol.T, [[sd[0] ** 2, 0.6 * sd[0] * sd[1]], [0.6 * sd[0] * sd[1], sd[1] ** 2]])


def test_log_factors_put_the_fixed_covariance_on_the_nuisance_columns():
    """Free columns: shift + omega z; nuisance columns: chol z with no shift; the centred form's z comes back
    from eta through `derived_sites`."""
    chol = np.array([[0.3, 0.0], [0.1, 0.2]])
    prob = SimpleNamespace(free=("a",), nuisance=("b", "c"), nuisance_chol=chol, log_ref=np.array([0.5]),
                           effects=("a", "b", "c"))
    z = jnp.asarray(np.random.default_rng(1).standard_normal((4, 3)))
    lf = sm.individual_log_factors(prob, jnp.array([0.9]), jnp.array([0.4]), z)
    np.testing.assert_allclose(lf[:, 0], 0.4 + 0.4 * z[:, 0], rtol=1e-12)
    np.testing.assert_allclose(lf[:, 1:], z[:, 1:] @ chol.T, rtol=1e-12)
    A = sm.random_effect_scale(prob, jnp.array([0.4]))
    eta = z @ A.T
    np.testing.assert_allclose(eta, lf - jnp.array([0.4, 0.0, 0.0]), rtol=1e-12)
    back = sm.derived_sites({"eta": eta[None], "omega": jnp.array([[0.4]])}, nuisance_chol=chol)["z"][0]
    np.testing.assert_allclose(back, z, rtol=1e-10, atol=1e-12)


def test_a_full_omega_correlates_the_free_columns_and_leaves_the_nuisance_block_fixed():
    """--omega full with nuisance effects: eta = A z with A = blockdiag(diag(omega) L, chol), the same from the
    log factors, the Laplace scale and (back to z) the derived sites."""
    chol = np.array([[0.25]])
    prob = SimpleNamespace(free=("a", "b"), nuisance=("c",), nuisance_chol=chol, log_ref=np.zeros(2),
                           effects=("a", "b", "c"))
    omega = jnp.array([0.3, 0.5])
    L = jnp.array([[1.0, 0.0], [0.6, 0.8]])
    z = jnp.asarray(np.random.default_rng(2).standard_normal((5, 3)))
    A = sm.random_effect_scale(prob, omega, L)
    np.testing.assert_allclose(A, [[0.3, 0, 0], [0.3, 0.4, 0], [0, 0, 0.25]], rtol=1e-12)
    lf = sm.individual_log_factors(prob, jnp.zeros(2), omega, z, L)
    np.testing.assert_allclose(lf, z @ A.T, rtol=1e-12, atol=1e-14)
    back = sm.derived_sites({"eta": (z @ A.T)[None], "omega": omega[None], "L_corr": L[None]}, nuisance_chol=chol)
    np.testing.assert_allclose(back["z"][0], z, rtol=1e-10, atol=1e-12)


def test_correction_with_nuisance_makes_the_laplace_objective_the_exact_marginal_of_a_linear_model():
    """y_ij = theta + omega z_i J_1j + c u_i J_2j + e_ij with c a fixed nuisance SD: the minimum over the random
    effects of (joint potential + `correction_value`) equals the exact marginal -log p(y | omega) up to a constant
    over a grid of omega (Laplace is exact for a linear Gaussian model). Leaving the nuisance effect out (the
    free parameter's effect alone) does not: it reads the nuisance spread as residual error."""
    rng = np.random.default_rng(0)
    n, m, sigma, c = 10, 6, 0.2, 0.35
    J1 = np.linspace(0.2, 1.0, m)
    J2 = np.linspace(1.0, -0.5, m)
    y = 0.5 * rng.standard_normal(n)[:, None] * J1 + c * rng.standard_normal(n)[:, None] * J2 + \
        sigma * rng.standard_normal((n, m))
    chol = np.array([[c]])
    with_n = SimpleNamespace(obs_analyte=np.zeros((n, m), int), nuisance=("b",), nuisance_chol=chol)
    without = SimpleNamespace(obs_analyte=np.zeros((n, m), int), nuisance=(), nuisance_chol=np.zeros((0, 0)))
    J = np.stack([np.broadcast_to(J1, (n, m)), np.broadcast_to(J2, (n, m))], -1)

    def profile(om, nuisance=True):
        cols = J if nuisance else J[..., :1]
        scale = np.array([om, c] if nuisance else [om])
        D = cols * scale  # (n, m, E): d y / d z
        out = 0.0
        for i in range(n):
            A = D[i].T @ D[i] / sigma ** 2 + np.eye(len(scale))
            zi = np.linalg.solve(A, D[i].T @ y[i] / sigma ** 2)
            out += np.sum((y[i] - D[i] @ zi) ** 2) / (2 * sigma ** 2) + 0.5 * zi @ zi
        frozen = (jnp.asarray(cols), jnp.ones((n, m)), jnp.zeros((n, m)))
        sites = {"omega": jnp.array([om]), "sigma": jnp.array([sigma])}
        return out + float(laplace.correction_value(with_n if nuisance else without, sites, frozen, False))

    def exact(om):
        C = sigma ** 2 * np.eye(m) + om ** 2 * np.outer(J1, J1) + c ** 2 * np.outer(J2, J2)
        return sum(0.5 * np.linalg.slogdet(C)[1] + 0.5 * y[i] @ np.linalg.solve(C, y[i]) for i in range(n))

    grid = [0.1, 0.3, 0.5, 0.9]
    diff = [profile(om) - exact(om) for om in grid]
    np.testing.assert_allclose(diff, diff[0], atol=1e-9)
    wrong = [profile(om, nuisance=False) - exact(om) for om in grid]
    assert np.ptp(wrong) > 0.1


@pytest.mark.slow
def test_a_nuisance_column_moves_the_course_as_the_parameter_itself_does(default_config):
    """predictions() with log factor log 1.3 on the nuisance column of cytokine_sensitivity equal those of the
    same patients with that parameter's base value multiplied by 1.3 (and are not those of the typical patient);
    free-only log factors leave the nuisance columns at 0."""
    from vpop.fitting.data import PatientData

    times = np.array([1.0, 2.0, 3.0])
    n = 2
    data = PatientData(ids=[1, 2], analytes=("il6_pg_ml", "crp_mg_l"), covariates=[{}, {}],
                       obs_time=[np.repeat(times, 2)] * n, obs_analyte=[np.tile([0, 1], 3)] * n,
                       obs_value=[np.ones(6)] * n, obs_censored=[np.zeros(6, bool)] * n,
                       dose_time=[np.zeros(0)] * n, dose_kind=[np.zeros(0, int)] * n, dose_mg=[np.zeros(0)] * n,
                       grades={}, source="test")
    settings = fm.GridSettings(substeps=1)
    prob = fm.build_problem(data, default_config, ("crp_max",), settings, days=3.0,
                            nuisance=("cytokine_sensitivity",))
    plain = fm.build_problem(data, default_config, ("crp_max",), settings, days=3.0)
    scaled = dataclasses.replace(plain, base={**plain.base, "cytokine_sensitivity": 1.3 * plain.base["cytokine_sensitivity"]})
    lf = jnp.array([[0.0, np.log(1.3)]] * n)
    got = np.asarray(jax.jit(lambda v: fm.predictions(prob, v)[0])(lf))
    want = np.asarray(jax.jit(lambda v: fm.predictions(scaled, v)[0])(jnp.zeros((n, 1))))
    typical = np.asarray(jax.jit(lambda v: fm.predictions(prob, v)[0])(jnp.zeros((n, 1))))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.max(np.abs(got - typical)) > 0.05
    # 'config' keeps exactly the nuisance effects whose column of the course's Jacobian is not zero
    every = fm.build_problem(data, default_config, ("crp_max",), settings, days=3.0,
                             nuisance=tuple(default_config.population.omega))
    J = np.asarray(jax.jit(jax.jacfwd(lambda v: fm.predictions(every, v)[0]))(jnp.zeros((n, len(every.effects)))))
    moved = [name for k, name in enumerate(every.nuisance) if np.any(J[..., 1 + k] != 0)]
    auto = fm.build_problem(data, default_config, ("crp_max",), settings, days=3.0, nuisance="config")
    assert list(auto.nuisance) == moved and "neuro_sensitivity" not in moved and len(moved) >= 3


def test_cli_refuses_a_nuisance_name_without_configured_variability(tmp_path, capsys):
    """`vpop fit --nuisance crp_max`: exit 2 naming the flag, the name and the allowed ones; nothing written."""
    from vpop.cli import main
    from vpop.data import data_path

    out = tmp_path / "o"
    assert main(["fit", str(data_path("examples/timecourses.csv")), "--nuisance", "crp_max", "--out", str(out),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--nuisance 'crp_max'" in err and "cytokine_sensitivity" in err and "Traceback" not in err
    assert not out.exists()


def test_reach_follows_the_equations_from_a_parameter_to_the_read_outs(default_config):
    """Serum IL-6 and CRP are moved by CAR-T expansion and the cytokine and myeloid sensitivities, not by the
    neuronal one (the brain does not feed back to the serum in this model); NfL, at the end of the chain, by all
    of them; the CAR-T count by its own proliferation factor."""
    from vpop.fitting.reach import reaching

    p = {k: float(v[0]) for k, v in fm.base_parameters(default_config, [{}]).items()}
    names = tuple(default_config.population.omega)
    serum = reaching(names, ("il6_pg_ml", "crp_mg_l"), p)
    assert {"car_prolif_factor", "cytokine_sensitivity", "myeloid_sensitivity"} <= set(serum)
    assert "neuro_sensitivity" not in serum and "bbb_sensitivity" not in serum
    assert reaching(names, ("nfl_pg_ml",), p) == names
    assert "car_prolif_factor" in reaching(names, ("car_t_cells_per_ul",), p)
    assert reaching((), ("il6_pg_ml",), p) == ()

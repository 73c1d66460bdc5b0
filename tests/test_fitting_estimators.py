"""Estimators: MAP + Laplace (Hessian, intervals), NUTS segments and resume, `vpop fit --check` (slow: solves)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vpop.errors import UserError
from vpop.fitting import infer, laplace, synthetic
from vpop.fitting import model as fm
from vpop.fitting.unconstrained import Unconstrained

FREE = ("car_prolif_max", "crp_max")
TRUTH = {"car_prolif_max": 1.3, "crp_max": 250.0}
OMEGA = {"car_prolif_max": 0.15, "crp_max": 0.2}


def _problem(cfg, n, times, seed=3):
    data, truth = synthetic.simulate_dataset(cfg, n, FREE, TRUTH, OMEGA, 0.2, times=times,
                                             analytes=["car_t", "crp", "il6"], seed=seed, lloq={"il6": 100.0})
    return fm.build_problem(data, cfg, FREE, fm.GridSettings(substeps=1)), truth


@pytest.mark.slow
def test_laplace_coloured_hessian_equals_dense_and_intervals_cover(default_config):
    """The patient-coloured Hessian equals the dense one (a wrong colouring mixes patients); the Laplace
    90 % intervals of both typical values contain the truth and exclude the reference."""
    problem, _ = _problem(default_config, 6, [1, 2, 3, 5, 7])
    model, args, kwargs = infer.model_and_args(problem, None)
    u = Unconstrained(model, args, kwargs, infer.init_values(problem, None))
    x = u.x0 + 0.1
    Hc = laplace.hessian(u, x, n_patients=problem.n)
    Hd = laplace.hessian(u, x, dense=True)
    np.testing.assert_allclose(Hc, Hd, atol=1e-6 * np.abs(Hd).max())
    fit = laplace.run_laplace(problem, draws=2000)
    assert fit.diagnostics["converged"] and not fit.diagnostics["warnings"]
    lt = fit.samples["log_theta"].reshape(-1, 2)
    for j, name in enumerate(FREE):
        lo, hi = np.quantile(lt[:, j], [0.05, 0.95])
        assert lo < np.log(TRUTH[name]) < hi, (name, np.exp([lo, hi]))
        assert fit.diagnostics["se_log"][name] == pytest.approx(lt[:, j].std(), rel=0.1)


@pytest.mark.slow
def test_nuts_segments_are_saved_and_a_resumed_run_continues(default_config, tmp_path):
    """2 vectorised chains, 10 + 10 in segments of 5: the saved run resumed to 15 draws keeps the first 10
    draws exactly; a resume with other settings is refused."""
    problem, _ = _problem(default_config, 3, [1, 3])
    kw = dict(chains=2, warmup=10, segment=5, seed=0, save_dir=tmp_path, parameterisation="centred")
    first = infer.run_nuts(problem, draws=10, **kw)
    assert sorted(p.name for p in (tmp_path / "nuts").glob("segment_*.npz")) == [f"segment_{i:04d}.npz" for i in range(4)]
    more = infer.run_nuts(problem, draws=15, resume=True, **kw)
    assert more.samples["theta"].shape == (2, 15, 2)
    np.testing.assert_array_equal(more.samples["theta"][:, :10], first.samples["theta"])
    assert "tree_depth" in more.idata.sample_stats and "energy" in more.idata.sample_stats
    with pytest.raises(UserError, match="other settings"):
        infer.run_nuts(problem, draws=15, resume=True, **{**kw, "chains": 3})


@pytest.mark.slow
def test_fit_check_refuses_the_confounded_il6_clearances(default_config, tmp_path):
    """`vpop fit --check` on IL-6-only data with both IL-6 clearances free: exit 2, both names, nothing written."""
    path = tmp_path / "il6.csv"
    synthetic.simulate_dataset(default_config, 3, ("car_prolif_max",), {"car_prolif_max": 1.0},
                               {"car_prolif_max": 0.1}, 0.2, times=[0.5, 1, 2, 4], analytes=["il6"], seed=1, path=path)
    r = subprocess.run([sys.executable, "-m", "vpop", "fit", str(path), "--check", "--substeps", "1", "--free",
                        "il6_per_myeloid,il6_clearance_linear,il6_clearance_receptor"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr
    assert "il6_clearance_linear and il6_clearance_receptor" in r.stderr and "Traceback" not in r.stderr


def test_random_effect_correction_makes_the_laplace_objective_the_exact_marginal_of_a_linear_model():
    """y_ij = theta + omega z_i + e_ij: min over z of (potential + correction) equals the exact marginal
    -log p(y | theta, omega) up to a constant in omega (Laplace is exact for a linear Gaussian model); the
    joint potential alone does not (it falls with omega without bound), and the centred form gives the same."""
    from types import SimpleNamespace

    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    n, m, sigma, theta = 12, 5, 0.3, 1.0
    y = theta + 0.4 * rng.standard_normal((n, 1)) + sigma * rng.standard_normal((n, m))
    prob = SimpleNamespace(obs_analyte=np.zeros((n, m), int), nuisance=())
    frozen = (jnp.ones((n, m, 1)), jnp.ones((n, m)), jnp.zeros((n, m)))

    def profile(omega, centred):
        prec = 1.0 + m * omega ** 2 / sigma ** 2  # closed-form minimum over z_i
        z = omega * (y - theta).sum(1) / sigma ** 2 / prec
        pot = ((y - theta - omega * z[:, None]) ** 2).sum() / (2 * sigma ** 2) + (z ** 2).sum() / 2
        sites = {"omega": jnp.array([omega]), "sigma": jnp.array([sigma])}
        if centred:  # eta = omega z ~ N(0, omega): the normaliser n log omega is in the potential
            pot = pot + n * np.log(omega)
        return pot + float(laplace.correction_value(prob, sites, frozen, centred))

    def exact(omega):
        C = sigma ** 2 * np.eye(m) + omega ** 2
        r = y - theta
        return 0.5 * n * np.linalg.slogdet(C)[1] + 0.5 * np.einsum("ij,jk,ik->", r, np.linalg.inv(C), r)

    omegas = [0.05, 0.2, 0.4, 0.8, 1.6]
    for centred in (False, True):
        diff = [profile(w, centred) - exact(w) for w in omegas]
        np.testing.assert_allclose(diff, diff[0], atol=1e-9)
    joint = [profile(w, False) - float(laplace.correction_value(
        prob, {"omega": jnp.array([w]), "sigma": jnp.array([sigma])}, frozen, False)) for w in omegas]
    assert np.all(np.diff(joint) < 0)  # the joint mode runs off to large omega


@pytest.mark.slow
def test_integrated_laplace_recovers_omega_where_the_joint_mode_inflates_it(default_config):
    """On data from the fitting model (6 patients, omega 0.15 and 0.2): integrating the random effects out gives
    omegas near the truth and typical-value intervals that cover it; the joint mode's omegas are > 2x the truth
    and its standard errors > 1.5x wider (the too-wide Laplace intervals of earlier notes). The fast path (data
    as an argument, `vpop.fitting.traced`) equals the closure path at a point, and a second data set of the same
    design reuses its compiled program (much faster than the first)."""
    import jax
    import jax.numpy as jnp

    from vpop.fitting import traced

    problem, _ = _problem(default_config, 6, [1, 2, 3, 5, 7])
    fit = laplace.run_laplace(problem)
    joint = laplace.run_laplace(problem, random_effects="joint")
    om = np.median(fit.samples["omega"].reshape(-1, 2), 0)
    om_joint = np.median(joint.samples["omega"].reshape(-1, 2), 0)
    truth = np.array([OMEGA[f] for f in FREE])
    assert np.all(om < 2 * truth) and np.all(om > 0.5 * truth), om
    assert np.all(om_joint > 2 * truth), om_joint
    lt = fit.samples["log_theta"].reshape(-1, 2)
    for j, name in enumerate(FREE):
        lo, hi = np.quantile(lt[:, j], [0.05, 0.95])
        assert lo < np.log(TRUTH[name]) < hi, (name, np.exp([lo, hi]))
        assert joint.diagnostics["se_log"][name] > 1.5 * fit.diagnostics["se_log"][name]
    # fast path == closure path
    model, args, kwargs = infer.model_and_args(problem, None)
    u = Unconstrained(model, args, kwargs, infer.init_values(problem, None))
    x = u.x0 + 0.05 * np.sin(np.arange(u.dim))
    tp = traced.traced(problem)
    layout = traced.Layout(u.tree0)
    v_fast, g_fast = traced.value_and_grad(jnp.asarray(x), tp, None, layout, "noncentred", None)
    v_slow, g_slow = jax.value_and_grad(u.potential)(x)
    np.testing.assert_allclose(v_fast, v_slow, rtol=1e-10)
    np.testing.assert_allclose(g_fast, g_slow, rtol=1e-8, atol=1e-8)


@pytest.mark.slow
def test_laplace_sandwich_on_the_course_and_nuts_map_start_is_the_integrated_mode(default_config):
    """On the course (6 patients, IL-6 censored below 100 pg/mL): the patients' scores of the sandwich plus the
    prior's gradient equal the gradient of the objective through the course (1e-6: the sandwich's likelihood,
    M3 censoring included, is the model's); the sandwich draws have the reported SEs; on data from the fitting
    model the two covariances agree within a factor 1.6. `map_values` (the start of `--init map`) is the
    integrated mode the Laplace fit reports, with omegas near the truth (the joint mode's are > 2x)."""
    problem, _ = _problem(default_config, 6, [1, 2, 3, 5, 7])
    assert problem.obs_cens.any()
    fit = laplace.run_laplace(problem, draws=4000, covariance="sandwich")
    d = fit.diagnostics
    assert d["covariance"] == "sandwich" and d["converged"]
    assert d["score_gradient_mismatch"] < 1e-6
    lt = fit.samples["log_theta"].reshape(-1, 2)
    for j, name in enumerate(FREE):
        assert d["se_log"][name] == d["se_log_sandwich"][name]
        assert lt[:, j].std() == pytest.approx(d["se_log_sandwich"][name], rel=0.1)
        assert 1 / 1.6 < d["sandwich_to_hessian_se"][name] < 1.6, d["sandwich_to_hessian_se"]
    start = laplace.map_values(problem)
    np.testing.assert_allclose(np.exp(np.asarray(start["log_theta"])), [d["map"][f] for f in FREE], rtol=1e-4)
    assert np.all(np.asarray(start["omega"]) < 2 * np.array([OMEGA[f] for f in FREE])), start["omega"]
    assert start["z"].shape == (problem.n, 2)


@pytest.mark.slow
def test_nuts_from_the_map_or_from_prior_draws_runs_its_segments(default_config):
    """`--init map` and `--init sample` take the path whose model arguments (the FitProblem) are not arrays:
    they are closed over, not passed into the compiled segment (passing them crashed). Both give finite
    draws for every chain; the MAP start is the Laplace estimator's mode."""
    problem, _ = _problem(default_config, 3, [1, 3])
    start = laplace.map_values(problem, parameterisation="centred")
    for init, override in (("map", start), ("sample", None)):
        fit = infer.run_nuts(problem, chains=2, warmup=5, draws=5, seed=0, parameterisation="centred", init=init,
                             init_values_override=override, segment=5)
        assert fit.samples["theta"].shape == (2, 5, 2), init
        assert np.isfinite(fit.samples["theta"]).all(), init


def test_normal_approximation_is_the_exact_posterior_of_a_linear_gaussian_model():
    """Closed form: with a normal prior and normal errors the posterior of a regression's coefficients is normal,
    mean (X'X/s^2 + P)^-1 X'y/s^2 and covariance (X'X/s^2 + P)^-1; the Laplace start must reproduce both."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    x = np.linspace(-1.0, 2.0, 12)
    X = np.stack([np.ones_like(x), x], axis=1)
    y = 0.7 - 1.3 * x + np.random.default_rng(2).normal(0.0, 0.5, x.size)

    def model(y):
        beta = numpyro.sample("beta", dist.Normal(jnp.zeros(2), jnp.array([3.0, 2.0])).to_event(1))
        numpyro.sample("y", dist.Normal(jnp.asarray(X) @ beta, 0.5), obs=y)

    u = Unconstrained(model, (jnp.asarray(y),), {}, {"beta": jnp.zeros(2)})
    approx = laplace.normal_approximation(u)
    precision = X.T @ X / 0.25 + np.diag([1 / 9.0, 1 / 4.0])
    cov = np.linalg.inv(precision)
    np.testing.assert_allclose(approx["mode"], cov @ X.T @ y / 0.25, rtol=1e-6)
    np.testing.assert_allclose(approx["covariance"], cov, rtol=1e-5)
    np.testing.assert_allclose(approx["cholesky"] @ approx["cholesky"].T, cov, rtol=1e-5)
    assert approx["not_positive"] == 0 and approx["map"]["converged"]


@pytest.mark.slow
def test_nuts_laplace_start_uses_the_laplace_covariance_as_its_mass_matrix(default_config, tmp_path):
    """`init="laplace"`: the sampler's inverse mass matrix after warm-up is the inverse Hessian of the same
    posterior at the integrated mode (not adapted), and the draws are finite; with `adapt_mass` it is adapted."""
    import pickle

    problem, _ = _problem(default_config, 3, [1, 3])
    approx = laplace.nuts_start(problem, parameterisation="centred")  # at the integrated mode
    assert approx["map"]["iterations"] == 0  # centred at the given mode, no search
    with pytest.raises(UserError, match="no Laplace approximation"):
        infer.run_nuts(problem, chains=2, warmup=2, draws=2, init="laplace")
    for adapt in (False, True):
        # draws == segment: one segment length, so one compiled program per run (a NUTS segment's compile
        # is most of this test's time)
        fit = infer.run_nuts(problem, chains=2, warmup=30, draws=10, seed=0, parameterisation="centred",
                             init="laplace", adapt_mass=adapt, segment=10, save_dir=tmp_path / str(adapt),
                             laplace_start=approx)
        assert np.isfinite(fit.samples["theta"]).all()
        assert fit.diagnostics["laplace_start_seconds"] > 0
        with open(tmp_path / str(adapt) / "nuts" / "state.pkl", "rb") as f:
            mass = pickle.load(f).adapt_state.inverse_mass_matrix
        if isinstance(mass, dict):  # NumPyro keys the mass matrix by its block of sites: one block, all sites
            (mass,) = mass.values()
        mass = np.asarray(mass)
        assert mass.shape == (2, *approx["covariance"].shape)  # one per chain, dense
        same = np.allclose(mass, approx["covariance"][None], rtol=1e-6, atol=1e-12)
        assert same != adapt, adapt


@pytest.mark.slow
def test_svi_started_at_laplace_begins_at_its_mode_and_covariance(default_config):
    """`start=laplace.integrated_normal(...)`: the full-rank guide's first Gaussian is the integrated Laplace
    normal (after one step of a vanishing learning rate its draws have the Laplace mode as mean and its SDs),
    the mode is the one `run_laplace` reports, and a start of another flat layout (the centred eta) is refused."""
    problem, _ = _problem(default_config, 6, [1, 2, 3, 5, 7])
    start = laplace.integrated_normal(problem)
    centre, cov, layout, info = start
    fit = laplace.run_laplace(problem)
    sl = dict(zip([k for k, _ in layout.spec], np.cumsum([0] + [int(np.prod(s)) for _, s in layout.spec])))
    lt = slice(sl["log_theta"], sl["log_theta"] + len(FREE))
    np.testing.assert_allclose(np.exp(centre[lt]), [fit.diagnostics["map"][f] for f in FREE], rtol=1e-4)
    svi = infer.run_fullrank(problem, steps=1, lr=1e-12, draws=8000, start=start)
    draws = svi.samples["log_theta"].reshape(-1, len(FREE))
    sd = np.sqrt(np.diag(cov)[lt])
    np.testing.assert_allclose(draws.mean(0), centre[lt], atol=4 * sd.max() / np.sqrt(8000))
    np.testing.assert_allclose(draws.std(0), sd, rtol=0.05)
    assert svi.diagnostics["start"] == "laplace" and svi.seconds >= info["seconds"]
    with pytest.raises(ValueError, match="layout"):
        infer.run_fullrank(problem, steps=1, start=start, parameterisation="centred")


def test_cli_refuses_a_laplace_start_for_another_method_or_guide(tmp_path, capsys):
    """`vpop fit --svi-start laplace` with NUTS or the mean-field guide: exit 2 naming the flag; nothing written."""
    from vpop.cli import main
    from vpop.data import data_path

    for extra in (["--method", "nuts"], ["--method", "svi", "--guide", "normal"]):
        out = tmp_path / "o"
        assert main(["fit", str(data_path("examples/timecourses.csv")), "--svi-start", "laplace", *extra,
                     "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "--svi-start laplace" in err and "--guide mvn" in err and "Traceback" not in err
        assert not out.exists()

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
                                             analytes=["car_t", "crp", "il6"], seed=seed, lloq={"il6": 50.0})
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

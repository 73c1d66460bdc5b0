"""Between-occasion variability (BOV): the occasion design read from the data, and the Laplace objective of the
BOV model against the exact marginal of a linear model with between-subject and between-occasion effects."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

from vpop.errors import DataError, UserError
from vpop.fitting import laplace
from vpop.fitting.data import read_patient_data
from vpop.fitting.statistical_model import ModelOptions, bov_design

EX = Path(__file__).resolve().parents[1] / "examples" / "nonmem"


def test_occasions_come_from_the_occ_column_or_the_resets():
    """occasions.csv: two subjects, each with two occasions opened by a reset (EVID 3) and labelled by OCC:
    four courses, subjects (0, 0, 1, 1), four distinct occasions. Without the OCC column the resets alone give
    the same design; a file without resets gives every course its own subject and occasion."""
    d = read_patient_data(EX / "occasions.csv")
    assert [str(i) for i in d.ids] == ["1", "1/2", "2", "2/2"]
    s, o = d.occasion_design()
    assert s.tolist() == [0, 0, 1, 1] and o.tolist() == [0, 1, 2, 3]
    assert d.occasions == [1, 2, 1, 2]
    text = (EX / "occasions.csv").read_text().splitlines()
    no_occ = [",".join(c for j, c in enumerate(line.split(",")) if j != 3) for line in text]
    d2 = read_patient_data(_write(no_occ, "no_occ.csv"))
    assert [a.tolist() for a in d2.occasion_design()] == [s.tolist(), o.tolist()]
    plain = read_patient_data(EX / "addl.csv")
    s3, o3 = plain.occasion_design()
    assert s3.tolist() == list(range(plain.n)) and o3.tolist() == list(range(plain.n))


_TMP = []


def _write(lines, name):
    import tempfile

    folder = Path(tempfile.mkdtemp())
    _TMP.append(folder)
    p = folder / name
    p.write_text("\n".join(lines) + "\n")
    return p


def test_two_courses_with_one_occ_share_an_occasion_and_occ_may_not_change_within_a_course():
    """Both courses of subject 1 labelled OCC 1 share one occasion; an OCC that changes inside a course (whose
    parameters are constant) is refused naming the row and the column."""
    text = (EX / "occasions.csv").read_text().splitlines()
    same = [line.replace(",3,2,", ",3,1,").replace(",0,2,", ",0,1,") if line.startswith("1,") else line
            for line in text]
    s, o = read_patient_data(_write(same, "same.csv")).occasion_design()
    assert o.tolist() == [0, 0, 1, 2]
    bad = list(text)
    bad[4] = bad[4].replace("1,3.0,0,1,", "1,3.0,0,2,")  # data row 4: OCC 2 inside the first course
    assert bad[4] != text[4]
    with pytest.raises(DataError, match=r"row 4, column OCC.*occasion starts at a reset"):
        read_patient_data(_write(bad, "bad.csv"))


def test_bov_needs_free_parameters_and_more_than_one_occasion_per_subject():
    d = read_patient_data(EX / "occasions.csv")
    with pytest.raises(UserError, match="--bov crp_max: not free parameters"):
        bov_design(d, ("car_prolif_max",), ("crp_max",))
    assert bov_design(d, ("car_prolif_max",), ()) == {}  # no --bov: the model's options are unchanged
    plain = read_patient_data(EX / "addl.csv")
    opts = ModelOptions(**bov_design(plain, ("car_prolif_max",), ("car_prolif_max",)))
    problem = SimpleNamespace(free=("car_prolif_max",), n=plain.n, nuisance=())
    with pytest.raises(UserError, match="one occasion"):
        opts.check(problem)


def test_bov_correction_makes_the_laplace_objective_the_exact_marginal_of_a_linear_model():
    """y_cj = theta + omega z_s(c) + omega_bov k_c + e_cj (8 subjects x 2 occasions x 4 values): the minimum over
    all random effects of (joint potential + `correction_bov`) equals the exact marginal -log p(y | omega,
    omega_bov) up to a constant, over a grid of both variances (Laplace is exact for a linear Gaussian model).
    Treating each course as its own subject (the correction without BOV) does not: it misses the shared z."""
    rng = np.random.default_rng(0)
    S, K, m, sigma, theta = 8, 2, 4, 0.3, 1.0
    n = S * K
    subject = np.repeat(np.arange(S), K)
    occasion = np.arange(n)
    y = (theta + 0.4 * rng.standard_normal(S)[subject][:, None] + 0.3 * rng.standard_normal(n)[:, None]
         + sigma * rng.standard_normal((n, m)))
    opts = ModelOptions(bov=("p",), bov_columns=np.array([0]), subject=subject, occasion=occasion)
    prob = SimpleNamespace(obs_analyte=np.zeros((n, m), int), nuisance=())
    frozen = (jnp.ones((n, m, 1)), jnp.ones((n, m)), jnp.zeros((n, m)))
    # design of all random effects r = (z (S), k (n)) on the observations
    Dz = np.eye(S)[subject]  # (n, S)
    Dk = np.eye(n)

    def profile(om, ob, bov=True):
        D = np.repeat(np.concatenate([om * Dz, ob * Dk], 1), m, axis=0)  # (n m, S + n)
        r = (y - theta).ravel()
        A = D.T @ D / sigma ** 2 + np.eye(S + n)
        rs = np.linalg.solve(A, D.T @ r / sigma ** 2)
        pot = np.sum((r - D @ rs) ** 2) / (2 * sigma ** 2) + 0.5 * np.sum(rs ** 2)
        sites = {"omega": jnp.array([om]), "omega_bov": jnp.array([ob]), "sigma": jnp.array([sigma])}
        if bov:
            return pot + float(laplace.correction_bov(prob, sites, frozen, opts))
        return pot + float(laplace.correction_value(prob, sites, frozen, False))

    def exact(om, ob):
        out = 0.0
        for s in range(S):
            C = sigma ** 2 * np.eye(K * m) + om ** 2 + ob ** 2 * np.kron(np.eye(K), np.ones((m, m)))
            r = (y[subject == s] - theta).ravel()
            out += 0.5 * np.linalg.slogdet(C)[1] + 0.5 * r @ np.linalg.solve(C, r)
        return out

    grid = [(0.1, 0.2), (0.4, 0.1), (0.4, 0.5), (0.8, 0.3), (0.2, 0.9)]
    diff = [profile(a, b) - exact(a, b) for a, b in grid]
    np.testing.assert_allclose(diff, diff[0], atol=1e-9)
    wrong = [profile(a, b, bov=False) - exact(a, b) for a, b in grid]
    assert np.ptp(wrong) > 0.1


@pytest.mark.slow
def test_laplace_recovers_a_known_between_occasion_variance_on_the_course(default_config):
    """12 subjects x 2 occasions simulated through the course with omega 0.1 (subjects) and omega_bov 0.4
    (occasions) on car_prolif_max, CAR-T, CRP and IL-6 at 6 times: the integrated Laplace fit with
    --bov car_prolif_max puts the between-occasion SD near 0.4 (within 0.2-0.8) and above the between-subject
    one; without BOV the fit cannot tell them apart and its omega takes up both."""
    from vpop.fitting import model as fm
    from vpop.fitting import synthetic
    from vpop.fitting.statistical_model import ModelOptions, bov_design

    free = ("car_prolif_max", "crp_max")
    data, truth = synthetic.simulate_dataset(
        default_config, 12, free, {"car_prolif_max": 1.2, "crp_max": 250.0}, {"car_prolif_max": 0.1, "crp_max": 0.2},
        0.15, times=[1, 2, 3, 5, 7, 10], analytes=["car_t", "crp", "il6"], seed=4, occasions=2,
        omega_bov={"car_prolif_max": 0.4})
    problem = fm.build_problem(data, default_config, free, fm.GridSettings(substeps=1), use_grades=False)
    opts = ModelOptions(**bov_design(data, free, ("car_prolif_max",))).check(problem)
    fit = laplace.run_laplace(problem, options=opts)
    assert fit.diagnostics["converged"], fit.diagnostics["warnings"]
    ob = float(np.median(fit.samples["omega_bov"]))
    om = np.median(fit.samples["omega"].reshape(-1, 2), 0)
    assert 0.2 < ob < 0.8 and ob > om[0], (ob, om)
    assert fit.samples["z"].shape[-2:] == (24, 2)
    plain = laplace.run_laplace(problem)
    assert np.median(plain.samples["omega"].reshape(-1, 2), 0)[0] > 0.25


def test_omega_bov_is_named_in_the_posterior_and_the_convergence_table():
    """The BOV SDs carry their parameters' names into posterior.nc and convergence.csv (not omega_bov[0])."""
    from vpop.fitting.diagnostics import convergence_table
    from vpop.fitting.infer import FitResult, to_inferencedata

    rng = np.random.default_rng(0)
    free = ("car_prolif_max", "crp_max")
    samples = {"log_theta": rng.normal(size=(2, 50, 2)), "omega": rng.uniform(0.1, 0.3, (2, 50, 2)),
               "omega_bov": rng.uniform(0.2, 0.5, (2, 50, 1)), "sigma": rng.uniform(0.1, 0.3, (2, 50, 1))}
    fit = FitResult("nuts", free, samples, 1.0, bov=("crp_max",))
    idata = to_inferencedata(fit, SimpleNamespace(analytes=("il6_pg_ml",), ids=[1, 2], effects=fit.free))
    assert "omega_bov[crp_max]" in convergence_table(idata)["variable"].tolist()

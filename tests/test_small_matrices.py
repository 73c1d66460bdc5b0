"""The unrolled small-matrix algebra of the fits against NumPy's LAPACK (an independent implementation)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vpop.fitting.small_matrices import cholesky_lower, solve_lower, spd_logdet, triangular_logabsdet


def _spd(rng, shape, F):
    X = rng.normal(size=shape + (F, F + 2))
    return X @ np.swapaxes(X, -1, -2) + 0.1 * np.eye(F)


@pytest.mark.parametrize("F", [1, 2, 5])
def test_cholesky_and_logdet_match_lapack_over_batch_axes(F):
    rng = np.random.default_rng(F)
    M = _spd(rng, (3, 4), F)  # the suite runs in float64 (conftest)
    L = np.asarray(cholesky_lower(jnp.asarray(M)))
    np.testing.assert_allclose(L, np.linalg.cholesky(M), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(spd_logdet(jnp.asarray(M))), np.linalg.slogdet(M)[1], rtol=1e-10)


def test_logdet_gradient_is_the_inverse():
    # d log det M = tr(M^-1 dM) for symmetric dM: the identity the Laplace correction's gradient relies on.
    # The unrolled factor reads the lower triangle only, so its gradient is M^-1 on the diagonal and
    # 2 M^-1 below it (each entry there stands for itself and its mirror), zero above.
    rng = np.random.default_rng(0)
    M = _spd(rng, (), 4)
    g = np.asarray(jax.grad(spd_logdet)(jnp.asarray(M)))
    inv = np.linalg.inv(M)
    np.testing.assert_allclose(g, np.tril(2.0 * inv) - np.diag(np.diag(inv)), rtol=1e-8, atol=1e-12)


def test_not_positive_definite_is_nan():
    M = jnp.array([[1.0, 2.0], [2.0, 1.0]])
    assert np.isnan(float(spd_logdet(M)))


def test_triangular_solve_and_logabsdet():
    rng = np.random.default_rng(1)
    L = np.tril(rng.normal(size=(6, 3, 3))) + 3.0 * np.eye(3)
    L[..., 1, 1] *= -1.0  # a negative diagonal entry: |det| is what counts
    B = rng.normal(size=(6, 3, 5))
    X = np.asarray(solve_lower(jnp.asarray(L), jnp.asarray(B)))
    lad = np.asarray(triangular_logabsdet(jnp.asarray(L)))
    np.testing.assert_allclose(X, np.linalg.solve(L, B), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lad, np.linalg.slogdet(L)[1], rtol=1e-12)


@pytest.mark.parametrize("centred", [False, True])
def test_laplace_correction_terms_with_a_correlation_match_lapack(centred):
    """Each patient's 0.5 log det(I + A'G_iA) (minus log|det A| when centred), A = diag(omega) L: the
    unrolled form in `laplace.correction_terms` against NumPy's LAPACK on the same matrices."""
    from types import SimpleNamespace

    from vpop.fitting import laplace

    rng = np.random.default_rng(3)
    n, m, F = 7, 9, 3
    J = rng.normal(size=(n, m, F))
    c = rng.uniform(0.5, 1.0, size=(n, m))
    mu = rng.normal(size=(n, m))
    problem = SimpleNamespace(obs_analyte=rng.integers(0, 2, size=(n, m)), nuisance=())
    sigma = np.array([0.3, 0.5])
    L = np.linalg.cholesky(np.array([[1.0, 0.5, 0.2], [0.5, 1.0, -0.3], [0.2, -0.3, 1.0]]))
    omega = np.array([0.2, 0.4, 0.3])
    sites = {"sigma": jnp.asarray(sigma), "omega": jnp.asarray(omega), "L_corr": jnp.asarray(L)}
    got = np.asarray(laplace.correction_terms(problem, sites, (jnp.asarray(J), jnp.asarray(c), jnp.asarray(mu)),
                                              centred))
    A = omega[:, None] * L
    w = c / sigma[problem.obs_analyte] ** 2
    G = np.einsum("nm,nmf,nmg->nfg", w, J, J)
    want = 0.5 * np.linalg.slogdet(np.eye(F) + A.T @ G @ A)[1] - (np.linalg.slogdet(A)[1] if centred else 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-10)

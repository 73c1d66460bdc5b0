"""Log-determinants and triangular solves of many small matrices, unrolled in plain array operations.

The fits need one small (random effects x random effects) matrix per patient or per draw. jaxlib's batched
CPU LAPACK (`slogdet`, `inv`, `solve` over a leading batch axis) runs through a parallel batch map that
deadlocked now and then in this project's test suite (docs/fitting.md, "Inference": small matrices), so a long fit
could hang the same way. These matrices are a few rows wide: a Cholesky factorisation written out element by
element is exact, differentiable, vectorised over any batch axes and never calls LAPACK.
"""

from __future__ import annotations

import jax.numpy as jnp


def cholesky_lower(M):
    """Lower Cholesky factor of symmetric positive-definite `M` (..., F, F), unrolled (F is static).

    Cholesky-Banachiewicz, row by row; a matrix that is not positive definite gives NaN on the diagonal,
    as `jnp.linalg.cholesky` does.
    """
    F = M.shape[-1]
    L = [[None] * F for _ in range(F)]
    for i in range(F):
        for j in range(i + 1):
            s = M[..., i, j]
            for k in range(j):
                s = s - L[i][k] * L[j][k]
            L[i][j] = jnp.sqrt(s) if i == j else s / L[j][j]
    zero = jnp.zeros_like(M[..., 0, 0])
    return jnp.stack([jnp.stack([L[i][j] if j <= i else zero for j in range(F)], axis=-1) for i in range(F)], axis=-2)


def spd_logdet(M):
    """log det of symmetric positive-definite `M` (..., F, F): twice the log of the Cholesky diagonal."""
    L = cholesky_lower(M)
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), axis=-1)


def triangular_logabsdet(T):
    """log |det T| of a triangular `T` (..., F, F): the sum of the logs of its diagonal's magnitudes."""
    return jnp.sum(jnp.log(jnp.abs(jnp.diagonal(T, axis1=-2, axis2=-1))), axis=-1)


def solve_lower(L, B):
    """X with L X = B for lower-triangular `L` (..., F, F) and `B` (..., F, K): forward substitution."""
    F = L.shape[-1]
    rows = []
    for i in range(F):
        s = B[..., i, :]
        for k in range(i):
            s = s - L[..., i, k, None] * rows[k]
        rows.append(s / L[..., i, i, None])
    return jnp.stack(rows, axis=-2)

"""Which parameters can move which biomarkers: the model's Jacobian sparsity, closed over its states.

A nuisance random effect (`vpop.fitting.model.nuisance_effects`) on a parameter that cannot reach any
analyte of the data adds a column of zeros to every sensitivity a fit computes, one forward pass each,
and nothing to its likelihood. Whether it reaches one is a property of the equations: the parameter
enters the production or loss of some states (or their initial values, or the read-out itself), those
states feed others, and the read-out of the analyte reads some of them. This module reads that graph
off the Jacobians of the one-patient right-hand side, initial state and read-outs at random positive
states (a union over several points, so that a term that vanishes at one point, a threshold not crossed,
still counts) and takes the closure.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vpop.model.equations import initial_state, rhs
from vpop.observation.readouts import biomarkers

POINTS = 12  # random states whose Jacobian patterns are united


def reaching(names, analytes, p: dict, points: int = POINTS, seed: int = 0) -> tuple[str, ...]:
    """The subset of parameter `names` (in their order) that can move at least one of the biomarkers `analytes`
    (names of `vpop.observation.readouts.biomarkers`) of a patient with parameters `p` (scalars)."""
    names = tuple(names)
    if not names:
        return ()
    p = {k: jnp.asarray(v, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32) for k, v in p.items()}
    dtype = p[names[0]].dtype
    y0 = initial_state(p)
    S = y0.shape[0]
    rng = np.random.default_rng(seed)
    ys = jnp.asarray(np.exp(rng.uniform(-6.0, 1.0, (points, S))), dtype)
    ts = jnp.asarray(rng.uniform(0.0, 28.0, points), dtype)
    zero = jnp.zeros(len(names), dtype)

    def scaled(theta):
        return {**p, **{n: p[n] * jnp.exp(theta[i]) for i, n in enumerate(names)}}

    def f(t, y, theta):
        return rhs(t, y, scaled(theta))

    def bio(y, theta):
        out = biomarkers(y, scaled(theta))
        return jnp.stack([jnp.asarray(out[a], dtype) for a in analytes])

    @jax.jit  # one program: eager Jacobians of the full right-hand side dispatch thousands of small operations
    def patterns(ts, ys, zero):
        union = lambda a: jnp.any(jnp.abs(a) > 0, axis=0)  # noqa: E731  over the points
        return (union(jax.vmap(jax.jacfwd(f, 1), (0, 0, None))(ts, ys, zero)),  # (S, S): state i reads state j
                union(jax.vmap(jax.jacfwd(f, 2), (0, 0, None))(ts, ys, zero))  # (S, K), and the initial values
                | (jnp.abs(jax.jacfwd(lambda th: initial_state(scaled(th)))(zero)) > 0),
                union(jax.vmap(jax.jacfwd(bio, 0), (0, None))(ys, zero)),  # (A, S)
                union(jax.vmap(jax.jacfwd(bio, 1), (0, None))(ys, zero)))  # (A, K)

    feeds, enters, reads, direct = (np.asarray(a) for a in patterns(ts, ys, zero))
    reached = enters.copy()  # (S, K): states parameter k moves, closed over `feeds`
    while True:
        more = reached | ((feeds.astype(int) @ reached.astype(int)) > 0)
        if (more == reached).all():
            break
        reached = more
    moves = direct | ((reads.astype(int) @ reached.astype(int)) > 0)  # (A, K)
    return tuple(n for k, n in enumerate(names) if moves[:, k].any())

"""The posterior of a data set as a function of the data: one compilation per design, not per data set.

A `FitProblem` closed over by a jitted function is baked into the program as constants, so every new data
set (a replicate of a coverage study, a bootstrap sample) recompiles the course (~1 min on the CPU).
`traced(problem)` is the same problem as a pytree whose arrays are leaves: passed as an *argument* of a jitted
function, only its design (patients, observation slots, grid, free set, the parameters equal in every
patient and their values) is static, so data sets of one design share one compiled program.

Parameters equal in every patient stay compile-time constants (as `vpop.fitting.model.shared_as_scalars`
makes them); those that vary (covariate effects) become traced leaves.
"""

from __future__ import annotations

from dataclasses import fields
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer.util import potential_energy

from vpop.fitting.model import FitProblem

ARRAY_FIELDS = ("doses", "obs_k", "obs_w", "obs_analyte", "obs_logv", "obs_cens", "obs_mask")


class TracedProblem(FitProblem):
    """A FitProblem registered as a pytree (module docstring)."""


def _flatten(p: TracedProblem):
    const = tuple(sorted((k, float(np.asarray(v).flat[0])) for k, v in p.base.items()
                         if not isinstance(v, jax.core.Tracer) and np.asarray(v).size and np.all(np.asarray(v) == np.asarray(v).flat[0])))
    const_names = {k for k, _ in const}
    varying = {k: v for k, v in p.base.items() if k not in const_names}
    leaves = ([getattr(p, f) for f in ARRAY_FIELDS], varying, dict(p.grades))
    aux = (p.free, p.analytes, p.settings, p.n_grid, tuple(np.asarray(p.log_ref).tolist()),
           tuple(np.asarray(p.prior_sd).tolist()), const, tuple(map(str, p.ids)), p.omega_prior, p.sigma_prior,
           int(np.shape(p.doses)[0]), tuple(p.nuisance), tuple(map(tuple, np.asarray(p.nuisance_chol).tolist())))
    return leaves, aux


def _unflatten(aux, leaves):
    free, analytes, settings, n_grid, log_ref, prior_sd, const, ids, omega_prior, sigma_prior, n, nuisance, chol = aux
    arrays, varying, grades = leaves
    base = {k: np.full(n, v) for k, v in const}
    base.update(varying)
    kw = dict(zip(ARRAY_FIELDS, arrays))
    return TracedProblem(free=free, analytes=analytes, settings=settings, n_grid=n_grid, log_ref=np.asarray(log_ref),
                         prior_sd=np.asarray(prior_sd), base=base, grades=grades, ids=list(ids),
                         omega_prior=omega_prior, sigma_prior=sigma_prior, nuisance=nuisance,
                         nuisance_chol=np.asarray(chol, float).reshape(len(nuisance), len(nuisance)), **kw)


jax.tree_util.register_pytree_node(TracedProblem, _flatten, _unflatten)


def traced(problem: FitProblem) -> TracedProblem:
    """The problem as a pytree (arrays as jnp leaves of a fixed dtype, so equal designs give equal signatures)."""
    import jax.numpy as jnp

    kw = {f.name: getattr(problem, f.name) for f in fields(FitProblem)}
    for f in ARRAY_FIELDS:
        kw[f] = jnp.asarray(kw[f])
    kw["base"] = {k: np.asarray(v, np.float64) for k, v in problem.base.items()}
    kw["grades"] = {k: jnp.asarray(v) for k, v in problem.grades.items()}
    return TracedProblem(**kw)


class Layout:
    """The flat unconstrained vector of a model's latent sites: (name, shape) in ravel order (sorted names)."""

    def __init__(self, tree0: dict):
        self.spec = tuple((k, tuple(np.shape(tree0[k]))) for k in sorted(tree0))

    def unravel(self, x) -> dict:
        out, i = {}, 0
        for k, shape in self.spec:
            size = int(np.prod(shape)) if shape else 1
            out[k] = x[i:i + size].reshape(shape)
            i += size
        return out

    def __hash__(self):
        return hash(self.spec)

    def __eq__(self, other):
        return isinstance(other, Layout) and self.spec == other.spec


def _model_kwargs(parameterisation):
    return {"cohort": None, "ignore_censoring": False, "parameterisation": parameterisation}


@partial(jax.jit, static_argnames=("layout", "parameterisation", "correction"))
def value_and_grad(x, problem, frozen, layout: Layout, parameterisation: str, correction):
    """Value and gradient of the negative log posterior (+ `correction(problem, params, frozen, centred)` when
    given; params are the unconstrained site values) at the flat unconstrained x, with the data as an argument.
    `correction` must be a module-level function (it is part of the compiled program's key)."""
    from vpop.fitting.statistical_model import numpyro_model

    kw = _model_kwargs(parameterisation)

    def f(y):
        params = layout.unravel(y)
        out = potential_energy(numpyro_model, (problem,), kw, params)
        if correction is not None:
            out = out + correction(problem, params, frozen, parameterisation == "centred")
        return out

    return jax.value_and_grad(f)(x)


POSITIVE_SITES = ("omega", "sigma")  # HalfNormal: exp from the unconstrained space


def fast_sites(problem, params):
    """The fast path's sites on their natural scale (omegas and sigmas from their logs)."""
    return {k: jnp.exp(v) if k in POSITIVE_SITES else v for k, v in params.items()}


def fast_path(problem, cohort, options) -> bool:
    """The default model on time courses without grades: its posterior compiles once per design (`vpop.fitting.traced`)."""
    return (problem is not None and cohort is None and not problem.grades
            and (options is None or (options.omega == "diag" and not options.covariate_names and options.error == "log"
                                     and not options.bov)))

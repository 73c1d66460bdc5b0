"""A NumPyro model's posterior in its unconstrained space, as a flat vector (MAP, Laplace, NUTS draws).

    u = Unconstrained(model, args, kwargs, init_values)
    u.x0                      # flat start (the init values, unconstrained)
    u.potential(x)            # negative log posterior density (with the Jacobians of the transforms)
    u.constrain(xs)           # (draws, D) -> {site: (draws, ...)} on the model's scale, plus derived sites
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from numpyro.distributions import biject_to
from numpyro.infer import init_to_value
from numpyro.infer.util import initialize_model

from vpop.fitting.statistical_model import derived_sites


class Unconstrained:
    def __init__(self, model, args, kwargs, init_values, seed: int = 0):
        info = initialize_model(jax.random.PRNGKey(seed), model, init_strategy=init_to_value(values=init_values),
                                model_args=args, model_kwargs=kwargs,
                                validate_grad=False)  # the estimators compile their own gradient
        self.tree0 = info.param_info.z
        self.x0, self.unravel = ravel_pytree(self.tree0)
        self._potential_tree = info.potential_fn
        trace = info.model_trace
        self.transforms = {k: biject_to(trace[k]["fn"].support) for k in self.tree0}
        self.sizes = {k: int(jnp.size(v)) for k, v in self.tree0.items()}
        self.options = kwargs.get("options")  # the derived sites of BOV need its occasion design
        problem = args[0] if args else None  # the centred nuisance effects' z need their fixed Cholesky factor
        self.nuisance_chol = getattr(problem, "nuisance_chol", None)

    @property
    def dim(self) -> int:
        return int(self.x0.shape[0])

    def potential(self, x):
        return self._potential_tree(self.unravel(x))

    def slices(self) -> dict:
        """site -> slice of the flat vector (ravel_pytree orders sites by sorted name)."""
        out, i = {}, 0
        for k in sorted(self.tree0):
            out[k] = slice(i, i + self.sizes[k])
            i += self.sizes[k]
        return out

    def constrain_tree(self, tree) -> dict:
        return {k: self.transforms[k](v) for k, v in tree.items()}

    def constrain(self, xs) -> dict:
        """(draws, D) unconstrained -> constrained sites and the derived ones (theta, z, corr)."""
        out = jax.jit(jax.vmap(lambda x: self.constrain_tree(self.unravel(x))))(jnp.asarray(xs))
        return derived_sites(out, self.options, self.nuisance_chol)

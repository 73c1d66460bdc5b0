"""What a traced function's values depend on: a walk over its jaxpr.

Two parts of vpop ask of a traced program which outputs do not read certain inputs: the solver (loss
rates that depend on the parameters only, `vpop.solver.etdrk.constant_loss_rows`) and the sampler
(parameters that no patient key feeds, `vpop.population.sampler.shared_outputs`). Both read the
program, not values, so the answer holds for every input.
"""

from __future__ import annotations

from typing import Sequence

from jax.extend.core import Literal


def dependence(jaxpr, reads: Sequence[bool]) -> dict:
    """For every variable of `jaxpr`, whether it depends on the inputs marked True in `reads` (one per invar).

    Constants depend on nothing; an equation's outputs depend on an input when any of its operands does
    (conservative for equations with inner programs, which count as a whole).
    """
    dep = {v: bool(r) for v, r in zip(jaxpr.invars, reads, strict=True)}
    dep.update({v: False for v in jaxpr.constvars})
    for eqn in jaxpr.eqns:
        d = any(depends(dep, v) for v in eqn.invars)
        for v in eqn.outvars:
            dep[v] = d
    return dep


def depends(dep: dict, v) -> bool:
    """Whether variable `v` depends on the marked inputs (`dependence`); a literal never does."""
    return False if isinstance(v, Literal) else dep.get(v, False)

"""States, drugs and equations are declared once, by name, and checked against each other."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from vpop.model import equations
from vpop.model.drugs import DRUGS
from vpop.model.spec import BASE
from vpop.model.states import STATES


def test_every_state_is_declared_once_with_a_unit_and_a_meaning():
    names = [s.name for s in STATES]
    assert len(names) == len(set(names)) == equations.N_STATES
    assert all(s.unit and s.description and s.group for s in STATES)
    assert BASE.state_names == tuple(names) == tuple(equations.IDX)


def test_every_drug_doses_a_declared_state():
    assert {d.state for d in DRUGS} <= set(BASE.state_names)
    assert len({d.dose for d in DRUGS}) == len(DRUGS)


def test_assembly_refuses_a_missing_or_an_undeclared_state():
    one = jnp.ones(3)
    full = {n: one for n in equations.STATE_NAMES}
    P, D = equations.assemble(full, full, like=one)
    assert P.shape == (equations.N_STATES, 3)
    short = dict(full)
    short.pop("crp")
    with pytest.raises(ValueError, match=r"missing for \['crp'\]"):
        equations.assemble(short, full, like=one)
    with pytest.raises(ValueError, match=r"undeclared states \['crp2'\]"):
        equations.assemble(full, {**full, "crp2": one}, like=one)


def test_terms_land_on_the_state_they_name():
    """Production and loss given by name come out in the declared order (P - D y at y = 0 is P)."""
    one = jnp.ones(())
    P = {n: jnp.asarray(float(i)) for i, n in enumerate(equations.STATE_NAMES)}
    D = {n: one for n in equations.STATE_NAMES}
    stacked, _ = equations.assemble(P, D, like=one)
    assert float(stacked[equations.IDX["ferritin"]]) == float(equations.STATE_NAMES.index("ferritin"))

"""A model: declared states, drugs and equations, and the way to extend it.

`BASE` is vpop's model (`vpop.model.states`, `vpop.model.drugs`, `vpop.model.equations`).
`Model.extend` adds states, parameters, drugs and equation terms by name, without editing
any module of the package (docs/extending.md has a worked example: siltuximab):

    model = BASE.extend(
        states=[State("siltuximab", "mg", "siltuximab in the body", "drugs")],
        parameters={"siltuximab_clearance": 0.23, ...},
        drugs=[Drug("siltuximab_mg", "siltuximab")],
        terms=[siltuximab_terms],   # (t, s, p) -> {state name: (production, loss rate)}
    )

A term returns, for each state it acts on, a production (amount per day, >= 0) and a
first-order loss rate (per day, >= 0) that are added to that state's own, so every term
keeps the production-loss form the exponential integrator relies on. Terms are checked by
name: a term naming an undeclared state, or a declared extension state no term drives, is
an error when the model is first evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax.numpy as jnp

from vpop.model import equations
from vpop.model.drugs import DRUGS, Drug
from vpop.model.states import STATES, State

BASE_STATE_COUNT = len(STATES)


@dataclass(frozen=True)
class Model:
    """States, drugs, extension parameters (name, default) and extension terms. Hashable: a static setting."""

    states: tuple[State, ...] = STATES
    drugs: tuple[Drug, ...] = DRUGS
    parameters: tuple[tuple[str, float], ...] = ()
    terms: tuple[Callable, ...] = ()

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.states)

    def index(self, name: str) -> int:
        try:
            return self.state_names.index(name)
        except ValueError:
            raise KeyError(f"state {name!r}: not declared; declared: {', '.join(self.state_names)}") from None

    def extend(self, states=(), parameters=None, drugs=(), terms=()) -> "Model":
        names = set(self.state_names)
        for s in states:
            if s.name in names:
                raise ValueError(f"state {s.name!r} is already declared")
            names.add(s.name)
        for d in drugs:
            if d.state not in names:
                raise ValueError(f"drug {d.dose!r} doses into {d.state!r}, which is not declared")
        return Model(self.states + tuple(states), self.drugs + tuple(drugs),
                     self.parameters + tuple((parameters or {}).items()), self.terms + tuple(terms))

    def with_defaults(self, p: dict) -> dict:
        """`p` with the extension parameters' defaults where `p` does not set them."""
        if not self.parameters:
            return p
        ref = jnp.asarray(p["tumor_burden"])
        return {**{k: jnp.asarray(v, ref.dtype) for k, v in self.parameters}, **p}

    def named(self, y) -> dict:
        return {name: y[i] for i, name in enumerate(self.state_names)}

    def production_loss(self, t, y, p):
        """P(t, y) >= 0 and D(t, y) >= 0 of every declared state, the terms added by name."""
        P, D = equations.production_loss(t, y[:BASE_STATE_COUNT], p)
        if len(self.states) == BASE_STATE_COUNT and not self.terms:
            return P, D
        shape = jnp.shape(y[0])
        extra = len(self.states) - BASE_STATE_COUNT
        zeros = jnp.zeros((extra, *shape), y.dtype)
        P, D = jnp.concatenate([P, zeros]), jnp.concatenate([D, zeros])
        s = self.named(y)
        driven = set()
        for term in self.terms:
            for name, (prod, loss) in term(t, s, p).items():
                i = self.index(name)
                driven.add(name)
                P = P.at[i].add(jnp.broadcast_to(prod, shape))
                D = D.at[i].add(jnp.broadcast_to(loss, shape))
        undriven = [n for n in self.state_names[BASE_STATE_COUNT:] if n not in driven]
        if undriven:
            raise ValueError(f"extension states with no equation term: {', '.join(undriven)}")
        return P, D

    def rhs(self, t, y, p):
        P, D = self.production_loss(t, y, p)
        return P - D * y

    def initial_state(self, p):
        """Base initial state; extension states start at 0 (nothing given yet)."""
        y0 = equations.initial_state(p)
        extra = len(self.states) - BASE_STATE_COUNT
        if extra:
            y0 = jnp.concatenate([y0, jnp.zeros((extra, *y0.shape[1:]), y0.dtype)])
        return y0

    def give(self, y, doses: dict, p):
        """Add the policy's doses (mg, by dose name) to the states they enter."""
        for drug in self.drugs:
            if drug.dose in doses:
                amount = doses[drug.dose] if drug.factor is None else doses[drug.dose] * p[drug.factor]
                y = y.at[self.index(drug.state)].add(amount)
        return y


BASE = Model()

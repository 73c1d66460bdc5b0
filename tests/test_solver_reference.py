"""The exponential integrator against an independent stiff reference (scipy Radau)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from vpop.model import equations as model

from vpop.observation import readouts
from vpop.solver.etdrk import _coefficients, integrate_interval

from helpers import one, sample_patients

# Doses given as boluses at these times (day, state, mg): both solvers restart there.
DOSES = [(2.0, "toci", 640.0), (3.0, "dex_central", 10.0), (3.5, "anakinra", 100.0)]
DAYS = 10.0


@functools.partial(jax.jit, static_argnums=1)
def _vpop_solution(p, substeps):
    n = int(DAYS / 0.25)
    bolus = np.zeros((n, model.N_STATES))
    for day, name, mg in DOSES:
        bolus[int(round(day / 0.25)), model.IDX[name]] += mg
    bolus = jnp.asarray(bolus)

    def interval(y, k):
        t = k * 0.25
        y = y + bolus[k]
        y, _, _ = integrate_interval(model.production_loss, readouts.interval_signs, t, t + 0.25, y, p,
                                     substeps, 1e-3, 1e-3, 6)
        return y, y

    return jax.lax.scan(interval, model.initial_state(p), jnp.arange(n))[1]


def _radau_solution(p):
    f = jax.jit(lambda t, y: model.rhs(t, y, p))
    jac = jax.jit(jax.jacfwd(lambda t, y: model.rhs(t, y, p), argnums=1))
    y = np.asarray(model.initial_state(p))
    grid = np.arange(1, int(DAYS / 0.25) + 1) * 0.25
    bounds = [0.0] + [d[0] for d in DOSES] + [DAYS]
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        for d in DOSES:
            if d[0] == a:
                y = y.copy()
                y[model.IDX[d[1]]] += d[2]
        ts = grid[(grid > a + 1e-9) & (grid <= b + 1e-9)]
        sol = solve_ivp(lambda t, yy: np.asarray(f(t, yy)), (a, b), y, method="Radau", t_eval=ts,
                        rtol=1e-8, atol=1e-10, jac=lambda t, yy: np.asarray(jac(t, yy)))
        assert sol.success
        out.append(sol.y.T)
        y = sol.y[:, -1]
    return np.concatenate(out)


@pytest.mark.parametrize("patient", [0, 3, 7])
def test_matches_radau_on_every_state(default_config, patient):
    _, p, _ = sample_patients(default_config, np.arange(8))
    pi = one(p, patient)
    ours = np.asarray(_vpop_solution(pi, 60))
    ref = _radau_solution(pi)
    # 1e-4 relative, with an absolute floor far below any clinically read level
    # (1e-6 of each state's own range) for states passing through zero.
    scale = np.abs(ref).max(axis=0)
    err = np.abs(ours - ref) / (np.abs(ref) + 1e-6 * scale + 1e-12)
    worst = err.max(axis=0)
    assert worst.max() < 1e-4, dict(zip(model.STATE_NAMES, worst.round(7)))


def test_etdrk4_converges_at_fourth_order(default_config):
    _, p, _ = sample_patients(default_config, np.arange(1))
    pi = one(p, 0)
    ref = np.asarray(_vpop_solution(pi, 96))
    # The organ-injury accumulators integrate a kink (max(0, 65 - MAP)); the
    # order is measured on the smooth states.
    smooth = [i for i, n in enumerate(model.STATE_NAMES) if n not in ("hypoperfusion", "shock")]
    errs = []
    for sub in (6, 12):
        y = np.asarray(_vpop_solution(pi, sub))
        rel = np.abs(y - ref) / (np.abs(ref) + 1e-6 * np.abs(ref).max(axis=0) + 1e-12)
        errs.append(rel[:, smooth].max())
    order = np.log2(errs[0] / errs[1])
    assert order > 3.0, errs


def test_etdrk4_coefficients_match_their_definitions_across_the_series_switch():
    z = np.concatenate([-np.logspace(-9, 2, 300), [-0.5 - 1e-9, -0.5 + 1e-9, 0.0]])
    e, e2, q1, f1, f2, f3 = (np.asarray(x) for x in _coefficients(jnp.asarray(z))[:6])
    # Exact definitions in extended precision, with the z -> 0 limits.
    zl = np.asarray(z, dtype=np.longdouble)
    with np.errstate(invalid="ignore", divide="ignore"):
        em1 = np.expm1(zl)
        want = {
            "e": np.exp(zl), "e2": np.exp(zl / 2), "q1": np.where(zl == 0, 1, np.expm1(zl / 2) / (zl / 2)),
            "f1": np.where(zl == 0, 1, em1 / zl), "f2": np.where(zl == 0, 0.5, (em1 - zl) / zl**2),
            "f3": np.where(zl == 0, 1 / 6, (em1 - zl - zl**2 / 2) / zl**3),
        }
    small = np.abs(z) < 1e-3  # the long-double formulas themselves cancel there; use series
    want["f2"] = np.where(small, 0.5 + z / 6, want["f2"])
    want["f3"] = np.where(small, 1 / 6 + z / 24, want["f3"])
    for name, got in zip(("e", "e2", "q1", "f1", "f2", "f3"), (e, e2, q1, f1, f2, f3)):
        w = np.asarray(want[name], dtype=float)
        np.testing.assert_allclose(got, w, rtol=2e-6, atol=1e-14, err_msg=name)

"""The ETDRK4 step's continuous extension, its order, and the coefficients frozen for constant loss rates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

from vpop.model import equations as model
from vpop.model.spec import BASE
from vpop.model.states import STATE_NAMES
from vpop.observation import readouts
from vpop.run.config import load_config
from vpop.solver import etdrk

from helpers import sample_patients

# dy/dt = a + b t + c t^2 - L y, one row per loss rate: the forcing depends on t only and is quadratic,
# which is exactly the interpolant ETDRK4's weights integrate, so the step and its continuous extension
# must both be exact (to rounding), at every theta, for stiff and non-stiff L alike.
A, B, C = 3.0, -2.0, 5.0
LOSS = np.array([0.0, 1e-3, 0.7, 4.0, 60.0, 900.0])


def _quadratic_forcing(t, y, p):
    P = (A + B * t + C * t * t) * jnp.ones_like(y)
    return P, jnp.broadcast_to(jnp.asarray(LOSS)[:, None], y.shape)


def _exact(t0, s, y0):
    def one(L, y):
        integral, _ = quad(lambda u: np.exp(-L * (s - u)) * (A + B * (t0 + u) + C * (t0 + u) ** 2), 0.0, s,
                           epsabs=1e-14, epsrel=1e-13)
        return np.exp(-L * s) * y + integral

    return np.array([one(L, y) for L, y in zip(LOSS, y0[:, 0])])


@pytest.mark.parametrize("theta", [0.25, 0.5, 2.0 / 3.0])
def test_continuous_extension_is_exact_for_quadratic_forcing(theta):
    """Catches wrong b1/b2/b4 weights of the dense output (or a wrong exp(theta z)), not only at theta = 1/2."""
    with jax.enable_x64(True):
        t0, h = 0.3, 0.2
        y0 = jnp.asarray(np.linspace(0.5, 3.0, len(LOSS))[:, None])
        y1, _, (y_theta,) = etdrk.etdrk4_dense_step(_quadratic_forcing, t0, y0, h, {}, (theta,))
        # 1e-8: the six-term series of phi2 and phi3 for |z| < 0.5 (truncation ~1e-7 relative in them)
        np.testing.assert_allclose(np.asarray(y_theta)[:, 0], _exact(t0, theta * h, np.asarray(y0)), rtol=1e-8)
        np.testing.assert_allclose(np.asarray(y1)[:, 0], _exact(t0, h, np.asarray(y0)), rtol=1e-8)


def _logistic(t, y, p):
    """A non-linear production-loss system whose loss depends on the state (not exact for any ETD method)."""
    return 2.0 + jnp.sin(3.0 * t) * y, 1.0 + 4.0 * y * y


def _solve(steps, days=1.0):
    with jax.enable_x64(True):
        y = jnp.full((1, 1), 0.2)
        h = days / steps
        for i in range(steps):
            y, _ = etdrk.etdrk4_step(_logistic, i * h, y, h, {})
        return float(y[0, 0])


def test_etdrk4_converges_at_fourth_order():
    """Catches a stage or weight that drops the order (Krogstad's stages are fourth order)."""
    ref = _solve(4096)
    errors = [abs(_solve(n) - ref) for n in (8, 16, 32)]
    orders = np.log2(np.asarray(errors[:-1]) / np.asarray(errors[1:]))
    assert (orders > 3.5).all(), orders


@pytest.fixture(scope="module")
def patients():
    with jax.enable_x64(True):
        _, p, keys = sample_patients(load_config(None), np.arange(4))
    return p, keys


def test_constant_loss_rows_are_read_from_the_equations(patients):
    """Clearance-only states are found, states whose loss depends on the state or time are not."""
    p, _ = patients
    with jax.enable_x64(True):
        p = BASE.with_defaults(p)
        y = BASE.initial_state(p)
        rows = {STATE_NAMES[r] for r in etdrk.constant_loss_rows(BASE.production_loss, 0.0, y, p)}
    assert {"crp", "ifng", "tnf", "ferritin", "dex_central", "hypoperfusion"} <= rows
    # Loss depends on the state: tocilizumab blocks IL-6's receptor clearance; CAR-T contract with
    # their own density; the endothelium, glia and myeloid cells deactivate from their stimulus.
    assert not rows & {"il6", "car_effector", "toci", "endothelium", "glia", "myeloid", "fibrinogen", "platelets"}


def test_constant_loss_rows_sees_a_dependence_hidden_in_one_row():
    """A loss rate that reads y only through one state's row is not frozen; a constant one is."""
    def f(t, y, p):
        return jnp.zeros_like(y), jnp.stack([2.0 * p["k"], p["k"] * y[2], jnp.exp(-t) * p["k"]])

    p = {"k": jnp.ones(5)}
    assert etdrk.constant_loss_rows(f, 0.0, jnp.ones((3, 5)), p) == (0,)


def test_frozen_coefficients_change_nothing(patients):
    """Freezing the constant-loss coefficients is an evaluation-order change only: same course to rounding."""
    p, _ = patients
    with jax.enable_x64(True):
        p = BASE.with_defaults(p)
        y0 = BASE.initial_state(p)
        rows = etdrk.constant_loss_rows(BASE.production_loss, 0.0, y0, p)
        assert rows
        h = 0.25 / 3

        def run(frozen_rows):
            def step(y, i):
                fr = etdrk.frozen_coefficients(BASE.production_loss, frozen_rows, i * h, y, h, p)
                y, _, (mid,) = etdrk.etdrk4_dense_step(BASE.production_loss, i * h, y, h, p, (0.5,), fr)
                return y, mid

            # five days of 2-h steps: through CAR-T expansion and CRS
            y, mids = jax.jit(lambda y: jax.lax.scan(step, y, jnp.arange(60.0)))(y0)
            return np.asarray(y), np.asarray(mids)

        for a, b in zip(run(rows), run(())):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-300)


def test_hourly_chart_from_two_hour_steps_reads_between_steps():
    """Three 2-h steps charted hourly read the signs at 1, 3 and 5 h from the continuous extension: a sign
    that peaks at 1 h is charted at its peak, as six 1-h steps chart it (charting only at step ends, every
    2 h, would miss the peak)."""
    with jax.enable_x64(True):
        y0 = jnp.asarray(np.linspace(0.5, 3.0, len(LOSS))[:, None])
        hour = 1.0 / 24.0
        crossing = float(_exact(0.0, hour, np.asarray(y0))[3])  # row 3 (L = 4/day) passes here at 1 h

        def observe(t, y, p):  # peaks (at 0) when row 3 passes `crossing`, i.e. at 1 h
            return (-((y[3] - crossing) ** 2),)

        def worst(substeps, marks):
            _, (w,), _ = etdrk.integrate_interval(_quadratic_forcing, observe, 0.0, 0.25, y0, {}, substeps, 0.1, 0.05,
                                                  marks)
            return float(w[0])

        hourly_steps, dense, step_ends = worst(6, 6), worst(3, 6), worst(3, 3)
        assert abs(hourly_steps) < 1e-20 and abs(dense) < 1e-20  # both chart 1 h, where the sign peaks
        assert step_ends < -1e-6  # the 2-h chart misses it


def test_dense_charting_needs_a_divisor_of_the_marks():
    y = jnp.ones((len(LOSS), 2))
    with pytest.raises(ValueError, match="multiple"):
        etdrk.integrate_interval(_quadratic_forcing, lambda t, y, p: (y[0],), 0.0, 0.25, y, {}, 4, 0.1, 0.05, 6)

"""The diffrax peer of the benchmarks: plain `jit(vmap(diffeqsolve))`, Tsit5 + PID.

The same right-hand side as vpop's engine (`vpop.model.equations.rhs`), untreated,
28 days, output on the 6-h assessment grid, on whatever device is the default.
It does no grading and no management, so it does less work than vpop; it is the
baseline a JAX user would write first. Shared by scripts/bench_simulate.py and
scripts/bench_gpu.py so both time the same program.
"""

from __future__ import annotations

import time

import numpy as np

RTOL, ATOL = 1e-4, 1e-6
MAX_STEPS = 100_000


def sample_parameters(config, n: int, dtype, seed: int = 0) -> dict:
    """Individual parameters of patients 0..n-1 of `config` (the vpop draws), as `dtype` arrays."""
    from vpop.population.sampler import PopulationSampler, patient_keys
    from vpop.run.cohort import compiled_sampler, split_keys

    sampler = PopulationSampler(config.population, config.parameters)
    pop_keys, _ = split_keys(patient_keys(seed, np.arange(n)))
    _, p = compiled_sampler(sampler, dtype)(pop_keys)
    return p


def tsit5_pid(days: float = 28.0, assessment_hours: float = 6.0):
    """`jit(vmap(solve))`: parameters (N,) -> (states on the grid (N, rows, 32), accepted steps (N,))."""
    import diffrax
    import jax
    import jax.numpy as jnp

    from vpop.model import equations as model

    rows = int(round(days * 24 / assessment_hours)) + 1
    ts = jnp.arange(rows) * (assessment_hours / 24.0)

    def solve(pi):
        term = diffrax.ODETerm(lambda t, y, a: model.rhs(t, y, a))
        sol = diffrax.diffeqsolve(
            term, diffrax.Tsit5(), 0.0, days, 0.01, model.initial_state(pi), args=pi,
            saveat=diffrax.SaveAt(ts=ts), stepsize_controller=diffrax.PIDController(rtol=RTOL, atol=ATOL),
            max_steps=MAX_STEPS, throw=False,
        )
        return sol.ys, sol.stats["num_steps"]

    return jax.jit(jax.vmap(solve))


def time_solve(p) -> dict:
    """Compile, then run once on `p`; seconds of each, per patient, and the median accepted steps."""
    import jax

    n = int(np.shape(next(iter(p.values())))[0])
    f = tsit5_pid()
    t0 = time.perf_counter()
    compiled = f.lower(p).compile()
    t1 = time.perf_counter()
    ys, steps = compiled(p)
    jax.block_until_ready(ys)
    t2 = time.perf_counter()
    return {"n": n, "compile_s": t1 - t0, "run_s": t2 - t1, "per_patient_s": (t2 - t1) / n,
            "median_steps": float(np.median(np.asarray(steps))),
            "finite": bool(np.isfinite(np.asarray(ys)).all())}

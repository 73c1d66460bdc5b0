"""Floating-point work of the engine per patient and step, against what this CPU can do.

    python scripts/bench_flops.py [--batch 4096]

XLA's cost analysis (unoptimised HLO, so backend-independent flops; a
transcendental counts once) of the pieces of one assessment interval, per
patient: the solver's steps (`etdrk4_dense_step` with the constant-loss
coefficients frozen, as the engine runs them), the hourly chartings, the
frozen coefficients themselves (once per interval), and the rest of the
assessment (read-outs, grading under every scale, the policy, bookkeeping:
the engine's loop body minus one step and one charting). Then the engine is
timed on one batch and the achieved flop rate compared with this machine's
float32 matrix-multiply rate, measured in the same run. Ratio lines last.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import numpy as np


def _flops(lowered) -> float:
    c = lowered.cost_analysis()
    c = c[0] if isinstance(c, (list, tuple)) else (c or {})
    return float(c.get("flops", 0.0)) + float(c.get("transcendentals", 0.0))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4096)
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from vpop.engine import course
    from vpop.model.spec import BASE
    from vpop.observation import readouts
    from vpop.run import driver
    from vpop.run.config import load_config
    from vpop.population.sampler import PopulationSampler, patient_keys
    from vpop.solver import etdrk

    cfg = load_config(None)
    s = replace(cfg.engine, record_rows=False)
    B = args.batch
    pk, keys = driver.split_keys(patient_keys(0, np.arange(B)))
    _, p = driver.compiled_sampler(PopulationSampler(cfg.population, cfg.parameters), jnp.float32)(pk)
    policy = cfg.policy.to_arrays(jnp.float32)
    pd = BASE.with_defaults(p)
    y = BASE.initial_state(pd)
    t = jnp.float32(1.0)
    h = jnp.float32(s.dt / s.substeps)
    rows = etdrk.constant_loss_rows(BASE.production_loss, t, y, pd)
    per_step = s.chart_marks // s.substeps if s.substeps < s.chart_marks else 1
    thetas = tuple(j / per_step for j in range(1, per_step))
    frozen = jax.jit(lambda t, y, p: etdrk.frozen_coefficients(BASE.production_loss, rows, t, y, h, p))
    step = jax.jit(lambda t, y, p, fr: etdrk.etdrk4_dense_step(BASE.production_loss, t, y, h, p, thetas, fr))
    chart = jax.jit(readouts.interval_signs)
    fr = frozen(t, y, pd)
    pieces = {"step": _flops(step.lower(t, y, pd, fr)) / B, "chart": _flops(chart.lower(t, y, pd)) / B,
              "frozen coefficients": _flops(frozen.lower(t, y, pd)) / B}
    engine = jax.jit(lambda p, k, pol: course.simulate_batch(p, k, pol, s))
    body = _flops(engine.lower(p, keys, policy)) / B  # XLA counts each loop body once
    pieces["assessment (read-outs, grading, policy, bookkeeping)"] = max(
        0.0, body - pieces["step"] - pieces["chart"] - pieces["frozen coefficients"])
    per_interval = (s.substeps * pieces["step"] + s.chart_marks * pieces["chart"] + pieces["frozen coefficients"]
                    + pieces["assessment (read-outs, grading, policy, bookkeeping)"])

    compiled = engine.lower(p, keys, policy).compile()
    jax.block_until_ready(compiled(p, keys, policy))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(p, keys, policy))
        times.append(time.perf_counter() - t0)
    per_patient = min(times) / B
    achieved = per_interval * s.n_rows / per_patient

    a = jnp.ones((2048, 2048), jnp.float32)
    mm = jax.jit(lambda a: a @ a)
    jax.block_until_ready(mm(a))
    best = min(_timed(mm, a) for _ in range(5))
    peak = 2 * 2048 ** 3 / best

    print(f"machine: {os.cpu_count()} cores, jax {jax.__version__}; load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; batch {B}; {s.substeps} steps and "
          f"{s.chart_marks} chartings per {s.assessment_hours:g}-h interval, {s.n_rows} intervals")
    for k, v in pieces.items():
        print(f"  {k}: {v:,.0f} flop per patient")
    print(f"  one interval: {per_interval:,.0f} flop per patient "
          f"({s.substeps * pieces['step'] / per_interval:.0%} in the solver's steps)")
    print(f"engine: {1e3 * per_patient:.3f} ms per patient, {1e9 * per_patient / s.n_rows / s.substeps:.0f} ns "
          f"per patient-step, {achieved / 1e9:.1f} GFLOP/s")
    print(f"float32 matmul 2048^3 on this machine: {peak / 1e9:.1f} GFLOP/s")
    print(f"RATIO engine flop rate / matmul rate: {achieved / peak:.1%}")


def _timed(f, a) -> float:
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(f(a))
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()

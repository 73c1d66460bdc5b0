"""Benchmark: the engine alone, shared parameters as (batch,) arrays or as scalars, on one or several CPU devices.

Times one compiled engine call on a batch of patients (default config, no observation rows; no sampling,
tables or writing), best and median of --repeats calls, in four variants, each device count in its own
process (the count is fixed when JAX starts):

  arrays  x 1 device    every parameter a (batch,) array (the layout before 2026-12-02)
  scalars x 1 device    the 162 parameters shared by every patient as 0-d arrays (`driver.shared_as_scalars`)
  arrays  x D devices   each device runs the one-device program on its share
  scalars x D devices

and checks that the variants give the same grades.

    python scripts/bench_engine_layout.py                  # 8,192 patients, 6 steps, 2 devices
    python scripts/bench_engine_layout.py --substeps 3 --devices 2
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time


def worker(batch: int, substeps: int, repeats: int) -> dict:
    from dataclasses import replace

    import jax
    import jax.numpy as jnp
    import numpy as np

    from vpop.engine import sharding
    from vpop.engine.course import compiled_batch
    from vpop.population.sampler import PopulationSampler, patient_keys
    from vpop.run import driver
    from vpop.run.config import load_config

    cfg = load_config(None)
    settings = replace(driver.plan(cfg, batch, 0, False).settings, substeps=substeps)
    sampler = PopulationSampler(cfg.population, cfg.parameters)
    pop_keys, event_keys = driver.split_keys(patient_keys(0, np.arange(batch)))
    _, p = driver.compiled_sampler(sampler, jnp.float32)(pop_keys)
    layouts = {"arrays": p, "scalars": driver.shared_as_scalars(p, driver.shared_parameters(sampler))}
    policy = cfg.policy.to_arrays(jnp.float32)
    devs = jax.local_devices()
    share = batch // len(devs)
    engine = compiled_batch(settings)
    out = {"devices": len(devs)}
    grades = {}
    for name, params in layouts.items():
        parts = []
        for i, dev in enumerate(devs):
            cut = functools.partial(sharding.device_share, i=i, size=share, device=dev)
            parts.append((jax.tree_util.tree_map(cut, params), cut(event_keys), jax.device_put(policy, dev)))

        def call():
            return jax.block_until_ready([engine(*a) for a in parts])

        res = call()  # compile
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        out[name] = {"best_ms": 1e3 * min(times) / batch, "median_ms": 1e3 * float(np.median(times)) / batch}
        grades[name] = np.concatenate([np.asarray(r[0]["crs_grade_astct"]) for r in res])
    out["same_grades"] = bool(np.array_equal(grades["arrays"], grades["scalars"]))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--substeps", type=int, default=6)
    ap.add_argument("--devices", type=int, default=2, help="CPU devices of the several-device runs")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.batch, args.substeps, args.repeats)))
        return
    import jax

    print(f"{os.cpu_count()} cores, jax {jax.__version__}; batch {args.batch}, {args.substeps} steps per 6 h; "
          f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    rows = {}
    for d in (1, args.devices):
        env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(d)}
        run = subprocess.run([sys.executable, __file__, "--worker", "--batch", str(args.batch), "--substeps",
                              str(args.substeps), "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True, env=env)
        r = json.loads(run.stdout.strip().splitlines()[-1])
        for name in ("arrays", "scalars"):
            rows[(name, d)] = r[name]
            print(f"{name:>8} x {d} device(s): {r[name]['best_ms']:.4f} ms/patient best, "
                  f"{r[name]['median_ms']:.4f} median (same grades: {r['same_grades']})", flush=True)
    base = rows[("arrays", 1)]["median_ms"]
    for key, r in rows.items():
        print(f"RATIO {key[0]} x {key[1]} device(s) against arrays x 1 device (medians): {base / r['median_ms']:.2f}x")


if __name__ == "__main__":
    main()

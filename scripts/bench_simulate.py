"""Benchmark: vpop cohorts against the peers, in one run, on this machine.

Times vpop's default engine (ETDRK4, 12 steps per 6-h assessment, float32,
grading and ASCO management included) at several cohort sizes, each in its own
process so peak memory is its own, and in the same run:

  (a) a per-patient scipy LSODA loop on the same right-hand side (untreated,
      28 days, output on the 6-h grid) for a subsample of patients;
  (b) plain `jit(vmap(diffrax.diffeqsolve))` with Tsit5 and a PID controller
      on the same right-hand side and output grid;
  (c) grade agreement: maximum CRS and ICANS grades (every scale) of the
      default engine against a float64 reference with 96 steps per interval
      (validated against scipy Radau at rtol 1e-8 in tests/test_solver_reference.py).

Ratios are what to read: the machine is shared and noisy.

    python scripts/bench_simulate.py                       # 1k, 10k, 100k
    python scripts/bench_simulate.py --sizes 1000 --agreement-n 2000   # quick
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import platform
import resource
import subprocess
import sys
import time

import numpy as np


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


SUBSTEPS = None  # --substeps: override the default steps per interval


def _config():
    from dataclasses import replace

    from vpop.run.config import load_config

    cfg = load_config(None)
    return cfg if SUBSTEPS is None else replace(cfg, engine=replace(cfg.engine, substeps=SUBSTEPS))


def worker_vpop(n: int) -> dict:
    from vpop.run.cohort import simulate

    cfg = _config()
    t0 = time.perf_counter()
    r = simulate(cfg, n=n, seed=0, record_rows=False)
    wall = time.perf_counter() - t0
    return {"n": n, "compile_s": r.compile_seconds, "run_s": r.run_seconds, "wall_s": wall,
            "patients_per_s": n / r.run_seconds, "peak_rss_mb": _peak_rss_mb(),
            "failed": r.n_failed, "inaccurate": r.n_inaccurate}


def _sample(n: int, dtype):
    import jax.numpy as jnp

    from vpop.run.cohort import compiled_sampler, split_keys
    from vpop.run.config import load_config
    from vpop.population.sampler import PopulationSampler, patient_keys

    cfg = load_config(None)
    sampler = PopulationSampler(cfg.population, cfg.parameters)
    pop_keys, _ = split_keys(patient_keys(0, np.arange(n)))
    _, p = compiled_sampler(sampler, dtype)(pop_keys)
    return p


def worker_scipy(n: int) -> dict:
    import jax
    import jax.numpy as jnp
    from scipy.integrate import solve_ivp

    from vpop.model import equations as model
    jax.config.update("jax_enable_x64", True)
    p = _sample(n, jnp.float64)
    ts = np.arange(113) * 0.25
    rhs = jax.jit(model.rhs)
    times = []
    for i in range(n):
        pi = {k: v[i] for k, v in p.items()}
        y0 = np.asarray(model.initial_state(pi))
        rhs(0.0, y0, pi).block_until_ready()  # compile outside the timing
        t0 = time.perf_counter()
        sol = solve_ivp(lambda t, y: np.asarray(rhs(t, y, pi)), (0.0, 28.0), y0, method="LSODA",
                        t_eval=ts, rtol=1e-4, atol=1e-6)
        times.append(time.perf_counter() - t0)
        assert sol.success
    return {"n": n, "per_patient_s": float(np.median(times)), "mean_per_patient_s": float(np.mean(times))}


def worker_diffrax(n: int) -> dict:
    import jax.numpy as jnp

    from diffrax_baseline import time_solve  # shared with scripts/bench_gpu.py

    r = time_solve(_sample(n, jnp.float32))
    return {**r, "peak_rss_mb": _peak_rss_mb()}


def worker_agreement(n: int) -> dict:
    from dataclasses import replace

    from vpop.run.cohort import simulate

    cfg = _config()
    fast = simulate(cfg, n=n, seed=0, record_rows=False).patients
    ref_cfg = replace(cfg, dtype="float64", engine=replace(cfg.engine, substeps=96))
    ref = simulate(ref_cfg, n=n, seed=0, record_rows=False).patients
    cols = [c for c in ref.columns if "max_grade" in c]
    astct = ((fast.crs_max_grade == ref.crs_max_grade) & (fast.icans_max_grade == ref.icans_max_grade)).mean()
    every = np.all([fast[c].values == ref[c].values for c in cols], axis=0).mean()
    return {"n": n, "astct_same_max_grades": float(astct), "all_scales_same_max_grades": float(every)}


WORKERS = {"vpop": worker_vpop, "scipy": worker_scipy, "diffrax": worker_diffrax, "agreement": worker_agreement}


def _spawn(kind: str, n: int) -> dict:
    extra = [] if SUBSTEPS is None else ["--substeps", str(SUBSTEPS)]
    out = subprocess.run([sys.executable, __file__, "--worker", kind, "--n", str(n), *extra],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--scipy-n", type=int, default=20)
    ap.add_argument("--diffrax-sizes", default="1000,10000")
    ap.add_argument("--agreement-n", type=int, default=10000)
    ap.add_argument("--substeps", type=int, default=None, help="steps per assessment interval (default: the config's)")
    ap.add_argument("--compare-ref", default=None,
                    help="also time an earlier commit's engine side by side at the largest size "
                         "(scripts/bench_side_by_side.py; e.g. ecc6919, the last commit before the redesign)")
    ap.add_argument("--compare-repeats", type=int, default=2, help="alternating runs per tree with --compare-ref")
    ap.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    global SUBSTEPS
    SUBSTEPS = args.substeps
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args.n)))
        return

    import jax

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"python {platform.python_version()}, jax {jax.__version__}", flush=True)
    vp = {int(n): _spawn("vpop", int(n)) for n in args.sizes.split(",")}
    for n, r in vp.items():
        print(f"vpop      n={n:>7}: compile {r['compile_s']:.1f} s, run {r['run_s']:.1f} s "
              f"({r['patients_per_s']:.0f} patients/s, {1e3 / r['patients_per_s']:.3f} ms/patient), "
              f"wall {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB, failed {r['failed']}, "
              f"flagged {r['inaccurate']}", flush=True)
    best = max(vp.values(), key=lambda r: r["patients_per_s"])
    vpop_pp = 1.0 / best["patients_per_s"]
    sc = _spawn("scipy", args.scipy_n)
    print(f"scipy LSODA (per patient, median of {sc['n']}): {sc['per_patient_s'] * 1e3:.1f} ms "
          f"-> vpop is {sc['per_patient_s'] / vpop_pp:.0f}x faster per patient", flush=True)
    for n in args.diffrax_sizes.split(","):
        d = _spawn("diffrax", int(n))
        v = vp.get(int(n)) or best
        ratio = d["per_patient_s"] * v["patients_per_s"]
        print(f"diffrax Tsit5+PID n={d['n']:>6}: compile {d['compile_s']:.1f} s, run {d['run_s']:.1f} s "
              f"({1e3 * d['per_patient_s']:.3f} ms/patient, median {d['median_steps']:.0f} steps) "
              f"-> vpop is {ratio:.1f}x faster", flush=True)
    ag = _spawn("agreement", args.agreement_n)
    print(f"grade agreement vs float64 reference (n={ag['n']}): ASTCT {100 * ag['astct_same_max_grades']:.2f}%, "
          f"every scale {100 * ag['all_scales_same_max_grades']:.2f}%", flush=True)
    if args.compare_ref:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_side_by_side

        bench_side_by_side.main(["--ref", args.compare_ref, "--n", str(max(vp)),
                                 "--repeats", str(args.compare_repeats)])


if __name__ == "__main__":
    main()

"""Benchmark: vpop cohorts against the peers, in one run, on this machine.

Times vpop's default engine (ETDRK4, 3 steps per 6-h assessment charted hourly, float32,
grading and ASCO management included) at several cohort sizes, each in its own
process so peak memory is its own, and in the same run:

  (a) a per-patient scipy LSODA loop on the same right-hand side (untreated,
      28 days, output on the 6-h grid) for a subsample of patients;
  (b) plain `jit(vmap(diffrax.diffeqsolve))` with Tsit5 and a PID controller
      on the same right-hand side and output grid;
  (c) grade agreement: maximum CRS and ICANS grades (every scale) of the
      default engine against a float64 reference with 96 steps per interval
      (validated against scipy Radau at rtol 1e-8 in tests/test_solver_reference.py);
  (d) biomarker accuracy of vpop's solver at 3-24 steps and of diffrax on the
      untreated course, and vpop's speed at the step count as accurate as
      diffrax (speed at equal accuracy).

The ratio lines (RATIO ...) come last.

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
CPU_DEVICES = 1  # --cpu-devices: JAX CPU devices of the vpop workers (one engine program per device)


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


ACCURACY_STATES = ("il6", "crp", "ferritin", "car_effector", "leak", "glia")


def worker_accuracy(n: int) -> dict:
    """Biomarker accuracy on the untreated course (the peers' problem): vpop's solver at several step counts
    and diffrax Tsit5 + PID, both float32, against a float64 reference (ETDRK4, 96 steps per 6 h).

    For each state, the largest relative error over the 6-h grid where the reference is above 1e-3 of
    its peak, as the 99th percentile over patients."""
    import jax
    import jax.numpy as jnp

    from diffrax_baseline import tsit5_pid
    from vpop.model import equations as model
    from vpop.observation import readouts
    from vpop.solver.etdrk import integrate_interval

    rows = 113

    def grid(p, substeps):
        def interval(y, k):
            t = k * 0.25
            y, _, _ = integrate_interval(model.production_loss, readouts.interval_signs, t, t + 0.25, y, p,
                                         substeps, 0.1, 0.05, 6)
            return y, y
        y0 = model.initial_state(p)
        return jnp.concatenate([y0[None], jax.lax.scan(interval, y0, jnp.arange(rows - 1))[1]])  # (rows, states, N)

    with jax.enable_x64(True):
        p64 = _sample(n, jnp.float64)
        ref = np.asarray(jax.jit(grid, static_argnums=1)(p64, 96))
    p32 = _sample(n, jnp.float32)

    def errors(ys):  # ys (rows, states, N)
        out = {}
        for name in ACCURACY_STATES:
            i = model.IDX[name]
            r, g = ref[:, i, :], ys[:, i, :].astype(np.float64)
            live = r > 1e-3 * r.max(axis=0, keepdims=True)
            rel = np.where(live, np.abs(g - r) / np.where(live, r, 1.0), 0.0).max(axis=0)
            out[name] = float(np.percentile(rel, 99))
        return out

    result = {"n": n, "vpop": {}}
    for substeps in (3, 6, 12, 24):
        result["vpop"][substeps] = errors(np.asarray(jax.jit(grid, static_argnums=1)(p32, substeps)))
    ys, _ = tsit5_pid()(p32)
    result["diffrax"] = errors(np.moveaxis(np.asarray(ys), 0, -1))  # (N, rows, states) -> (rows, states, N)
    return result


WORKERS = {"vpop": worker_vpop, "accuracy": worker_accuracy, "scipy": worker_scipy, "diffrax": worker_diffrax, "agreement": worker_agreement}


def _spawn(kind: str, n: int, substeps: int | None = None) -> dict:
    substeps = SUBSTEPS if substeps is None else substeps
    extra = [] if substeps is None else ["--substeps", str(substeps)]
    env = dict(os.environ)
    if kind == "vpop" and CPU_DEVICES > 1:
        env["JAX_NUM_CPU_DEVICES"] = str(CPU_DEVICES)
    out = subprocess.run([sys.executable, __file__, "--worker", kind, "--n", str(n), *extra],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--scipy-n", type=int, default=20)
    ap.add_argument("--diffrax-sizes", default="1000,10000")
    ap.add_argument("--agreement-n", type=int, default=10000)
    ap.add_argument("--accuracy-n", type=int, default=200, help="patients for the biomarker-accuracy comparison")
    ap.add_argument("--equal-accuracy-n", type=int, default=20000,
                    help="cohort timed at the step count as accurate as diffrax on the biomarkers (0: skip)")
    ap.add_argument("--substeps", type=int, default=None, help="steps per assessment interval (default: the config's)")
    ap.add_argument("--compare-ref", default=None,
                    help="also time an earlier commit's engine side by side at the largest size "
                         "(scripts/bench_side_by_side.py; e.g. ecc6919, the last commit before the redesign)")
    ap.add_argument("--compare-repeats", type=int, default=2, help="alternating runs per tree with --compare-ref")
    ap.add_argument("--cpu-devices", type=int, default=1,
                    help="JAX CPU devices for vpop's timing runs (the engine runs one program per device on its "
                         "share of each batch; results are the same bit for bit)")
    ap.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    global SUBSTEPS, CPU_DEVICES
    SUBSTEPS = args.substeps
    CPU_DEVICES = args.cpu_devices
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args.n)))
        return

    import jax

    import diffrax
    import scipy

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"python {platform.python_version()}, jax {jax.__version__}, diffrax {diffrax.__version__}, "
          f"scipy {scipy.__version__}; load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    vp = {int(n): _spawn("vpop", int(n)) for n in args.sizes.split(",")}
    for n, r in vp.items():
        print(f"vpop      n={n:>7}, {CPU_DEVICES} CPU device(s): compile {r['compile_s']:.1f} s, run {r['run_s']:.1f} s "
              f"({r['patients_per_s']:.0f} patients/s, {1e3 / r['patients_per_s']:.3f} ms/patient), "
              f"wall {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB, failed {r['failed']}, "
              f"flagged {r['inaccurate']}", flush=True)
    best = max(vp.values(), key=lambda r: r["patients_per_s"])
    vpop_pp = 1.0 / best["patients_per_s"]
    sc = _spawn("scipy", args.scipy_n)
    print(f"scipy LSODA (per patient, median of {sc['n']}): {sc['per_patient_s'] * 1e3:.1f} ms", flush=True)
    diffrax_runs = []
    for n in args.diffrax_sizes.split(","):
        d = _spawn("diffrax", int(n))
        diffrax_runs.append(d)
        print(f"diffrax Tsit5+PID n={d['n']:>6}: compile {d['compile_s']:.1f} s, run {d['run_s']:.1f} s "
              f"({1e3 * d['per_patient_s']:.3f} ms/patient, median {d['median_steps']:.0f} steps)", flush=True)
    ag = _spawn("agreement", args.agreement_n)
    print(f"grade agreement vs float64 reference (n={ag['n']}): ASTCT {100 * ag['astct_same_max_grades']:.2f}%, "
          f"every scale {100 * ag['all_scales_same_max_grades']:.2f}%", flush=True)
    eq = equal = None
    if args.accuracy_n:  # 0 skips the accuracy comparison (and the equal-accuracy run)
        acc = _spawn("accuracy", args.accuracy_n)
        names = list(acc["diffrax"])
        print(f"biomarker accuracy, untreated, n={acc['n']}: 99th percentile over patients of the largest relative "
              f"error on the 6-h grid (float64 reference)", flush=True)
        print("  " + f"{'':>14}" + "".join(f"{n:>13}" for n in names))
        for label, errs in [*((f"vpop {k} steps", v) for k, v in acc["vpop"].items()), ("diffrax Tsit5", acc["diffrax"])]:
            print("  " + f"{label:>14}" + "".join(f"{errs[n]:>13.2e}" for n in names))
        # Equal accuracy: the fewest steps at least as accurate as Tsit5 on the quantities the grades read
        # (IL-6, CRP, leak, glia); float32 rounding keeps ferritin and CAR-T near 1e-5 at any step count.
        graded = ("il6", "crp", "leak", "glia")
        equal = next((int(k) for k, v in acc["vpop"].items() if all(v[n] <= acc["diffrax"][n] for n in graded)), None)
        if equal is not None and args.equal_accuracy_n:
            eq = _spawn("vpop", args.equal_accuracy_n, substeps=equal)
            print(f"vpop at {equal} steps per 6 h (as accurate as Tsit5 on {', '.join(graded)}), n={eq['n']}: "
                  f"{1e3 / eq['patients_per_s']:.3f} ms/patient", flush=True)
    # Ratio lines last.
    d_best = min(diffrax_runs, key=lambda d: d["per_patient_s"])
    print(f"RATIO vpop (default, n={best['n']}) vs scipy LSODA: {sc['per_patient_s'] / vpop_pp:.0f}x faster per patient")
    for d in diffrax_runs:
        v = vp.get(d["n"]) or best
        print(f"RATIO vpop (default, n={v['n']}) vs diffrax Tsit5+PID (n={d['n']}): "
              f"{d['per_patient_s'] * v['patients_per_s']:.1f}x faster per patient")
    print(f"RATIO vpop at scale (n={best['n']}) vs diffrax's best (n={d_best['n']}): "
          f"{d_best['per_patient_s'] / vpop_pp:.1f}x, at {100 * ag['all_scales_same_max_grades']:.2f}% grade agreement "
          f"(every scale, n={ag['n']})")
    if eq is not None:
        print(f"RATIO at equal biomarker accuracy ({equal} steps, n={eq['n']}) vs diffrax's best: "
              f"{d_best['per_patient_s'] * eq['patients_per_s']:.1f}x; vs scipy LSODA: "
              f"{sc['per_patient_s'] * eq['patients_per_s']:.0f}x")
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.compare_ref:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_side_by_side

        bench_side_by_side.main(["--ref", args.compare_ref, "--n", str(max(vp)),
                                 "--repeats", str(args.compare_repeats)])


if __name__ == "__main__":
    main()

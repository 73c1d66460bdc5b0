"""NUTS chains in lock-step (`--chain-method vectorized`) against chains in parallel over CPU devices.

    python scripts/bench_chains.py                          # 100 patients, 4 chains x (20 + 20), Laplace start
    python scripts/bench_chains.py --warmup 50 --draws 50 --n 100

Both runs sample the same posterior (scripts/bench_fit.py's 100-patient data set, centred) from the same
Laplace start (computed once here, then handed to each run), with the same seed, so their chains follow
the same trajectories: the same trees, the same leapfrog steps. What differs is only how the work is
executed, and the ratio of their times is the speed-up of the chain method on this machine. Each method
runs in its own process (the CPU device count is fixed when JAX starts), compile included in both (the
segment program is compiled once per run; `--segment` equal to warm-up and draws keeps it to one).
The RATIO line comes last.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(args) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    from vpop.engine import sharding

    devices = sharding.request_cpu_devices(args.chains if args.method == "parallel" else 1)
    sys.path.insert(0, str(HERE))
    import numpy as np
    from bench_fit import benchmark_problem

    from vpop.fitting import infer

    _, problem = benchmark_problem(args.n)
    with open(args.start, "rb") as f:
        start = pickle.load(f)
    t = time.perf_counter()
    fit = infer.run_nuts(problem, chains=args.chains, warmup=args.warmup, draws=args.draws, seed=0,
                         parameterisation="centred", init="laplace", laplace_start=start, segment=args.segment,
                         chain_method=args.method, progress=True)
    seconds = time.perf_counter() - t
    steps = np.asarray(fit.idata.sample_stats["n_steps"])
    print(json.dumps({"method": args.method, "devices": devices, "seconds": round(seconds, 1),
                      "mean_leapfrog_steps": float(steps.mean()),
                      "theta_mean": {k: float(v) for k, v in zip(fit.free, fit.samples["theta"].mean((0, 1)))}}),
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--segment", type=int, default=20)
    ap.add_argument("--method", default=None, help=argparse.SUPPRESS)  # child process
    ap.add_argument("--start", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.method is not None:
        return child(args)

    import jax

    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, str(HERE))
    from bench_fit import benchmark_problem

    from vpop.fitting import laplace

    _, problem = benchmark_problem(args.n)
    start = laplace.nuts_start(problem, parameterisation="centred")
    print(json.dumps({"laplace_start_s": round(start["seconds"], 1), "dimensions": int(start["mode"].shape[0])}),
          flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "start.pkl"
        with open(path, "wb") as f:
            pickle.dump(jax.device_get(start), f)
        for method in ("vectorized", "parallel"):
            cmd = [sys.executable, __file__, "--method", method, "--start", str(path)]
            for k in ("n", "chains", "warmup", "draws", "segment"):
                cmd += [f"--{k}", str(getattr(args, k))]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            sys.stderr.write(out.stderr[-2000:])
            results[method] = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(results[method]), flush=True)
    v, p = results["vectorized"], results["parallel"]
    print(f"RATIO parallel ({p['devices']} CPU devices) vs vectorized: {v['seconds'] / p['seconds']:.2f}x faster "
          f"({v['seconds']:.0f} s against {p['seconds']:.0f} s for {args.chains} x ({args.warmup} + {args.draws}), "
          f"{p['mean_leapfrog_steps']:.1f} and {v['mean_leapfrog_steps']:.1f} leapfrog steps per draw)")


if __name__ == "__main__":
    main()

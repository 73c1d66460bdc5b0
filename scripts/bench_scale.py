"""Scale benchmark: streamed cohorts at several N, throughput and peak memory.

    python scripts/bench_scale.py --n 10000 100000 [--days 28] [--chunk-size K] [--observations]

Each N runs in its own subprocess (so peak RSS, VmHWM from /proc/self/status,
belongs to that N alone), streaming a cohort into a temporary folder with
`vpop.run.streaming.simulate_stream`. Reports compile time, simulate time,
patients/s (excluding compile), peak RSS, and the memory-growth check: peak
RSS of the largest N over that of the smallest (bounded memory means a ratio
near 1, whatever the ratio of the Ns).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

WORKER = r"""
import json, os, resource, sys, time
t0 = time.perf_counter()
from dataclasses import replace
import jax
from vpop.engine import compile_cache
from vpop.run import streaming
from vpop.run.config import load_config
compile_cache.enable()
n, days, chunk, obs, out, config = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", sys.argv[5], sys.argv[6]
cfg = load_config(None if config == "-" else config)
cfg = replace(cfg, engine=replace(cfg.engine, days=days))
res = streaming.simulate_stream(cfg, out, n=n, seed=0, record_rows=obs,
                                chunk_size=None if chunk == "-" else int(chunk))
hwm = 0
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        hwm = int(line.split()[1]) / 1024
print(json.dumps({"n": n, "compile_s": res.compile_seconds, "simulate_s": res.run_seconds,
                  "wall_s": time.perf_counter() - t0, "peak_rss_mb": hwm,
                  "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "chunk_size": res.chunk_size, "parts": res.chunks_total,
                  "devices": len(jax.local_devices()), "backend": jax.default_backend(),
                  "jax": jax.__version__}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--days", type=float, default=28.0)
    ap.add_argument("--chunk-size", default="-")
    ap.add_argument("--observations", action="store_true", help="also write the observation dataset")
    ap.add_argument("--config", default="-")
    ap.add_argument("--json", default=None, help="append result lines to this file")
    args = ap.parse_args(argv)
    results = []
    for n in args.n:
        with tempfile.TemporaryDirectory(prefix="vpop-bench-") as tmp:
            cmd = [sys.executable, "-c", WORKER, str(n), str(args.days), str(args.chunk_size),
                   "1" if args.observations else "0", os.path.join(tmp, "out"), args.config]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["process_s"] = time.perf_counter() - t
            r["patients_per_s"] = n / r["simulate_s"] if r["simulate_s"] > 0 else float("nan")
            results.append(r)
            print(json.dumps(r), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(r) + "\n")
    print(f"\nload average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"\n| N | compile (s) | simulate (s) | wall (s) | patients/s | per patient (ms) | peak RSS (MB) | parts |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['n']:,} | {r['compile_s']:.1f} | {r['simulate_s']:.1f} | {r['process_s']:.1f} | "
              f"{r['patients_per_s']:,.0f} | {1e3 / r['patients_per_s']:.3f} | {r['peak_rss_mb']:,.0f} | {r['parts']} |")
    for a, b in zip(results[:-1], results[1:]):
        print(f"RATIO cost per patient at N={b['n']:,} / at N={a['n']:,}: "
              f"{a['patients_per_s'] / b['patients_per_s']:.2f} (at most 1 when the cost does not rise with N)")
    if len(results) > 1:
        small, large = results[0], results[-1]
        print(f"\nmemory growth: peak RSS at N={large['n']:,} / at N={small['n']:,} = "
              f"{large['peak_rss_mb'] / small['peak_rss_mb']:.2f} (N ratio {large['n'] / small['n']:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

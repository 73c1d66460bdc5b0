"""Peak memory (RSS) of `vpop simulate --n N` on the default config, each run in its own process.

    python scripts/bench_memory.py                       # N = 10000 30000 100000
    python scripts/bench_memory.py --n 10000 30000 --stream

Each run is `python -m vpop simulate --n N --out TMP --quiet` in a subprocess;
its peak resident set size is the child's `ru_maxrss` (resource.getrusage of
the waited-for child, via os.wait4), so nothing else in this process counts.
Prints one Markdown table row per N (for docs/performance.md, "Memory").
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time


def run_one(n: int, stream: bool, observations: bool, config: str | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="vpop-mem-") as tmp:
        cmd = [sys.executable, "-m", "vpop", "simulate"] + ([config] if config else []) + [
            "--n", str(n), "--out", os.path.join(tmp, "out"), "--quiet"]
        if stream:
            cmd.append("--stream")
        if not observations:
            cmd.append("--no-observations")
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out, err = proc.stdout.read(), proc.stderr.read()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(tmp, "out")) for f in fs)
    return {"n": n, "peak_rss_mb": usage.ru_maxrss / 1024.0, "wall_s": wall, "disk_mb": size / 1e6,
            "stdout": out}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--stream", action="store_true", help="measure `--stream` instead of the plain run")
    parser.add_argument("--no-observations", action="store_true")
    parser.add_argument("--config", default=None, help="config (default: the default config)")
    args = parser.parse_args(argv)

    import jax

    import vpop

    print(f"# {platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, jax {jax.__version__}, vpop {vpop.__version__}; "
          f"{'--stream' if args.stream else 'plain'}{', --no-observations' if args.no_observations else ''}")
    print("| N | peak RSS (MB) | wall (s) | output on disk (MB) |")
    print("|---:|---:|---:|---:|")
    for n in args.n:
        r = run_one(n, args.stream, not args.no_observations, args.config)
        print(f"| {n:,} | {r['peak_rss_mb']:,.0f} | {r['wall_s']:,.0f} | {r['disk_mb']:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The whole `vpop simulate` process against its own simulate time (issue 14, target 2).

    python scripts/bench_process.py                 # 10,000 patients, 1 warm-up + 5 timed runs
    python scripts/bench_process.py --n 10000 --runs 5 --config path.yaml
    python scripts/bench_process.py --ref /tmp/old-tree   # alternate with another checkout

Each run is what a user types, in a fresh process, writing Parquet to a temporary
folder: `python -m vpop simulate --n N --quiet --out DIR` (the same code path as the
`vpop` console script). Its wall time (start of the
process to its exit, the interpreter's start-up, imports, loading the compiled engine from
the warm cache, sampling, simulating, tables, Parquet and the exit) is set against the
simulate time the command itself reports. The first run warms the compilation cache and
is not counted. The ratio lines are printed last; docs/performance.md quotes them.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIMING = re.compile(r"compile ([0-9.]+) s, simulate ([0-9.]+) s")


def one_run(n: int, config: str | None, out: Path, tree: Path) -> tuple[float, float, float]:
    """(wall, compile, simulate) seconds of one `vpop simulate` process run from the checkout `tree`."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "vpop", "simulate", *([config] if config else []), "--n", str(n), "--quiet",
           "--out", str(out)]
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    found = TIMING.search(" ".join((done.stdout + done.stderr).split()))
    if found is None:
        raise SystemExit(f"no timing line in the output of {' '.join(cmd)}")
    return wall, float(found.group(1)), float(found.group(2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5, help="timed runs after one warm-up run")
    ap.add_argument("--config", default=None, help="config YAML (default: the shipped default)")
    ap.add_argument("--ref", default=None, help="another checkout of vpop, run alternately with this one")
    args = ap.parse_args()
    here = Path(__file__).resolve().parents[1]
    trees = {"this tree": here} | ({"ref": Path(args.ref).resolve()} if args.ref else {})
    config = str(Path(args.config).resolve()) if args.config else None
    ratios: dict = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        for name, tree in trees.items():
            wall, comp, sim = one_run(args.n, config, out, tree)
            print(f"{name} warm-up: wall {wall:.2f} s, compile {comp:.2f} s, simulate {sim:.2f} s (not counted)",
                  flush=True)
        for i in range(args.runs):
            for name, tree in trees.items():
                wall, comp, sim = one_run(args.n, config, out, tree)
                ratios[name].append(wall / sim)
                print(f"{name} run {i + 1}: wall {wall:.2f} s, compile {comp:.2f} s, simulate {sim:.2f} s, "
                      f"fixed {wall - sim:.2f} s, wall/simulate {wall / sim:.2f}", flush=True)
    for name, r in ratios.items():
        print(f"{name}: wall/simulate over {args.runs} runs: median {statistics.median(r):.2f}, "
              f"range {min(r):.2f}-{max(r):.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()

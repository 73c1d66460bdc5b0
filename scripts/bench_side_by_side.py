"""Side-by-side speed of this tree's engine and an earlier commit's, in one run.

    python scripts/bench_side_by_side.py --ref ecc6919 --n 100000 --repeats 2

The earlier commit is exported (`git archive`) into a temporary folder and both trees run
`vpop.simulate(default config, n, seed, record_rows=False)` in fresh subprocesses, alternately
(old, new, old, new, ...), so background load hits both alike; each tree's best time counts.
Compilation is timed apart (a warm-up of one batch first). Prints patients per second for each
tree and the ratio new/old last; also the agreement of maximum grades between the two trees on
the same patients (the steady-state fix of the redesign moves some; see docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import io
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SNIPPET = r"""
import json, sys, time
import numpy as np
import vpop
from vpop import simulate
try:
    from vpop.run.config import load_config
except ImportError:
    from vpop.config import load_config
n, seed = int(sys.argv[1]), int(sys.argv[2])
cfg = load_config(None)
t0 = time.perf_counter(); simulate(cfg, n=256, seed=seed, record_rows=False); warm = time.perf_counter() - t0
t0 = time.perf_counter(); res = simulate(cfg, n=n, seed=seed, record_rows=False); run = time.perf_counter() - t0
pts = res.patients
cols = [c for c in pts.columns if c.startswith(("crs_max_grade", "icans_max_grade"))]
np.save(sys.argv[3], pts[cols].to_numpy(dtype=np.int8))
print(json.dumps({"warmup_s": warm, "run_s": run, "cols": cols}))
"""


def export(ref: str, dest: Path) -> Path:
    data = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest)
    return dest


def run_tree(tree: Path, n: int, seed: int, out: Path) -> dict:
    env = {"PYTHONPATH": str(tree), "VPOP_NO_CACHE": "1", "PATH": "/usr/bin:/bin",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SNIPPET, str(n), str(seed), str(out)], env=env, cwd=tree,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{tree}: failed\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default="ecc6919", help="the earlier commit (default: the last one before the redesign)")
    ap.add_argument("--n", type=int, default=100_000, help="patients per timed run")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs per tree")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old = export(args.ref, tmp / "old")
        times = {"old": [], "new": []}
        cols = {}
        for r in range(args.repeats):
            for name, tree in (("old", old), ("new", ROOT)):
                res = run_tree(tree, args.n, args.seed, tmp / f"{name}.npy")
                times[name].append(res["run_s"])
                cols[name] = res["cols"]
                print(f"run {r + 1} {name}: {res['run_s']:.1f} s ({args.n / res['run_s']:,.0f} patients/s), "
                      f"warm-up {res['warmup_s']:.1f} s", flush=True)
        cols_old, cols_new = cols["old"], cols["new"]
        a, b = np.load(tmp / "old.npy"), np.load(tmp / "new.npy")
        shared = [c for c in cols_new if c in cols_old]
        a = a[:, [cols_old.index(c) for c in shared]]
        b = b[:, [cols_new.index(c) for c in shared]]
    agree = {c: float(np.mean(a[:, i] == b[:, i])) for i, c in enumerate(shared)}
    best_old, best_new = min(times["old"]), min(times["new"])
    print(f"grade agreement new vs {args.ref} (same patients): min {min(agree.values()):.4f} "
          f"({min(agree, key=agree.get)}), mean {np.mean(list(agree.values())):.4f}")
    print(f"old ({args.ref}): {args.n / best_old:,.0f} patients/s (best of {args.repeats})")
    print(f"new (this tree): {args.n / best_new:,.0f} patients/s (best of {args.repeats})")
    print(f"ratio new/old: {best_old / best_new:.3f}")


if __name__ == "__main__":
    main()

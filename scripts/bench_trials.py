"""Benchmarks of the trial-design layer: simulated dose-escalation trials and a scenario sweep.

    python scripts/bench_trials.py                      # trials only (seconds)
    python scripts/bench_trials.py --sweep --n 200      # + a 5-dose x 3-policy sweep of n patients per cell

Prints one line per measurement; docs/performance.md (## Trial design) quotes them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from vpop.trials import designs
def bench_designs(trials: int) -> None:
    pool = designs.PatientPool.from_probabilities([0.05, 0.12, 0.30, 0.50, 0.70], n_pool=100_000)
    for name in ("boin", "3+3", "crm"):
        t0 = time.perf_counter()
        res = designs.run_design(name, pool, target=0.3, n_trials=trials, seed=0)
        dt = time.perf_counter() - t0
        s = res.summary()
        print(f"{name:5s} {trials} trials (5 doses, 10 cohorts of 3): {dt:.3f} s; "
              f"P(select dose 3) = {res.operating_characteristics().loc[2, 'p_select']:.3f}, "
              f"mean N = {s['mean_patients']:.1f}", flush=True)


SWEEP = """\
name: bench 5 doses x 3 policies
config: default.yaml
cohort: {{n: {n}, seed: 0}}
schedule: {{days: {days}}}
factors:
  dose_multiplier: [0.25, 0.5, 1, 2, 4]
  policy: [asco2021, none, prophylactic_dex]
scales: [astct]

"""


def bench_sweep(n: int, days: float) -> None:
    import os

    import jax

    from vpop.engine import compile_cache
    from vpop.trials.sweep import run_sweep

    compile_cache.enable()  # what `vpop sweep` does: the second and later sweeps load the engine from disk
    compiles = []  # XLA compilations (or compilation-cache loads) during the sweep, by duration

    def listen(event, seconds, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(listen)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.yaml"
        path.write_text(SWEEP.format(n=n, days=days))
        t0 = time.perf_counter()
        res = run_sweep(path, Path(tmp) / "out")
        dt = time.perf_counter() - t0
        t1 = time.perf_counter()
        again = run_sweep(path, Path(tmp) / "out")
        dt2 = time.perf_counter() - t1
    print(f"sweep 5 doses x 3 policies x {n} patients x {days:g} days: {dt:.1f} s for {res.ran} cells "
          f"({len(res.table)} rows; compile included); resumed run {dt2:.2f} s ({again.skipped} cells skipped)",
          flush=True)
    print(f"XLA compilations during the sweep: {len(compiles)}, {sum(compiles):.1f} s in all, the longest "
          f"{max(compiles, default=0):.1f} s (compilation-cache loads count too)")
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"RATIO sweep time / 30 s target: {dt / 30:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--days", type=float, default=28.0)
    args = ap.parse_args()
    bench_designs(args.trials)
    if args.sweep:
        bench_sweep(args.n, args.days)


if __name__ == "__main__":
    main()

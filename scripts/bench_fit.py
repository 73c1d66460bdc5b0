"""Benchmark of `vpop.fitting`: 100 patients, 4 analytes, ~10 samples each.

    python scripts/bench_fit.py                     # SVI (1000 steps) and NUTS 4 x 500/500
    python scripts/bench_fit.py --nuts-chains 0     # SVI only
    python scripts/bench_fit.py --n 30 --svi-steps 300 --nuts-chains 2 --nuts-warmup 100 --nuts-draws 100

Prints compile + run seconds, the estimates against the truth and the NUTS diagnostics.
"""

from __future__ import annotations

import argparse
import json
import time

import jax

jax.config.update("jax_enable_x64", True)

from vpop.config import load_config  # noqa: E402
from vpop.fitting import infer, synthetic  # noqa: E402
from vpop.fitting import model as fm  # noqa: E402

FREE = ("car_prolif_max", "il6_per_myeloid", "crp_max")
TRUTH = {"car_prolif_max": 1.2, "il6_per_myeloid": 50000.0, "crp_max": 250.0}
OMEGA = {"car_prolif_max": 0.15, "il6_per_myeloid": 0.3, "crp_max": 0.25}
TIMES = [0.5, 1, 2, 3, 4, 5, 7, 10, 14, 21]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--svi-steps", type=int, default=1000)
    ap.add_argument("--nuts-chains", type=int, default=4)
    ap.add_argument("--nuts-warmup", type=int, default=500)
    ap.add_argument("--nuts-draws", type=int, default=500)
    args = ap.parse_args()
    cfg = load_config(None)
    t0 = time.perf_counter()
    data, truth = synthetic.simulate_dataset(cfg, args.n, FREE, TRUTH, OMEGA, 0.2, TIMES,
                                             ["car_t", "il6", "crp", "ferritin"], seed=11, lloq={"il6": 10.0})
    problem = fm.build_problem(data, cfg, FREE)
    out = {"patients": args.n, "observations": data.n_observations(), "censored": data.n_censored(),
           "grid_points": problem.n_grid + 1, "simulate_s": round(time.perf_counter() - t0, 1), "truth": TRUTH}
    print(json.dumps(out), flush=True)
    fit = infer.run_svi(problem, steps=args.svi_steps, lr=0.03)
    out["svi_s"] = round(fit.seconds, 1)
    out["svi"] = fit.theta_summary().round(4).to_dict("records")
    print(json.dumps({"svi_s": out["svi_s"], "svi": out["svi"]}), flush=True)
    if args.nuts_chains > 0:
        fit = infer.run_nuts(problem, chains=args.nuts_chains, warmup=args.nuts_warmup, draws=args.nuts_draws)
        d = fit.diagnostics
        out["nuts_s"] = round(fit.seconds, 1)
        out["nuts"] = fit.theta_summary().round(4).to_dict("records")
        out["nuts_diag"] = {k: d[k] for k in ("max_rhat", "min_ess_bulk", "divergences", "mean_leapfrog_steps", "warnings")}
        print(json.dumps({k: out[k] for k in ("nuts_s", "nuts", "nuts_diag")}, default=float), flush=True)


if __name__ == "__main__":
    main()

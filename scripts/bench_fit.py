"""Benchmark of `vpop.fitting`: 100 patients, 4 analytes, ~10 samples each.

    python scripts/bench_fit.py                     # SVI (1000 steps) and NUTS 4 x 500/500
    python scripts/bench_fit.py --nuts-chains 0     # SVI only
    python scripts/bench_fit.py --n 30 --svi-steps 300 --nuts-chains 2 --nuts-warmup 100 --nuts-draws 100
    python scripts/bench_fit.py --svi-steps 0 --nuts-chains 1 --nuts-warmup 50 --nuts-draws 50   # shortened NUTS
    python scripts/bench_fit.py --svi-steps 0 --nuts-init laplace --segment 25     # the issue-15 NUTS target
    python scripts/bench_fit.py ... --chain-method vectorized   # all chains in one program, in lock-step

Prints compile + run seconds, the estimates against the truth and the NUTS
diagnostics, the cost of one log-density gradient (the unit of NUTS work), and
for NUTS the measured seconds per leapfrog step with an extrapolation to
4 chains x 500 warm-up + 500 draws at the run's mean leapfrog steps per iteration.
"""

from __future__ import annotations

import argparse
import json
import time

import jax

jax.config.update("jax_enable_x64", True)
from vpop.engine import sharding  # noqa: E402
from vpop.run.config import load_config  # noqa: E402
from vpop.fitting import infer, synthetic  # noqa: E402
from vpop.fitting import model as fm  # noqa: E402
from vpop.fitting import statistical_model as sm

FREE = ("car_prolif_max", "il6_per_myeloid", "crp_max")
TRUTH = {"car_prolif_max": 1.2, "il6_per_myeloid": 50000.0, "crp_max": 250.0}
OMEGA = {"car_prolif_max": 0.15, "il6_per_myeloid": 0.3, "crp_max": 0.25}
TIMES = [0.5, 1, 2, 3, 4, 5, 7, 10, 14, 21]


def benchmark_problem(n: int, substeps: int | None = None, derivatives: str = "forward", nuisance="none"):
    """The benchmark's data set (n patients from the fitting model, seed 11) and its fitting problem.

    The data vary in the free parameters alone, so the right model has no nuisance random effects; `nuisance`
    ("config") adds them anyway, to measure what they cost per gradient."""
    cfg = load_config(None)
    data, _ = synthetic.simulate_dataset(cfg, n, FREE, TRUTH, OMEGA, 0.2, TIMES,
                                         ["car_t", "il6", "crp", "ferritin"], seed=11, lloq={"il6": 10.0})
    settings = fm.GridSettings(substeps=fm.GridSettings().substeps if substeps is None else substeps,
                               derivatives=derivatives)
    return data, fm.build_problem(data, cfg, FREE, settings, nuisance=nuisance)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--svi-steps", type=int, default=1000)
    ap.add_argument("--nuts-chains", type=int, default=4)
    ap.add_argument("--nuts-warmup", type=int, default=500)
    ap.add_argument("--nuts-draws", type=int, default=500)
    ap.add_argument("--guide", default="normal", help="SVI guide: normal, mvn, delta")
    ap.add_argument("--substeps", type=int, default=fm.GridSettings().substeps, help="ETDRK4 steps per 6-h interval")
    ap.add_argument("--parameterisation", default="centred", help="random effects for NUTS: centred or noncentred")
    ap.add_argument("--derivatives", default="forward", help="forward (sensitivities) or reverse")
    ap.add_argument("--nuisance", default="none", help="nuisance random effects of the fit: none or config")
    ap.add_argument("--nuts-init", default="reference", help="NUTS start: reference, map, sample or laplace "
                    "(the Laplace covariance as the dense mass matrix from the first iteration)")
    ap.add_argument("--target-accept", type=float, default=0.8, help="NUTS target acceptance probability")
    ap.add_argument("--segment", type=int, default=50, help="NUTS iterations per printed segment")
    ap.add_argument("--chain-method", default="parallel", help="NUTS chains: parallel (over CPU devices) or vectorized")
    ap.add_argument("--chain-devices", type=int, default=0, help="CPU devices for parallel chains (default: one per chain)")
    return ap.parse_args(argv)


def main(args: argparse.Namespace):
    t0 = time.perf_counter()
    data, problem = benchmark_problem(args.n, args.substeps, args.derivatives, args.nuisance)
    settings = problem.settings
    out = {"patients": args.n, "observations": data.n_observations(), "censored": data.n_censored(),
           "grid_points": problem.n_grid + 1, "settings": str(settings), "simulate_s": round(time.perf_counter() - t0, 1),
           "truth": TRUTH}
    print(json.dumps(out), flush=True)
    out["gradient_ms"] = gradient_ms(problem, args.parameterisation)
    print(json.dumps({"gradient_ms": out["gradient_ms"]}), flush=True)
    if args.svi_steps > 0:
        fit = infer.run_svi(problem, steps=args.svi_steps, lr=0.03, guide=args.guide)
        out["svi_s"] = round(fit.seconds, 1)
        out["svi"] = fit.theta_summary().round(4).to_dict("records")
        print(json.dumps({"svi_s": out["svi_s"], "guide": args.guide, "svi": out["svi"],
                          "svi_warnings": fit.diagnostics["warnings"]}), flush=True)
    if args.nuts_chains > 0:
        start = None
        if args.nuts_init == "laplace":
            from vpop.fitting import laplace

            start = laplace.nuts_start(problem, parameterisation=args.parameterisation, progress=True)
        fit = infer.run_nuts(problem, chains=args.nuts_chains, warmup=args.nuts_warmup, draws=args.nuts_draws,
                             parameterisation=args.parameterisation, init=args.nuts_init,
                             target_accept=args.target_accept, segment=args.segment, progress=True,
                             laplace_start=start, chain_method=args.chain_method)
        d = fit.diagnostics
        iters = args.nuts_chains * (args.nuts_warmup + args.nuts_draws)
        out["nuts_s"] = round(fit.seconds, 1)
        out["nuts"] = fit.theta_summary().round(4).to_dict("records")
        out["nuts_diag"] = {k: d.get(k) for k in ("max_rhat", "min_ess_bulk", "divergences", "mean_leapfrog_steps",
                                                  "mean_leapfrog_steps_warmup", "laplace_start_seconds", "warnings")}
        out["nuts_diag"]["min_ess_bulk_per_s"] = round(d["min_ess_bulk"] / fit.seconds, 4)
        per_iter = fit.seconds / iters
        out["nuts_extrapolation"] = {
            "iterations": iters, "seconds_per_iteration": round(per_iter, 3),
            # leapfrog steps are recorded for the draws only; warm-up is assumed to take as many per iteration
            "seconds_per_leapfrog_step": round(fit.seconds / (iters * d["mean_leapfrog_steps"]), 4),
            "4x500/500_at_this_rate_s": round(per_iter * 4000, 0),
            "4x500/500_from_gradient_cost_s": round(4000 * d["mean_leapfrog_steps"] * out["gradient_ms"] / 1000, 0)}
        print(json.dumps({k: out[k] for k in ("nuts_s", "nuts", "nuts_diag", "nuts_extrapolation")}, default=float), flush=True)


def gradient_ms(problem, parameterisation, repeats: int = 10) -> float:
    """Milliseconds per value-and-gradient of the log density (after compiling), at the prior centre."""
    from numpyro.infer.util import initialize_model

    info = initialize_model(jax.random.PRNGKey(0), sm.numpyro_model, model_args=(problem,),
                            model_kwargs={"parameterisation": parameterisation})
    vg = jax.jit(jax.value_and_grad(info.potential_fn))
    x = info.param_info.z
    jax.block_until_ready(vg(x))
    t = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(vg(x))
    return round((time.perf_counter() - t) / repeats * 1000, 2)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.chain_method == "parallel":  # before the first computation starts JAX's backends
        sharding.request_cpu_devices(arguments.chain_devices or arguments.nuts_chains)
    main(arguments)

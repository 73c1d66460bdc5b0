"""Parameter-recovery study of `vpop.fitting`: coverage of the 90 % intervals.

Replicate data sets are simulated by vpop from known parameters (different
seeds: new covariates, random effects and measurement error each time), each
is fitted, and per free parameter the script reports how often the 90 %
posterior interval of the typical value contains the truth (coverage; an
honest interval gives 0.9, and with R replicates the binomial 90 % range is
about 0.9 +- 1.645 sqrt(0.09 / R)), the bias of the posterior median (in log),
the mean interval width (in log), R-hat / bulk ESS / divergences (NUTS) and
times.

    python scripts/recovery_study.py                                   # 20 replicates, 10 patients, NUTS
    python scripts/recovery_study.py --replicates 20 --patients 10 --method nuts --chains 2 --warmup 200 --draws 200
    python scripts/recovery_study.py --method svi --guide mvn --steps 1000 --out svi_mvn.csv

Writes one CSV row per replicate and parameter (`--out`) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from vpop.run.config import load_config  # noqa: E402
from vpop.fitting import infer, synthetic  # noqa: E402
from vpop.fitting import model as fm  # noqa: E402
from vpop.fitting import statistical_model as sm

TRUTH = {"car_prolif_max": 1.3, "crp_max": 250.0, "il6_per_myeloid": 40000.0}  # config: 1.0, 350, 68830
OMEGA = {"car_prolif_max": 0.15, "crp_max": 0.2, "il6_per_myeloid": 0.3}
SIGMA = 0.2
TIMES = [1, 2, 3, 5, 7, 10]
ANALYTES = ["car_t", "crp", "il6"]
LLOQ = {"il6": 50.0}


def fit_one(cfg, args, free, rep):
    seed = 1000 + rep
    data, truth = synthetic.simulate_dataset(cfg, args.patients, free, {f: TRUTH[f] for f in free},
                                             {f: OMEGA[f] for f in free}, SIGMA, TIMES, ANALYTES, seed=seed, lloq=LLOQ)
    problem = fm.build_problem(data, cfg, free, fm.GridSettings(substeps=args.substeps))
    if args.method == "nuts":
        fit = infer.run_nuts(problem, chains=args.chains, warmup=args.warmup, draws=args.draws, seed=seed,
                             parameterisation=args.parameterisation)
    else:
        fit = infer.run_svi(problem, steps=args.steps, lr=args.lr, guide=args.guide, draws=args.draws * args.chains,
                            seed=seed, parameterisation=args.parameterisation)
    lt = np.asarray(fit.samples["log_theta"]).reshape(-1, len(free))
    om = np.asarray(fit.samples["omega"]).reshape(-1, len(free))
    d = fit.diagnostics
    table = {r["variable"]: r for r in d.get("table", [])}
    rows = []
    for j, name in enumerate(free):
        q05, q50, q95 = np.quantile(lt[:, j], [0.05, 0.5, 0.95])
        t = np.log(TRUTH[name])
        o05, o95 = np.quantile(om[:, j], [0.05, 0.95])
        diag = table.get(f"log_theta[{name}]", table.get(f"log_theta[{j}]", {}))
        rows.append({
            "replicate": rep, "seed": seed, "parameter": name, "truth": TRUTH[name],
            "median": float(np.exp(q50)), "q05": float(np.exp(q05)), "q95": float(np.exp(q95)),
            "covered": bool(q05 <= t <= q95), "bias_log": float(q50 - t), "width_log": float(q95 - q05),
            "prior_width_log": float(2 * 1.6449 * problem.prior_sd[j]),
            "omega_truth": OMEGA[name], "omega_q05": float(o05), "omega_q95": float(o95),
            "omega_covered": bool(o05 <= OMEGA[name] <= o95),
            "rhat": diag.get("r_hat", np.nan), "ess_bulk": diag.get("ess_bulk", np.nan),
            "max_rhat_all": d.get("max_rhat", np.nan), "min_ess_bulk_all": d.get("min_ess_bulk", np.nan),
            "divergences": d.get("divergences", 0), "mean_leapfrog_steps": d.get("mean_leapfrog_steps", np.nan),
            "seconds": fit.seconds, "observations": data.n_observations(), "censored": data.n_censored(),
        })
    return rows


def summarise(df: pd.DataFrame, replicates: int) -> pd.DataFrame:
    half = 1.6449 * np.sqrt(0.09 / max(replicates, 1))
    out = df.groupby("parameter").agg(
        replicates=("covered", "size"), coverage=("covered", "mean"), omega_coverage=("omega_covered", "mean"),
        bias_log=("bias_log", "mean"), rmse_log=("bias_log", lambda x: float(np.sqrt(np.mean(np.square(x))))),
        width_log=("width_log", "mean"), prior_width_log=("prior_width_log", "mean"),
        max_rhat=("rhat", "max"), min_ess_bulk=("ess_bulk", "min"), divergences=("divergences", "sum"),
        seconds_per_fit=("seconds", "mean"))
    out["coverage_ok"] = (out["coverage"] >= 0.8) & (out["coverage"] <= 0.97)
    out.attrs["binomial_range"] = (0.9 - half, 0.9 + half)
    return out.reset_index()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicates", type=int, default=20)
    ap.add_argument("--patients", type=int, default=10)
    ap.add_argument("--method", choices=("nuts", "svi"), default="nuts")
    ap.add_argument("--free", default="car_prolif_max,crp_max")
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--draws", type=int, default=200, help="NUTS draws per chain (SVI: draws x chains from the guide)")
    ap.add_argument("--parameterisation", choices=sm.PARAMETERISATIONS, default="centred")
    ap.add_argument("--steps", type=int, default=1000, help="SVI steps")
    ap.add_argument("--lr", type=float, default=0.03, help="SVI learning rate")
    ap.add_argument("--guide", choices=infer.GUIDES, default="mvn", help="SVI guide")
    ap.add_argument("--substeps", type=int, default=1, help="ETDRK4 steps per 6-h grid interval of the fit")
    ap.add_argument("--out", default="recovery_study.csv")
    ap.add_argument("--first", type=int, default=0,
                    help="resume: keep the rows of replicates < FIRST already in --out and run FIRST..replicates-1")
    args = ap.parse_args(argv)
    free = fm.check_free(s.strip() for s in args.free.split(","))
    cfg = load_config(None)
    settings = {k: v for k, v in vars(args).items()}
    print(json.dumps({"settings": settings, "truth": {f: TRUTH[f] for f in free}, "omega": {f: OMEGA[f] for f in free},
                      "sigma": SIGMA, "times": TIMES, "analytes": ANALYTES, "lloq": LLOQ}), flush=True)
    rows = []
    if args.first > 0:
        old = pd.read_csv(args.out)
        rows = old[old["replicate"] < args.first].to_dict("records")
    t0 = time.perf_counter()
    for rep in range(args.first, args.replicates):
        r = fit_one(cfg, args, free, rep)
        jax.clear_caches()  # each replicate compiles its own model; do not keep the old executables
        rows += r
        pd.DataFrame(rows).to_csv(args.out, index=False)  # written as it goes
        print(json.dumps({"replicate": rep, "elapsed_s": round(time.perf_counter() - t0, 1),
                          **{x["parameter"]: [round(x["q05"], 4), round(x["median"], 4), round(x["q95"], 4),
                                              "in" if x["covered"] else "OUT"] for x in r},
                          "rhat": r[0]["max_rhat_all"], "ess": r[0]["min_ess_bulk_all"], "div": r[0]["divergences"],
                          "fit_s": round(r[0]["seconds"], 1)}, default=float), flush=True)
    df = pd.DataFrame(rows)
    summ = summarise(df, args.replicates)
    lo, hi = summ.attrs["binomial_range"]
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(summ.round(4).to_string(index=False))
    print(f"honest 90% intervals give coverage within {lo:.2f}-{hi:.2f} (binomial 90% range for {args.replicates} "
          f"replicates); target 0.8-0.97; total {time.perf_counter() - t0:.0f} s; rows in {args.out}")
    return summ


if __name__ == "__main__":
    main()

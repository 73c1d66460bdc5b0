"""`vpop fit DATA [--cohort-table FILE] --config CONFIG --method nuts|svi --out DIR`.

Writes to DIR:
* posterior.nc: ArviZ InferenceData (NetCDF);
* diagnostics.json: R-hat, ESS, divergences (NUTS) or the loss (SVI), and warnings;
* summary.csv: posterior median and 90 % interval of each free typical value;
* fitted.yaml: an `extends:` config with the fitted typical values under
  `parameters:`, usable by `vpop simulate`;
* predictions.csv and observed_vs_predicted.png (matplotlib): observations
  against the posterior median prediction with a 90 % band;
* rates.csv and rates.png with --cohort-table: published against simulated rates.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

from vpop.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "fit", help="fit typical values and variability to patient time courses and cohort tables (NumPyro)",
        description="Hierarchical Bayesian fit of vpop's model to a NONMEM-style long CSV of biomarker time "
                    "courses (and optionally a published cohort table). docs/fitting.md describes the model.")
    parser.add_argument("data", nargs="?", default=None, help="NONMEM-style long CSV (omit to fit a cohort table only)")
    parser.add_argument("--cohort-table", default=None, help="cohort table CSV (published_cohorts.csv format)")
    parser.add_argument("--cohort", default=None, help="with --cohort-table: the cohort (trial) to use")
    parser.add_argument("--covariates", default=None, help="per-patient covariates/grades CSV with an ID column")
    parser.add_argument("--config", default=None, help="config YAML (default: the shipped default.yaml)")
    parser.add_argument("--method", choices=("svi", "nuts"), default="svi",
                        help="svi (stochastic variational inference, minutes) or nuts (MCMC, slower, exact)")
    parser.add_argument("--free", default=None, help="comma-separated free parameters (default: "
                        "car_prolif_max,il6_per_myeloid,crp_max)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--steps", type=int, default=1500, help="SVI steps")
    parser.add_argument("--lr", type=float, default=0.02, help="SVI Adam learning rate")
    parser.add_argument("--guide", choices=("normal", "mvn", "delta"), default="normal",
                        help="SVI guide: normal (mean-field), mvn (full covariance), delta (point)")
    parser.add_argument("--chains", type=int, default=4, help="NUTS chains")
    parser.add_argument("--warmup", type=int, default=500, help="NUTS warm-up (adaptation) steps per chain")
    parser.add_argument("--draws", type=int, default=500, help="NUTS posterior draws per chain")
    parser.add_argument("--parameterisation", choices=("noncentred", "centred"), default="noncentred",
                        help="random effects: noncentred (sparse data) or centred (rich per-patient data; "
                             "fewer NUTS steps)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the fit")
    parser.add_argument("--substeps", type=int, default=2, help="ETDRK4 steps per 6-h grid interval")
    parser.add_argument("--tau", type=float, default=0.1, help="cohort-table smoothing width (log units)")
    parser.add_argument("--virtual", type=int, default=200, help="virtual patients of the cohort-table likelihood")
    parser.add_argument("--predictive", type=int, default=10, help="posterior draws for predicted cohort rates")
    parser.add_argument("--no-grades", action="store_true", help="do not use observed grades")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    from vpop.run.config import load_config
    from vpop.fitting import cohort_tables, infer
    from vpop.fitting import model as fm
    from vpop.fitting.data import read_patient_data

    if args.data is None and args.cohort_table is None:
        raise UserError("give a DATA file, a --cohort-table, or both")
    for name in ("steps", "chains", "warmup", "draws", "substeps", "virtual"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name}: got {getattr(args, name)}; allowed: an integer >= 1")
    if args.tau <= 0:
        raise UserError(f"--tau: got {args.tau}; allowed: > 0")
    config = load_config(args.config)
    free = tuple(s.strip() for s in args.free.split(",")) if args.free else fm.DEFAULT_FREE
    free = fm.check_free(free)
    settings = fm.GridSettings(substeps=args.substeps)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a folder")

    problem = None
    if args.data is not None:
        data = read_patient_data(args.data, args.covariates)
        problem = fm.build_problem(data, config, free, settings, use_grades=not args.no_grades)
        _say(args, f"{data.n} patients, {data.n_observations()} observations ({data.n_censored()} below LLOQ), "
                   f"analytes {', '.join(data.analytes)}; free: {', '.join(free)}")
    cohort = targets = None
    if args.cohort_table is not None:
        targets = cohort_tables.read_cohort_table(args.cohort_table, args.cohort)
        if len({t.cohort for t in targets}) > 1:
            raise UserError(f"{args.cohort_table}: several cohorts; choose one with --cohort "
                            f"({', '.join(sorted({t.cohort for t in targets}))})")
        _say(args, f"cohort {targets[0].cohort}: setting surrogate thresholds with {args.virtual} virtual patients")
        cohort = cohort_tables.build_cohort_likelihood(config, targets, free, n_virtual=args.virtual, tau=args.tau,
                                                       settings=settings)
    progress = not args.quiet and sys.stderr.isatty()
    if args.method == "svi":
        fit = infer.run_svi(problem, cohort, steps=args.steps, lr=args.lr, guide=args.guide, seed=args.seed,
                            progress=progress, parameterisation=args.parameterisation)
    else:
        fit = infer.run_nuts(problem, cohort, chains=args.chains, warmup=args.warmup, draws=args.draws,
                             seed=args.seed, progress=progress, parameterisation=args.parameterisation)
    out.mkdir(parents=True, exist_ok=True)
    fit.idata.to_netcdf(str(out / "posterior.nc"), engine="h5netcdf")
    summary = fit.theta_summary()
    summary.to_csv(out / "summary.csv", index=False)
    diag = dict(fit.diagnostics)
    diag["seconds"] = fit.seconds
    (out / "diagnostics.json").write_text(json.dumps(diag, indent=2, default=float))
    write_fitted_config(out / "fitted.yaml", config, fit)
    if problem is not None:
        pred = prediction_table(problem, fit)
        pred.to_csv(out / "predictions.csv", index=False)
        from vpop.fitting import plots

        plots.observed_vs_predicted(pred, out / "observed_vs_predicted.png")
    if targets is not None:
        rates = infer.posterior_predictive_rates(config, fit, targets, n_draws=args.predictive, seed=args.seed)
        rates.to_csv(out / "rates.csv", index=False)
        bias = cohort.smoothing_bias()
        bias.to_csv(out / "smoothing_bias.csv", index=False)
        from vpop.fitting import plots

        plots.published_vs_simulated(rates, out / "rates.png")
    print(summary.to_string(index=False))
    for w in diag.get("warnings", []):
        print(f"WARNING: {w}", file=sys.stderr)
    print(f"wrote {out}/ (posterior.nc, diagnostics.json, summary.csv, fitted.yaml, ...) in {fit.seconds:.1f} s")
    return 0


def _say(args, msg):
    if not args.quiet:
        print(msg, file=sys.stderr)


def write_fitted_config(path: Path, config, fit) -> None:
    """An `extends:` config with the fitted typical values (posterior medians)."""
    med = fit.theta_summary().set_index("parameter")["median"].to_dict()
    omega = fit.omega_summary()
    src = Path(config.source).resolve()
    doc = {"extends": str(src), "name": f"{config.name}-fitted",
           "description": f"{config.name} with typical values fitted by vpop fit ({fit.method})",
           "parameters": {k: float(f"{v:.6g}") for k, v in med.items()}}
    head = "# Written by `vpop fit`. Posterior medians of the typical values.\n"
    if omega:
        head += "# Fitted between-patient SD of log (not written to population.variability, which the\n"
        head += "# config's mechanism sensitivities already carry): " + ", ".join(f"{k} {v:.3g}" for k, v in omega.items()) + "\n"
    path.write_text(head + yaml.safe_dump(doc, sort_keys=False))


def prediction_table(problem, fit, n_draws: int = 50, seed: int = 0):
    """Observed values with the posterior median and 90 % band of the individual predictions."""
    import jax
    import jax.numpy as jnp
    import pandas as pd

    from vpop.fitting import model as fm

    lt = np.asarray(fit.samples["log_theta"]).reshape(-1, len(problem.free))
    om = np.asarray(fit.samples["omega"]).reshape(-1, len(problem.free))
    z = np.asarray(fit.samples["z"]).reshape(-1, problem.n, len(problem.free))
    pick = np.random.default_rng(seed).choice(len(lt), size=min(n_draws, len(lt)), replace=False)
    f = jax.jit(lambda lf: fm.predictions(problem, lf)[0])
    preds = np.asarray([f(jnp.asarray(lt[i] - problem.log_ref + om[i] * z[i])) for i in pick])
    rows = []
    for i in range(problem.n):
        for j in np.flatnonzero(problem.obs_mask[i]):
            k, w = problem.obs_k[i, j], problem.obs_w[i, j]
            rows.append({"ID": problem.ids[i], "TIME": (k + w) * problem.settings.dt,
                         "analyte": problem.analytes[problem.obs_analyte[i, j]],
                         "DV": float(np.exp(problem.obs_logv[i, j])), "censored": bool(problem.obs_cens[i, j]),
                         "pred_median": float(np.exp(np.median(preds[:, i, j]))),
                         "pred_q05": float(np.exp(np.quantile(preds[:, i, j], 0.05))),
                         "pred_q95": float(np.exp(np.quantile(preds[:, i, j], 0.95)))})
    return pd.DataFrame(rows)

"""`vpop fit DATA [--cohort-table FILE] --config CONFIG --method laplace|svi|nuts --out DIR`.

`vpop fit DATA --check` runs the identifiability check alone (nothing written).

Writes to DIR:
* posterior.nc: ArviZ InferenceData (NetCDF);
* diagnostics.json: R-hat, ESS, divergences (NUTS), the loss (SVI), MAP, SEs and
  correlations (Laplace), and warnings;
* the files of `vpop.fitting.diagnostics` (loss trace, sampler statistics, convergence,
  shrinkage, PSIS-LOO, identifiability), with NUTS the segments under nuts/;
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
    parser.add_argument("--method", choices=("laplace", "svi", "nuts"), default="laplace",
                        help="laplace (MAP + Laplace, fast default), svi, or nuts (docs/fitting.md: which to use)")
    parser.add_argument("--free", default=None, help="comma-separated free parameters (default: "
                        "car_prolif_max,il6_per_myeloid,crp_max)")
    parser.add_argument("--out", default=None, help="output folder (required unless --check)")
    parser.add_argument("--check", action="store_true",
                        help="only the identifiability check of the free set on this data design")
    parser.add_argument("--check-sigma", type=float, default=0.3,
                        help="residual SD (log) assumed by the identifiability check")
    parser.add_argument("--no-check", action="store_true", help="skip the identifiability check before the fit")
    parser.add_argument("--covariance", choices=("hessian", "sandwich"), default=None,
                        help="Laplace intervals: hessian (R^-1) or sandwich (robust R^-1 S R^-1 from the patients' "
                             "scores); both are reported in diagnostics.json (docs/fitting.md: which)")
    parser.add_argument("--steps", type=int, default=1500, help="SVI steps")
    parser.add_argument("--lr", type=float, default=0.02, help="SVI Adam learning rate")
    parser.add_argument("--guide", choices=("mvn", "normal", "delta"), default="mvn",
                        help="SVI guide: mvn (full covariance, default), normal (mean-field: too narrow), delta (point)")
    parser.add_argument("--svi-start", choices=("prior", "laplace"), default="prior",
                        help="where full-rank SVI starts: prior (its centre) or laplace (the integrated Laplace "
                             "mode and covariance; docs/fitting.md)")
    parser.add_argument("--chains", type=int, default=4, help="NUTS chains")
    parser.add_argument("--chain-method", choices=("parallel", "vectorized"), default="parallel",
                        help="NUTS chains: parallel (one CPU device per chain, so every core works and no chain "
                             "waits for another's deeper tree) or vectorized (one program, chains in lock-step)")
    parser.add_argument("--warmup", type=int, default=500, help="NUTS warm-up iterations per chain")
    parser.add_argument("--draws", type=int, default=500, help="NUTS draws kept per chain")
    parser.add_argument("--target-accept", type=float, default=0.8, help="NUTS target acceptance probability")
    parser.add_argument("--max-tree-depth", type=int, default=8, help="NUTS maximum tree depth")
    parser.add_argument("--dense-mass", action="store_true", help="NUTS dense mass matrix")
    parser.add_argument("--init", choices=("reference", "map", "sample", "laplace"), default="reference",
                        help="NUTS start: the prior centre, the Laplace MAP, a prior draw per chain, or 'laplace' "
                        "(a draw of this posterior's Laplace approximation per chain, its covariance the dense "
                        "mass matrix from the first iteration)")
    parser.add_argument("--adapt-mass", action="store_true",
                        help="NUTS with --init laplace: adapt the mass matrix during warm-up too (default: step size only)")
    parser.add_argument("--segment", type=int, default=50, help="NUTS iterations per saved segment")
    parser.add_argument("--resume", action="store_true", help="NUTS: continue the run saved in --out/nuts/")
    parser.add_argument("--omega", choices=("diag", "full"), default="diag",
                        help="random-effect covariance: diagonal, or full (LKJ prior on the correlation)")
    parser.add_argument("--covariate-effects", default=None,
                        help="comma-separated covariates whose log-linear effects on the typical values are estimated")
    parser.add_argument("--bov", default=None,
                        help="comma-separated free parameters with between-occasion variability (occasions: the OCC "
                             "column, else the courses opened by resets, EVID 3/4)")
    parser.add_argument("--nuisance", default="config",
                        help="nuisance random effects integrated with the config's fixed SDs: 'config' (every "
                             "parameter the config's population.variability names that is not free), 'none', or "
                             "comma-separated names (docs/fitting.md, 'Nuisance random effects')")
    parser.add_argument("--error", choices=("log", "combined"), default="log",
                        help="residual error: log-normal, or combined additive + proportional")
    parser.add_argument("--npde-sims", type=int, default=100, help="simulated replicates for the NPDE")
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
    """`vpop fit`: float64 throughout (the likelihood's gradients need it), scoped to this command."""
    import jax

    if args.method == "nuts" and args.chain_method == "parallel":
        from vpop.engine import sharding

        sharding.request_cpu_devices(args.chains)  # before the first computation starts JAX's backends
    with jax.enable_x64(True):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from vpop.run.config import load_config
    from vpop.fitting import cohort_tables, diagnostics, identifiability, infer
    from vpop.fitting import model as fm
    from vpop.fitting import statistical_model as sm
    from vpop.fitting.data import read_patient_data

    if args.data is None and args.cohort_table is None:
        raise UserError("give a DATA file, a --cohort-table, or both")
    if args.out is None and not args.check:
        raise UserError("--out: required (the output folder), unless --check")
    for name in ("steps", "chains", "warmup", "draws", "substeps", "virtual", "segment", "max_tree_depth", "npde_sims"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}: got {getattr(args, name)}; allowed: an integer >= 1")
    if args.covariance is not None and args.method != "laplace":
        raise UserError(f"--covariance {args.covariance}: only for --method laplace (SVI and NUTS give draws)")
    if args.svi_start == "laplace" and (args.method != "svi" or args.guide != "mvn"):
        raise UserError(f"--svi-start laplace: only with --method svi --guide mvn (got --method {args.method} "
                        f"--guide {args.guide}); allowed otherwise: --svi-start prior")
    if args.tau <= 0:
        raise UserError(f"--tau: got {args.tau}; allowed: > 0")
    if not 0 < args.target_accept < 1:
        raise UserError(f"--target-accept: got {args.target_accept}; allowed: between 0 and 1")
    if args.check_sigma <= 0:
        raise UserError(f"--check-sigma: got {args.check_sigma}; allowed: > 0")
    config = load_config(args.config)
    free = tuple(s.strip() for s in args.free.split(",")) if args.free else fm.DEFAULT_FREE
    free = fm.check_free(free)
    settings = fm.GridSettings(substeps=args.substeps)
    out = Path(args.out) if args.out is not None else None
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a folder")

    problem = options = ident = None
    if args.data is not None:
        data = read_patient_data(args.data, args.covariates)
        problem = fm.build_problem(data, config, free, settings, use_grades=not args.no_grades,
                                   nuisance=fm.nuisance_choice(args.nuisance))
        _say(args, f"{data.n} patients, {data.n_observations()} observations ({data.n_censored()} below LLOQ), "
                   f"analytes {', '.join(data.analytes)}; free: {', '.join(free)}"
                   + (f"; nuisance random effects: {', '.join(problem.nuisance)}" if problem.nuisance else ""))
        names, x = (), None
        if args.covariate_effects:
            names, x = sm.covariate_design(data, config, [c.strip() for c in args.covariate_effects.split(",")])
        bov = sm.bov_design(data, free, [c.strip() for c in args.bov.split(",")] if args.bov else ())
        options = sm.ModelOptions(omega=args.omega, covariate_names=names, covariate_x=x, error=args.error,
                                  **bov).check(problem)
        if args.check or not args.no_check:
            ident = identifiability.check_identifiability(problem, sigma=args.check_sigma)
            _say(args, ident.report())
            if args.check:
                print(ident.report())
                ident.raise_if_confounded()
                return 0
            ident.raise_if_confounded()
    elif args.check:
        raise UserError("--check needs a DATA file (the identifiability of a cohort table alone is not checked)")
    cohort = targets = None
    if args.cohort_table is not None:
        targets = cohort_tables.read_cohort_table(args.cohort_table, args.cohort)
        if len({t.cohort for t in targets}) > 1:
            raise UserError(f"{args.cohort_table}: several cohorts; choose one with --cohort "
                            f"({', '.join(sorted({t.cohort for t in targets}))})")
        _say(args, f"cohort {targets[0].cohort}: setting surrogate thresholds with {args.virtual} virtual patients")
        # the trial's own course: the config's engine settings, policy and scales (not the time-course grid)
        cohort = cohort_tables.build_cohort_likelihood(config, targets, free, n_virtual=args.virtual, tau=args.tau)
    progress = not args.quiet  # periodic lines on stderr (also off a terminal)
    if args.method == "laplace":
        from vpop.fitting import laplace

        fit = laplace.run_laplace(problem, cohort, seed=args.seed, progress=progress,
                                  parameterisation="noncentred", options=options,
                                  covariance=args.covariance or laplace.default_covariance(problem, cohort))
    elif args.method == "svi":
        start = None
        if args.svi_start == "laplace":
            from vpop.fitting import laplace
            from vpop.fitting.traced import fast_path

            if not fast_path(problem, cohort, options):
                raise UserError("--svi-start laplace: only on patient time courses with the default statistical "
                                "model (no grades, cohort table, covariate effects, full omega or combined error); "
                                "allowed otherwise: --svi-start prior")
            start = laplace.integrated_normal(problem, parameterisation=args.parameterisation, seed=args.seed)
        fit = infer.run_svi(problem, cohort, steps=args.steps, lr=args.lr, guide=args.guide, seed=args.seed,
                            progress=progress, parameterisation=args.parameterisation, options=options,
                            start=start)
    else:
        start = None
        if args.init == "map":
            from vpop.fitting import laplace

            _say(args, "NUTS: finding the MAP to start from")
            start = laplace.map_values(problem, cohort, seed=args.seed, options=options,
                                       parameterisation=args.parameterisation)
        laplace_start = None
        if args.init == "laplace":
            from vpop.fitting import laplace

            laplace_start = laplace.nuts_start(problem, cohort, seed=args.seed, options=options,
                                               parameterisation=args.parameterisation, progress=progress)
        out.mkdir(parents=True, exist_ok=True)
        fit = infer.run_nuts(problem, cohort, chains=args.chains, warmup=args.warmup, draws=args.draws,
                             seed=args.seed, progress=progress, parameterisation=args.parameterisation,
                             target_accept=args.target_accept, max_tree_depth=args.max_tree_depth,
                             dense_mass=args.dense_mass, init=args.init, init_values_override=start,
                             adapt_mass=True if args.adapt_mass else None, laplace_start=laplace_start,
                             options=options, segment=args.segment, save_dir=out, resume=args.resume,
                             chain_method=args.chain_method)
    fit.covariates = tuple(options.covariate_names) if options is not None else ()
    fit.bov = tuple(options.bov) if options is not None else ()
    if options is not None and (options.covariate_names or options.bov):
        fit.idata = infer.to_inferencedata(fit, problem, **_stats_of(fit.idata))
    out.mkdir(parents=True, exist_ok=True)
    fit.idata.to_netcdf(str(out / "posterior.nc"), engine="h5netcdf")
    summary = fit.theta_summary()
    summary.to_csv(out / "summary.csv", index=False)
    diag = dict(fit.diagnostics)
    diag["seconds"] = fit.seconds
    diagnostics.write_loss_trace(out / "loss_trace.csv", fit.losses)
    if fit.method == "nuts":
        diagnostics.write_sampler_stats(out, fit.idata)
    diagnostics.convergence_table(fit.idata).to_csv(out / "convergence.csv", index=False)
    if ident is not None:
        diagnostics.write_json(out / "identifiability.json", ident.to_dict())
    write_fitted_config(out / "fitted.yaml", config, fit)
    if problem is not None:
        diagnostics.shrinkage(fit.samples, problem.free).to_csv(out / "shrinkage.csv", index=False)
        pred, sims = prediction_table(problem, fit, options=options, n_sims=args.npde_sims, seed=args.seed,
                                      return_sims=True)
        pred.to_csv(out / "predictions.csv", index=False)
        diagnostics.vpc_table(problem, sims).to_csv(out / "vpc.csv", index=False)
        try:
            diag["loo"] = diagnostics.loo(problem, fit.samples, options=options)
            diagnostics.write_json(out / "loo.json", diag["loo"])
        except Exception as err:  # ArviZ refuses degenerate draws (e.g. a point estimate): report, do not fail the fit
            diag.setdefault("warnings", []).append(f"PSIS-LOO not computed: {err}")
        from vpop.fitting import plots

        plots.observed_vs_predicted(pred, out / "observed_vs_predicted.png")
    (out / "diagnostics.json").write_text(json.dumps(diag, indent=2, default=float))
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


def _stats_of(idata) -> dict:
    if "sample_stats" not in idata.groups():
        return {}
    ss = idata.sample_stats
    extra = {k: np.asarray(ss[k]) for k in ("tree_depth", "acceptance_rate", "energy") if k in ss}
    return {"diverging": np.asarray(ss["diverging"]), "num_steps": np.asarray(ss["n_steps"]), "extra_stats": extra}


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


def prediction_table(problem, fit, n_draws: int = 50, seed: int = 0, options=None, n_sims: int = 100,
                     return_sims: bool = False):
    """Observed values with the individual predictions (posterior median, 90 % band, ipred at the median
    parameters), the population prediction (typical values, random effects 0), NPDE and IWRES
    (`vpop.fitting.diagnostics` describes the columns)."""
    import jax
    import jax.numpy as jnp
    import pandas as pd

    from vpop.fitting import diagnostics
    from vpop.fitting import model as fm
    from vpop.fitting.statistical_model import individual_log_factors

    F = len(problem.free)

    def flat(k):
        v = np.asarray(fit.samples[k])
        return v.reshape(-1, *v.shape[2:])

    lt, om, z, sg = flat("log_theta"), flat("omega"), flat("z"), flat("sigma")
    corr = flat("corr") if "corr" in fit.samples else None
    beta = flat("cov_beta") if "cov_beta" in fit.samples else None
    x = None if options is None else options.covariate_x
    rng = np.random.default_rng(seed)
    f = jax.jit(lambda lf: fm.predictions(problem, lf)[0])

    def lf_of(i, zz):
        L = None if corr is None else jnp.asarray(np.linalg.cholesky(corr[i]))
        return individual_log_factors(problem, jnp.asarray(lt[i]), jnp.asarray(om[i]), jnp.asarray(zz), L,
                                      None if beta is None else jnp.asarray(beta[i]), x)

    pick = rng.choice(len(lt), size=min(n_draws, len(lt)), replace=False)
    preds = np.asarray([f(lf_of(i, z[i])) for i in pick])
    med = {k: np.median(v, axis=0) for k, v in (("lt", lt), ("om", om), ("z", z))}
    ipred = np.asarray(f(individual_log_factors(problem, jnp.asarray(med["lt"]), jnp.asarray(med["om"]),
                                                jnp.asarray(med["z"]),
                                                None if corr is None else jnp.asarray(np.linalg.cholesky(np.median(corr, 0))),
                                                None if beta is None else jnp.asarray(np.median(beta, 0)), x)))
    pop = np.asarray(f(jnp.broadcast_to(jnp.asarray(np.median(lt, 0) - problem.log_ref), (problem.n, F))))
    # NPDE: replicates from the population model (posterior draw of the population parameters, new
    # random effects, residual error)
    sims = []
    a = np.asarray(problem.obs_analyte)
    ob = flat("omega_bov") if "omega_bov" in fit.samples else None
    for _ in range(n_sims):
        i = int(rng.integers(len(lt)))
        znew = rng.standard_normal((problem.n, len(problem.effects)))  # new patients: free and nuisance effects
        if ob is not None:  # new subjects and occasions: the subject's z shared by its courses, plus BOV
            from vpop.fitting.statistical_model import bov_effects

            znew = np.asarray(bov_effects(options, jnp.asarray(om[i]), jnp.asarray(ob[i]),
                                          rng.standard_normal((options.n_subjects, F)),
                                          rng.standard_normal((options.n_occasions, len(options.bov)))))
        mu = np.asarray(f(lf_of(i, znew)))
        sims.append(mu + sg[i][a] * rng.standard_normal(mu.shape))
    npde = diagnostics.npde(problem.obs_logv, np.asarray(sims), problem.obs_cens, rng)
    sig = np.median(sg, axis=0)
    rows = []
    for i in range(problem.n):
        for j in np.flatnonzero(problem.obs_mask[i]):
            k, w = problem.obs_k[i, j], problem.obs_w[i, j]
            y = problem.obs_logv[i, j]
            rows.append({"ID": problem.ids[i], "TIME": (k + w) * problem.settings.dt,
                         "analyte": problem.analytes[problem.obs_analyte[i, j]],
                         "DV": float(np.exp(y)), "censored": bool(problem.obs_cens[i, j]),
                         "pred_median": float(np.exp(np.median(preds[:, i, j]))),
                         "pred_q05": float(np.exp(np.quantile(preds[:, i, j], 0.05))),
                         "pred_q95": float(np.exp(np.quantile(preds[:, i, j], 0.95))),
                         "ipred": float(np.exp(ipred[i, j])), "pop_pred": float(np.exp(pop[i, j])),
                         "npde": float(npde[i, j]),
                         "iwres": float("nan") if problem.obs_cens[i, j] else float((y - ipred[i, j]) / sig[a[i, j]])})
    table = pd.DataFrame(rows)
    return (table, np.asarray(sims)) if return_sims else table

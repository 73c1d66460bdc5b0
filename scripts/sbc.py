"""Coverage study of the estimators on data from the full population model (issue 15, item 2).

Each replicate: n patients drawn from the config's population with *all* its random effects (the
mechanism sensitivities and every configured variability, `PopulationSampler.individual_from_covariates`),
the free typical values set to the truth times exp(omega z_i), biomarkers from the one course of
treatment (`vpop.fitting.model.predictions` with the patients' full parameters), log-normal error and an
IL-6 LLOQ. The fitting model only knows the covariate model and the free parameters' random effects, so
the unmodelled variability is what the intervals must survive. Every method in --methods fits every
replicate; per method and parameter: coverage of the 90 % interval, bias and RMSE of the median (log),
mean width, seconds per fit.

    python scripts/sbc.py --replicates 50 --patients 40 --methods laplace,svi,nuts --out sbc.csv
    python scripts/sbc.py --replicates 2 --patients 4 --methods laplace --times 1,3 --out /tmp/sbc.csv   # CI size

The large study is expensive (NUTS: minutes per fit); --first K resumes (keeps replicates < K in --out).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

jax.config.update("jax_enable_x64", True)

TRUTH = {"car_prolif_max": 1.3, "crp_max": 250.0}
OMEGA = {"car_prolif_max": 0.15, "crp_max": 0.2}


def engine_dataset(config, n, free, times, seed, sigma=0.2, lloq=50.0, substeps=1):
    """(PatientData, truth) from the population with all random effects (module docstring)."""
    from vpop.fitting import model as fm
    from vpop.fitting import synthetic
    from vpop.population.sampler import PopulationSampler, patient_keys

    data, _ = synthetic.simulate_dataset(config, n, free, {f: 1.0 for f in free}, {f: 1e-9 for f in free}, 0.0,
                                         times=times, analytes=["car_t", "crp", "il6"], seed=seed)
    problem = fm.build_problem(data, config, free, fm.GridSettings(substeps=substeps * 3), days=float(max(times)))
    sampler = PopulationSampler(config.population, config.parameters)
    keys = patient_keys(seed + 1000, np.arange(n))
    full = []
    for i in range(n):
        cov = {k: jnp.asarray(v) for k, v in data.covariates[i].items()}
        full.append(sampler.individual_from_covariates(keys[i], cov)[1])
    problem.base = {k: np.asarray([float(p[k]) for p in full]) for k in problem.base}
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, len(free)))
    lf = np.log([TRUTH[f] for f in free]) - problem.log_ref + np.array([OMEGA[f] for f in free]) * z
    mu = np.asarray(jax.jit(lambda x: fm.predictions(problem, x)[0])(jnp.asarray(lf)))
    y = mu + sigma * rng.standard_normal(mu.shape)
    il6 = problem.analytes.index("il6_pg_ml")
    for i in range(n):
        m = problem.obs_mask[i]
        v = np.exp(y[i][m])
        cens = (problem.obs_analyte[i][m] == il6) & (v < lloq)
        data.obs_value[i] = np.where(cens, lloq, v)
        data.obs_censored[i] = cens
    return data


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicates", type=int, default=50)
    ap.add_argument("--patients", type=int, default=40)
    ap.add_argument("--times", default="1,2,3,5,7,10,14")
    ap.add_argument("--methods", default="laplace,svi,nuts")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--draws", type=int, default=300)
    ap.add_argument("--substeps", type=int, default=1)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    from vpop.fitting import infer, laplace
    from vpop.fitting import model as fm
    from vpop.run.config import load_config

    config = load_config(None)
    free = tuple(TRUTH)
    times = [float(t) for t in a.times.split(",")]
    out = Path(a.out)
    rows = pd.read_csv(out).query("replicate < @a.first").to_dict("records") if a.first and out.exists() else []
    for r in range(a.first, a.replicates):
        data = engine_dataset(config, a.patients, free, times, seed=1000 + r, substeps=a.substeps)
        problem = fm.build_problem(data, config, free, fm.GridSettings(substeps=a.substeps))
        for method in a.methods.split(","):
            t0 = time.perf_counter()
            if method == "laplace":
                fit = laplace.run_laplace(problem, seed=r)
            elif method == "svi":
                fit = infer.run_svi(problem, steps=a.steps, seed=r, guide="mvn")
            else:
                fit = infer.run_nuts(problem, chains=a.chains, warmup=a.warmup, draws=a.draws, seed=r,
                                     parameterisation="centred")
            secs = time.perf_counter() - t0
            lt = fit.samples["log_theta"].reshape(-1, len(free))
            for j, name in enumerate(free):
                lo, med, hi = np.quantile(lt[:, j], [0.05, 0.5, 0.95])
                t = np.log(TRUTH[name])
                rows.append({"replicate": r, "method": method, "parameter": name, "covered": bool(lo < t < hi),
                             "error_log": med - t, "width_log": hi - lo, "seconds": secs,
                             "warnings": len(fit.diagnostics.get("warnings", []))})
            pd.DataFrame(rows).to_csv(out, index=False)
            print(f"replicate {r} {method}: {secs:.0f} s", flush=True)
    df = pd.DataFrame(rows)
    summ = df.groupby(["method", "parameter"]).agg(coverage=("covered", "mean"), bias_log=("error_log", "mean"),
                                                   rmse_log=("error_log", lambda e: float(np.sqrt(np.mean(e ** 2)))),
                                                   width_log=("width_log", "mean"), seconds=("seconds", "mean"),
                                                   replicates=("covered", "size"))
    print(summ.to_string())


if __name__ == "__main__":
    main()

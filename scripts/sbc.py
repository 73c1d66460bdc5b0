"""Coverage study of the estimators on data from the full engine (issue 15, item 2; docs/fitting.md).

Each replicate r:

* truths: the free typical values are drawn from the fitting prior, log theta ~ Normal(log ref, s) with s
  and the reference read from the model's parameter table and the config (`vpop.fitting.model`), restricted
  to the table's plausible range [low, high] (= +-2 s); nothing is hard-coded, so a recalibrated model
  is studied at its own values;
* patients: covariates and *all* the population's random effects (mechanism sensitivities and every
  configured variability, `PopulationSampler.individual_from_covariates`), the free parameters multiplied by
  truth / ref x exp(omega z_i) (`--omega`);
* the course: the full engine (`vpop.engine.course.simulate_batch`, default settings: ETDRK4 x 6 per 6 h,
  hourly charts, grading) under the config's management policy. The doses the policy gives are recorded
  (a host callback on the rule) and written to the data as dose rows, so the fit runs them as its schedule
  ("management as in the data"). Patients whose course fails or who die before the last observation are
  replaced by the next draw;
* observations: CAR-T, CRP and IL-6 at `--times` (on the 6-h grid) with log-normal error (`--sigma`), IL-6
  below `--lloq` censored (BLQ rows).

The fitting model knows only the covariate model and the free parameters' random effects; the rest of the
engine's variability is what the intervals must survive. Every method in --methods fits every replicate
(`laplace` gives two rows per fit: `laplace`, the inverse Hessian's interval, and `laplace-sandwich`, the
robust R^-1 S R^-1 one of the same mode);
per method and parameter: coverage of the central 90 % interval of the typical value, bias and RMSE of the
posterior median (log), mean width (log), seconds per fit (compilation included), warnings.

    python scripts/sbc.py --replicates 50 --patients 8 --methods laplace --out sbc_laplace.csv
    python scripts/sbc.py --replicates 2 --patients 4 --times 1,3,7 --methods laplace --out /tmp/s.csv  # minutes
    python scripts/sbc.py --summarise sbc_laplace.csv sbc_nuts.csv        # the table of one or more runs

--first K resumes a run (keeps replicates < K already in --out). A replicate's data depend only on
(--seed, r), so runs of different methods on the same replicates can be split across processes.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

jax.config.update("jax_enable_x64", True)

ANALYTES = ("car_t", "crp", "il6")
DEFAULT_FREE = "car_prolif_max,crp_max"
Z90 = 1.6448536269514722  # the standard normal's 95th percentile


def draw_truth(free, log_ref, rng) -> dict:
    """Typical values from the prior N(log ref, s), restricted to the table's range (|u| <= 2)."""
    from vpop.fitting import model as fm

    out = {}
    for f, lr in zip(free, log_ref):
        u = rng.standard_normal()
        while abs(u) > 2.0:
            u = rng.standard_normal()
        out[f] = float(np.exp(lr + fm.prior_scale(f) * u))
    return out


def recording_rule(rule, log: list):
    """The policy rule, with every assessment's decided doses sent to `log` as (t, {dose: (N,) mg})."""
    from vpop.policy.rules import Rule

    def update(settings, state, a, doses):
        decided, state = rule.update(settings, state, a, doses)
        jax.debug.callback(lambda t, d: log.append((float(np.max(t)), {k: np.asarray(v) for k, v in d.items()})),
                           a.t, decided)
        return decided, state

    return Rule(rule.init, update)


DOSE_LOG: list = []  # the doses of the last engine run, (t, {dose: (N,) mg}) per assessment


@functools.lru_cache(maxsize=None)
def engine(days: float):
    """The full engine's course with the management rule recording its doses in DOSE_LOG (compiled once)."""
    from vpop.engine.course import EngineSettings, simulate_batch

    settings = EngineSettings(days=days, rule=recording_rule(EngineSettings().rule, DOSE_LOG))
    return jax.jit(lambda q, k, policy: simulate_batch(q, k, policy, settings))


def engine_dataset(config, n, free, times, seed, omega=0.2, sigma=0.2, lloq=50.0):
    """(PatientData, truth) of replicate `seed` from the full engine (module docstring)."""

    from vpop.engine.course import SCHEDULE_KINDS, STATUS_OK
    from vpop.fitting import model as fm
    from vpop.fitting.data import ANALYTES as KEYS
    from vpop.fitting.data import PatientData
    from vpop.population.sampler import COVARIATES, PopulationSampler, patient_keys

    rng = np.random.default_rng(seed)
    sampler = PopulationSampler(config.population, config.parameters)
    log_ref = np.log([fm.reference_value(f, dict(sampler.typical)) for f in free])
    truth = draw_truth(free, log_ref, rng)
    times = np.asarray(times, float)
    dt = 0.25
    if np.any(np.abs(times / dt - np.round(times / dt)) > 1e-9):
        raise SystemExit(f"--times {times}: observation times must be on the 6-h assessment grid")
    cand = 3 * n  # candidates; failed or dead patients are replaced by the next
    keys = patient_keys(seed + 1000, np.arange(cand))
    cov = jax.vmap(sampler.covariates)(keys)
    pars = []
    for i in range(cand):
        c = {k: cov[k][i] for k in COVARIATES}
        pars.append(sampler.individual_from_covariates(keys[i], c)[1])
    p = {k: jnp.asarray(np.array([float(q[k]) for q in pars]), jnp.float64) for k in pars[0]}
    z = rng.standard_normal((cand, len(free)))
    for j, f in enumerate(free):
        p[f] = p[f] * truth[f] / math.exp(log_ref[j]) * jnp.exp(omega * z[:, j])
    DOSE_LOG.clear()
    log = DOSE_LOG
    rows, summary = engine(float(times.max()))(p, jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(
        jnp.arange(cand)), config.policy.to_arrays(jnp.float64))
    rows = jax.tree_util.tree_map(np.asarray, rows)
    k_obs = np.round(times / dt).astype(int)
    ok = (np.asarray(summary["solver_status"]) == STATUS_OK) & rows["alive"][:, k_obs[-1]]
    keep = np.flatnonzero(ok)[:n]
    if len(keep) < n:
        raise SystemExit(f"replicate {seed}: only {len(keep)} of {cand} patients ran and survived")
    keyname = [KEYS[a] for a in ANALYTES]
    il6 = keyname.index("il6_pg_ml")
    obs_t, obs_a, obs_v, obs_c, d_t, d_k, d_mg, covs = [], [], [], [], [], [], [], []
    for i in keep:
        clean = np.stack([rows[k][i, k_obs] for k in keyname], axis=1)  # (T, A)
        y = np.exp(np.log(np.maximum(clean, 1e-12)) + sigma * rng.standard_normal(clean.shape))
        cens = np.zeros_like(y, bool)
        cens[:, il6] = y[:, il6] < lloq
        y[cens] = lloq
        obs_t.append(np.repeat(times, len(keyname)))
        obs_a.append(np.tile(np.arange(len(keyname)), len(times)).astype(np.int32))
        obs_v.append(y.ravel())
        obs_c.append(cens.ravel())
        tt, kk, mg = [], [], []
        for t, d in sorted(log, key=lambda e: e[0]):
            if t >= times.max() - 1e-9:
                continue
            for j, name in enumerate(SCHEDULE_KINDS):
                if name in d and d[name][i] > 0:
                    tt.append(t)
                    kk.append(j)
                    mg.append(float(d[name][i]))
        d_t.append(np.asarray(tt, float))
        d_k.append(np.asarray(kk, np.int32))
        d_mg.append(np.asarray(mg, float))
        covs.append({c: float(cov[c][i]) for c in COVARIATES})
    data = PatientData(f"<engine replicate {seed}>", list(range(1, n + 1)), tuple(keyname), obs_t, obs_a, obs_v,
                       obs_c, d_t, d_k, d_mg, covs, {})
    info = {"theta": truth, "omega": omega, "sigma": sigma, "z": z[keep],
            "patients_with_doses": int(sum(len(x) > 0 for x in d_t)), "censored": float(np.mean(np.concatenate(obs_c)))}
    return data, info


def fit(method, problem, a, seed):
    from vpop.fitting import infer, laplace

    if method == "laplace":  # the Hessian's intervals from the draws; the sandwich's from the same fit
        return laplace.run_laplace(problem, seed=seed, covariance="hessian")
    if method == "laplace-joint":
        return laplace.run_laplace(problem, seed=seed, random_effects="joint")
    if method == "svi":
        return infer.run_svi(problem, steps=a.steps, seed=seed, guide="mvn")
    if method == "svi-laplace":  # full rank, started at the integrated Laplace approximation
        return infer.run_svi(problem, steps=a.steps, seed=seed, guide="mvn",
                             start=laplace.integrated_normal(problem, seed=seed))
    if method == "nuts":
        return infer.run_nuts(problem, chains=a.chains, warmup=a.warmup, draws=a.draws, seed=seed,
                              parameterisation=a.parameterisation, progress=False)
    raise SystemExit(f"--methods: unknown method {method!r}; use laplace, laplace-joint, svi, svi-laplace, nuts")


def nuts_stats(res) -> dict:
    """Sampler cost and health of a NUTS fit (empty for other methods)."""
    if res.method != "nuts":
        return {}
    d = res.diagnostics
    ss = res.idata.sample_stats
    return {"mean_leapfrog_steps": float(np.asarray(ss["n_steps"]).mean()), "divergences": int(np.asarray(ss["diverging"]).sum()),
            "max_rhat": d.get("max_rhat"), "min_ess_bulk": d.get("min_ess_bulk")}


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Coverage, bias, RMSE, width and time per method and parameter (with a binomial 90 % range)."""
    g = df.groupby(["method", "parameter"])
    out = g.agg(replicates=("covered", "size"), coverage=("covered", "mean"), bias_log=("error_log", "mean"),
                rmse_log=("error_log", lambda e: float(np.sqrt(np.mean(e ** 2)))), width_log=("width_log", "mean"),
                seconds=("seconds", "mean"), warnings=("warnings", "mean"))
    from scipy.stats import binom

    out["honest_range"] = [f"{binom.ppf(0.05, r, 0.9) / r:.2f}-{binom.ppf(0.95, r, 0.9) / r:.2f}" for r in out["replicates"]]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicates", type=int, default=50)
    ap.add_argument("--patients", type=int, default=8)
    ap.add_argument("--times", default="1,2,3,5,7")
    ap.add_argument("--free", default=DEFAULT_FREE)
    ap.add_argument("--omega", type=float, default=0.2, help="SD of the free parameters' added random effects")
    ap.add_argument("--sigma", type=float, default=0.2)
    ap.add_argument("--lloq", type=float, default=50.0, help="IL-6 LLOQ, pg/mL")
    ap.add_argument("--methods", default="laplace,svi,nuts")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--parameterisation", default="centred")
    ap.add_argument("--substeps", type=int, default=1, help="ETDRK4 steps per 6 h of the fitting solve")
    ap.add_argument("--nuisance", default="config",
                    help="the fit's nuisance random effects (`vpop fit --nuisance`): none, config or names")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--out")
    ap.add_argument("--summarise", nargs="+", metavar="CSV", help="print the table of finished runs and exit")
    a = ap.parse_args()
    if a.summarise:
        print(summarise(pd.concat([pd.read_csv(p) for p in a.summarise])).to_string())
        return
    if not a.out:
        ap.error("--out is required")
    from vpop.fitting import model as fm
    from vpop.run.config import load_config

    config = load_config(None)
    free = fm.check_free(a.free.split(","))
    times = [float(t) for t in a.times.split(",")]
    out = Path(a.out)
    rows = pd.read_csv(out).query("replicate < @a.first").to_dict("records") if a.first and out.exists() else []
    for r in range(a.first, a.replicates):
        data, truth = engine_dataset(config, a.patients, free, times, seed=a.seed * 100_000 + r, omega=a.omega,
                                     sigma=a.sigma, lloq=a.lloq)
        problem = fm.build_problem(data, config, free, fm.GridSettings(substeps=a.substeps), use_grades=False,
                                   nuisance=fm.nuisance_choice(a.nuisance))
        for method in a.methods.split(","):
            t0 = time.perf_counter()
            res = fit(method, problem, a, seed=r)
            secs = time.perf_counter() - t0
            lt = np.asarray(res.samples["log_theta"]).reshape(-1, len(free))
            om = np.asarray(res.samples["omega"]).reshape(-1, len(free))
            d = res.diagnostics
            for j, name in enumerate(free):
                intervals = {method: np.quantile(lt[:, j], [0.05, 0.5, 0.95])}
                if "se_log_sandwich" in d:  # the same fit's robust interval: Normal(mode, sandwich SE) in log
                    m, se = math.log(d["map"][name]), d["se_log_sandwich"][name]
                    intervals["laplace-sandwich"] = np.array([m - Z90 * se, m, m + Z90 * se])
                for label, (lo, med, hi) in intervals.items():
                    t = math.log(truth["theta"][name])
                    rows.append({"replicate": r, "method": label, "parameter": name, "truth": truth["theta"][name],
                                 "median": float(np.exp(med)), "covered": bool(lo < t < hi), "error_log": med - t,
                                 "width_log": hi - lo, "omega_median": float(np.median(om[:, j])), "seconds": secs,
                                 "warnings": len(d.get("warnings", [])),
                                 "first_warning": (d.get("warnings") or [""])[0][:160],
                                 "patients_with_doses": truth["patients_with_doses"], "censored": truth["censored"],
                                 "sandwich_to_hessian_se": d.get("sandwich_to_hessian_se", {}).get(name, np.nan),
                                 **nuts_stats(res)})
            pd.DataFrame(rows).to_csv(out, index=False)
            print(f"replicate {r} {method}: {secs:.0f} s", flush=True)
    print(summarise(pd.DataFrame(rows)).to_string())


if __name__ == "__main__":
    main()

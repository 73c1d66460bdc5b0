"""Inference: SVI (optax + autoguide) and NUTS; ArviZ output; diagnostics; posterior predictive.

    fit = run_svi(problem, steps=1000)          # or run_nuts(problem, chains=4, warmup=500, draws=500)
    fit.idata.to_netcdf("posterior.nc")         # ArviZ InferenceData
    fit.diagnostics                             # R-hat, ESS, divergences, warnings
    fit.theta_summary()                         # posterior median and 90 % interval of each free parameter
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO, init_to_value
from numpyro.infer.autoguide import AutoDelta, AutoMultivariateNormal, AutoNormal

from vpop.fitting.model import FitProblem
from vpop.fitting.statistical_model import numpyro_model, population_model

RHAT_MAX = 1.01
ESS_MIN_PER_CHAIN = 100


@dataclass
class FitResult:
    method: str
    free: tuple
    samples: dict  # site -> array (chains, draws, ...)
    seconds: float
    diagnostics: dict = field(default_factory=dict)
    losses: np.ndarray | None = None
    idata: object = None

    def theta_draws(self) -> np.ndarray:
        """(chains * draws, F) draws of the typical values."""
        th = np.asarray(self.samples["theta"])
        return th.reshape(-1, th.shape[-1])

    def theta_summary(self, prob: float = 0.9) -> pd.DataFrame:
        d = self.theta_draws()
        lo, hi = (1 - prob) / 2, 1 - (1 - prob) / 2
        rows = []
        for j, name in enumerate(self.free):
            rows.append({"parameter": name, "median": float(np.median(d[:, j])), f"q{lo:.3g}": float(np.quantile(d[:, j], lo)),
                         f"q{hi:.3g}": float(np.quantile(d[:, j], hi))})
        return pd.DataFrame(rows)

    def omega_summary(self) -> dict:
        if "omega" not in self.samples:
            return {}
        om = np.asarray(self.samples["omega"]).reshape(-1, len(self.free))
        return {name: float(np.median(om[:, j])) for j, name in enumerate(self.free)}


def _model_and_args(problem, cohort, ignore_censoring=False, parameterisation="noncentred"):
    if problem is None:
        return population_model, (cohort.free, cohort.log_ref, _prior_sd(cohort.free), cohort), {}
    return numpyro_model, (problem,), {"cohort": cohort, "ignore_censoring": ignore_censoring,
                                       "parameterisation": parameterisation}


def _prior_sd(free):
    from vpop.fitting.model import prior_scale

    return np.array([prior_scale(f) for f in free])


def _init_values(problem, cohort):
    free = problem.free if problem is not None else cohort.free
    log_ref = problem.log_ref if problem is not None else cohort.log_ref
    init = {"log_theta": jnp.asarray(log_ref)}
    if problem is not None:
        init["omega"] = 0.3 * jnp.ones(len(free))
        init["sigma"] = 0.3 * jnp.ones(max(1, len(problem.analytes)))
        init["z"] = jnp.zeros((problem.n, len(free)))
        init["eta"] = jnp.zeros((problem.n, len(free)))
    return init


GUIDES = ("normal", "mvn", "delta")


def run_svi(problem: FitProblem | None, cohort=None, steps: int = 1000, lr: float = 0.02, guide: str = "normal",
            draws: int = 1000, seed: int = 0, progress: bool = False, ignore_censoring: bool = False,
            parameterisation: str = "noncentred") -> FitResult:
    """SVI with optax Adam and a guide: "normal" (AutoNormal, mean-field), "mvn"
    (AutoMultivariateNormal, full covariance: keeps the correlations between
    typical values, omegas and random effects that mean-field drops) or "delta"
    (AutoDelta, a point estimate)."""
    if guide not in GUIDES:
        raise ValueError(f"guide {guide!r}: use one of {', '.join(GUIDES)}")
    model, args, kwargs = _model_and_args(problem, cohort, ignore_censoring, parameterisation)
    init = init_to_value(values=_init_values(problem, cohort))
    if guide == "normal":
        g = AutoNormal(model, init_loc_fn=init, init_scale=0.05)
    elif guide == "mvn":
        g = AutoMultivariateNormal(model, init_loc_fn=init, init_scale=0.05)
    else:
        g = AutoDelta(model, init_loc_fn=init)
    optim = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(optax.exponential_decay(lr, steps, 0.1)))
    svi = SVI(model, g, optim, loss=Trace_ELBO())
    t0 = time.perf_counter()
    res = svi.run(jax.random.PRNGKey(seed), steps, *args, progress_bar=progress, **kwargs)
    seconds = time.perf_counter() - t0
    losses = np.asarray(res.losses)
    samples = g.sample_posterior(jax.random.PRNGKey(seed + 1), res.params, *args, sample_shape=(draws,), **kwargs)
    samples = {k: np.asarray(v)[None] for k, v in samples.items() if k in ("log_theta", "theta", "omega", "sigma", "z", "eta")
               or k.endswith(("_beta", "_cutpoints"))}
    free = problem.free if problem is not None else cohort.free
    diag = {"method": "svi", "guide": guide, "steps": steps, "final_loss": float(np.mean(losses[-50:])),
            "finite": bool(np.all(np.isfinite(losses[-50:]))), "warnings": []}
    if not diag["finite"]:
        diag["warnings"].append("SVI loss is not finite at the end of the run: the fit failed (try a smaller --lr)")
    tail = losses[-max(10, steps // 10):]
    head = losses[-2 * max(10, steps // 10):-max(10, steps // 10)]
    if len(head) and np.isfinite(tail).all() and np.mean(head) - np.mean(tail) > 0.01 * abs(np.mean(tail)) + 1.0:
        diag["warnings"].append("SVI loss still falling over the last 10% of steps: increase --steps")
    out = FitResult("svi", free, samples, seconds, diag, losses)
    out.idata = to_inferencedata(out, problem)
    return out


def run_nuts(problem: FitProblem | None, cohort=None, chains: int = 4, warmup: int = 500, draws: int = 500,
             seed: int = 0, progress: bool = False, chain_method: str = "sequential", target_accept: float = 0.8,
             max_tree_depth: int = 8, parameterisation: str = "noncentred") -> FitResult:
    """NUTS (numpyro.infer.MCMC) from the prior centre; chains run one after another on one CPU device.

    `parameterisation` of the random effects: "noncentred" or "centred" (`model.numpyro_model`).
    """
    model, args, kwargs = _model_and_args(problem, cohort, parameterisation=parameterisation)
    kernel = NUTS(model, init_strategy=init_to_value(values=_init_values(problem, cohort)),
                  target_accept_prob=target_accept, max_tree_depth=max_tree_depth)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=chains, chain_method=chain_method,
                progress_bar=progress)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not enough devices to run parallel chains"
        mcmc.run(jax.random.PRNGKey(seed), *args, extra_fields=("diverging", "num_steps"), **kwargs)
    seconds = time.perf_counter() - t0
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    extra = mcmc.get_extra_fields(group_by_chain=True)
    free = problem.free if problem is not None else cohort.free
    out = FitResult("nuts", free, samples, seconds)
    out.idata = to_inferencedata(out, problem, diverging=np.asarray(extra["diverging"]),
                                 num_steps=np.asarray(extra["num_steps"]))
    out.diagnostics = diagnostics(out.idata, chains)
    out.diagnostics["mean_leapfrog_steps"] = float(np.mean(extra["num_steps"]))
    return out


def to_inferencedata(fit: FitResult, problem: FitProblem | None, diverging=None, num_steps=None):
    """ArviZ InferenceData with named coordinates (param, analyte, patient)."""
    import arviz as az

    coords = {"param": list(fit.free)}
    dims = {"log_theta": ["param"], "theta": ["param"], "omega": ["param"]}
    if problem is not None:
        coords["analyte"] = list(problem.analytes) or ["none"]
        coords["patient"] = [str(i) for i in problem.ids]
        dims.update({"sigma": ["analyte"], "z": ["patient", "param"], "eta": ["patient", "param"]})
    posterior = {k: v for k, v in fit.samples.items()}
    sample_stats = {}
    if diverging is not None:
        sample_stats["diverging"] = diverging
        sample_stats["n_steps"] = num_steps
    idata = az.from_dict(posterior=posterior, sample_stats=sample_stats or None, coords=coords, dims=dims)
    idata.posterior.attrs["inference"] = fit.method
    return idata


def diagnostics(idata, chains: int) -> dict:
    """R-hat, bulk/tail ESS of the population parameters, divergences, and warnings when bad."""
    import arviz as az

    names = [v for v in ("log_theta", "omega", "sigma") if v in idata.posterior]
    names += [v for v in idata.posterior.data_vars if v.endswith(("_beta", "_cutpoints"))]
    summ = az.summary(idata, var_names=names, kind="diagnostics")
    div = int(np.asarray(idata.sample_stats["diverging"]).sum()) if "sample_stats" in idata.groups() else 0
    out = {"method": "nuts", "chains": chains, "max_rhat": float(summ["r_hat"].max()),
           "min_ess_bulk": float(summ["ess_bulk"].min()), "min_ess_tail": float(summ["ess_tail"].min()),
           "divergences": div, "table": summ.reset_index().rename(columns={"index": "variable"}).to_dict("records"),
           "warnings": []}
    if chains > 1 and not out["max_rhat"] <= RHAT_MAX:
        out["warnings"].append(f"R-hat up to {out['max_rhat']:.3f} (> {RHAT_MAX}): chains disagree; do not use these draws")
    if not out["min_ess_bulk"] >= ESS_MIN_PER_CHAIN * chains:
        out["warnings"].append(f"bulk ESS down to {out['min_ess_bulk']:.0f} (< {ESS_MIN_PER_CHAIN} per chain): "
                               "run longer chains")
    if div:
        out["warnings"].append(f"{div} divergent transitions: the posterior geometry is hard; raise target_accept "
                               "or reparameterise")
    return out


def posterior_predictive_rates(config, fit: FitResult, targets, n_draws: int = 20, n_patients: int = 100,
                               seed: int = 0, prob: float = 0.9) -> pd.DataFrame:
    """New cohorts from posterior draws: each draw's typical values, a fresh cohort of `n_patients`.

    The interval of the simulated rates carries parameter uncertainty and the
    sampling noise of a cohort of that size.
    """
    from vpop.fitting.cohort_tables import engine_rates

    d = fit.theta_draws()
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(d), size=min(n_draws, len(d)), replace=False)
    sims = []
    for j, idx in enumerate(pick):
        params = {name: float(d[idx, k]) for k, name in enumerate(fit.free)}
        table, _ = engine_rates(config, targets, n_patients, seed=1000 + seed * 7919 + j, parameters=params)
        sims.append(table["simulated"].to_numpy())
    sims = np.asarray(sims)
    lo, hi = (1 - prob) / 2, 1 - (1 - prob) / 2
    rows = []
    for i, t in enumerate(targets):
        v = sims[:, i]
        v = v[np.isfinite(v)]
        rows.append({"cohort": t.cohort, "endpoint": t.endpoint, "scale": t.scale or "-", "published": t.value,
                     "unit": "fraction" if t.is_rate else "day",
                     "simulated_median": float(np.median(v)) if len(v) else float("nan"),
                     "low": float(np.quantile(v, lo)) if len(v) else float("nan"),
                     "high": float(np.quantile(v, hi)) if len(v) else float("nan")})
    return pd.DataFrame(rows)

"""Diagnostics of a fit, written as files into the fit folder (read by `vpop report`).

Files (all optional except the first two; a file is absent when its method does not make it):

* `loss_trace.csv`: `iteration,loss` — SVI negative ELBO per step, or the MAP search's
  negative log posterior per L-BFGS iteration (Laplace);
* `sampler_stats.csv`: NUTS only, one row per draw: `chain,draw,diverging,n_steps,tree_depth,
  acceptance_rate,energy`;
* `convergence.csv`: one row per population quantity (`variable`, e.g. `log_theta[crp_max]`):
  `mean,sd,hdi_5%,hdi_95%,r_hat,ess_bulk,ess_tail` (r_hat and ESS NaN for one chain);
  `ebfmi.csv`: NUTS, `chain,ebfmi` (energy Bayesian fraction of missing information; < 0.3 is bad);
* `predictions.csv` (written by `vpop fit`): per observation `ID,TIME,analyte,DV,censored,
  pred_median,pred_q05,pred_q95` (individual predictions) plus `pop_pred` (population
  prediction: typical values, random effects 0), `ipred` (individual prediction at the
  posterior median of the parameters), `npde` (normalised prediction distribution error;
  censored values get the npde of a value drawn uniformly below the LLOQ's simulated
  quantile, as Nguyen et al. 2017 recommend), `iwres` (log DV - log ipred) / sigma;
* `shrinkage.csv`: `parameter,omega,sd_eta,shrinkage` with eta shrinkage
  1 - SD(posterior mean eta_i) / omega (> 0.3: individual estimates pulled to the mean;
  individual-based diagnostics are then unreliable);
* `loo.json`: PSIS-LOO of the observations (ArviZ): `elpd_loo, se, p_loo, n_data_points,
  warning, pareto_k_above_0.7`; compare two models by elpd_loo (larger is better);
* `identifiability.json`: `vpop.fitting.identifiability.Identifiability.to_dict()`;
* `vpc.csv`: visual predictive check, one row per analyte and observation time (on the fitting grid):
  `analyte,time,n,obs_q05,obs_q50,obs_q95,sim_q05_lo,sim_q05_hi,sim_q50_lo,sim_q50_hi,sim_q95_lo,sim_q95_hi,
  obs_blq,sim_blq_lo,sim_blq_hi`: the 5th, 50th and 95th percentiles of the observed values, and the 5-95 %
  range of the same percentiles over data sets simulated from the fit (new patients: population draw,
  new random effects, residual error; the NPDE's replicates). Values below an analyte's LLOQ (the lowest
  censored value of that analyte) count at the LLOQ in both, and `obs_blq` / `sim_blq_*` give the
  fraction below it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm


def write_loss_trace(path: Path, losses) -> None:
    if losses is None:
        return
    pd.DataFrame({"iteration": np.arange(len(losses)), "loss": np.asarray(losses, float)}).to_csv(path, index=False)


def write_sampler_stats(folder: Path, idata) -> None:
    """sampler_stats.csv and ebfmi.csv of a NUTS fit."""
    import arviz as az

    if "sample_stats" not in idata.groups():
        return
    ss = idata.sample_stats
    names = [v for v in ("diverging", "n_steps", "tree_depth", "acceptance_rate", "energy") if v in ss]
    df = ss[names].to_dataframe().reset_index()
    df.to_csv(folder / "sampler_stats.csv", index=False)
    if "energy" in ss:
        e = np.atleast_1d(az.bfmi(idata))
        pd.DataFrame({"chain": np.arange(len(e)), "ebfmi": e}).to_csv(folder / "ebfmi.csv", index=False)


def convergence_table(idata, var_names=("log_theta", "omega", "omega_bov", "sigma", "sigma_add", "cov_beta")) -> pd.DataFrame:
    import arviz as az

    names = [v for v in var_names if v in idata.posterior]
    names += [v for v in idata.posterior.data_vars if v.endswith(("_beta", "_cutpoints")) and v not in names]
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summ = az.summary(idata, var_names=names, hdi_prob=0.9)
    return summ.reset_index().rename(columns={"index": "variable"})


def shrinkage(samples: dict, free) -> pd.DataFrame:
    """Eta shrinkage per free parameter from posterior draws of z (or eta) and omega."""
    om = np.asarray(samples["omega"]).reshape(-1, len(free))
    F = len(free)  # nuisance columns (after the free ones) have fixed SDs: no shrinkage to report
    if "eta" in samples:
        eta = np.asarray(samples["eta"]).reshape(-1, *np.shape(samples["eta"])[-2:])[..., :F]
    else:
        z = np.asarray(samples["z"]).reshape(-1, *np.shape(samples["z"])[-2:])[..., :F]
        eta = z * om[:, None, :]
    mean_eta = eta.mean(axis=0)  # (n, F) posterior mean per patient
    omega = np.median(om, axis=0)
    sd = mean_eta.std(axis=0, ddof=1) if mean_eta.shape[0] > 1 else np.zeros(len(free))
    return pd.DataFrame({"parameter": list(free), "omega": omega, "sd_eta": sd, "shrinkage": 1.0 - sd / omega})


def npde(y_log, sims_log, censored, rng=None) -> np.ndarray:
    """NPDE of each observation from simulated replicates (K, m) of it (decorrelation per observation
    omitted: the observations of a patient are treated one by one, the 'pd' variant). A censored value
    gets a pd drawn uniformly on (0, pd at the LLOQ)."""
    rng = np.random.default_rng(0) if rng is None else rng
    sims = np.asarray(sims_log)
    K = sims.shape[0]
    pd_ = (np.sum(sims < np.asarray(y_log)[None], axis=0) + 0.5) / (K + 1)
    cens = np.asarray(censored, bool)
    pd_ = np.where(cens, rng.uniform(0, 1, pd_.shape) * pd_, pd_)
    return norm.ppf(np.clip(pd_, 0.5 / (K + 1), 1 - 0.5 / (K + 1)))


def pointwise_loglik(problem, samples: dict, n_draws: int = 100, seed: int = 0, options=None) -> np.ndarray:
    """(draws, observations) log-likelihood of the time-course observations under posterior draws (log-normal
    or combined error; censored values by their M3 term), for PSIS-LOO."""
    import jax
    import jax.numpy as jnp
    from jax.scipy.stats import norm as jnorm

    from vpop.fitting.model import predictions
    from vpop.fitting.statistical_model import individual_log_factors

    def flat(k):
        v = np.asarray(samples[k])
        return v.reshape(-1, *v.shape[2:])

    lt, om, sg, z = flat("log_theta"), flat("omega"), flat("sigma"), flat("z")
    L = flat("corr") if "corr" in samples else None
    beta = flat("cov_beta") if "cov_beta" in samples else None
    sa = flat("sigma_add") if "sigma_add" in samples else None
    x = None if options is None else options.covariate_x
    pick = np.random.default_rng(seed).choice(len(lt), size=min(n_draws, len(lt)), replace=False)
    mu_fn = jax.jit(lambda lf: predictions(problem, lf)[0])
    mask = np.asarray(problem.obs_mask)
    cens = np.asarray(problem.obs_cens)
    y = np.asarray(problem.obs_logv)
    a = np.asarray(problem.obs_analyte)
    out = []
    for i in pick:
        Lc = None if L is None else np.linalg.cholesky(L[i])
        lf = individual_log_factors(problem, jnp.asarray(lt[i]), jnp.asarray(om[i]), jnp.asarray(z[i]),
                                    None if Lc is None else jnp.asarray(Lc),
                                    None if beta is None else jnp.asarray(beta[i]), x)
        mu = np.asarray(mu_fn(lf))
        if sa is None:
            sd = sg[i][a]
            ll = np.where(cens, np.asarray(jnorm.logcdf((y - mu) / sd)), norm.logpdf(y, mu, sd))
        else:
            pred, yn = np.exp(mu), np.exp(y)
            sd = np.sqrt(sa[i][a] ** 2 + (sg[i][a] * pred) ** 2)
            ll = np.where(cens, norm.logcdf((yn - pred) / sd), norm.logpdf(yn, pred, sd))
        out.append(ll[mask])
    return np.asarray(out)


def loo(problem, samples, n_draws: int = 200, options=None) -> dict:
    """PSIS-LOO (ArviZ) over the observations."""
    import warnings

    import arviz as az
    import xarray as xr

    ll = pointwise_loglik(problem, samples, n_draws=n_draws, options=options)
    idata = az.InferenceData(log_likelihood=xr.Dataset({"obs": (("chain", "draw", "obs_id"), ll[None])}),
                             posterior=xr.Dataset({"dummy": (("chain", "draw"), np.zeros((1, ll.shape[0])))}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = az.loo(idata, pointwise=True)
    k = np.asarray(res.pareto_k)
    return {"elpd_loo": float(res.elpd_loo), "se": float(res.se), "p_loo": float(res.p_loo),
            "n_data_points": int(res.n_data_points), "n_draws": int(ll.shape[0]), "warning": bool(res.warning),
            "pareto_k_above_0.7": int((k > 0.7).sum())}


def vpc_table(problem, sims_log, quantiles=(0.05, 0.5, 0.95)) -> pd.DataFrame:
    """The VPC (module docstring) from K simulated data sets (K, n, m) of log values on the problem's design."""
    sims = np.asarray(sims_log)
    y = np.asarray(problem.obs_logv)
    mask = np.asarray(problem.obs_mask)
    cens = np.asarray(problem.obs_cens)
    ana = np.asarray(problem.obs_analyte)
    t = np.round((np.asarray(problem.obs_k) + np.asarray(problem.obs_w)) * problem.settings.dt, 6)
    rows = []
    for j, name in enumerate(problem.analytes):
        sel_a = mask & (ana == j)
        lloq = float(np.min(y[sel_a & cens])) if np.any(sel_a & cens) else -np.inf
        for tt in np.unique(t[sel_a]):
            sel = sel_a & (t == tt)
            obs = np.maximum(y[sel], lloq)
            sim = np.maximum(sims[:, sel], lloq)  # (K, k)
            q_obs = np.quantile(obs, quantiles)
            q_sim = np.quantile(sim, quantiles, axis=1)  # (3, K)
            blq = np.mean(sim <= lloq, axis=1)
            row = {"analyte": name, "time": float(tt), "n": int(sel.sum())}
            for q, qo, qs in zip(("q05", "q50", "q95"), q_obs, q_sim):
                lo, hi = np.quantile(qs, [0.05, 0.95])
                row.update({f"obs_{q}": float(np.exp(qo)), f"sim_{q}_lo": float(np.exp(lo)), f"sim_{q}_hi": float(np.exp(hi))})
            row.update({"obs_blq": float(np.mean(cens[sel])), "sim_blq_lo": float(np.quantile(blq, 0.05)),
                        "sim_blq_hi": float(np.quantile(blq, 0.95))})
            rows.append(row)
    return pd.DataFrame(rows)


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, default=float))

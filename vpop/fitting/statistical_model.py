"""The hierarchical NumPyro model: priors, random effects and the likelihood of the data (docs/fitting.md).

The predictions it scores come from `vpop.fitting.model`, which runs the one course of
treatment (`vpop.engine.course`) for every patient.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax.scipy.stats import norm

from vpop.errors import UserError
from vpop.fitting.model import GRADE_CATEGORIES, SEVERITY_EPS, FitProblem, predictions, predictions_forward_ad


def censored_normal_loglik(log_lloq, mu, sd):
    """log P(log y < log LLOQ) for log y ~ Normal(mu, sd)."""
    return norm.logcdf((log_lloq - mu) / sd)


def population_model(free, log_ref, prior_sd, cohort):
    """Cohort tables only: typical values, no patient-level data (used for calibration)."""
    log_theta = numpyro.sample("log_theta", dist.Normal(jnp.asarray(log_ref), jnp.asarray(prior_sd)).to_event(1))
    numpyro.deterministic("theta", jnp.exp(log_theta))
    cohort.add_likelihood(log_theta, jnp.asarray(log_ref), free)


PARAMETERISATIONS = ("noncentred", "centred")


def numpyro_model(problem: FitProblem, cohort=None, ignore_censoring: bool = False,
                  parameterisation: str = "noncentred"):
    """The NumPyro model. `cohort` adds a cohort-table likelihood (`cohort_tables.CohortLikelihood`).

    `parameterisation`: "noncentred" samples z_i ~ Normal(0, 1) and sets
    eta_i = omega z_i; "centred" samples eta_i ~ Normal(0, omega) directly (z is
    then recorded as a deterministic site). The posterior is the same; with
    rich per-patient data the centred form has the easier geometry for NUTS
    (fewer leapfrog steps, docs/fitting.md), with sparse data the non-centred.

    `ignore_censoring=True` treats BLQ values as observed at the LLOQ (wrong; kept
    only so the tests can show that the censored likelihood matters).
    """
    if parameterisation not in PARAMETERISATIONS:
        raise UserError(f"parameterisation {parameterisation!r}: use one of {', '.join(PARAMETERISATIONS)}")
    F, A = len(problem.free), max(1, len(problem.analytes))
    log_theta = numpyro.sample("log_theta", dist.Normal(jnp.asarray(problem.log_ref), jnp.asarray(problem.prior_sd)).to_event(1))
    omega = numpyro.sample("omega", dist.HalfNormal(problem.omega_prior * jnp.ones(F)).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(problem.sigma_prior * jnp.ones(A)).to_event(1))
    shift = log_theta - jnp.asarray(problem.log_ref)
    if parameterisation == "centred":
        with numpyro.plate("patients", problem.n):
            eta = numpyro.sample("eta", dist.Normal(jnp.zeros(F), omega).to_event(1))
        numpyro.deterministic("z", eta / omega)
        log_factors = shift + eta
    else:
        with numpyro.plate("patients", problem.n):
            z = numpyro.sample("z", dist.Normal(jnp.zeros(F), 1.0).to_event(1))
        log_factors = shift + omega * z
    numpyro.deterministic("theta", jnp.exp(log_theta))
    if problem.settings.derivatives == "forward":
        mu, sev = predictions_forward_ad(problem, log_factors)
    elif problem.settings.derivatives == "reverse":
        mu, sev, _ = predictions(problem, log_factors)
    else:
        raise UserError(f"GridSettings.derivatives {problem.settings.derivatives!r}: use 'forward' or 'reverse'")
    sd = sigma[jnp.asarray(problem.obs_analyte)]
    mask = jnp.asarray(problem.obs_mask)
    cens = jnp.asarray(problem.obs_cens)
    y = jnp.asarray(problem.obs_logv)
    if ignore_censoring:
        numpyro.sample("obs", dist.Normal(mu, sd).mask(mask), obs=y)
    else:
        numpyro.sample("obs", dist.Normal(mu, sd).mask(mask & ~cens), obs=y)
        numpyro.factor("blq", jnp.sum(jnp.where(mask & cens, censored_normal_loglik(y, mu, sd), 0.0)))
    for kind, grades in problem.grades.items():
        beta = numpyro.sample(f"{kind}_beta", dist.LogNormal(0.0, 1.0))
        cut = numpyro.sample(
            f"{kind}_cutpoints",
            dist.TransformedDistribution(dist.Normal(0.0, 5.0).expand([GRADE_CATEGORIES - 1]).to_event(1),
                                         dist.transforms.OrderedTransform()),
        )
        eta_sev = beta * jnp.log(sev[kind] + SEVERITY_EPS[kind])
        g = jnp.asarray(grades)
        observed = g >= 0
        with numpyro.plate(f"{kind}_patients", problem.n):
            numpyro.sample(f"{kind}_grade", dist.OrderedLogistic(eta_sev, cut).mask(observed),
                           obs=jnp.where(observed, g, 0))
    if cohort is not None:
        cohort.add_likelihood(log_theta, jnp.asarray(problem.log_ref), problem.free)

"""The hierarchical NumPyro model: priors, random effects and the likelihood of the data (docs/fitting.md).

The predictions it scores come from `vpop.fitting.model`, which runs the one course of
treatment (`vpop.engine.course`) for every patient.

Options beyond the default model (`ModelOptions`; the default reproduces it exactly):

* `omega="full"`: correlated random effects, eta_i ~ MVN(0, diag(omega) R diag(omega)) with
  R ~ LKJ(`lkj_concentration`) (Cholesky factor `L_corr`, correlation recorded as `corr`);
* `covariates`: log-linear effects on the typical values estimated from the data,
  log theta_i,f += sum_c beta_c,f x_i,c with x the centred covariate (log(c / median) for a
  covariate that is positive in every patient, c - mean otherwise); beta ~ Normal(0, 1);
  they act on top of vpop's own (fixed) covariate model in the base parameters;
* `error="combined"`: additive + proportional error on the natural scale,
  DV ~ Normal(pred, sqrt(a^2 + (b pred)^2)), b = `sigma` (per analyte), a = `sigma_add`
  (per analyte, in the analyte's unit, HalfNormal prior scaled by the analyte's median DV).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.stats import norm

from vpop.errors import UserError
from vpop.fitting.model import GRADE_CATEGORIES, SEVERITY_EPS, FitProblem, predictions, predictions_forward_ad
from vpop.fitting.small_matrices import solve_lower


def censored_normal_loglik(log_lloq, mu, sd):
    """log P(log y < log LLOQ) for log y ~ Normal(mu, sd)."""
    return norm.logcdf((log_lloq - mu) / sd)


def population_model(free, log_ref, prior_sd, cohort):
    """Cohort tables only: typical values, no patient-level data (used for calibration)."""
    log_theta = numpyro.sample("log_theta", dist.Normal(jnp.asarray(log_ref), jnp.asarray(prior_sd)).to_event(1))
    numpyro.deterministic("theta", jnp.exp(log_theta))
    cohort.add_likelihood(log_theta, jnp.asarray(log_ref), free)


PARAMETERISATIONS = ("noncentred", "centred")
OMEGA_STRUCTURES = ("diag", "full")
ERROR_MODELS = ("log", "combined")


@dataclass
class ModelOptions:
    """Statistical-model options (module docstring). The defaults give the original model."""

    omega: str = "diag"
    lkj_concentration: float = 2.0
    covariate_names: tuple = ()
    covariate_x: np.ndarray | None = None  # (n, C) centred covariates
    error: str = "log"
    add_prior_scale: np.ndarray | None = None  # (A,) HalfNormal scale of the additive SD, combined error only
    bov: tuple = ()  # free parameters with between-occasion variability (`bov_design`)
    bov_columns: np.ndarray | None = None  # (B,) their columns among the free parameters
    subject: np.ndarray | None = None  # (n,) subject index of every course (BOV only)
    occasion: np.ndarray | None = None  # (n,) occasion index of every course, over all subjects (BOV only)

    @property
    def n_subjects(self) -> int:
        return int(np.max(self.subject)) + 1 if self.bov else 0

    @property
    def n_occasions(self) -> int:
        return int(np.max(self.occasion)) + 1 if self.bov else 0

    def check(self, problem) -> "ModelOptions":
        if self.omega not in OMEGA_STRUCTURES:
            raise UserError(f"--omega {self.omega!r}: use one of {', '.join(OMEGA_STRUCTURES)}")
        if self.omega == "full" and len(problem.free) < 2:
            raise UserError("--omega full: needs two or more free parameters (one has no correlation)")
        if self.error not in ERROR_MODELS:
            raise UserError(f"--error {self.error!r}: use one of {', '.join(ERROR_MODELS)}")
        if self.covariate_names and (self.covariate_x is None or self.covariate_x.shape != (problem.n, len(self.covariate_names))):
            raise UserError("covariate effects: the design matrix does not match the patients")
        if self.bov:
            bad = [f for f in self.bov if f not in problem.free]
            if bad:
                raise UserError(f"--bov {','.join(bad)}: not free parameters; allowed: {', '.join(problem.free)}")
            if self.subject is None or self.occasion is None or len(self.subject) != problem.n or \
                    list(self.bov_columns) != [list(problem.free).index(f) for f in self.bov]:
                raise UserError("--bov: the occasion design does not match the patients")
            if self.omega == "full":
                raise UserError("--bov with --omega full: not supported; use --omega diag")
            if problem.nuisance:
                raise UserError("--bov with nuisance random effects: not supported; use --nuisance none")
            if self.n_occasions == self.n_subjects:
                raise UserError("--bov: every subject has one occasion, so between-occasion variability cannot be "
                                "told from between-subject variability; occasions come from resets (EVID 3/4) or OCC")
        return self


def covariate_design(data, config, names) -> tuple[tuple, np.ndarray]:
    """(names, (n, C) centred covariates) of the named covariates: log(c / median) when positive in every
    patient, c - mean otherwise. A covariate missing in a patient takes the config population's median
    (as the base parameters do); one with no spread in the data is refused (its effect is not estimable)."""
    from vpop.fitting.model import patient_covariates
    from vpop.population.sampler import COVARIATES

    names = tuple(names)
    allowed = (*COVARIATES, "car_dose_per_kg", "ld_intensity", "female")
    cols = []
    for c in names:
        if c not in allowed:
            raise UserError(f"covariate effect {c!r}: not a covariate; allowed: {', '.join(allowed)}")
        v = np.array([patient_covariates(config, cov).get(c, np.nan) for cov in data.covariates], dtype=float)
        if not np.all(np.isfinite(v)):
            raise UserError(f"covariate effect {c!r}: missing in some patients and no population median to fill it")
        if np.ptp(v) == 0:
            raise UserError(f"covariate effect {c!r}: the same value ({v[0]:g}) in every patient of {data.source}; "
                            "its effect cannot be estimated")
        cols.append(np.log(v / np.median(v)) if np.all(v > 0) else v - v.mean())
    return names, (np.stack(cols, axis=1) if cols else np.zeros((data.n, 0)))


def bov_design(data, free, names) -> dict:
    """The ModelOptions fields of between-occasion variability on the free parameters `names`: the subject and
    occasion of every course (`PatientData.occasion_design`). Empty `names`: no BOV (the model unchanged)."""
    names = tuple(names)
    if not names:
        return {}
    bad = [f for f in names if f not in free]
    if bad:
        raise UserError(f"--bov {','.join(bad)}: not free parameters; allowed: {', '.join(free)}")
    subject, occasion = data.occasion_design()
    return {"bov": names, "bov_columns": np.array([list(free).index(f) for f in names], np.int32),
            "subject": subject, "occasion": occasion}


def default_add_scale(problem) -> np.ndarray:
    """Per-analyte median of the observed values: the scale of the additive-error prior."""
    y = np.exp(np.asarray(problem.obs_logv))
    ok = np.asarray(problem.obs_mask) & ~np.asarray(problem.obs_cens)
    a = np.asarray(problem.obs_analyte)
    return np.array([float(np.median(y[ok & (a == j)])) if np.any(ok & (a == j)) else 1.0
                     for j in range(max(1, len(problem.analytes)))])


def bov_effects(opt: ModelOptions, omega, omega_bov, z_subject, z_occasion):
    """Per-course standardised random effects z (n, F) of the BOV model: omega z_c = omega z_s(c) + kappa_c,
    kappa_c = omega_bov z_occasion(c) on the BOV parameters (zero on the others). Written as z so that everything
    downstream (predictions, shrinkage, NPDE) reads a course's total random effect as without BOV."""
    z = jnp.asarray(z_subject)[..., jnp.asarray(opt.subject), :]
    kappa = jnp.zeros_like(z).at[..., jnp.asarray(opt.bov_columns)].set(
        omega_bov[..., None, :] * jnp.asarray(z_occasion)[..., jnp.asarray(opt.occasion), :])
    return z + kappa / omega[..., None, :]


def random_effect_scale(problem, omega, L=None):
    """A (E, E) lower triangular with eta_i = A z_i, z_i ~ N(0, I): diag(omega) (or diag(omega) L) on the free
    parameters, the config's fixed Cholesky factor on the nuisance ones (`FitProblem.nuisance`)."""
    A = jnp.diag(omega) if L is None else omega[:, None] * L
    K = len(problem.nuisance)
    if not K:
        return A
    F = A.shape[-1]
    top = jnp.concatenate([A, jnp.zeros((F, K), A.dtype)], axis=-1)
    bottom = jnp.concatenate([jnp.zeros((K, F), A.dtype), jnp.asarray(problem.nuisance_chol, A.dtype)], axis=-1)
    return jnp.concatenate([top, bottom], axis=-2)


def nuisance_z(eta_nuisance, chol):
    """The standard normals of nuisance random effects eta (..., K): solve chol z = eta (chol is a constant)."""
    inv = np.linalg.inv(np.asarray(chol, float))
    return eta_nuisance @ jnp.asarray(inv.T, eta_nuisance.dtype)


def individual_log_factors(problem, log_theta, omega, z, L_corr=None, cov_beta=None, x=None, eta=None):
    """log theta_i - log theta_ref of every patient over `problem.effects` (n, E) from the population parameters
    and z ~ N(0, I) (or the random effects `eta` themselves, centred form; with BOV, z from `bov_effects`).
    The nuisance columns have no typical-value shift or covariate effect: they are the config's variability."""
    F, K = len(problem.free), len(problem.nuisance)
    shift = log_theta - jnp.asarray(problem.log_ref)
    if eta is None:
        zf = z[..., :F]
        eta = omega * (zf if L_corr is None else zf @ jnp.swapaxes(L_corr, -1, -2))
        if K:
            eta = jnp.concatenate([eta, z[..., F:] @ jnp.asarray(problem.nuisance_chol, z.dtype).T], axis=-1)
    fixed = shift
    if cov_beta is not None and x is not None and x.shape[-1]:
        fixed = fixed + jnp.asarray(x) @ cov_beta
    if K:
        fixed = jnp.concatenate([jnp.broadcast_to(fixed, eta.shape[:-1] + (F,)),
                                 jnp.zeros(eta.shape[:-1] + (K,), eta.dtype)], axis=-1)
    return fixed + eta


def population_priors(problem: FitProblem, opt: ModelOptions) -> dict:
    """The prior of every population site of the patient-data model (not the grades'), by site name.

    One source for the model and for the Laplace sandwich covariance, which needs the prior's curvature
    apart from the patients' terms (`vpop.fitting.laplace.prior_potential`)."""
    F, A = len(problem.free), max(1, len(problem.analytes))
    out = {"log_theta": dist.Normal(jnp.asarray(problem.log_ref), jnp.asarray(problem.prior_sd)).to_event(1),
           "omega": dist.HalfNormal(problem.omega_prior * jnp.ones(F)).to_event(1),
           "sigma": dist.HalfNormal(problem.sigma_prior * jnp.ones(A)).to_event(1)}
    if opt.omega == "full":
        out["L_corr"] = dist.LKJCholesky(F, concentration=opt.lkj_concentration)
    if opt.covariate_names:
        out["cov_beta"] = dist.Normal(jnp.zeros((len(opt.covariate_names), F)), 1.0).to_event(2)
    if opt.error == "combined":
        scale = opt.add_prior_scale if opt.add_prior_scale is not None else default_add_scale(problem)
        out["sigma_add"] = dist.HalfNormal(jnp.asarray(scale)).to_event(1)
    if opt.bov:
        out["omega_bov"] = dist.HalfNormal(problem.omega_prior * jnp.ones(len(opt.bov))).to_event(1)
    return out


def numpyro_model(problem: FitProblem, cohort=None, ignore_censoring: bool = False,
                  parameterisation: str = "noncentred", options: ModelOptions | None = None):
    """The NumPyro model. `cohort` adds a cohort-table likelihood (`cohort_tables.CohortLikelihood`).

    `parameterisation`: "noncentred" samples z_i ~ Normal(0, 1) and sets
    eta_i = omega z_i (omega L z_i with a full covariance); "centred" samples
    eta_i ~ Normal(0, omega) (MVN with a full covariance) directly (z is then
    recorded as a deterministic site). The posterior is the same; with
    rich per-patient data the centred form has the easier geometry for NUTS
    (fewer leapfrog steps, docs/fitting.md), with sparse data the non-centred.

    `ignore_censoring=True` treats BLQ values as observed at the LLOQ (wrong; kept
    only so the tests can show that the censored likelihood matters).
    """
    if parameterisation not in PARAMETERISATIONS:
        raise UserError(f"parameterisation {parameterisation!r}: use one of {', '.join(PARAMETERISATIONS)}")
    opt = options or ModelOptions()
    F, E = len(problem.free), len(problem.effects)
    priors = population_priors(problem, opt)
    log_theta = numpyro.sample("log_theta", priors["log_theta"])
    omega = numpyro.sample("omega", priors["omega"])
    sigma = numpyro.sample("sigma", priors["sigma"])
    L = None
    if opt.omega == "full":
        L = numpyro.sample("L_corr", priors["L_corr"])
        numpyro.deterministic("corr", L @ L.T)
    beta = None  # covariate effects (C, F)
    if opt.covariate_names:
        beta = numpyro.sample("cov_beta", priors["cov_beta"])
    if opt.bov and parameterisation == "centred":
        raise UserError("--bov: only with the non-centred parameterisation (--parameterisation noncentred)")
    if parameterisation == "centred":
        with numpyro.plate("patients", problem.n):
            if L is None and not problem.nuisance:
                eta = numpyro.sample("eta", dist.Normal(jnp.zeros(F), omega).to_event(1))
            else:  # correlated free effects and/or the nuisance ones (fixed covariance), together
                eta = numpyro.sample("eta", dist.MultivariateNormal(jnp.zeros(E),
                                                                    scale_tril=random_effect_scale(problem, omega, L)))
            z = z_of_eta(eta, omega, L, problem.nuisance_chol)
        numpyro.deterministic("z", z)
        log_factors = individual_log_factors(problem, log_theta, omega, z, L, beta, opt.covariate_x, eta=eta)
    elif opt.bov:  # subjects' random effects, and each occasion's on the BOV parameters (non-centred)
        omega_bov = numpyro.sample("omega_bov", priors["omega_bov"])
        with numpyro.plate("subjects", opt.n_subjects):
            z_subject = numpyro.sample("z_subject", dist.Normal(jnp.zeros(F), 1.0).to_event(1))
        with numpyro.plate("occasions", opt.n_occasions):
            z_occasion = numpyro.sample("z_occasion", dist.Normal(jnp.zeros(len(opt.bov)), 1.0).to_event(1))
        z = numpyro.deterministic("z", bov_effects(opt, omega, omega_bov, z_subject, z_occasion))
        log_factors = individual_log_factors(problem, log_theta, omega, z, L, beta, opt.covariate_x)
    else:
        with numpyro.plate("patients", problem.n):
            z = numpyro.sample("z", dist.Normal(jnp.zeros(E), 1.0).to_event(1))
        log_factors = individual_log_factors(problem, log_theta, omega, z, L, beta, opt.covariate_x)
    numpyro.deterministic("theta", jnp.exp(log_theta))
    if problem.settings.derivatives == "forward":
        mu, sev = predictions_forward_ad(problem, log_factors)
    elif problem.settings.derivatives == "reverse":
        mu, sev, _ = predictions(problem, log_factors)
    else:
        raise UserError(f"GridSettings.derivatives {problem.settings.derivatives!r}: use 'forward' or 'reverse'")
    mask = jnp.asarray(problem.obs_mask)
    cens = jnp.asarray(problem.obs_cens)
    y = jnp.asarray(problem.obs_logv)
    aidx = jnp.asarray(problem.obs_analyte)
    if opt.error == "combined":
        sigma_add = numpyro.sample("sigma_add", priors["sigma_add"])
        pred = jnp.exp(mu)
        sd = jnp.sqrt(sigma_add[aidx] ** 2 + (sigma[aidx] * pred) ** 2)
        yn = jnp.exp(y)
        numpyro.sample("obs", dist.Normal(pred, sd).mask(mask & ~cens), obs=yn)
        numpyro.factor("blq", jnp.sum(jnp.where(mask & cens, norm.logcdf((yn - pred) / sd), 0.0)))
    else:
        sd = sigma[aidx]
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


def derived_sites(samples: dict, options: ModelOptions | None = None, nuisance_chol=None) -> dict:
    """Add the model's deterministic sites (theta, z of the centred form or of BOV, corr) to draws of its latent
    sites.

    Works on any leading draw axes; used where draws come from the unconstrained space (Laplace, NUTS).
    `nuisance_chol`: the problem's (`FitProblem.nuisance_chol`), for the z of centred nuisance effects.
    """
    out = dict(samples)
    if "z_subject" in out and options is not None and options.bov:
        out["z"] = bov_effects(options, out["omega"], out["omega_bov"], out["z_subject"], out["z_occasion"])
    if "log_theta" in out:
        out["theta"] = jnp.exp(out["log_theta"])
    L = out.get("L_corr")
    if L is not None:
        out["corr"] = L @ jnp.swapaxes(L, -1, -2)
    if "eta" in out and "omega" in out:
        out["z"] = z_of_eta(out["eta"], out["omega"], L, nuisance_chol)
    return out


def z_of_eta(eta, omega, L=None, nuisance_chol=None):
    """The standard normals z of centred random effects eta (..., n, E): eta = A z with A = `random_effect_scale`.
    Free columns: divided by omega (and solved with L); nuisance columns (after them): solved with their fixed
    Cholesky factor. Works on any leading draw axes."""
    F = omega.shape[-1]
    z = eta[..., :F] / omega[..., None, :]
    if L is not None:
        # one triangular solve per draw: forward substitution, not jaxlib's batched LAPACK (small_matrices)
        z = jnp.swapaxes(solve_lower(L, jnp.swapaxes(z, -1, -2)), -1, -2)
    if eta.shape[-1] > F:
        z = jnp.concatenate([z, nuisance_z(eta[..., F:], nuisance_chol)], axis=-1)
    return z

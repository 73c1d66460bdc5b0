"""MAP with a Laplace approximation: the fast default estimator of `vpop fit`.

The mode x* of the posterior in NumPyro's unconstrained space (log omega, log
sigma, z, ...; the Jacobians of the transforms included) is found with L-BFGS
(scipy, on one jitted value-and-gradient shared with the Hessian) from the prior centre. The posterior is then
approximated by Normal(x*, H^-1), H the Hessian of the negative log posterior
at x*. Standard errors and correlations of the typical values are read from
H^-1; draws from the Normal, mapped back to the model's scale, make the same
kind of posterior sample as SVI and NUTS (so every output is written the same
way).

H is built from finite differences of the exact gradient (central, step 1e-4
in the unconstrained coordinates; error ~1e-8 relative). Patients are
independent given the population parameters, so the Hessian of the random
effects is block-diagonal by patient: perturbing z_{.,f} of *all* patients at
once gives every patient's block in one gradient pair (colouring), and the
population rows come from perturbing each population coordinate alone. A
Hessian costs 2 (P + F) gradients instead of 2 D (P population coordinates,
F free parameters, D = P + n F).

The approximation is good when the posterior is close to Normal in the
unconstrained space: many patients per parameter, typical values well
informed. With few patients the omegas' posteriors are skewed; use NUTS
(docs/fitting.md, "Which estimator").
"""

from __future__ import annotations

import math
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm

from vpop.errors import UserError

from vpop.fitting.infer import FitResult, init_values, keep_sites, model_and_args, to_inferencedata
from vpop.fitting.small_matrices import spd_logdet, triangular_logabsdet
from vpop.fitting.statistical_model import derived_sites, random_effect_scale
from vpop.fitting.traced import POSITIVE_SITES, fast_path, fast_sites
from vpop.fitting.unconstrained import Unconstrained

PATIENT_SITES = ("z", "eta", "z_subject", "z_occasion")  # the random effects (BOV: subjects' and occasions')


def value_and_grad(f):
    """jit(value_and_grad(f)) with f(x, *args): one compilation serves the mode search, the Hessian and the
    evidence of a fit (args are traced, so refreezing the correction does not recompile)."""
    return jax.jit(jax.value_and_grad(f))


def find_map(u: Unconstrained, max_iter: int = 2000, tol: float = 1e-9, progress: bool = False, x0=None, f=None,
             args=(), vg=None):
    """(x*, losses, info) minimising f(x, *args) (default u.potential) with L-BFGS (scipy, on a jitted value
    and gradient)."""
    from scipy.optimize import minimize

    if vg is None:
        vg = value_and_grad((lambda y: u.potential(y)) if f is None else f)
    x = np.asarray(u.x0 if x0 is None else x0, dtype=np.float64)
    losses = []
    t0 = time.perf_counter()

    def fun(y):
        v, g = vg(jnp.asarray(y), *args)
        v = float(v)
        return (v, np.asarray(g, dtype=np.float64)) if math.isfinite(v) else (np.inf, np.zeros_like(y))

    def callback(intermediate_result):
        losses.append(float(intermediate_result.fun))
        if progress and len(losses) % 50 == 0:
            print(f"MAP: iteration {len(losses)}, -log posterior {losses[-1]:.4f}, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    res = minimize(fun, x, jac=True, method="L-BFGS-B", callback=callback,
                   options={"maxiter": max_iter, "maxcor": 20, "ftol": tol, "gtol": 1e-6})
    final, grad = fun(res.x)
    gnorm = float(np.max(np.abs(grad)))
    info = {"iterations": int(res.nit), "max_abs_gradient": gnorm, "neg_log_posterior": float(final),
            "converged": bool(math.isfinite(final) and (res.success or gnorm < 1e-3))}
    return jnp.asarray(res.x), np.asarray(losses), info


def hessian(u: Unconstrained, x, h: float = 1e-4, n_patients: int | None = None, dense: bool = False,
            f=None, args=(), vg=None) -> np.ndarray:
    """Hessian of `f` (default u.potential) at x by central differences of the gradient (module docstring).

    The patient colouring needs `f` to couple patients only through the population coordinates
    (true of the posterior and of the random-effect correction, which depends on those alone)."""
    vg = vg or value_and_grad((lambda y: u.potential(y)) if f is None else f)

    def g(dirs):  # (k, D) directions -> (k, D) directional derivatives of the gradient
        return np.stack([(np.asarray(vg(x + h * e, *args)[1]) - np.asarray(vg(x - h * e, *args)[1])) / (2 * h)
                         for e in jnp.asarray(dirs)])

    D = u.dim
    sl = u.slices()
    patient = [k for k in PATIENT_SITES if k in sl]
    if dense or not patient or n_patients is None:
        eye = np.eye(D)
        H = g(eye)
        return 0.5 * (H + H.T)
    site = sl[patient[0]]
    idx = np.arange(D)
    pidx = idx[site].reshape(n_patients, -1)  # (n, F) flat indices of the random effects
    F = pidx.shape[1]
    pop = np.setdiff1d(idx, pidx.ravel())
    dirs = np.zeros((len(pop) + F, D))
    dirs[np.arange(len(pop)), pop] = 1.0
    for f in range(F):
        dirs[len(pop) + f, pidx[:, f]] = 1.0
    rows = g(dirs)
    H = np.zeros((D, D))
    H[pop, :] = rows[:len(pop)]  # population rows (and by symmetry columns)
    H[:, pop] = rows[:len(pop)].T
    for f in range(F):
        r = rows[len(pop) + f]
        for f2 in range(F):  # within-patient block: d grad_{z_i,f2} / d z_i,f
            H[pidx[:, f2], pidx[:, f]] = r[pidx[:, f2]]
    return 0.5 * (H + H.T)


def normal_approximation(u: Unconstrained, n_patients: int | None = None, progress: bool = False,
                         centre=None) -> dict:
    """A normal approximation of u's posterior in its own unconstrained space: centre, covariance, Cholesky factor.

    The covariance is the inverse of the Hessian of the negative log density at the centre (patient-coloured
    differences of the gradient). The centre is the posterior's mode (`find_map`) unless given: with random
    effects the joint mode sits in the funnel's neck (omegas shrunk, the density unbounded there in the
    centred form), so `infer.run_nuts(init="laplace")` passes the integrated mode (`map_values`) instead.
    Directions where the Hessian is not positive (flat, or a saddle away from the joint mode) get unit
    variance, the identity mass matrix's, and are counted in `not_positive`.
    """
    t0 = time.perf_counter()
    vg = value_and_grad(lambda y: u.potential(y))
    if centre is None:
        x, _, info = find_map(u, progress=progress, vg=vg)
    else:
        x = jnp.asarray(centre)
        value, grad = vg(x)
        info = {"iterations": 0, "neg_log_posterior": float(value),
                "max_abs_gradient": float(jnp.max(jnp.abs(grad))), "converged": bool(jnp.isfinite(value))}
    H = hessian(u, x, n_patients=n_patients, vg=vg)
    w, V = np.linalg.eigh(H)
    positive = w > 1e-8 * max(float(np.max(np.abs(w))), 1.0)
    w = np.where(positive, w, 1.0)
    cov = (V / w) @ V.T
    cov = 0.5 * (cov + cov.T)
    return {"mode": np.asarray(x), "covariance": cov, "cholesky": np.linalg.cholesky(cov), "map": info,
            "not_positive": int((~positive).sum()), "seconds": time.perf_counter() - t0}


def nuts_start(problem, cohort=None, seed: int = 0, options=None, parameterisation: str = "noncentred",
               progress: bool = False) -> dict:
    """The start of `infer.run_nuts(init="laplace", laplace_start=...)`: `normal_approximation` of the posterior
    NUTS samples, centred at the Laplace estimator's integrated mode (`map_values`), not at the joint mode."""
    t0 = time.perf_counter()
    if progress:
        print("NUTS: the Laplace approximation (mode and Hessian) for the start and the mass matrix",
              file=sys.stderr, flush=True)
    model, args, kwargs = model_and_args(problem, cohort, parameterisation=parameterisation, options=options)
    start = {**init_values(problem, cohort, options),
             **map_values(problem, cohort, seed=seed, options=options, parameterisation=parameterisation)}
    at_mode = Unconstrained(model, args, kwargs, start, seed)
    out = normal_approximation(at_mode, problem.n if problem is not None else None, progress, centre=at_mode.x0)
    out["seconds"] = time.perf_counter() - t0
    return out


def integrated_normal(problem, parameterisation: str = "noncentred", seed: int = 0, max_iter: int = 2000):
    """The integrated Laplace approximation (mode, covariance) on the fast path's flat space, in the layout of
    `infer.run_fullrank`: a start for full-rank SVI (`vpop fit --svi-start laplace`). Directions where the
    Hessian is not positive get a tiny positive curvature, as in `run_laplace`. Returns (mode, covariance,
    layout, info); info["seconds"] is its time."""
    t0 = time.perf_counter()
    obj = objective(problem, None, None, parameterisation, integrate=True, seed=seed)
    if obj.fast is None:
        raise ValueError("integrated_normal needs a model on the fast path (patient time courses, no grades)")
    x, frozen, _, info = integrated_map(obj.space, obj.vg, obj.freeze, max_iter=max_iter)
    H = hessian(obj.space, x, n_patients=problem.n, args=(frozen,), vg=obj.vg)
    eig, vec = np.linalg.eigh(H)
    eig = np.maximum(eig, 1e-8 * max(eig.max(), 1.0))
    cov = (vec / eig) @ vec.T
    info = {**info, "seconds": time.perf_counter() - t0}
    return np.asarray(x), 0.5 * (cov + cov.T), obj.fast[1], info


RANDOM_EFFECTS = ("integrated", "joint")


def log_factors_of(problem, sites, covariate_x=None, options=None):
    from vpop.fitting.statistical_model import bov_effects, individual_log_factors

    z = sites.get("z")
    if "z_subject" in sites:
        z = bov_effects(options, sites["omega"], sites["omega_bov"], sites["z_subject"], sites["z_occasion"])
    return individual_log_factors(problem, sites["log_theta"], sites["omega"], z, sites.get("L_corr"),
                                  sites.get("cov_beta"), covariate_x, eta=sites.get("eta"))


def frozen_information(problem, sites, covariate_x=None, options=None):
    """(J, data weights, log predictions) of the correction, at the sites' values (`correction_value`).

    J (n, m, E) = d log pred / d log factor from one JVP per random effect (free and nuisance), all patients at once; the data
    weight of an observation is 1 when quantified and lambda (lambda + u) when censored (the curvature of the
    M3 term log Phi(u)), times pred^2 for the combined error (its Jacobian is on the natural scale)."""
    from vpop.fitting.model import predictions

    lf = log_factors_of(problem, sites, covariate_x, options)

    def at_obs(v):
        return predictions(problem, v)[0]

    eye = jnp.eye(lf.shape[-1], dtype=lf.dtype)
    mu, J = jax.vmap(lambda e: jax.jvp(at_obs, (lf,), (jnp.broadcast_to(e, lf.shape),)), out_axes=(None, -1))(eye)
    a = jnp.asarray(problem.obs_analyte)
    y = jnp.asarray(problem.obs_logv)
    mask, cens = jnp.asarray(problem.obs_mask), jnp.asarray(problem.obs_cens)
    if "sigma_add" in sites:
        pred = jnp.exp(mu)
        sd = jnp.sqrt(sites["sigma_add"][a] ** 2 + (sites["sigma"][a] * pred) ** 2)
        u, scale = (jnp.exp(y) - pred) / sd, pred
    else:
        u, scale = (y - mu) / sites["sigma"][a], jnp.ones_like(mu)
    lam = jnp.exp(norm.logpdf(u) - norm.logcdf(u))
    c = jnp.where(cens, lam * (lam + u), 1.0) * mask * scale ** 2
    return J, c, jnp.where(mask, mu, 0.0)


def correction_value(problem, sites, frozen, centred: bool):
    """0.5 sum_i log det(I + A' G_i A): the patients' random effects integrated out by Laplace.

    G_i = sum_j w_ij J_ij J_ij' is patient i's information about its log factors, A = d log factor_i / d z_i
    = diag(omega) L. J and the data part of w are frozen (`frozen_information`); the term stays differentiable
    in omega, L and the residual SDs (w = c / sigma^2), which is what moves the variance components away from
    the joint mode. Grades and cohort tables are not in G (little information about one patient's factors).
    In the centred form the eta prior's normaliser, log |det A| per patient, is already in the potential.
    """
    return jnp.sum(correction_terms(problem, sites, frozen, centred))


def information(problem, sites, frozen):
    """G_i = sum_j w_ij J_ij J_ij' (n, E, E): each course's information about its log factors (frozen J)."""
    J, c, mu = frozen
    a = jnp.asarray(problem.obs_analyte)
    if "sigma_add" in sites:
        var = sites["sigma_add"][a] ** 2 + (sites["sigma"][a] * jnp.exp(mu)) ** 2
    else:
        var = sites["sigma"][a] ** 2
    return jnp.einsum("nm,nmf,nmg->nfg", c / var, J, J)


def correction_terms(problem, sites, frozen, centred: bool):
    """Patient i's term of `correction_value`, (n,)."""
    J = frozen[0]
    G = information(problem, sites, frozen)
    F = J.shape[-1]
    A = random_effect_scale(problem, sites["omega"], sites.get("L_corr"))  # (F, F): free and nuisance effects
    M = jnp.eye(F) + jnp.einsum("fg,nfh,hk->ngk", A, G, A)
    out = 0.5 * spd_logdet(M)  # M = I + A'GA is positive definite; no batched LAPACK (small_matrices)
    if centred:
        out = out - triangular_logabsdet(A)  # A = diag(omega) L is lower triangular
    return out


def correction_bov(problem, sites, frozen, options):
    """`correction_value` with between-occasion variability: 0.5 log det(I + sum_c D_c' G_c D_c) over all random
    effects r = (z_subject, z_occasion), D_c = d log factor_c / d r (omega on the course's subject's z, omega_bov on
    its occasion's z, in the BOV columns). The courses of one subject share its z, so the integral is over each
    subject's z and its occasions' together (block-diagonal by subject; taken densely, which is cheap at the
    sizes fitted)."""
    J = frozen[0]
    G = information(problem, sites, frozen)
    n, F = J.shape[0], J.shape[-1]
    S, Q, B = options.n_subjects, options.n_occasions, len(options.bov)
    subj = jax.nn.one_hot(jnp.asarray(options.subject), S)  # (n, S)
    occ = jax.nn.one_hot(jnp.asarray(options.occasion), Q)  # (n, Q)
    Dz = jnp.einsum("f,ns,fg->nfsg", sites["omega"], subj, jnp.eye(F)).reshape(n, F, S * F)
    sel = jnp.zeros((F, B)).at[jnp.asarray(options.bov_columns), jnp.arange(B)].set(1.0)  # (F, B)
    Dk = jnp.einsum("b,nq,fb->nfqb", sites["omega_bov"], occ, sel).reshape(n, F, Q * B)
    D = jnp.concatenate([Dz, Dk], axis=-1)
    M = jnp.eye(S * F + Q * B) + jnp.einsum("nfr,nfg,ngs->rs", D, G, D)
    return 0.5 * jnp.linalg.slogdet(M)[1]


COVARIANCES = ("hessian", "sandwich")


def default_covariance(problem, cohort=None) -> str:
    """The covariance `vpop fit` uses unless told: the inverse Hessian. In the coverage study on engine data
    (docs/fitting.md) the sandwich's SEs were within ~10 % of it (median ratio 0.98-1.10) and covered the same
    replicates to within one in 50, while it is undefined with grades, cohort tables and BOV and noisier with
    few patients; it is reported beside the Hessian's in every fit as a misspecification check."""
    return "hessian"


def patient_terms(problem, sites, frozen, lf_star, centred: bool, covariate_x=None):
    """(n,) patient i's part of the integrated objective: -log p(y_i | phi, z_i) (- log p(eta_i | phi) in the
    centred form) + its random-effect correction, with the predictions *linear* in the log factors around
    `lf_star` through the frozen J (FOCE): exact in value and first derivative at lf_star, which is all the
    scores of the sandwich need, and no course is run.

    The likelihood is the model's (`statistical_model.numpyro_model`): log-normal or combined error, M3 for a
    censored value. The non-centred z_i ~ N(0, 1) prior is left out: it does not depend on the population
    parameters."""
    import numpyro.distributions as dist

    J, _, mu0 = frozen
    lf = log_factors_of(problem, sites, covariate_x)
    mu = mu0 + jnp.einsum("nmf,nf->nm", J, lf - lf_star)
    a = jnp.asarray(problem.obs_analyte)
    y, mask, cens = jnp.asarray(problem.obs_logv), jnp.asarray(problem.obs_mask), jnp.asarray(problem.obs_cens)
    if "sigma_add" in sites:
        pred, yn = jnp.exp(mu), jnp.exp(y)
        sd = jnp.sqrt(sites["sigma_add"][a] ** 2 + (sites["sigma"][a] * pred) ** 2)
        ll = jnp.where(cens, norm.logcdf((yn - pred) / sd), norm.logpdf(yn, pred, sd))
    else:
        sd = sites["sigma"][a]
        ll = jnp.where(cens, norm.logcdf((y - mu) / sd), norm.logpdf(y, mu, sd))
    out = -jnp.sum(jnp.where(mask, ll, 0.0), axis=-1)
    if centred:
        L = sites.get("L_corr")
        if L is None and not problem.nuisance:
            re = dist.Normal(jnp.zeros_like(sites["omega"]), sites["omega"]).to_event(1)
        else:  # correlated free effects and/or the nuisance ones
            re = dist.MultivariateNormal(jnp.zeros(len(problem.effects)),
                                         scale_tril=random_effect_scale(problem, sites["omega"], L))
        out = out - re.log_prob(sites["eta"])
    return out + correction_terms(problem, sites, frozen, centred)


def prior_potential(priors: dict, params: dict):
    """-log prior of the population sites in the unconstrained space (the transforms' Jacobians included, as
    NumPyro's potential has them). `priors`: `statistical_model.population_priors`; `params`: unconstrained."""
    from numpyro.distributions import biject_to

    out = 0.0
    for k, d in priors.items():
        t = biject_to(d.support)
        v = t(params[k])
        out = out - jnp.sum(d.log_prob(v)) - jnp.sum(t.log_abs_det_jacobian(params[k], v))
    return out


def sandwich_covariance(V, scores, prior_hessian):
    """V (S + P) V: the robust covariance of the population coordinates (NONMEM's R^-1 S R^-1).

    V = R^-1 is the Laplace covariance (the population block of H^-1: the inverse of the Hessian of the
    marginal objective, random effects integrated), S = sum_i s_i s_i' the outer products of the patients'
    scores of their marginal log-likelihood at the mode, P the prior's Hessian. The prior is not data and
    cannot be misspecified in the sandwich's sense, so it enters the "meat" by its curvature: when the model
    is right, S estimates R - P and V (S + P) V estimates V."""
    V = np.asarray(V)
    S = np.asarray(scores).T @ np.asarray(scores)
    out = V @ (S + np.asarray(prior_hessian)) @ V
    return 0.5 * (out + out.T)


_frozen_traced = jax.jit(frozen_information)  # the problem as an argument (`vpop.fitting.traced`)


def _fast_correction(problem, params, frozen, centred):
    return correction_value(problem, fast_sites(problem, params), frozen, centred)


class Space:
    """The flat unconstrained vector: start, dimension and the slice of each site."""

    def __init__(self, x0, layout):
        self.x0, self.layout = jnp.asarray(x0), layout

    @property
    def dim(self) -> int:
        return int(self.x0.shape[0])

    def slices(self) -> dict:
        out, i = {}, 0
        for k, shape in self.layout.spec:
            size = int(np.prod(shape)) if shape else 1
            out[k] = slice(i, i + size)
            i += size
        return out


def integrated_map(space, vg, freeze, rounds: int = 6, tol: float = 1e-3, progress: bool = False,
                   max_iter: int = 2000):
    """Mode of potential + correction, re-freezing the correction at each new mode until the population
    coordinates move less than `tol` (a fixed point; FOCE-like). `vg(x, frozen)`: value and gradient;
    `freeze(x)`: the frozen information at x. Returns (x, frozen, losses, info)."""
    x = jnp.asarray(space.x0)
    losses, info, moved = [], {}, float("nan")
    pop = np.ones(space.dim, bool)
    sl = space.slices()
    for k in PATIENT_SITES:
        if k in sl:
            pop[sl[k]] = False
    for r in range(rounds):
        frozen = freeze(x)
        x_new, ls, info = find_map(space, max_iter=max_iter, progress=progress, x0=x, args=(frozen,), vg=vg)
        losses.extend(ls.tolist())
        moved = float(np.max(np.abs(np.asarray(x_new)[pop] - np.asarray(x)[pop])))
        x = x_new
        info["rounds"] = r + 1
        if moved < tol and r > 0:
            break
    info["fixed_point_change"] = moved
    return x, freeze(x), np.asarray(losses), info


class Objective:
    """What the mode search, the Hessian and the sandwich need of one model (`objective`)."""

    def __init__(self, space, vg, freeze, constrain, params_of, sites_of, priors, fast=None):
        self.space, self.vg, self.freeze, self.constrain = space, vg, freeze, constrain
        self.params_of, self.sites_of, self.priors = params_of, sites_of, priors
        self.fast = fast  # (traced problem, layout) on the fast path: the sandwich's program is shared by a design


def objective(problem, cohort, options, parameterisation: str, integrate: bool, seed: int = 0) -> Objective:
    """The integrated (or joint) objective of a model: on the fast path with the data as an argument of one
    compiled program per design (`vpop.fitting.traced`), otherwise through NumPyro's potential."""
    from vpop.fitting import traced as tr
    from vpop.fitting.statistical_model import ModelOptions, population_priors

    centred = parameterisation == "centred"
    cov_x = None if options is None else options.covariate_x
    priors = None
    if problem is not None and cohort is None and not problem.grades:
        priors = population_priors(problem, options or ModelOptions())
    if fast_path(problem, cohort, options):
        from numpyro.distributions import biject_to, constraints

        tp = tr.traced(problem)
        init = init_values(problem, None, options)
        latent = ["log_theta", "omega", "sigma", "eta" if centred else "z"]
        layout = tr.Layout({k: init[k] for k in latent})
        pos = biject_to(constraints.positive)
        x0 = jnp.concatenate([jnp.ravel(pos.inv(init[k]) if k in POSITIVE_SITES else init[k]) for k, _ in layout.spec])
        space = Space(x0, layout)
        corr_fn = _fast_correction if integrate else None

        def vg(x, *a):
            return tr.value_and_grad(x, tp, a[0] if a else None, layout, parameterisation, corr_fn)

        def freeze(x):
            return _frozen_traced(tp, fast_sites(tp, layout.unravel(jnp.asarray(x))))

        def constrain(xs):
            return derived_sites(jax.vmap(lambda v: fast_sites(tp, layout.unravel(v)))(jnp.asarray(xs)),
                                 nuisance_chol=problem.nuisance_chol)

        return Objective(space, vg, freeze, constrain, layout.unravel,
                         lambda x: fast_sites(problem, layout.unravel(x)), priors, fast=(tp, layout))
    model, args, kwargs = model_and_args(problem, cohort, parameterisation=parameterisation, options=options)
    u = Unconstrained(model, args, kwargs, init_values(problem, cohort, options), seed)

    def sites_of(x):
        return u.constrain_tree(u.unravel(x))

    bov = options is not None and bool(options.bov)

    def f(y, *a):
        out = u.potential(y)
        if not a:
            return out
        if bov:
            return out + correction_bov(problem, sites_of(y), a[0], options)
        return out + correction_value(problem, sites_of(y), a[0], centred)

    freeze = None
    if problem is not None:
        freeze = jax.jit(lambda x: frozen_information(problem, sites_of(x), cov_x, options))
    return Objective(u, value_and_grad(f), freeze, u.constrain, u.unravel, sites_of, priors)


def population_index(space) -> np.ndarray:
    """Flat indices of the population coordinates (all but the patients' random effects)."""
    pop = np.ones(space.dim, bool)
    sl = space.slices()
    for k in PATIENT_SITES:
        if k in sl:
            pop[sl[k]] = False
    return np.flatnonzero(pop)


def _robust_parts(problem, sites_of, params_of, priors, x, frozen, centred, pop, covariate_x=None):
    """(Jacobian of the patients' terms over the population coordinates, prior Hessian, prior gradient) at x."""
    lf_star = log_factors_of(problem, sites_of(x), covariate_x)

    def terms(y):
        return patient_terms(problem, sites_of(y), frozen, lf_star, centred, covariate_x)

    def prior_at(xp):
        return prior_potential(priors, params_of(x.at[pop].set(xp)))

    return jax.jacfwd(terms)(x)[:, pop], jax.hessian(prior_at)(x[pop]), jax.grad(prior_at)(x[pop])


@partial(jax.jit, static_argnames=("layout", "centred", "pop"))
def _fast_robust_parts(x, frozen, tp, layout, centred, pop):
    from vpop.fitting.statistical_model import ModelOptions, population_priors

    return _robust_parts(tp, lambda y: fast_sites(tp, layout.unravel(y)), layout.unravel,
                         population_priors(tp, ModelOptions()), x, frozen, centred, jnp.asarray(pop))


def robust_parts(problem, obj: Objective, x, frozen, centred: bool, covariate_x=None):
    """(scores (n, P), prior Hessian (P, P), mismatch) at the mode x, over the population coordinates.

    Patient i's score is the gradient of its `patient_terms` at fixed z_i: at the conditional mode of z_i
    that is the gradient of its Laplace marginal log-likelihood (the envelope theorem). `mismatch` is
    max |sum_i s_i + prior gradient - gradient of the objective|: the two routes to the same gradient (the
    linearised likelihood here, the course in the potential) agree to rounding when the patients' terms are
    the model's."""
    pop = population_index(obj.space)
    x = jnp.asarray(x)
    if obj.fast is not None:  # the data as an argument: one compilation per design (`vpop.fitting.traced`)
        tp, layout = obj.fast
        out = _fast_robust_parts(x, frozen, tp, layout, centred, tuple(pop.tolist()))
    else:  # one program per data set (eager op-by-op dispatch compiled every primitive: 12-20 s)
        out = jax.jit(lambda y, fr: _robust_parts(problem, obj.sites_of, obj.params_of, obj.priors, y, fr, centred,
                                                  pop, covariate_x))(x, frozen)
    jac, P, g_prior = (np.asarray(v) for v in out)
    g_obj = np.asarray(obj.vg(x, frozen)[1])[pop]
    mismatch = float(np.max(np.abs(jac.sum(0) + g_prior - g_obj)))
    return jac, 0.5 * (P + P.T), mismatch


def run_laplace(problem, cohort=None, draws: int = 1000, seed: int = 0, progress: bool = False,
                parameterisation: str = "noncentred", options=None, max_iter: int = 2000,
                dense_hessian: bool = False, random_effects: str = "integrated",
                covariance: str = "hessian") -> FitResult:
    """MAP + Laplace (module docstring); the draws make a FitResult like SVI and NUTS.

    `random_effects="integrated"` (default) integrates the patients' random effects out by Laplace before the
    population parameters are approximated (`correction_value`); "joint" takes the mode and Hessian of the
    joint posterior of everything (kept to show why not: in the non-centred form its omegas are biased
    upwards, as the joint density lacks the -n log omega the integral over the random effects brings, and the
    typical values' intervals widen with them; docs/fitting.md).

    `covariance`: "hessian" (the inverse Hessian, R^-1) or "sandwich" (R^-1 (S + P) R^-1 from the patients'
    scores, `sandwich_covariance`; robust to a misspecified residual or random-effect model) for the draws,
    `se_log` and `correlation`. With the integrated random effects and patient data alone both are computed
    and reported (`se_log_hessian`, `se_log_sandwich`); the sandwich is not available with grades, a cohort
    table or the joint mode.
    """
    if random_effects not in RANDOM_EFFECTS:
        raise UserError(f"random_effects {random_effects!r}: use one of {', '.join(RANDOM_EFFECTS)}")
    if covariance not in COVARIANCES:
        raise UserError(f"--covariance {covariance!r}: use one of {', '.join(COVARIANCES)}")
    t0 = time.perf_counter()
    integrate = random_effects == "integrated" and problem is not None
    centred = parameterisation == "centred"
    cov_x = None if options is None else options.covariate_x
    obj = objective(problem, cohort, options, parameterisation, integrate, seed)
    space, vg = obj.space, obj.vg
    if integrate:
        x, frozen, losses, info = integrated_map(space, vg, obj.freeze, max_iter=max_iter, progress=progress)
        args = (frozen,)
    else:
        args = ()
        x, losses, info = find_map(space, max_iter=max_iter, progress=progress, vg=vg)
    bov = options is not None and bool(options.bov)
    robust = integrate and obj.priors is not None and not bov  # BOV: a subject's courses share its scores
    if covariance == "sandwich" and not robust:
        raise UserError("--covariance sandwich: needs patient time courses with the random effects integrated "
                        "(not grades, a cohort table, BOV or the joint mode); use --covariance hessian")
    H = hessian(space, x, n_patients=problem.n if problem is not None else None, dense=dense_hessian or bov,
                args=args, vg=vg)
    warnings = []
    eig, vec = np.linalg.eigh(H)
    if not info["converged"]:
        warnings.append(f"MAP search stopped after {info['iterations']} iterations without converging "
                        f"(max |gradient| {info['max_abs_gradient']:.3g}): the Laplace intervals are not reliable")
    if eig.min() <= 0:
        warnings.append(f"the Hessian at the MAP is not positive definite (smallest eigenvalue {eig.min():.3g}): the "
                        "mode is a saddle or a ridge; the Laplace intervals are not valid, use NUTS")
        eig = np.maximum(eig, 1e-8 * max(eig.max(), 1.0))
    cov = (vec / eig) @ vec.T
    free = problem.free if problem is not None else cohort.free
    sl = space.slices()
    lt_idx = np.arange(space.dim)[sl["log_theta"]]
    rng = np.random.default_rng(seed + 1)
    pop = population_index(space)
    extra = {}
    if robust:
        scores, P, mismatch = robust_parts(problem, obj, x, frozen, centred, cov_x)
        cov_s = sandwich_covariance(cov[np.ix_(pop, pop)], scores, P)
        extra = {"score_gradient_mismatch": mismatch}
    if covariance == "sandwich":
        # the population coordinates from the sandwich; the random effects from their Gaussian conditional
        # given them (z = z* + B dp + N(0, H_zz^-1)), as the Hessian's joint Normal has it
        zi = np.setdiff1d(np.arange(space.dim), pop)
        Hr = (vec * eig) @ vec.T
        dp = rng.multivariate_normal(np.zeros(len(pop)), cov_s, size=draws, method="eigh")
        dx = np.zeros((draws, space.dim))
        dx[:, pop] = dp
        if len(zi):
            Hzz = Hr[np.ix_(zi, zi)]
            B = -np.linalg.solve(Hzz, Hr[np.ix_(zi, pop)])
            ez, vz = np.linalg.eigh(Hzz)
            dx[:, zi] = dp @ B.T + (rng.standard_normal((draws, len(zi))) / np.sqrt(ez)) @ vz.T
        xs = np.asarray(x)[None] + dx
    else:
        xs = np.asarray(x)[None] + (rng.standard_normal((draws, space.dim)) / np.sqrt(eig)) @ vec.T
    samples = {k: np.asarray(v)[None] for k, v in obj.constrain(xs).items() if keep_sites(k)}
    seconds = time.perf_counter() - t0

    def se_corr(c):
        se = np.sqrt(np.diag(c))
        return ({name: float(se[j]) for j, name in enumerate(free)},
                {a: {b: float(c[i, j] / se[i] / se[j]) for j, b in enumerate(free)} for i, a in enumerate(free)})

    se_h, corr_h = se_corr(cov[np.ix_(lt_idx, lt_idx)])
    reported = {"se_log_hessian": se_h, "correlation_hessian": corr_h}
    if robust:
        lt_pop = np.searchsorted(pop, lt_idx)
        se_s, corr_s = se_corr(cov_s[np.ix_(lt_pop, lt_pop)])
        reported.update({"se_log_sandwich": se_s, "correlation_sandwich": corr_s,
                         "sandwich_to_hessian_se": {k: se_s[k] / se_h[k] for k in free}})
    chosen = "sandwich" if covariance == "sandwich" else "hessian"
    log_evidence = -float(vg(x, *args)[0]) + 0.5 * space.dim * math.log(2 * math.pi) - 0.5 * float(np.sum(np.log(eig)))
    if integrate:  # the random effects' own Gaussian factor is already in the correction: remove its double count
        zi = np.concatenate([np.arange(space.dim)[sl[k]] for k in PATIENT_SITES if k in sl])
        log_evidence += 0.5 * float(np.linalg.slogdet(H[np.ix_(zi, zi)])[1])
    diag = {"method": "laplace", "random_effects": "integrated" if integrate else "joint", **info,
            "dimension": space.dim, "hessian_min_eigenvalue": float(eig.min()),
            "log_evidence_laplace": log_evidence, "covariance": chosen,
            "map": {name: float(np.exp(np.asarray(x)[lt_idx][j])) for j, name in enumerate(free)},
            "se_log": reported[f"se_log_{chosen}"], "correlation": reported[f"correlation_{chosen}"],
            **reported, **extra, "warnings": warnings}
    out = FitResult("laplace", free, samples, seconds, diag, losses)
    out.idata = to_inferencedata(out, problem)
    return out


def map_values(problem, cohort=None, seed: int = 0, options=None, parameterisation: str = "noncentred") -> dict:
    """The mode the Laplace estimator reports, as constrained site values: a start for NUTS
    (`run_nuts(init="map", init_values_override=...)`). With patient data it is the *integrated* mode (random
    effects integrated out, `integrated_map`; its omegas are not inflated as the joint mode's are), with each
    patient's random effects at their conditional mode; a cohort table alone has no random effects and
    gives the plain MAP."""
    integrate = problem is not None
    obj = objective(problem, cohort, options, parameterisation, integrate, seed)
    if integrate:
        x, _, _, _ = integrated_map(obj.space, obj.vg, obj.freeze)
    else:
        x, _, _ = find_map(obj.space, vg=obj.vg)
    return {k: jnp.asarray(v) for k, v in obj.sites_of(jnp.asarray(x)).items()}

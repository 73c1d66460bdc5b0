"""MAP with a Laplace approximation: the fast default estimator of `vpop fit`.

The mode x* of the posterior in NumPyro's unconstrained space (log omega, log
sigma, z, ...; the Jacobians of the transforms included) is found with L-BFGS
(optax, zoom line search) from the prior centre. The posterior is then
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

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vpop.fitting.infer import FitResult, init_values, keep_sites, model_and_args, to_inferencedata
from vpop.fitting.unconstrained import Unconstrained

PATIENT_SITES = ("z", "eta")


def find_map(u: Unconstrained, max_iter: int = 2000, tol: float = 1e-9, progress: bool = False, x0=None):
    """(x*, losses, info) minimising u.potential with L-BFGS."""
    f = u.potential
    opt = optax.lbfgs()
    vg = optax.value_and_grad_from_state(f)

    @jax.jit
    def step(x, state):
        value, grad = vg(x, state=state)
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=f)
        return optax.apply_updates(x, updates), state, value, grad

    x = jnp.asarray(u.x0 if x0 is None else x0)
    state = opt.init(x)
    losses, calm = [], 0
    t0 = time.perf_counter()
    gnorm = float("nan")
    for it in range(max_iter):
        x_new, state, value, grad = step(x, state)
        value = float(value)
        gnorm = float(jnp.max(jnp.abs(grad)))
        losses.append(value)
        if not math.isfinite(value):
            break
        x = x_new
        if len(losses) > 1 and abs(losses[-2] - value) <= tol * (1.0 + abs(value)):
            calm += 1
        else:
            calm = 0
        if gnorm < 1e-5 or calm >= 5:
            break
        if progress and it % 50 == 0:
            print(f"MAP: iteration {it}, -log posterior {value:.4f}, max |gradient| {gnorm:.3g}, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    final = float(jax.block_until_ready(f(x)))
    info = {"iterations": len(losses), "max_abs_gradient": gnorm, "neg_log_posterior": final,
            "converged": bool(math.isfinite(final) and (gnorm < 1e-3 or calm >= 5))}
    return x, np.asarray(losses), info


def hessian(u: Unconstrained, x, h: float = 1e-4, n_patients: int | None = None, dense: bool = False) -> np.ndarray:
    """Hessian of u.potential at x by central differences of the gradient (module docstring)."""
    g = jax.jit(jax.vmap(lambda e: (jax.grad(u.potential)(x + h * e) - jax.grad(u.potential)(x - h * e)) / (2 * h)))
    D = u.dim
    sl = u.slices()
    patient = [k for k in PATIENT_SITES if k in sl]
    if dense or not patient or n_patients is None:
        eye = np.eye(D)
        cols = [np.asarray(g(jnp.asarray(eye[i:i + 16]))) for i in range(0, D, 16)]
        H = np.concatenate(cols, axis=0)
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
    rows = np.concatenate([np.asarray(g(jnp.asarray(dirs[i:i + 16]))) for i in range(0, len(dirs), 16)], axis=0)
    H = np.zeros((D, D))
    H[pop, :] = rows[:len(pop)]  # population rows (and by symmetry columns)
    H[:, pop] = rows[:len(pop)].T
    for f in range(F):
        r = rows[len(pop) + f]
        for f2 in range(F):  # within-patient block: d grad_{z_i,f2} / d z_i,f
            H[pidx[:, f2], pidx[:, f]] = r[pidx[:, f2]]
    return 0.5 * (H + H.T)


def run_laplace(problem, cohort=None, draws: int = 1000, seed: int = 0, progress: bool = False,
                parameterisation: str = "noncentred", options=None, max_iter: int = 2000,
                dense_hessian: bool = False) -> FitResult:
    """MAP + Laplace (module docstring); the draws make a FitResult like SVI and NUTS."""
    model, args, kwargs = model_and_args(problem, cohort, parameterisation=parameterisation, options=options)
    u = Unconstrained(model, args, kwargs, init_values(problem, cohort, options), seed)
    t0 = time.perf_counter()
    x, losses, info = find_map(u, max_iter=max_iter, progress=progress)
    H = hessian(u, x, n_patients=problem.n if problem is not None else None, dense=dense_hessian)
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
    rng = np.random.default_rng(seed + 1)
    xs = np.asarray(x)[None] + (rng.standard_normal((draws, u.dim)) / np.sqrt(eig)) @ vec.T
    samples = {k: np.asarray(v)[None] for k, v in u.constrain(xs).items() if keep_sites(k)}
    seconds = time.perf_counter() - t0
    free = problem.free if problem is not None else cohort.free
    lt = u.slices()["log_theta"]
    cov_lt = cov[lt, lt]
    se = np.sqrt(np.diag(cov_lt))
    corr = cov_lt / se[:, None] / se[None, :]
    log_evidence = -info["neg_log_posterior"] + 0.5 * u.dim * math.log(2 * math.pi) - 0.5 * float(np.sum(np.log(eig)))
    diag = {"method": "laplace", **info, "dimension": u.dim, "hessian_min_eigenvalue": float(np.linalg.eigvalsh(H).min()),
            "log_evidence_laplace": log_evidence,
            "map": {name: float(np.exp(np.asarray(x)[lt][j])) for j, name in enumerate(free)},
            "se_log": {name: float(se[j]) for j, name in enumerate(free)},
            "correlation": {a: {b: float(corr[i, j]) for j, b in enumerate(free)} for i, a in enumerate(free)},
            "warnings": warnings}
    out = FitResult("laplace", free, samples, seconds, diag, losses)
    out.idata = to_inferencedata(out, problem)
    return out


def map_values(problem, cohort=None, seed: int = 0, options=None, parameterisation: str = "noncentred") -> dict:
    """The MAP as constrained site values (a start for NUTS: `run_nuts(init="map", init_values_override=...)`)."""
    model, args, kwargs = model_and_args(problem, cohort, parameterisation=parameterisation, options=options)
    u = Unconstrained(model, args, kwargs, init_values(problem, cohort, options), seed)
    x, _, _ = find_map(u)
    return {k: jnp.asarray(v) for k, v in u.constrain_tree(u.unravel(x)).items()}

"""Inference: SVI (optax + autoguide) and NUTS; ArviZ output; diagnostics; posterior predictive.

    fit = run_svi(problem, steps=1000)          # or run_nuts(problem, chains=4, warmup=500, draws=500)
                                                # or laplace.run_laplace(problem) (MAP + Laplace, the default)
    fit.idata.to_netcdf("posterior.nc")         # ArviZ InferenceData
    fit.diagnostics                             # R-hat, ESS, divergences, warnings
    fit.theta_summary()                         # posterior median and 90 % interval of each free parameter
"""

from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from numpyro.infer import NUTS, SVI, Trace_ELBO, init_to_sample, init_to_value
from numpyro.infer.autoguide import AutoDelta, AutoMultivariateNormal, AutoNormal

from vpop.errors import UserError
from vpop.fitting import traced as tr
from vpop.fitting.model import FitProblem
from vpop.fitting.statistical_model import numpyro_model, population_model
from vpop.fitting.traced import POSITIVE_SITES, fast_path, fast_sites
from vpop.fitting.unconstrained import Unconstrained

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
    covariates: tuple = ()  # names of estimated covariate effects (rows of cov_beta)
    bov: tuple = ()  # names of the parameters with between-occasion variability (entries of omega_bov)

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


def model_and_args(problem, cohort, ignore_censoring=False, parameterisation="noncentred", options=None):
    """(model, args, kwargs) of the patient-data model, or of the cohort-table-only model when `problem` is None."""
    if problem is None:
        return population_model, (cohort.free, cohort.log_ref, prior_sd(cohort.free), cohort), {}
    kwargs = {"cohort": cohort, "ignore_censoring": ignore_censoring, "parameterisation": parameterisation}
    if options is not None:
        kwargs["options"] = options.check(problem)
    return numpyro_model, (problem,), kwargs


def prior_sd(free):
    from vpop.fitting.model import prior_scale

    return np.array([prior_scale(f) for f in free])


def init_values(problem, cohort, options=None):
    """The start of every estimator: the prior centre (reference typical values, no random effects)."""
    free = problem.free if problem is not None else cohort.free
    log_ref = problem.log_ref if problem is not None else cohort.log_ref
    init = {"log_theta": jnp.asarray(log_ref)}
    if problem is not None:
        F = len(free)
        init["omega"] = 0.3 * jnp.ones(F)
        init["sigma"] = 0.3 * jnp.ones(max(1, len(problem.analytes)))
        init["z"] = jnp.zeros((problem.n, len(problem.effects)))  # free parameters' and nuisance random effects
        init["eta"] = jnp.zeros((problem.n, len(problem.effects)))
        if options is not None:
            if options.omega == "full":
                init["L_corr"] = jnp.eye(F)
            if options.covariate_names:
                init["cov_beta"] = jnp.zeros((len(options.covariate_names), F))
            if options.bov:
                init["z_subject"] = jnp.zeros((options.n_subjects, F))
                init["z_occasion"] = jnp.zeros((options.n_occasions, len(options.bov)))
                init["omega_bov"] = 0.3 * jnp.ones(len(options.bov))
            if options.error == "combined":
                from vpop.fitting.statistical_model import default_add_scale

                scale = options.add_prior_scale if options.add_prior_scale is not None else default_add_scale(problem)
                init["sigma_add"] = 0.1 * jnp.asarray(scale)
                init["sigma"] = 0.2 * jnp.ones(max(1, len(problem.analytes)))
    return init


POPULATION_SITES = ("log_theta", "omega", "sigma", "sigma_add", "cov_beta", "corr", "omega_bov")


def keep_sites(name: str) -> bool:
    """Sites written to the posterior (not the observations, factors or the Cholesky factor)."""
    return name in ("log_theta", "theta", "omega", "sigma", "sigma_add", "cov_beta", "corr", "z", "eta", "omega_bov") or \
        name.endswith(("_beta", "_cutpoints"))


GUIDES = ("mvn", "normal", "delta")


def _say(msg):
    print(msg, file=sys.stderr, flush=True)


def run_svi(problem: FitProblem | None, cohort=None, steps: int = 1000, lr: float = 0.02, guide: str = "mvn",
            draws: int = 1000, seed: int = 0, progress: bool = False, ignore_censoring: bool = False,
            parameterisation: str = "noncentred", options=None, start=None) -> FitResult:
    """SVI with optax Adam and a guide: "mvn" (AutoMultivariateNormal, full covariance, the default: keeps
    the correlations between typical values, omegas and random effects that mean-field drops), "normal"
    (AutoNormal, mean-field: intervals too narrow, docs/fitting.md) or "delta" (AutoDelta, a point estimate).

    The loss of every step is kept (`FitResult.losses`); with `progress` a line is printed every
    tenth of the run. The time waits for JAX's asynchronous work (`block_until_ready`). `start`: None or a
    normal approximation to start from (full-rank guide on the fast path only; `run_fullrank`).
    """
    if guide not in GUIDES:
        raise ValueError(f"guide {guide!r}: use one of {', '.join(GUIDES)}")
    if guide == "mvn" and not ignore_censoring and fast_path(problem, cohort, options):
        return run_fullrank(problem, steps=steps, lr=lr, draws=draws, seed=seed, progress=progress,
                            parameterisation=parameterisation, start=start)
    if start is not None:
        raise UserError("--svi-start laplace: only the full-rank guide (mvn) on patient time courses (no grades, "
                        "cohort table, covariate effects, full omega or combined error) can start from Laplace; "
                        "use --svi-start prior")
    model, args, kwargs = model_and_args(problem, cohort, ignore_censoring, parameterisation, options)
    init = init_to_value(values=init_values(problem, cohort, options))
    if guide == "normal":
        g = AutoNormal(model, init_loc_fn=init, init_scale=0.05)
    elif guide == "mvn":
        g = AutoMultivariateNormal(model, init_loc_fn=init, init_scale=0.05)
    else:
        g = AutoDelta(model, init_loc_fn=init)
    optim = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(optax.exponential_decay(lr, steps, 0.1)))
    svi = SVI(model, g, optim, loss=Trace_ELBO())
    t0 = time.perf_counter()
    state = svi.init(jax.random.PRNGKey(seed), *args, **kwargs)
    update = jax.jit(lambda st: svi.update(st, *args, **kwargs))
    trace = []  # device scalars: no host sync per step
    every = max(1, steps // 10)
    for i in range(steps):
        state, loss = update(state)
        trace.append(loss)
        if progress and i % every == 0:
            _say(f"SVI: step {i}/{steps}, loss {float(loss):.2f}, {time.perf_counter() - t0:.0f} s")
    losses = np.asarray(jnp.stack(trace))
    params = jax.block_until_ready(svi.get_params(state))
    seconds = time.perf_counter() - t0
    samples = g.sample_posterior(jax.random.PRNGKey(seed + 1), params, *args, sample_shape=(draws,), **kwargs)
    samples = {k: np.asarray(v)[None] for k, v in samples.items() if keep_sites(k)}
    free = problem.free if problem is not None else cohort.free
    diag = {"method": "svi", "guide": guide, "steps": steps, "final_loss": float(np.mean(losses[-50:])),
            "finite": bool(np.all(np.isfinite(losses[-50:]))), "warnings": svi_warnings(losses, steps, guide)}
    out = FitResult("svi", free, samples, seconds, diag, losses)
    out.idata = to_inferencedata(out, problem)
    return out


def svi_warnings(losses, steps: int, guide: str) -> list[str]:
    """Warnings of an SVI run from its loss trace: not finite, still falling, mean-field guide."""
    out = []
    if not np.all(np.isfinite(losses[-50:])):
        out.append("SVI loss is not finite at the end of the run: the fit failed (try a smaller --lr)")
    tail = losses[-max(10, steps // 10):]
    head = losses[-2 * max(10, steps // 10):-max(10, steps // 10)]
    if len(head) and np.isfinite(tail).all() and np.mean(head) - np.mean(tail) > 0.01 * abs(np.mean(tail)) + 1.0:
        out.append("SVI loss still falling over the last 10% of steps: increase --steps")
    if guide == "normal":
        out.append("mean-field guide (AutoNormal): intervals are too narrow (docs/fitting.md); use "
                   "--guide mvn, --method laplace or --method nuts for uncertainty")
    return out


INIT_STRATEGIES = ("reference", "map", "sample", "laplace")
CHAIN_METHODS = ("vectorized", "parallel")
_NUTS_KERNELS: dict = {}  # design -> (kernel, compiled segments): see run_nuts
STATS = ("diverging", "num_steps", "accept_prob", "energy")


def run_nuts(problem: FitProblem | None, cohort=None, chains: int = 4, warmup: int = 500, draws: int = 500,
             seed: int = 0, progress: bool = False, target_accept: float = 0.8, max_tree_depth: int = 8,
             dense_mass: bool = False, init: str = "reference", init_values_override: dict | None = None,
             parameterisation: str = "noncentred", options=None, segment: int = 50, save_dir=None,
             resume: bool = False, chain_method: str = "parallel", adapt_mass: bool | None = None,
             laplace_start: dict | None = None) -> FitResult:
    """NUTS with its controls exposed; chains in parallel over devices (or vectorised); run in segments.

    The kernel is stepped `segment` iterations at a time (one compiled scan). After
    each segment, with `save_dir`, the draws of that segment are appended to
    `save_dir/nuts/` (one .npz per segment) with the sampler state, so a stopped run
    keeps its draws and `resume=True` continues from the last saved segment (same
    data, free set, chains and warm-up). With `progress` a line is printed per
    segment (not a terminal progress bar: it also shows in logs).

    init: "reference" (the prior centre), "map" (`init_values_override`, e.g. the
    Laplace MAP), "sample" (a prior draw per chain) or "laplace"; "reference" and "map" add a
    jitter of SD 0.1 per chain in the unconstrained space so the chains start apart.
    "laplace" takes `laplace_start` (`laplace.nuts_start`: the Laplace estimator's
    integrated mode and the inverse of this posterior's Hessian there) as a dense inverse
    mass matrix from the first iteration, and starts each chain at a draw of that normal
    approximation; warm-up then adapts the step size only, unless `adapt_mass` (a dense
    mass estimated from a few hundred warm-up draws in hundreds of dimensions is noisier
    than the Hessian's).
    `chain_method`: "vectorized" (one program steps every chain in lock-step: each
    iteration waits for the chain with the deepest tree) or "parallel" (the chains are
    split over the local devices with `shard_map`, each device stepping its own share
    with no exchange inside a segment; on a CPU the devices are threads, so the chains
    use every core; see `chain_devices`). Both give the same draws. NumPyro's sequential
    runner is not offered: it recompiles per chain and cannot be saved per segment.
    """
    from vpop.fitting import checkpoint

    if chain_method not in CHAIN_METHODS:
        raise UserError(f"--chain-method {chain_method!r}: use one of {', '.join(CHAIN_METHODS)}")
    if init not in INIT_STRATEGIES:
        raise UserError(f"--init {init!r}: use one of {', '.join(INIT_STRATEGIES)}")
    model, args, kwargs = model_and_args(problem, cohort, parameterisation=parameterisation, options=options)
    start = dict(init_values(problem, cohort, options))
    if init == "map":
        if init_values_override is None:
            raise UserError("--init map: no MAP given")
        start.update(init_values_override)
    strategy = init_to_sample() if init == "sample" else init_to_value(values=start)
    scans = {}
    if init == "laplace":
        if laplace_start is None:
            raise UserError("--init laplace: no Laplace approximation given (laplace.nuts_start)")
        dense_mass = True
        mass = {"inverse_mass_matrix": laplace_start["covariance"], "adapt_mass_matrix": bool(adapt_mass)}
    else:
        laplace_start = None
        mass = {} if adapt_mass is None else {"adapt_mass_matrix": bool(adapt_mass)}
    mass["dense_mass"] = dense_mass
    devices = chain_devices(chains) if chain_method == "parallel" else 1
    data_as_argument = fast_path(problem, cohort, options) and init == "reference"
    if data_as_argument:
        # The data as an argument of the compiled sampler (`vpop.fitting.traced`): NumPyro's HMC takes the model's
        # arguments at every step, so data sets of one design share one kernel and its compiled segments.
        from vpop.fitting.traced import traced

        tp = traced(problem)
        leaves, treedef = jax.tree_util.tree_flatten(tp)
        design = (treedef, tuple((np.shape(x), str(np.asarray(x).dtype)) for x in leaves), parameterisation,
                  target_accept, max_tree_depth, dense_mass, chains, warmup, adapt_mass, devices)
        if design not in _NUTS_KERNELS:
            _NUTS_KERNELS[design] = (NUTS(model, init_strategy=strategy, target_accept_prob=target_accept,
                                          max_tree_depth=max_tree_depth, **mass), {})
        kernel, scans = _NUTS_KERNELS[design]
        args = (tp,)
    else:
        kernel = NUTS(model, init_strategy=strategy, target_accept_prob=target_accept, max_tree_depth=max_tree_depth,
                      **mass)
    free = problem.free if problem is not None else cohort.free
    meta = {"chains": chains, "warmup": warmup, "free": list(free), "n": problem.n if problem is not None else 0,
            "parameterisation": parameterisation, "dense_mass": dense_mass, "max_tree_depth": max_tree_depth,
            "target_accept": target_accept, "seed": seed, "init": init, "adapt_mass": adapt_mass,
            "nuisance": list(problem.nuisance) if problem is not None else []}  # the random effects' columns
    u = Unconstrained(model, args, kwargs, start, seed)
    t0 = time.perf_counter()
    keys = jax.random.split(jax.random.PRNGKey(seed), chains)
    init_params = None
    if laplace_start is not None:  # each chain at a draw of the normal approximation
        z = jax.random.normal(jax.random.PRNGKey(seed + 7), (chains, u.dim))
        xs = laplace_start["mode"][None] + z @ laplace_start["cholesky"].T
        init_params = jax.vmap(u.unravel)(jnp.asarray(xs))
    elif init != "sample":  # the chains start apart: jitter of SD 0.1 in the unconstrained space
        jkeys = jax.random.split(jax.random.PRNGKey(seed + 7), len(u.tree0))
        init_params = {k: v[None] + 0.1 * jax.random.normal(jk, (chains, *jnp.shape(v)))
                       for jk, (k, v) in zip(jkeys, sorted(u.tree0.items()))}
    state = kernel.init(keys, warmup, init_params, model_args=args, model_kwargs=kwargs)
    done, saved = 0, []
    if save_dir is not None and resume:
        loaded = checkpoint.load(save_dir, meta)
        if loaded is not None:
            state, done, saved = loaded
            if progress:
                _say(f"NUTS: resuming at iteration {done} ({len(saved)} saved segments)")
    elif save_dir is not None:
        checkpoint.clear(save_dir)
    total = warmup + draws

    # Only the fast path's model arguments are arrays that can pass into the compiled segment; the others
    # (a FitProblem, cohort tables) are static and closed over.
    segment_args = args if data_as_argument else ()

    def make_scan(length):  # NUTS iterations of one saved segment (the course's time loop is the engine's)
        def run(st, a):
            model_args = a if data_as_argument else args

            def body(s, _):
                s = kernel.sample(s, model_args, kwargs)
                return s, (s.z, s.diverging, s.num_steps, s.accept_prob, s.energy)

            return jax.lax.scan(body, st, None, length=length)

        if devices > 1:  # each device its share of the chains; every leaf of the state leads with the chain axis
            run = _over_chain_devices(run, devices)
        return jax.jit(run)

    while done < total:
        length = min(segment, total - done)
        if done < warmup:
            length = min(length, warmup - done)  # a segment is all warm-up or all sampling
        if length not in scans:
            scans[length] = make_scan(length)
        state, (z, div, nsteps, acc, energy) = scans[length](state, segment_args)
        jax.block_until_ready(state)
        seg = {"z": {k: np.swapaxes(np.asarray(v), 0, 1) for k, v in z.items()},
               "diverging": np.swapaxes(np.asarray(div), 0, 1), "num_steps": np.swapaxes(np.asarray(nsteps), 0, 1),
               "accept_prob": np.swapaxes(np.asarray(acc), 0, 1), "energy": np.swapaxes(np.asarray(energy), 0, 1),
               "start": done, "warmup": done < warmup}
        done += length
        saved.append(seg)
        if save_dir is not None:
            checkpoint.save(save_dir, meta, state, seg, done, len(saved) - 1)
        if progress:
            phase = "warm-up" if seg["warmup"] else "sampling"
            _say(f"NUTS: iteration {done}/{total} ({phase}), {time.perf_counter() - t0:.0f} s, mean leapfrog steps "
                 f"{seg['num_steps'].mean():.1f}, divergences {int(seg['diverging'].sum())}")
    seconds = time.perf_counter() - t0 + (laplace_start["seconds"] if laplace_start is not None else 0.0)
    kept = [s for s in saved if not s["warmup"]]
    if not kept:
        raise UserError("NUTS: no draws (--draws must be >= 1)")
    zs = {k: np.concatenate([s["z"][k] for s in kept], axis=1) for k in kept[0]["z"]}
    stats = {k: np.concatenate([s[k] for s in kept], axis=1) for k in STATS}
    flat = np.concatenate([zs[k].reshape(*zs[k].shape[:2], -1) for k in sorted(zs)], axis=-1)
    C, Dr = flat.shape[:2]
    constrained = {k: np.asarray(v).reshape(C, Dr, *np.shape(v)[1:]) for k, v in u.constrain(flat.reshape(C * Dr, -1)).items()}
    samples = {k: np.asarray(v) for k, v in constrained.items() if keep_sites(k)}
    out = FitResult("nuts", free, samples, seconds)
    depth = tree_depth(stats["num_steps"])
    out.idata = to_inferencedata(out, problem, diverging=stats["diverging"], num_steps=stats["num_steps"],
                                 extra_stats={"tree_depth": depth, "acceptance_rate": stats["accept_prob"],
                                              "energy": stats["energy"]})
    out.diagnostics = diagnostics(out.idata, chains)
    out.diagnostics["mean_leapfrog_steps"] = float(np.mean(stats["num_steps"]))
    warm = [s for s in saved if s["warmup"]]
    if warm:
        out.diagnostics["mean_leapfrog_steps_warmup"] = float(np.mean(np.concatenate([s["num_steps"] for s in warm], 1)))
    out.diagnostics["max_tree_depth"] = max_tree_depth
    if laplace_start is not None:
        out.diagnostics["laplace_start_seconds"] = laplace_start["seconds"]
        if laplace_start["not_positive"]:
            out.diagnostics["warnings"].append(
                f"the Laplace start's Hessian had {laplace_start['not_positive']} non-positive directions "
                f"(given unit variance in the mass matrix)")
        if not laplace_start["map"]["converged"]:
            out.diagnostics["warnings"].append("the Laplace start's mode search did not converge")
    out.diagnostics["hit_max_tree_depth"] = int((depth >= max_tree_depth).sum())
    if out.diagnostics["hit_max_tree_depth"]:
        out.diagnostics["warnings"].append(f"{out.diagnostics['hit_max_tree_depth']} draws hit the maximum tree depth "
                                           f"({max_tree_depth}): raise --max-tree-depth or use --dense-mass")
    return out


def chain_devices(chains: int) -> int:
    """Devices the chains are split over: the most local devices that divide `chains` evenly."""
    n = len(jax.local_devices())
    return max(d for d in range(1, min(n, chains) + 1) if chains % d == 0)


def _over_chain_devices(run, devices: int):
    """`run(state, args) -> (state, per-iteration stats)` with the chains sharded over `devices` devices."""
    from jax.sharding import Mesh, PartitionSpec as P

    from vpop.engine.sharding import unchecked_shard_map

    mesh = Mesh(np.asarray(jax.local_devices()[:devices], dtype=object), ("chains",))
    # Stats come out of the scan as (iteration, chain, ...): the chain axis is the second.
    return unchecked_shard_map(run, mesh, in_specs=(P("chains"), P()), out_specs=(P("chains"), P(None, "chains")))


def tree_depth(num_steps) -> np.ndarray:
    """NUTS tree depth of each draw from its number of leapfrog steps (a depth-d tree has at most 2^d - 1)."""
    n = np.maximum(np.asarray(num_steps), 1)
    return np.ceil(np.log2(n + 1)).astype(np.int64)


def to_inferencedata(fit: FitResult, problem: FitProblem | None, diverging=None, num_steps=None, extra_stats=None):
    """ArviZ InferenceData with named coordinates (param, analyte, patient)."""
    import arviz as az

    coords = {"param": list(fit.free)}
    dims = {"log_theta": ["param"], "theta": ["param"], "omega": ["param"], "corr": ["param", "param_"]}
    coords["param_"] = list(fit.free)
    if problem is not None:
        coords["analyte"] = list(problem.analytes) or ["none"]
        coords["patient"] = [str(i) for i in problem.ids]
        coords["effect"] = list(problem.effects)  # the free parameters, then the nuisance ones
        dims.update({"sigma": ["analyte"], "sigma_add": ["analyte"], "z": ["patient", "effect"],
                     "eta": ["patient", "effect"]})
        if "cov_beta" in fit.samples and fit.covariates:
            coords["covariate"] = list(fit.covariates)
            dims["cov_beta"] = ["covariate", "param"]
        if "omega_bov" in fit.samples and fit.bov:
            coords["bov_param"] = list(fit.bov)
            dims["omega_bov"] = ["bov_param"]
    posterior = {k: v for k, v in fit.samples.items()}
    sample_stats = {}
    if diverging is not None:
        sample_stats["diverging"] = diverging
        sample_stats["n_steps"] = num_steps
        sample_stats.update(extra_stats or {})
    idata = az.from_dict(posterior=posterior, sample_stats=sample_stats or None, coords=coords, dims=dims)
    idata.posterior.attrs["inference"] = fit.method
    return idata


def diagnostics(idata, chains: int) -> dict:
    """R-hat, bulk/tail ESS of the population parameters, divergences, and warnings when bad."""
    import arviz as az

    names = [v for v in POPULATION_SITES if v in idata.posterior and v != "corr"]
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

# --- Full-rank SVI on the flat unconstrained space, compiled once per data design ---
# Full-rank SVI on the flat unconstrained space, compiled once per data design (`vpop.fitting.traced`).
#
# The same variational family and objective as NumPyro's `AutoMultivariateNormal` with `Trace_ELBO` (one
# particle per step): q(x) = Normal(m, L L') over every latent coordinate (typical values, log omegas, log
# sigmas, random effects), L lower triangular with a softplus diagonal, started at the prior centre with
# L = 0.05 I, fitted with the same optimiser as `infer.run_svi` (gradient clipping, Adam with exponential
# learning-rate decay). The loss is -ELBO = E_q[U(x) + log q(x)], U the negative log posterior, with the
# reparameterisation gradient: d/dm = grad U(x), d/dL = tril(grad U(x) eps') - diag(1/L_ii).
#
# Why not NumPyro's own SVI here: it closes over the data, so every data set recompiles the course
# (minutes on the CPU), and its `sample_posterior` runs the whole model, course included, for every
# posterior draw. Draws here are m + L eps mapped through the sites' transforms, without running the model.
# `infer.run_svi` takes this path for the default model (no grades, cohort table, covariate effects, full
# omega or combined error); the rest goes through NumPyro.


def _fullrank_unpack(params):
    m, raw, d = params
    L = jnp.tril(raw, -1) + jnp.diag(jax.nn.softplus(d))
    return m, L


@partial(jax.jit, static_argnames=("layout", "parameterisation", "optimiser"))
def _fullrank_step(params, opt_state, key, problem, layout, parameterisation, optimiser):
    m_dim = params[0].shape[0]
    m, L = _fullrank_unpack(params)
    eps = jax.random.normal(key, (m_dim,), dtype=m.dtype)
    x = m + L @ eps
    u, g = tr.value_and_grad(x, problem, None, layout, parameterisation, None)
    logdiag = jnp.log(jnp.diag(L))
    loss = u - jnp.sum(logdiag) - 0.5 * eps @ eps - 0.5 * m_dim * math.log(2 * math.pi)  # U(x) + log q(x)
    sig = jax.nn.sigmoid(params[2])  # d softplus / d d
    grads = (g, jnp.tril(jnp.outer(g, eps), -1), (jnp.diag(jnp.outer(g, eps)) - 1.0 / jnp.diag(L)) * sig)
    updates, opt_state = optimiser.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


@functools.lru_cache(maxsize=16)
def _fullrank_optimiser(lr: float, steps: int):
    """`run_svi`'s optimiser; one object per (lr, steps), since it is part of the compiled step's key."""
    return optax.chain(optax.clip_by_global_norm(10.0), optax.adam(optax.exponential_decay(lr, steps, 0.1)))


def run_fullrank(problem, steps: int = 1000, lr: float = 0.02, draws: int = 1000, seed: int = 0,
                 progress: bool = False, parameterisation: str = "noncentred", start=None):
    """SVI with a full-rank Gaussian (module docstring); returns an `FitResult` like `run_svi`.

    `start`: None (the prior centre, L = 0.05 I) or a normal approximation (mode, covariance, layout, info) on
    this flat space, `laplace.integrated_normal`'s: the optimiser then starts where the random effects'
    spread is already the integrated Laplace one instead of climbing out of a collapsed one (docs/fitting.md);
    its seconds count in the fit's."""
    from vpop.fitting.statistical_model import derived_sites

    t0 = time.perf_counter()
    tp = tr.traced(problem)
    init = init_values(problem, None, None)
    latent = ["log_theta", "omega", "sigma", "eta" if parameterisation == "centred" else "z"]
    layout = tr.Layout({k: init[k] for k in latent})
    if start is not None:
        centre, cov, at, info = start
        if at != layout:
            raise ValueError("the start's flat layout is not the guide's (another parameterisation or model)")
        t0 -= info.get("seconds", 0.0)
        chol = np.linalg.cholesky(cov)
        x0 = jnp.asarray(centre)
        D = int(x0.shape[0])
        params = (x0, jnp.asarray(np.tril(chol, -1)), jnp.asarray(np.log(np.expm1(np.diag(chol)))))
    else:
        x0 = jnp.concatenate([jnp.ravel(jnp.log(init[k]) if k in POSITIVE_SITES else init[k])
                              for k, _ in layout.spec])
        D = int(x0.shape[0])
        d0 = jnp.full(D, math.log(math.expm1(0.05)))  # softplus^-1(0.05): L = 0.05 I
        params = (x0, jnp.zeros((D, D)), d0)
    optimiser = _fullrank_optimiser(lr, steps)
    opt_state = optimiser.init(params)
    key = jax.random.PRNGKey(seed)
    trace = []
    every = max(1, steps // 10)
    for i in range(steps):
        key, sub = jax.random.split(key)
        params, opt_state, loss = _fullrank_step(params, opt_state, sub, tp, layout, parameterisation, optimiser)
        trace.append(loss)
        if progress and i % every == 0:
            print(f"SVI: step {i}/{steps}, loss {float(loss):.2f}, {time.perf_counter() - t0:.0f} s", file=sys.stderr,
                  flush=True)
    losses = np.asarray(jnp.stack(trace))
    m, L = jax.block_until_ready(_fullrank_unpack(params))
    seconds = time.perf_counter() - t0
    eps = jax.random.normal(jax.random.PRNGKey(seed + 1), (draws, D), dtype=m.dtype)
    xs = m[None] + eps @ L.T
    samples = derived_sites(jax.vmap(lambda v: fast_sites(tp, layout.unravel(v)))(xs), nuisance_chol=problem.nuisance_chol)
    samples = {k: np.asarray(v)[None] for k, v in samples.items() if keep_sites(k)}
    diag = {"method": "svi", "guide": "mvn", "start": "prior" if start is None else "laplace", "steps": steps,
            "final_loss": float(np.mean(losses[-50:])),
            "finite": bool(np.all(np.isfinite(losses[-50:]))), "warnings": svi_warnings(losses, steps, "mvn")}
    out = FitResult("svi", problem.free, samples, seconds, diag, losses)
    out.idata = to_inferencedata(out, problem)
    return out

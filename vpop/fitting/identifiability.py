"""Local identifiability of the free typical values on the actual data design (run before a fit).

The Fisher information of the free population parameters (log typical values)
at the reference, with every patient at its typical value (random effects 0):

    I = sum_obs w_obs J_obs J_obs^T,    J_obs = d log prediction_obs / d log theta_f

J comes from forward-mode differentiation of `vpop.fitting.model.predictions`
(the one course of treatment, all patients at once). The weight of a
quantified value is 1 / sigma^2 (log-normal error, sigma = the assumed
residual SD); a value below its LLOQ carries only the information of the
indicator "below the limit", phi(c)^2 / (Phi(c) (1 - Phi(c)) sigma^2) with
c = (log LLOQ - log prediction) / sigma (Fisher information of a Bernoulli).
Grades and cohort tables are not counted (they rarely separate what the time
courses cannot).

From I: its rank, its condition number, and the correlations of the
estimates (I^-1 scaled). A rank-deficient I (two or more parameters move the
predictions along the same direction) means the data cannot separate them at
any sample size: the fit is refused with the parameters named. |r| > 0.95 is
a warning (separable in principle, poorly in practice).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm

from vpop.errors import UserError

R_WARN = 0.95
# An eigenvalue of the scaled information below this is zero: the derivatives of the
# solve are exact to ~1e-12, so an exactly confounded direction gives ~1e-20 here.
RANK_TOL = 1e-10


@dataclass
class Identifiability:
    names: tuple
    fisher: np.ndarray  # (F, F)
    rank: int
    condition: float  # of the scaled information (unit diagonal); inf when rank-deficient
    correlation: np.ndarray  # (F, F) of the estimates; NaN where undefined
    se_log: np.ndarray  # (F,) standard error of each log typical value (sqrt diag I^-1)
    confounded: list = field(default_factory=list)  # groups of names that are exactly confounded
    uninformed: list = field(default_factory=list)  # names the observations do not depend on
    warnings: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.confounded and not self.uninformed

    def to_dict(self) -> dict:
        return {"parameters": list(self.names), "rank": self.rank, "condition_number": self.condition,
                "se_log": dict(zip(self.names, map(float, self.se_log))),
                "correlation": {a: {b: float(self.correlation[i, j]) for j, b in enumerate(self.names)}
                                for i, a in enumerate(self.names)},
                "fisher": self.fisher.tolist(), "confounded": self.confounded, "uninformed": self.uninformed,
                "warnings": self.warnings}

    def report(self) -> str:
        lines = [f"identifiability of {', '.join(self.names)}: Fisher information rank {self.rank} of "
                 f"{len(self.names)}, condition number {self.condition:.3g}"]
        for i, a in enumerate(self.names):
            lines.append(f"  {a:28s} SE(log) {self.se_log[i]:.3g}   r: " + " ".join(
                f"{self.correlation[i, j]:+.2f}" for j in range(len(self.names))))
        return "\n".join(lines + [f"  {w}" for w in self.warnings])

    def raise_if_confounded(self) -> None:
        if self.uninformed:
            raise UserError(f"free parameter(s) {', '.join(self.uninformed)}: the observations in the data do not "
                            "depend on them (Fisher information 0); remove them from --free or add data that does")
        if self.confounded:
            groups = "; ".join(" and ".join(g) for g in self.confounded)
            raise UserError(f"free parameters {groups}: exactly confounded on this data design (the Fisher information "
                            "is rank-deficient: they change the predictions along the same direction); fix one of "
                            "them (remove it from --free) or add observations that separate them")


def analyse_fisher(names, fisher) -> Identifiability:
    """Rank, condition, correlations and confounded groups of a Fisher information matrix."""
    names = tuple(names)
    fisher = 0.5 * (np.asarray(fisher, float) + np.asarray(fisher, float).T)
    F = len(names)
    d = np.diag(fisher).copy()
    scale_ref = max(float(d.max()), 1e-300)
    uninformed = [names[i] for i in range(F) if d[i] <= RANK_TOL * scale_ref]
    keep = [i for i in range(F) if names[i] not in uninformed]
    s = np.zeros(F)
    s[keep] = 1.0 / np.sqrt(d[keep])
    scaled = fisher * s[:, None] * s[None, :]
    sub = scaled[np.ix_(keep, keep)]
    eig, vec = np.linalg.eigh(sub) if keep else (np.zeros(0), np.zeros((0, 0)))
    null = eig <= RANK_TOL * max(float(eig.max()) if len(eig) else 1.0, 1e-300)
    rank = int((~null).sum())
    confounded = []
    for v in vec[:, null].T:
        # the parameters that move together along a null direction: those with a weight in it
        w = np.abs(v) / np.abs(v).max()
        confounded.append([names[keep[i]] for i in range(len(keep)) if w[i] > 1e-3])  # in --free order
    condition = float(eig.max() / eig.min()) if len(eig) and eig.min() > 0 and not null.any() else float("inf")
    corr = np.full((F, F), np.nan)
    se = np.full(F, np.inf)
    if rank == len(keep) and keep:
        cov_s = np.linalg.inv(sub)
        sd = np.sqrt(np.diag(cov_s))
        corr[np.ix_(keep, keep)] = cov_s / sd[:, None] / sd[None, :]
        se[keep] = sd * s[keep]
    warnings = []
    for i in range(F):
        for j in range(i + 1, F):
            if np.isfinite(corr[i, j]) and abs(corr[i, j]) > R_WARN:
                warnings.append(f"{names[i]} and {names[j]} are nearly confounded on this data design: the correlation "
                                f"of their estimates is {corr[i, j]:+.3f} (|r| > {R_WARN}); expect wide, correlated "
                                "intervals")
    return Identifiability(names, fisher, rank, condition, corr, se, confounded, uninformed,
                           warnings)


def fisher_information(problem, sigma=0.3, log_factor=None) -> np.ndarray:
    """(F, F) Fisher information of the log typical values at `log_factor` (default 0: the reference)."""
    import jax
    import jax.numpy as jnp

    from vpop.fitting.model import predictions

    F, n = len(problem.free), problem.n
    x0 = jnp.zeros(F) if log_factor is None else jnp.asarray(log_factor, dtype=jnp.float64)

    def mu(shift):
        return predictions(problem, jnp.broadcast_to(shift, (n, F)))[0]

    mu0 = np.asarray(jax.jit(mu)(x0))
    J = np.asarray(jax.jit(jax.jacfwd(mu))(x0))  # (n, m, F)
    sig = np.broadcast_to(np.asarray(sigma, float), (max(1, len(problem.analytes)),))
    sd = sig[np.asarray(problem.obs_analyte)]
    mask, cens = np.asarray(problem.obs_mask, bool), np.asarray(problem.obs_cens, bool)
    c = (np.asarray(problem.obs_logv) - mu0) / sd
    p = np.clip(norm.cdf(c), 1e-300, 1 - 1e-16)
    w_cens = norm.pdf(c) ** 2 / (p * (1 - p))
    w = np.where(mask & ~cens, 1.0, 0.0) + np.where(mask & cens, w_cens, 0.0)
    w = w / sd ** 2
    Jf = J.reshape(-1, F)
    return Jf.T @ (w.reshape(-1)[:, None] * Jf)


def check_identifiability(problem, sigma=0.3) -> Identifiability:
    """Fisher information of the free set at the reference, analysed (see the module docstring)."""
    return analyse_fisher(problem.free, fisher_information(problem, sigma))

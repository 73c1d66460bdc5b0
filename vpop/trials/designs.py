"""Dose-escalation designs simulated on virtual patients: 3+3, BOIN and CRM.

A simulated trial enrols cohorts at the current dose, observes each patient's
dose-limiting toxicity (DLT) and moves by the design's rule. The patients come
from **pools of virtual patients**: `PatientPool.outcomes` is a boolean matrix
(pool patients × doses) whose entry (i, d) says whether virtual patient i has
a DLT at dose d. The pools from `dose_pools` are the *same* virtual patients
(same seed, same ids) simulated at every dose, so a patient's outcomes across
doses are those of one person (usually monotone in dose), and every design run
with the same `seed` sees the same sequence of patients (a paired comparison of
designs, as `escalation::simulate_compare` does).

Sampling: each enrolled patient is an index drawn uniformly **with
replacement** from the pool, independently for every trial. The pool is thus
the empirical distribution of patients, and the true DLT rate at dose d is the
pool's column mean (reported with its Wilson 95% interval). With a pool of a
few hundred patients or more and trials of at most a few dozen, drawing with
or without replacement makes no practical difference; with replacement keeps
the trials independent of each other.

Every design is vectorised over trials with NumPy: one step of the loop treats
one cohort in every trial that is still running.

Designs (dose levels are 0-based here; reports label them 1..K):

* `three_plus_three`: cohorts of 3. 0/3 -> escalate; 1/3 -> 3 more at the same
  dose, then <= 1/6 -> escalate, >= 2/6 -> stop; >= 2/3 -> stop. On stopping
  at dose d the MTD is d - 1 (none if d is the lowest: early stop). With
  `deescalate=True` a dose below that has only 3 patients gets 3 more before
  it is declared MTD. The top dose is declared MTD only after <= 1/6 there
  (0/3 at the top dose enrols 3 more). Never re-escalates to a dose that
  exceeded the MTD.
* `boin`: Liu & Yuan (J R Stat Soc C 2015), following the BOIN R package's
  `get.oc`: escalate if the observed rate at the current dose is <= lambda_e,
  de-escalate if >= lambda_d, else stay; eliminate the current and higher
  doses when P(p > target | data) > 0.95 under a Beta(1, 1) prior with >= 3
  patients (stop the trial if the lowest dose is eliminated); stop when the
  current dose has `n_earlystop` patients. MTD: isotonic regression (PAVA) of
  the observed rates over the tried, non-eliminated doses, then the dose whose
  estimate is closest to the target (ties: the higher dose when below target,
  the lower when above).
* `crm`: one-parameter power ("empiric") model p_d = skeleton_d ** exp(a),
  a ~ N(0, 1.34) (dfcrm's default prior variance); the posterior is computed by
  quadrature on a fixed grid of `a`. The next dose is the one whose estimate
  p_d(posterior mean of a) is closest to the target, with no skipping (at most
  one level above the current dose) and no escalation right after a cohort
  with a DLT (coherence). Safety rule: stop (no MTD) when P(p_1 > target |
  data) > `stop_prob` with at least 3 patients at the lowest dose; that
  probability is integrated up to the exact cut point a* where p_1 = target
  (`CRMPosterior.prob_above`), not read off the grid nodes. The MTD is
  the dose recommended after the last cohort (dfcrm's choice: the closest
  estimate over all doses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from vpop.errors import UserError
from vpop.run.endpoints import grade_at_least, grade_column
from vpop.stats import wilson_interval

NO_MTD = -1  # selected dose of a trial that stopped early without an MTD


# --- DLT definition and pools of virtual patients -----------------------------


@dataclass(frozen=True)
class DLTDefinition:
    """A DLT: CRS grade >= `crs_grade` or ICANS grade >= `icans_grade` within `window_days`.

    Grades are read under the named scales (patients-table columns
    `crs_max_grade[_<scale>]`, observation columns `crs_grade_<scale>`). A grade
    of None leaves that toxicity out of the definition.
    """

    crs_grade: int | None = 3
    icans_grade: int | None = 3
    crs_scale: str = "astct"
    icans_scale: str = "astct"
    window_days: float = 28.0

    def describe(self) -> str:
        parts = []
        if self.crs_grade is not None:
            parts.append(f"CRS grade >= {self.crs_grade} ({self.crs_scale})")
        if self.icans_grade is not None:
            parts.append(f"ICANS grade >= {self.icans_grade} ({self.icans_scale})")
        return " or ".join(parts) + f" within {self.window_days:g} days"


def dlt_outcomes(patients: pd.DataFrame, definition: DLTDefinition, observations: pd.DataFrame | None = None,
                 simulated_days: float | None = None) -> np.ndarray:
    """Boolean DLT per patient (in the order of `patients`).

    If the simulation ran longer than the window, the grades are read from the
    observations up to `window_days`; otherwise the patients-table maxima are
    the maxima within the window.
    """
    if definition.crs_grade is None and definition.icans_grade is None:
        raise UserError("DLT definition: give a CRS grade, an ICANS grade or both")
    use_obs = simulated_days is not None and simulated_days > definition.window_days + 1e-9
    if use_obs and observations is None:
        raise UserError(f"DLT window {definition.window_days:g} d is shorter than the simulation "
                        f"({simulated_days:g} d): observations are needed")
    checks = [("crs", definition.crs_grade, definition.crs_scale),
              ("icans", definition.icans_grade, definition.icans_scale)]
    dlt = np.zeros(len(patients), dtype=bool)
    if use_obs:
        obs = observations[observations["time_day"] <= definition.window_days + 1e-9]
    for kind, grade, scale in checks:
        if grade is None:
            continue
        if use_obs:
            col = f"{kind}_grade_{scale}"
            if col not in obs.columns:
                raise UserError(f"DLT definition: scale {scale!r} was not simulated for {kind.upper()}")
            worst = obs.groupby("patient_id")[col].max()
            g = worst.reindex(patients["patient_id"]).fillna(0).to_numpy()
        else:
            if grade_column(kind, scale) not in patients.columns:
                raise UserError(f"DLT definition: scale {scale!r} was not simulated for {kind.upper()}")
            dlt |= grade_at_least(kind, grade, scale)(patients)
            continue
        dlt |= g >= grade
    return dlt


@dataclass
class PatientPool:
    """DLT outcomes of pool patients (rows) at each dose (columns)."""

    outcomes: np.ndarray  # bool (n_pool, K)
    dose_labels: list[str] = field(default_factory=list)
    dlt_description: str = ""

    def __post_init__(self):
        self.outcomes = np.asarray(self.outcomes, dtype=bool)
        if self.outcomes.ndim != 2 or self.outcomes.shape[0] < 1 or self.outcomes.shape[1] < 1:
            raise UserError("a patient pool needs a (patients x doses) outcome matrix")
        if not self.dose_labels:
            self.dose_labels = [str(d + 1) for d in range(self.n_doses)]

    @property
    def n_doses(self) -> int:
        return self.outcomes.shape[1]

    @property
    def true_rates(self) -> np.ndarray:
        return self.outcomes.mean(axis=0)

    @classmethod
    def from_probabilities(cls, p_true: Sequence[float], n_pool: int = 100_000, seed: int = 0) -> "PatientPool":
        """A pool with DLT rates `p_true`: patient i has a DLT at dose d iff u_i < p_d (monotone)."""
        p = np.asarray(p_true, dtype=float)
        u = np.random.default_rng(seed).random(n_pool)
        return cls(u[:, None] < p[None, :])


def dose_pools(config, doses: Sequence[float], definition: DLTDefinition, n: int, seed: int | None = None,
               progress: Callable[[str], None] | None = None, record_rows: bool | None = None,
               labels: Sequence[str] | None = None) -> PatientPool:
    """Simulate the same `n` virtual patients at each dose: a `PatientPool`.

    `doses` are in the config's units: CAR-T cells/kg if the config gives
    `product.dose_per_kg`, cells if it gives `product.flat_dose`. `labels`
    name the doses in progress messages and tables (default: the numbers).
    """
    from vpop.run.cohort import simulate

    if not doses:
        raise UserError("--doses: give at least one dose")
    seed = config.seed if seed is None else seed
    need_obs = config.engine.days > definition.window_days + 1e-9
    if record_rows is not None:  # None: record the observation table only when the window needs it
        need_obs = need_obs or record_rows
    labels = [f"{d:g}" for d in doses] if labels is None else list(labels)
    cols = []
    for dose, label in zip(doses, labels):
        cfg = with_dose(config, dose)
        result = simulate(cfg, n=n, seed=seed, record_rows=need_obs)
        ok = result.patients["solver_status"] != "nonfinite"
        dlt = dlt_outcomes(result.patients, definition, result.observations, cfg.engine.days)
        cols.append(np.where(ok, dlt, False))
        if progress is not None:
            progress(f"dose {label}: DLT rate {100 * dlt[ok].mean():.1f}% ({int(ok.sum())} patients)")
    return PatientPool(np.stack(cols, axis=1), labels, definition.describe())


def with_dose(config, dose: float):
    """The config with its dose (per kg or flat, whichever it uses) set to `dose`."""
    pop = config.population
    if dose <= 0 or not math.isfinite(dose):
        raise UserError(f"dose: got {dose!r}; allowed: a positive number")
    if pop.dose_per_kg is not None:
        return replace(config, population=replace(pop, dose_per_kg=float(dose)))
    return replace(config, population=replace(pop, flat_dose=float(dose)))


# --- trial bookkeeping ----------------------------------------------------------


@dataclass
class TrialResults:
    """Per-trial outcomes of a simulated design (arrays over trials)."""

    design: str
    selected: np.ndarray  # (T,) dose index or NO_MTD
    n_patients: np.ndarray  # (T, K)
    n_dlt: np.ndarray  # (T, K)
    early_stop: np.ndarray  # (T,) bool: stopped for toxicity without an MTD
    pool: PatientPool
    target: float | None = None

    @property
    def n_trials(self) -> int:
        return len(self.selected)

    def operating_characteristics(self) -> pd.DataFrame:
        """One row per dose: true DLT rate (Wilson 95%), P(select), mean patients and DLTs."""
        rows = []
        T = self.n_trials
        n_pool = self.pool.outcomes.shape[0]
        for d in range(self.pool.n_doses):
            k = int(self.pool.outcomes[:, d].sum())
            lo, hi = wilson_interval(k, n_pool)
            rows.append({
                "dose": self.pool.dose_labels[d],
                "level": d + 1,
                "true_dlt_rate": k / n_pool,
                "true_ci_low": lo,
                "true_ci_high": hi,
                "p_select": float(np.mean(self.selected == d)),
                "mean_patients": float(self.n_patients[:, d].mean()),
                "pct_patients": float(self.n_patients[:, d].sum() / max(1, self.n_patients.sum())),
                "mean_dlts": float(self.n_dlt[:, d].mean()),
            })
        out = pd.DataFrame(rows)
        out.attrs["summary"] = self.summary()
        return out

    def summary(self) -> dict:
        return {
            "design": self.design,
            "trials": self.n_trials,
            "p_no_mtd": float(np.mean(self.selected == NO_MTD)),
            "p_early_stop": float(np.mean(self.early_stop)),
            "mean_patients": float(self.n_patients.sum(axis=1).mean()),
            "mean_dlts": float(self.n_dlt.sum(axis=1).mean()),
            "target": self.target,
        }


class _Enrolment:
    """Draws patients from the pool for every trial (vectorised).

    draw="random": uniform with replacement. draw="sequential": every trial
    enrols pool rows 0, 1, 2, ... in order (a fixed patient sequence, for
    replaying a hand-worked trial).
    """

    def __init__(self, pool: PatientPool, n_trials: int, seed: int, draw: str = "random"):
        if draw not in ("random", "sequential"):
            raise UserError(f"draw: got {draw!r}; allowed: random, sequential")
        self.pool = pool
        self.draw = draw
        self.rng = np.random.default_rng(seed)
        K = pool.n_doses
        self.n = np.zeros((n_trials, K), dtype=np.int64)
        self.y = np.zeros((n_trials, K), dtype=np.int64)

    def treat(self, trials: np.ndarray, dose: np.ndarray, size: int) -> np.ndarray:
        """Enrol `size` patients at `dose[t]` for each t in `trials`; returns their DLT counts."""
        if len(trials) == 0:
            return np.zeros(0, dtype=np.int64)
        n_pool = self.pool.outcomes.shape[0]
        if self.draw == "random":
            idx = self.rng.integers(0, n_pool, size=(len(trials), size))
        else:
            done = self.n[trials].sum(axis=1)
            idx = (done[:, None] + np.arange(size)[None, :]) % n_pool
        dlts = self.pool.outcomes[idx, dose[:, None]].sum(axis=1)
        self.n[trials, dose] += size
        self.y[trials, dose] += dlts
        return dlts


# --- 3+3 ---------------------------------------------------------------------------


def three_plus_three(pool: PatientPool, n_trials: int = 2000, seed: int = 0, start_dose: int = 0,
                     deescalate: bool = False, draw: str = "random") -> TrialResults:
    K = pool.n_doses
    T = n_trials
    _check_start(start_dose, K)
    enr = _Enrolment(pool, T, seed, draw)
    dose = np.full(T, start_dose, dtype=np.int64)
    active = np.ones(T, dtype=bool)
    selected = np.full(T, NO_MTD, dtype=np.int64)
    ceiling = np.full(T, K, dtype=np.int64)  # lowest dose known to exceed the MTD
    for _ in range(4 * K + 4):
        t = np.flatnonzero(active)
        if len(t) == 0:
            break
        d = dose[t]
        enr.treat(t, d, 3)
        n, y = enr.n[t, d], enr.y[t, d]
        too_toxic = ((n == 3) & (y >= 2)) | ((n >= 6) & (y >= 2))
        expand = ((n == 3) & (y == 1)) | ((n == 3) & (y == 0) & (d == K - 1))
        safe = ~too_toxic & ~expand  # 0/3 below the top, or <= 1/6
        # safe: escalate, or declare MTD at the top dose / below a known ceiling
        esc = safe & (d + 1 < ceiling[t])
        done_safe = safe & ~esc
        dose[t[esc]] = d[esc] + 1
        # a dose that was declared safe but whose next dose is the ceiling is the MTD
        if deescalate:
            needs_more = done_safe & (n < 6)
            dose[t[needs_more]] = d[needs_more]  # treat 3 more here
            done_safe = done_safe & ~needs_more
        selected[t[done_safe]] = d[done_safe]
        active[t[done_safe]] = False
        # too toxic: MTD is the dose below (possibly after expanding it)
        tt = t[too_toxic]
        below = d[too_toxic] - 1
        ceiling[tt] = d[too_toxic]
        none = below < 0
        active[tt[none]] = False
        tt, below = tt[~none], below[~none]
        if deescalate:
            n_below = enr.n[tt, below]
            more = n_below < 6
            dose[tt[more]] = below[more]
            selected[tt[~more]] = below[~more]
            active[tt[~more]] = False
        else:
            selected[tt] = below
            active[tt] = False
    early = selected == NO_MTD
    return TrialResults("3+3", selected, enr.n, enr.y, early, pool)


# --- BOIN --------------------------------------------------------------------------


def boin_boundaries(target: float, p_saf: float | None = None, p_tox: float | None = None) -> tuple[float, float]:
    """(lambda_e, lambda_d) of Liu & Yuan (2015); p_saf = 0.6 target, p_tox = 1.4 target by default."""
    phi = float(target)
    phi1 = 0.6 * phi if p_saf is None else float(p_saf)
    phi2 = 1.4 * phi if p_tox is None else float(p_tox)
    if not 0 < phi1 < phi < phi2 < 1:
        raise UserError(f"BOIN: need 0 < p_saf ({phi1}) < target ({phi}) < p_tox ({phi2}) < 1")
    lam_e = math.log((1 - phi1) / (1 - phi)) / math.log(phi * (1 - phi1) / (phi1 * (1 - phi)))
    lam_d = math.log((1 - phi) / (1 - phi2)) / math.log(phi2 * (1 - phi) / (phi * (1 - phi2)))
    return lam_e, lam_d


def prob_above(target: float, y, n):
    """P(p > target | y DLTs in n) under a Beta(1, 1) prior: P(Binomial(n + 1, target) <= y)."""
    y = np.asarray(y, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    out = np.zeros(np.broadcast(y, n).shape, dtype=float)
    for idx in np.ndindex(out.shape):
        yy, nn = int(np.broadcast_to(y, out.shape)[idx]), int(np.broadcast_to(n, out.shape)[idx])
        m = nn + 1
        out[idx] = sum(math.comb(m, j) * target**j * (1 - target) ** (m - j) for j in range(0, yy + 1))
    return out


def boin_table(target: float, max_n: int = 12, cutoff_eli: float = 0.95, **kw) -> pd.DataFrame:
    """Decision boundaries by number of patients at the dose (as BOIN's `get.boundary`)."""
    lam_e, lam_d = boin_boundaries(target, **kw)
    rows = []
    for n in range(1, max_n + 1):
        elim = None
        if n >= 3:
            for y in range(n + 1):
                if prob_above(target, y, n) > cutoff_eli:
                    elim = y
                    break
        rows.append({"n": n, "escalate_if_le": math.floor(n * lam_e), "deescalate_if_ge": math.ceil(n * lam_d),
                     "eliminate_if_ge": elim})
    return pd.DataFrame(rows)


def _elimination_counts(target: float, max_n: int, cutoff: float) -> np.ndarray:
    """elim[n] = smallest y with P(p > target | y, n) > cutoff (n >= 3), else n + 1 (never)."""
    elim = np.full(max_n + 1, 10**9, dtype=np.int64)
    for n in range(3, max_n + 1):
        for y in range(n + 1):
            if prob_above(target, y, n) > cutoff:
                elim[n] = y
                break
    return elim


def boin(pool: PatientPool, target: float, n_cohorts: int = 10, cohort_size: int = 3, n_trials: int = 2000,
         seed: int = 0, start_dose: int = 0, n_earlystop: int = 100, cutoff_eli: float = 0.95,
         p_saf: float | None = None, p_tox: float | None = None, draw: str = "random") -> TrialResults:
    K = pool.n_doses
    T = n_trials
    _check_start(start_dose, K)
    lam_e, lam_d = boin_boundaries(target, p_saf, p_tox)
    max_n = n_cohorts * cohort_size
    elim_at = _elimination_counts(target, max_n, cutoff_eli)
    enr = _Enrolment(pool, T, seed, draw)
    dose = np.full(T, start_dose, dtype=np.int64)
    active = np.ones(T, dtype=bool)
    eliminated_from = np.full(T, K, dtype=np.int64)  # doses >= this are eliminated
    early = np.zeros(T, dtype=bool)
    for _ in range(n_cohorts):
        t = np.flatnonzero(active)
        if len(t) == 0:
            break
        d = dose[t]
        enr.treat(t, d, cohort_size)
        n, y = enr.n[t, d], enr.y[t, d]
        stop_n = n >= n_earlystop
        elim = (y >= elim_at[np.minimum(n, max_n)]) & ~stop_n
        eliminated_from[t[elim]] = np.minimum(eliminated_from[t[elim]], d[elim])
        stop_tox = elim & (d == 0)
        early[t[stop_tox]] = True
        ratio = y / n
        up = (ratio <= lam_e) & (d + 1 < K)
        up &= d + 1 < eliminated_from[t]
        down = ~up & (ratio >= lam_d) & (d > 0)
        down |= elim & (d > 0)  # an eliminated dose is left (implied by lambda_d for usual targets)
        new = np.where(up, d + 1, np.where(down, d - 1, d))
        go = ~stop_n & ~stop_tox
        dose[t[go]] = new[go]
        active[t[~go]] = False
    selected = np.full(T, NO_MTD, dtype=np.int64)
    for i in np.flatnonzero(~early):
        selected[i] = select_mtd_isotonic(enr.n[i], enr.y[i], target, cutoff_eli)
    return TrialResults("BOIN", selected, enr.n, enr.y, early, pool, target)


def pava(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Non-decreasing isotonic regression (pool-adjacent-violators)."""
    blocks: list[list[float]] = []  # [value, weight, count]
    for v, w in zip(values, weights):
        blocks.append([float(v), float(w), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, c2 = blocks.pop()
            v1, w1, c1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    out = []
    for v, _, c in blocks:
        out.extend([v] * c)
    return np.asarray(out)


def select_mtd_isotonic(n: np.ndarray, y: np.ndarray, target: float, cutoff_eli: float = 0.95) -> int:
    """BOIN's `select.mtd`: PAVA on the tried, non-eliminated doses; closest to target."""
    n = np.asarray(n)
    y = np.asarray(y)
    K = len(n)
    elim = K
    for d in range(K):
        if n[d] >= 3 and prob_above(target, y[d], n[d]) > cutoff_eli:
            elim = d
            break
    if elim == 0 or n[0] == 0:
        return NO_MTD
    tried = np.flatnonzero(n > 0)
    nadmis = min(int(tried.max()) + 1, elim)
    nn, yy = n[:nadmis].astype(float), y[:nadmis].astype(float)
    keep = nn > 0
    phat = (yy[keep] + 0.05) / (nn[keep] + 0.1)
    var = (yy[keep] + 0.05) * (nn[keep] - yy[keep] + 0.05) / ((nn[keep] + 0.1) ** 2 * (nn[keep] + 0.1 + 1))
    iso = pava(phat, 1.0 / var) + np.arange(1, len(phat) + 1) * 1e-10
    doses = np.flatnonzero(keep)
    return int(doses[int(np.argmin(np.abs(iso - target)))])


# --- CRM ----------------------------------------------------------------------------


def crm_skeleton(target: float, n_doses: int, prior_mtd: int, halfwidth: float = 0.05) -> np.ndarray:
    """Skeleton by Lee & Cheung's indifference-interval method (dfcrm `getprior`, empiric model).

    `prior_mtd` is the 0-based dose believed to be the MTD; its skeleton value is `target`.
    """
    if not 0 <= prior_mtd < n_doses:
        raise UserError(f"CRM: prior MTD level {prior_mtd + 1} is not among the {n_doses} doses")
    if not 0 < target - halfwidth < target + halfwidth < 1:
        raise UserError("CRM: need 0 < target - halfwidth and target + halfwidth < 1")
    s = np.full(n_doses, np.nan)
    s[prior_mtd] = target
    for k in range(prior_mtd, 0, -1):
        b = math.log(math.log(target + halfwidth) / math.log(s[k]))
        s[k - 1] = math.exp(math.log(target - halfwidth) / math.exp(b))
    for k in range(prior_mtd, n_doses - 1):
        b = math.log(math.log(target - halfwidth) / math.log(s[k]))
        s[k + 1] = math.exp(math.log(target + halfwidth) / math.exp(b))
    return s


@dataclass(frozen=True)
class CRMPosterior:
    """Posterior of the power model on a quadrature grid (vectorised over trials)."""

    skeleton: np.ndarray
    prior_sd: float = math.sqrt(1.34)
    n_grid: int = 401

    def grid(self):
        a = np.linspace(-6 * self.prior_sd, 6 * self.prior_sd, self.n_grid)
        w = np.full(self.n_grid, a[1] - a[0])
        w[[0, -1]] *= 0.5  # trapezoid rule
        log_prior = -0.5 * (a / self.prior_sd) ** 2
        return a, w, log_prior

    def log_posterior(self, a: np.ndarray, n: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Unnormalised log posterior (T, len(a)) of the power model at the points `a`."""
        s = np.asarray(self.skeleton, dtype=float)
        logp = np.exp(a)[None, :] * np.log(s)[:, None]  # (K, G): log p_d(a)
        log1mp = np.log1p(-np.exp(logp))
        n = np.atleast_2d(n).astype(float)
        y = np.atleast_2d(y).astype(float)
        return y @ logp + (n - y) @ log1mp - 0.5 * (a / self.prior_sd)[None, :] ** 2

    def weights(self, n: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised posterior weights (T, G) on the grid, and the grid."""
        a, w, _ = self.grid()
        ll = self.log_posterior(a, n, y)
        ll -= ll.max(axis=1, keepdims=True)
        post = np.exp(ll) * w[None, :]
        post /= post.sum(axis=1, keepdims=True)
        return post, a

    def posterior_mean_a(self, n, y) -> np.ndarray:
        post, a = self.weights(n, y)
        return post @ a

    def estimates(self, n, y) -> np.ndarray:
        """p_d at the posterior mean of a (dfcrm's `ptox`), shape (T, K)."""
        a_hat = self.posterior_mean_a(n, y)
        return np.asarray(self.skeleton)[None, :] ** np.exp(a_hat)[:, None]

    def prob_above(self, n, y, dose: int, target: float) -> np.ndarray:
        """P(p_dose > target | data) for each trial, integrated up to the exact cut point.

        p_dose = s ** exp(a) falls as a rises, so p_dose > target exactly when
        a < a* = log(log(target) / log(s)). The posterior is integrated by
        Simpson's rule on two grids that meet at a*, one below and one above,
        so the integral stops at a* itself. (Evaluating the indicator at the
        nodes of one fixed grid moves the cut to a node: a bias of up to half a
        cell's mass, 0.027 in the safety-stop probability.)
        """
        a, _, _ = self.grid()
        s = float(np.asarray(self.skeleton)[dose])
        cut = float(np.clip(math.log(math.log(target) / math.log(s)), a[0], a[-1]))
        m = self.n_grid // 2 * 2 + 1  # odd: Simpson needs an even number of intervals
        below_pts, above_pts = np.linspace(a[0], cut, m), np.linspace(cut, a[-1], m)
        ll = self.log_posterior(np.concatenate([below_pts, above_pts]), n, y)
        f = np.exp(ll - ll.max(axis=1, keepdims=True))
        below = _simpson(f[:, :m], (cut - a[0]) / (m - 1))
        above = _simpson(f[:, m:], (a[-1] - cut) / (m - 1))
        return below / (below + above)


def _simpson(f: np.ndarray, h: float) -> np.ndarray:
    """Composite Simpson's rule along the last axis (an odd number of equally spaced points)."""
    w = np.ones(f.shape[-1])
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return f @ w * (h / 3.0)


def crm(pool: PatientPool, target: float, skeleton: Sequence[float] | None = None, n_cohorts: int = 10,
        cohort_size: int = 3, n_trials: int = 2000, seed: int = 0, start_dose: int = 0,
        prior_sd: float = math.sqrt(1.34), stop_prob: float = 0.9, prior_mtd: int | None = None,
        draw: str = "random") -> TrialResults:
    K = pool.n_doses
    T = n_trials
    _check_start(start_dose, K)
    if skeleton is None:
        skeleton = crm_skeleton(target, K, (K - 1) // 2 if prior_mtd is None else prior_mtd)
    skeleton = np.asarray(skeleton, dtype=float)
    if skeleton.shape != (K,) or np.any(np.diff(skeleton) <= 0) or skeleton[0] <= 0 or skeleton[-1] >= 1:
        raise UserError(f"CRM: the skeleton must be {K} increasing probabilities in (0, 1)")
    model = CRMPosterior(skeleton, prior_sd)
    enr = _Enrolment(pool, T, seed, draw)
    dose = np.full(T, start_dose, dtype=np.int64)
    active = np.ones(T, dtype=bool)
    early = np.zeros(T, dtype=bool)
    for _ in range(n_cohorts):
        t = np.flatnonzero(active)
        if len(t) == 0:
            break
        d = dose[t]
        dlts = enr.treat(t, d, cohort_size)
        n, y = enr.n[t], enr.y[t]
        stop = (n[:, 0] >= 3) & (model.prob_above(n, y, 0, target) > stop_prob)
        early[t[stop]] = True
        active[t[stop]] = False
        est = model.estimates(n, y)
        best = np.argmin(np.abs(est - target), axis=1)
        nxt = np.minimum(best, d + 1)  # no skipping
        nxt = np.where(dlts > 0, np.minimum(nxt, d), nxt)  # no escalation right after a DLT
        dose[t[~stop]] = nxt[~stop]
    selected = np.full(T, NO_MTD, dtype=np.int64)
    ok = ~early
    est = model.estimates(enr.n[ok], enr.y[ok])
    selected[ok] = np.argmin(np.abs(est - target), axis=1)
    return TrialResults("CRM", selected, enr.n, enr.y, early, pool, target)


def _check_start(start_dose: int, K: int) -> None:
    if not 0 <= start_dose < K:
        raise UserError(f"start dose level {start_dose + 1} is not among the {K} doses")


DESIGNS = {"3+3": three_plus_three, "boin": boin, "crm": crm}


def run_design(name: str, pool: PatientPool, target: float = 0.3, n_trials: int = 2000, seed: int = 0,
               n_cohorts: int = 10, cohort_size: int = 3, start_dose: int = 0, **kw) -> TrialResults:
    """Run a design by name ('3+3', 'boin', 'crm') with the common options."""
    key = name.lower()
    if key not in DESIGNS:
        raise UserError(f"--design: got {name!r}; allowed: {', '.join(DESIGNS)}")
    if key == "3+3":
        return three_plus_three(pool, n_trials=n_trials, seed=seed, start_dose=start_dose, **kw)
    return DESIGNS[key](pool, target, n_cohorts=n_cohorts, cohort_size=cohort_size, n_trials=n_trials,
                        seed=seed, start_dose=start_dose, **kw)

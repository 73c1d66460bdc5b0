"""Early risk: does what is seen in the first 36-72 hours predict severe toxicity later?

For a landmark time L (hours after infusion), each virtual patient's features
are read from the observation table up to L:

* `temp_max`: the highest temperature (deg C) up to L;
* `log_il6_max`: log of the highest IL-6 (pg/mL) up to L;
* `log_crp_L`, `log_ferritin_L`: log CRP (mg/L) and ferritin (ng/mL) at the
  last assessment at or before L;
* `log_easix0`: log of the baseline EASIX (patients table).

The outcome is grade >= 3 CRS or ICANS (ASTCT by default) *after* L. Patients
who already had grade >= 3, or died, by L are not at risk and are left out,
as are patients whose solver failed. The at-risk patients are split at random
(seeded) into two halves: a logistic regression on standardised features
(Newton-Raphson, a small ridge penalty `ridge` on the slopes only) is fitted
on one half and evaluated on the other: ROC AUC (Mann-Whitney, ties counted
one half) and sensitivity, specificity, PPV and NPV at chosen thresholds of
the predicted probability.

The features reflect the management policy of the simulation (e.g.
tocilizumab given before L lowers CRP), as they would in a real cohort.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from vpop.errors import UserError
from vpop.run import endpoints

FEATURES = ("temp_max", "log_il6_max", "log_crp_L", "log_ferritin_L", "log_easix0")


def early_features(patients: pd.DataFrame, observations: pd.DataFrame, landmark_hours: float = 72.0,
                   grade: int = 3, scale: str = "astct") -> pd.DataFrame:
    """Features at the landmark, the later outcome and an at-risk flag (index: patient_id)."""
    if observations is None:
        raise UserError("early risk needs the observation table (simulate with observations)")
    t_l = landmark_hours / 24.0
    obs = observations.sort_values(["patient_id", "time_day"])
    early = obs[obs["time_day"] <= t_l + 1e-9]
    g = early.groupby("patient_id")
    crs_col, icans_col = f"crs_grade_{scale}", f"icans_grade_{scale}"
    for col in (crs_col, icans_col, "temp_c", "il6_pg_ml", "crp_mg_l", "ferritin_ng_ml"):
        if col not in obs.columns:
            raise UserError(f"early risk: the observation table has no column {col!r}")
    ids = patients["patient_id"].to_numpy()
    feats = pd.DataFrame(index=pd.Index(ids, name="patient_id"))
    feats["temp_max"] = g["temp_c"].max().reindex(ids)
    feats["log_il6_max"] = np.log(g["il6_pg_ml"].max().reindex(ids).clip(lower=1e-3))
    feats["log_crp_L"] = np.log(g["crp_mg_l"].last().reindex(ids).clip(lower=1e-3))
    feats["log_ferritin_L"] = np.log(g["ferritin_ng_ml"].last().reindex(ids).clip(lower=1e-3))
    feats["log_easix0"] = np.log(np.clip(patients["easix"].to_numpy(dtype=float), 1e-6, None))
    severe_early = (g[crs_col].max().reindex(ids).fillna(0) >= grade) | (g[icans_col].max().reindex(ids).fillna(0) >= grade)
    last_time = obs.groupby("patient_id")["time_day"].max().reindex(ids)
    died_by_l = patients["death_day"].to_numpy(dtype=float) <= t_l if "death_day" in patients else np.zeros(len(ids), bool)
    ok = ~endpoints.failed(patients) if "solver_status" in patients else True
    feats["outcome"] = endpoints.severe(patients, grade, scale)
    feats["at_risk"] = ok & ~severe_early.to_numpy() & ~np.nan_to_num(died_by_l, nan=0).astype(bool) & (
        last_time.to_numpy() > t_l) & feats[list(FEATURES)].notna().all(axis=1).to_numpy()
    return feats


@dataclass
class LogisticModel:
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # intercept first, then per-SD slopes
    features: tuple[str, ...] = FEATURES

    def predict(self, X: np.ndarray) -> np.ndarray:
        Z = (np.asarray(X, dtype=float) - self.mean) / self.scale
        eta = self.coef[0] + Z @ self.coef[1:]
        return 1.0 / (1.0 + np.exp(-eta))


def fit_logistic(X: np.ndarray, y: np.ndarray, ridge: float = 1e-2, max_iter: int = 100,
                 features: Sequence[str] = FEATURES) -> LogisticModel:
    """Logistic regression by Newton-Raphson on standardised features (ridge on slopes only)."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale == 0] = 1.0
    Z = np.column_stack([np.ones(len(X)), (X - mean) / scale])
    beta = np.zeros(Z.shape[1])
    pen = np.full(Z.shape[1], ridge)
    pen[0] = 0.0
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(Z @ beta)))
        grad = Z.T @ (y - p) - pen * beta
        W = p * (1 - p)
        H = (Z * W[:, None]).T @ Z + np.diag(pen) + 1e-10 * np.eye(Z.shape[1])
        step = np.linalg.solve(H, grad)
        beta += step
        if np.max(np.abs(step)) < 1e-10:
            break
    return LogisticModel(mean, scale, beta, tuple(features))


def roc_auc(score: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U / n1 n0, ties count one half)."""
    score = np.asarray(score, dtype=float)
    y = np.asarray(y, dtype=bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = pd.Series(score).rank(method="average").to_numpy()
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def threshold_table(prob: np.ndarray, y: np.ndarray, thresholds: Sequence[float]) -> pd.DataFrame:
    """Sensitivity, specificity, PPV, NPV and the flagged fraction at each probability threshold."""
    y = np.asarray(y, dtype=bool)
    rows = []
    for t in thresholds:
        flag = prob >= t
        tp, fp = int((flag & y).sum()), int((flag & ~y).sum())
        fn, tn = int((~flag & y).sum()), int((~flag & ~y).sum())
        rows.append({"threshold": float(t),
                     "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
                     "specificity": tn / (tn + fp) if tn + fp else float("nan"),
                     "ppv": tp / (tp + fp) if tp + fp else float("nan"),
                     "npv": tn / (tn + fn) if tn + fn else float("nan"),
                     "flagged": (tp + fp) / len(y) if len(y) else float("nan")})
    return pd.DataFrame(rows)


@dataclass
class EarlyRisk:
    landmark_hours: float
    model: LogisticModel
    auc_train: float
    auc_test: float
    n_train: int
    n_test: int
    events_train: int
    events_test: int
    thresholds: pd.DataFrame
    excluded: int
    coefficients: pd.DataFrame = field(default_factory=pd.DataFrame)

    def summary(self) -> dict:
        return {"landmark_hours": self.landmark_hours, "auc_train": self.auc_train, "auc_test": self.auc_test,
                "n_train": self.n_train, "n_test": self.n_test, "events_train": self.events_train,
                "events_test": self.events_test, "excluded_not_at_risk": self.excluded}


def early_risk(patients: pd.DataFrame, observations: pd.DataFrame, landmark_hours: float = 72.0,
               thresholds: Sequence[float] = (0.1, 0.2, 0.3, 0.5), seed: int = 0, grade: int = 3,
               scale: str = "astct", ridge: float = 1e-2) -> EarlyRisk:
    """Fit the early score on a random half of the at-risk patients, evaluate it on the other half."""
    feats = early_features(patients, observations, landmark_hours, grade, scale)
    risk = feats[feats["at_risk"]]
    if len(risk) < 10:
        raise UserError(f"early risk: only {len(risk)} patients at risk at {landmark_hours:g} h (need >= 10)")
    perm = np.random.default_rng(seed).permutation(len(risk))
    train, test = perm[: len(risk) // 2], perm[len(risk) // 2:]
    X = risk[list(FEATURES)].to_numpy(dtype=float)
    y = risk["outcome"].to_numpy(dtype=bool)
    if y[train].all() or not y[train].any():
        raise UserError(f"early risk: the training half has {'only' if y[train].all() else 'no'} events")
    model = fit_logistic(X[train], y[train], ridge)
    p_train, p_test = model.predict(X[train]), model.predict(X[test])
    coefs = pd.DataFrame({"feature": ["intercept", *FEATURES], "coef_per_sd": model.coef,
                          "odds_ratio_per_sd": np.exp(model.coef)})
    return EarlyRisk(float(landmark_hours), model, roc_auc(p_train, y[train]), roc_auc(p_test, y[test]),
                     len(train), len(test), int(y[train].sum()), int(y[test].sum()),
                     threshold_table(p_test, y[test], thresholds), int((~feats["at_risk"]).sum()), coefs)

"""Early risk score: features at the landmark, logistic fit, AUC and thresholds on small data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vpop.trials import early_risk as er
def test_roc_auc_matches_pair_counting():
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=60), 1)  # with ties
    y = rng.random(60) < 0.4
    pairs = [(a, b) for a in s[y] for b in s[~y]]
    brute = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs])
    assert er.roc_auc(s, y) == pytest.approx(brute)
    assert er.roc_auc(s, np.zeros(60, bool)) != er.roc_auc(s, np.zeros(60, bool))  # nan without events


def test_logistic_fit_recovers_coefficients():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(4000, 2))
    p = 1 / (1 + np.exp(-(-0.5 + 1.2 * X[:, 0] - 0.8 * X[:, 1])))
    y = rng.random(4000) < p
    m = er.fit_logistic(X, y, ridge=0.0, features=("a", "b"))
    slopes = m.coef[1:] / m.scale  # back to the original units
    assert slopes == pytest.approx([1.2, -0.8], abs=0.12)
    assert m.coef[0] - np.sum(slopes * m.mean) == pytest.approx(-0.5, abs=0.12)


def test_threshold_table_counts():
    prob = np.array([0.9, 0.6, 0.4, 0.2, 0.1])
    y = np.array([True, False, True, False, False])
    t = er.threshold_table(prob, y, [0.5]).iloc[0]
    assert t["sensitivity"] == 0.5 and t["specificity"] == pytest.approx(2 / 3)
    assert t["ppv"] == 0.5 and t["npv"] == pytest.approx(2 / 3) and t["flagged"] == 0.4


def synthetic_cohort(n=200, seed=0):
    """Patients whose early IL-6 drives later severe toxicity; a few severe before 72 h."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n)
    il6 = rng.lognormal(3, 1, n)
    risk = 1 / (1 + np.exp(-(np.log(il6) - 3) * 2.5))
    severe = rng.random(n) < risk
    early_severe = ids < 5
    rows = []
    for i in ids:
        for t in np.arange(0, 10.01, 0.25):
            late = t > 4
            rows.append({"patient_id": i, "time_day": t, "temp_c": 37 + 0.3 * rng.random(),
                         "il6_pg_ml": il6[i] * (1 + t / 3), "crp_mg_l": 10 + rng.random(),
                         "ferritin_ng_ml": 500 + rng.random(),
                         "crs_grade_astct": 3 if (early_severe[i] and t >= 1) or (severe[i] and late) else 0,
                         "icans_grade_astct": 0})
    obs = pd.DataFrame(rows)
    patients = pd.DataFrame({"patient_id": ids, "easix": rng.lognormal(0, 0.5, n),
                             "crs_max_grade": np.where(severe | early_severe, 3, 0), "icans_max_grade": 0,
                             "death_day": np.nan, "solver_status": "ok"})
    return patients, obs


def test_features_and_at_risk_set():
    patients, obs = synthetic_cohort(40)
    f = er.early_features(patients, obs, landmark_hours=72)
    assert not f.loc[:4, "at_risk"].any() and f.loc[5:, "at_risk"].all()
    il6_at_72h = obs[(obs.patient_id == 7) & (obs.time_day <= 3.0)]["il6_pg_ml"].max()
    assert f.loc[7, "log_il6_max"] == pytest.approx(np.log(il6_at_72h))
    crp_at_36h = obs[(obs.patient_id == 7) & (obs.time_day == 1.5)]["crp_mg_l"].iloc[0]
    assert er.early_features(patients, obs, 36).loc[7, "log_crp_L"] == pytest.approx(np.log(crp_at_36h))


def test_early_risk_discriminates_on_held_out_half():
    patients, obs = synthetic_cohort(200)
    res = er.early_risk(patients, obs, landmark_hours=72, thresholds=(0.2, 0.5), seed=0)
    assert res.n_train + res.n_test == 195 and res.excluded == 5
    assert res.auc_test > 0.75
    assert list(res.thresholds["threshold"]) == [0.2, 0.5]
    assert (res.thresholds["sensitivity"].diff().dropna() <= 0).all()  # higher threshold, fewer flagged
    il6 = res.coefficients.set_index("feature").loc["log_il6_max", "coef_per_sd"]
    assert il6 > 0.5

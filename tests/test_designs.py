"""Dose-escalation designs: rules on hand-worked sequences, boundaries, selection, CRM posterior."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest

from vpop.trials import designs
from vpop.trials.designs import NO_MTD, DLTDefinition, PatientPool


def sequence_pool(flags, n_doses):
    """Patients enrolled in order; patient k has a DLT (at any dose) iff flags[k]."""
    flags = np.asarray(flags, dtype=bool)
    return PatientPool(np.repeat(flags[:, None], n_doses, axis=1))


# --- BOIN boundaries -------------------------------------------------------------


def test_boin_boundaries_match_published_values_for_target_0_3():
    lam_e, lam_d = designs.boin_boundaries(0.3)
    # published (Liu & Yuan 2015, Table 1): 0.236 and 0.358 (0.35852 truncated)
    assert lam_e == pytest.approx(0.236, abs=5e-4)
    assert lam_d == pytest.approx(0.358, abs=6e-4)


def test_boin_decision_table_target_0_3():
    # Liu & Yuan 2015 / BOIN get.boundary(target=0.3, ncohort=4, cohortsize=3)
    table = designs.boin_table(0.3, max_n=12).set_index("n")
    assert table.loc[3].tolist() == [0, 2, 3]
    assert table.loc[6].tolist() == [1, 3, 4]
    assert table.loc[9].tolist() == [2, 4, 5]
    assert table.loc[12].tolist() == [2, 5, 7]
    assert pd.isna(table.loc[2, "eliminate_if_ge"])


def test_beta_posterior_tail_equals_binomial_identity():
    # P(p > 0.3 | 2 of 3) with Beta(3, 2): 1 - I_0.3(3, 2)
    x = 0.3
    cdf = 4 * x**3 - 3 * x**4
    assert designs.prob_above(0.3, 2, 3) == pytest.approx(1 - cdf, abs=1e-12)
    assert designs.prob_above(0.3, 3, 3) == pytest.approx(1 - x**4, abs=1e-12)


# --- hand-worked trials --------------------------------------------------------------


def test_three_plus_three_hand_worked():
    # d1: 0/3 -> up; d2: 1/3 -> expand, 0/3 -> 1/6 -> up; d3: 2/3 -> stop, MTD = d2
    pool = sequence_pool([0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1, 0], 4)
    res = designs.three_plus_three(pool, n_trials=2, draw="sequential")
    assert res.selected.tolist() == [1, 1]
    assert res.n_patients[0].tolist() == [3, 6, 3, 0]
    assert res.n_dlt[0].tolist() == [0, 1, 2, 0]
    assert not res.early_stop.any()


def test_three_plus_three_stops_early_and_declares_top_dose():
    res = designs.three_plus_three(sequence_pool([1, 1, 0], 3), n_trials=1, draw="sequential")
    assert res.selected.tolist() == [NO_MTD] and res.early_stop.all()
    # no DLTs at all: 3 + 3 + 6 at the top dose, top dose is the MTD
    res = designs.three_plus_three(sequence_pool([0] * 12, 3), n_trials=1, draw="sequential")
    assert res.selected.tolist() == [2]
    assert res.n_patients[0].tolist() == [3, 3, 6]


def test_three_plus_three_deescalation_expands_lower_dose():
    # d1 0/3 up, d2 2/3 -> back to d1 for 3 more: 1/6 -> MTD d1
    pool = sequence_pool([0, 0, 0, 1, 1, 0, 1, 0, 0], 3)
    res = designs.three_plus_three(pool, n_trials=1, draw="sequential", deescalate=True)
    assert res.selected.tolist() == [0]
    assert res.n_patients[0].tolist() == [6, 3, 0]


def test_boin_hand_worked():
    flags = [0, 0, 0,  # d1 0/3 -> up
             1, 0, 0,  # d2 1/3 -> stay
             0, 0, 0,  # d2 1/6 -> up
             1, 1, 0,  # d3 2/3 -> down
             1, 0, 0,  # d2 2/9 -> up
             1, 1, 1,  # d3 5/6 -> eliminate d3+, down
             0, 0, 0]  # d2 2/12 -> would escalate, but d3 is eliminated: stay
    res = designs.boin(sequence_pool(flags, 4), 0.3, n_cohorts=7, n_trials=1, draw="sequential")
    assert res.n_patients[0].tolist() == [3, 12, 6, 0]
    assert res.n_dlt[0].tolist() == [0, 2, 5, 0]
    assert res.selected.tolist() == [1]


def test_boin_stops_when_lowest_dose_eliminated():
    res = designs.boin(sequence_pool([1] * 30, 3), 0.3, n_trials=1, draw="sequential")
    assert res.early_stop.all() and res.selected.tolist() == [NO_MTD]
    assert res.n_patients[0].tolist() == [3, 0, 0]


def test_boin_stops_at_n_earlystop():
    res = designs.boin(sequence_pool([0] * 60, 2), 0.3, n_cohorts=20, n_earlystop=9, n_trials=1,
                       draw="sequential")
    assert res.n_patients[0].tolist() == [3, 9]
    assert res.selected.tolist() == [1]


def test_isotonic_selection():
    assert designs.pava(np.array([0.1, 0.4, 0.2, 0.5]), np.ones(4)).tolist() == pytest.approx([0.1, 0.3, 0.3, 0.5])
    # raw rates 0/3, 2/6, 1/6: pooled 3/12 for doses 2-3 (below target) -> the higher dose
    assert designs.select_mtd_isotonic(np.array([3, 6, 6, 0]), np.array([0, 2, 1, 0]), 0.3) == 2
    # pooled above target -> the lower of the tied doses
    assert designs.select_mtd_isotonic(np.array([3, 6, 6]), np.array([0, 3, 2]), 0.3) == 1
    # eliminated dose 3 (4/6) is not admissible even though 4/6 ... closest is dose 2
    assert designs.select_mtd_isotonic(np.array([3, 6, 6]), np.array([0, 1, 4]), 0.3) == 1
    assert designs.select_mtd_isotonic(np.array([3, 0, 0]), np.array([3, 0, 0]), 0.3) == NO_MTD


# --- CRM ------------------------------------------------------------------------------


def test_crm_skeleton_indifference_intervals():
    s = designs.crm_skeleton(0.25, 5, prior_mtd=2, halfwidth=0.05)
    assert s[2] == pytest.approx(0.25)
    assert np.all(np.diff(s) > 0)
    # at the boundary between levels k and k+1 the model puts them at target -/+ halfwidth
    for k in range(4):
        b = math.log(math.log(0.20) / math.log(s[k]))
        assert s[k + 1] ** math.exp(b) == pytest.approx(0.30, abs=1e-9)


def test_crm_posterior_against_direct_integration():
    scipy_integrate = pytest.importorskip("scipy.integrate")
    skeleton = np.array([0.05, 0.12, 0.25, 0.40])
    n, y = np.array([3, 6, 3, 0]), np.array([0, 1, 2, 0])
    model = designs.CRMPosterior(skeleton)
    sd = math.sqrt(1.34)

    def post(a):
        ll = -0.5 * (a / sd) ** 2
        for d in range(4):
            logp = math.exp(a) * math.log(skeleton[d])
            ll += y[d] * logp + (n[d] - y[d]) * math.log1p(-math.exp(logp)) if n[d] else 0.0
        return math.exp(ll)

    z = scipy_integrate.quad(post, -7, 7)[0]
    mean = scipy_integrate.quad(lambda a: a * post(a), -7, 7)[0] / z
    assert model.posterior_mean_a(n, y)[0] == pytest.approx(mean, abs=1e-4)
    # no data: the prior, estimates equal the skeleton
    assert model.posterior_mean_a(np.zeros(4), np.zeros(4))[0] == pytest.approx(0.0, abs=1e-9)
    assert model.estimates(np.zeros(4), np.zeros(4))[0] == pytest.approx(skeleton)
    # more toxicity -> higher estimates
    more = model.estimates(n, y + np.array([1, 1, 0, 0]))[0]
    assert np.all(more > model.estimates(n, y)[0])


def test_crm_rules_no_skipping_coherence_and_safety_stop():
    skeleton = [0.05, 0.12, 0.25, 0.40]
    # no DLTs: one level at a time
    res = designs.crm(sequence_pool([0] * 12, 4), 0.25, skeleton=skeleton, n_cohorts=4, n_trials=1,
                      draw="sequential")
    assert res.n_patients[0].tolist() == [3, 3, 3, 3]
    # a DLT in the cohort: no escalation after it
    res = designs.crm(sequence_pool([0, 0, 1, 0, 0, 0], 4), 0.25, skeleton=skeleton, n_cohorts=2, n_trials=1,
                      draw="sequential")
    assert res.n_patients[0].tolist() == [6, 0, 0, 0]
    # all toxic: stops early without an MTD
    res = designs.crm(sequence_pool([1] * 30, 4), 0.25, skeleton=skeleton, n_trials=1, draw="sequential")
    assert res.early_stop.all() and res.selected.tolist() == [NO_MTD]
    assert res.n_patients[0].sum() <= 6


# --- operating characteristics ------------------------------------------------------------


@pytest.mark.parametrize("design", ["3+3", "boin", "crm"])
def test_operating_characteristics_sane(design):
    pool = PatientPool.from_probabilities([0.05, 0.12, 0.30, 0.55, 0.70], n_pool=20_000)
    res = designs.run_design(design, pool, target=0.3, n_trials=1000, seed=1)
    oc = res.operating_characteristics()
    s = res.summary()
    assert oc["p_select"].sum() + s["p_no_mtd"] == pytest.approx(1.0)
    assert oc["true_dlt_rate"].tolist() == pytest.approx([0.05, 0.12, 0.30, 0.55, 0.70], abs=0.02)
    assert (oc["true_ci_low"] <= oc["true_dlt_rate"]).all() and (oc["true_ci_high"] >= oc["true_dlt_rate"]).all()
    # the dose nearest the target (or just below, for 3+3) is the most often selected
    best = int(oc["p_select"].idxmax())
    assert best in ((1, 2) if design == "3+3" else (2,))
    assert s["mean_patients"] == pytest.approx(res.n_patients.sum(axis=1).mean())
    if design != "3+3":
        assert s["mean_patients"] <= 30
        assert oc.loc[2, "p_select"] > 0.45


def test_boin_2000_trials_fast_and_paired_over_designs():
    pool = PatientPool.from_probabilities([0.1, 0.2, 0.3, 0.45, 0.6], n_pool=5000)
    t0 = time.perf_counter()
    a = designs.boin(pool, 0.3, n_trials=2000, seed=3)
    assert time.perf_counter() - t0 < 10.0
    b = designs.boin(pool, 0.3, n_trials=2000, seed=3)
    assert np.array_equal(a.selected, b.selected)  # reproducible from the seed


def test_dlt_outcomes_from_patients_and_window():
    patients = pd.DataFrame({"patient_id": [0, 1, 2], "crs_max_grade": [3, 1, 2], "icans_max_grade": [0, 4, 2],
                             "crs_max_grade_penn": [4, 1, 3]})
    d = DLTDefinition()
    assert designs.dlt_outcomes(patients, d).tolist() == [True, True, False]
    d = DLTDefinition(crs_grade=3, icans_grade=None, crs_scale="penn")
    assert designs.dlt_outcomes(patients, d).tolist() == [True, False, True]
    obs = pd.DataFrame({"patient_id": [0, 0, 1, 2, 2], "time_day": [1.0, 20.0, 3.0, 1.0, 15.0],
                        "crs_grade_astct": [1, 3, 1, 0, 3], "icans_grade_astct": [0, 0, 4, 0, 0]})
    d = DLTDefinition(window_days=14.0)
    assert designs.dlt_outcomes(patients, d, obs, simulated_days=28.0).tolist() == [False, True, False]


@pytest.mark.parametrize("n, y, dose, target", [
    ([3, 0, 0, 0], [1, 0, 0, 0], 0, 0.25),
    ([3, 0, 0, 0], [2, 0, 0, 0], 0, 0.25),
    ([6, 3, 0, 0], [1, 1, 0, 0], 0, 0.3),
    ([3, 6, 3, 0], [0, 1, 2, 0], 1, 0.2),
    ([0, 0, 0, 0], [0, 0, 0, 0], 0, 0.3),
])
def test_crm_probability_above_target_matches_quadrature(n, y, dose, target):
    """P(p_dose > target | data), which drives CRM's safety stop, against scipy's adaptive quadrature."""
    scipy_integrate = pytest.importorskip("scipy.integrate")
    skeleton = np.array([0.05, 0.12, 0.25, 0.40])
    n, y = np.asarray(n), np.asarray(y)
    sd = math.sqrt(1.34)

    def post(a):
        ll = -0.5 * (a / sd) ** 2
        for d in range(4):
            logp = math.exp(a) * math.log(skeleton[d])
            ll += (y[d] * logp + (n[d] - y[d]) * math.log1p(-math.exp(logp))) if n[d] else 0.0
        return math.exp(ll)

    cut = math.log(math.log(target) / math.log(skeleton[dose]))  # p_dose(a) > target  <=>  a < cut
    lo, hi = -6 * sd, 6 * sd
    z = scipy_integrate.quad(post, lo, hi, points=[cut], limit=200)[0]
    exact = scipy_integrate.quad(post, lo, cut, limit=200)[0] / z
    got = designs.CRMPosterior(skeleton).prob_above(n, y, dose, target)[0]
    assert got == pytest.approx(exact, abs=1e-4)  # the grid indicator was off by up to 0.027
    # vectorised over trials: each row is its own posterior
    both = designs.CRMPosterior(skeleton).prob_above(np.stack([n, n]), np.stack([y, y]), dose, target)
    assert both.tolist() == pytest.approx([got, got])


def test_three_plus_three_top_dose_needs_six_patients_and_two_dlts_there_make_the_dose_below_the_mtd():
    # d1 0/3, d2 0/3, d3 0/3 -> 3 more at d3 (the top dose is declared only with six patients) -> 2/6 -> MTD d2
    res = designs.three_plus_three(sequence_pool([0] * 9 + [1, 1, 0], 3), n_trials=1, draw="sequential")
    assert res.n_patients[0].tolist() == [3, 3, 6] and res.n_dlt[0].tolist() == [0, 0, 2]
    assert res.selected.tolist() == [1] and not res.early_stop.any()

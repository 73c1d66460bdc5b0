"""The mechanisms as behaviour, on cohorts of a few hundred patients.

Each assertion states a direction and a size; tolerances are set well inside
the effects seen at this cohort size (n = 300, fixed seed), so a broken
mechanism fails while seed noise does not.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from vpop.run import cohort
from vpop.policy.settings import NEVER, PRESETS

N = 300
NO_STEROIDS = dict(dex_crs_trigger_grade=NEVER, dex_crs2_after_toci_doses=NEVER, dex_icans_trigger_grade=NEVER,
                   mp_crs_trigger_grade=NEVER, mp_icans_trigger_grade=NEVER)


@pytest.fixture(scope="module")
def cohorts(default_config):
    cache = {}

    def get(name, config=None, policy=None):
        if name not in cache:
            cfg = config or default_config
            if policy is not None:
                cfg = replace(cfg, policy=policy)
            cache[name] = cohort.simulate(cfg, n=N, seed=0)
        return cache[name]

    return get


def paired_difference(a, b):
    """Mean of a - b over paired patients and its 95 % normal interval (patients with either missing dropped).

    For yes/no outcomes this is the paired difference of proportions: the variance of the per-patient
    difference carries the within-patient correlation, so it is the right interval for same-patient arms.
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[np.isfinite(d)]
    mean, se = d.mean(), d.std(ddof=1) / np.sqrt(len(d))
    return mean, mean - 1.959964 * se, mean + 1.959964 * se


def _with_marginal(config, name, factor):
    spec = config.population
    m = spec.marginals[name]
    marginals = dict(spec.marginals)
    marginals[name] = replace(m, center=m.center * factor)
    return replace(config, population=replace(spec, marginals=marginals))


def _with_dose(config, factor):
    spec = config.population
    return replace(config, population=replace(spec, dose_per_kg=spec.dose_per_kg * factor))


def test_crs_comes_first_and_icans_peaks_in_week_two(cohorts):
    r = cohorts("default")
    pt, ob = r.patients, r.observations
    assert 1.0 <= pt.crs_onset_day.median() <= 5.0
    both = pt.dropna(subset=["crs_onset_day", "icans_onset_day"])
    assert len(both) > 50
    assert (both.icans_onset_day > both.crs_onset_day).mean() >= 0.8
    assert both.icans_onset_day.median() > both.crs_onset_day.median() + 1.0
    icans = ob[ob.icans_grade_astct > 0]
    peak_day = icans.loc[icans.groupby("patient_id").icans_grade_astct.idxmax(), "time_day"]
    assert 5.0 <= peak_day.median() <= 14.0


def test_severe_icans_is_preceded_by_crs(cohorts):
    pt = cohorts("default").patients
    severe = pt[pt.icans_max_grade >= 3]
    assert len(severe) >= 10
    preceded = severe.crs_onset_day.notna() & (severe.crs_onset_day <= severe.icans_onset_day)
    assert preceded.mean() >= 0.95


@pytest.mark.parametrize("covariate", ["tumor_burden", "dose"])
def test_more_tumour_or_more_cells_raise_crs(cohorts, default_config, covariate):
    def cfg(f):
        return _with_dose(default_config, f) if covariate == "dose" else _with_marginal(default_config, "tumor_burden", f)

    low = cohorts(f"{covariate}-low", cfg(1 / 3)).patients
    high = cohorts(f"{covariate}-high", cfg(3.0)).patients
    np.testing.assert_array_equal(low.patient_id, high.patient_id)  # the same patients, 9-fold apart
    # CRS >= 2 rises on the same patients, the interval above zero (n = 300; measured after the IL-1 and
    # CNS mechanisms of issue 12: tumour +0.37 [0.31, 0.42], dose +0.043 [0.020, 0.066]).
    effect, lower, upper = paired_difference(high.crs_max_grade >= 2, low.crs_max_grade >= 2)
    assert lower > 0.0, ("CRS >= 2", effect, lower, upper)
    # Any CRS becomes more frequent on the same patients (n = 300; measured: tumour +0.25 [0.20, 0.30],
    # dose +0.027 [0.008, 0.045]); a mechanism that ignores tumour or dose gives an interval around 0.
    effect, lower, upper = paired_difference(high.crs_max_grade >= 1, low.crs_max_grade >= 1)
    assert lower > 0.0, (effect, lower, upper)
    assert high.peak_il6_pg_ml.median() > 1.15 * low.peak_il6_pg_ml.median()


def _at(ob, times, column):
    """Value of `column` for each patient at the given per-patient times (nearest assessment)."""
    idx = ob.set_index(["patient_id", "time_day"])[column]
    keys = [(pid, round(t * 4) / 4) for pid, t in times.items()]
    return np.array([idx.get(k, np.nan) for k in keys], dtype=float)


def test_tocilizumab_calms_crs_raises_il6_and_spares_icans(cohorts):
    toci = replace(PRESETS["none"], name="toci_only", toci_trigger_grade=1.0)
    treated = cohorts("toci-only", policy=toci)
    untreated = cohorts("none", policy=PRESETS["none"])
    ob_t, ob_u = treated.observations, untreated.observations
    first = ob_t[ob_t.tocilizumab_given].groupby("patient_id").time_day.min() - 0.25  # dose time
    assert len(first) >= 100
    # Fever and hypotension one day after the first dose, same patients untreated.
    fever_t = _at(ob_t, first + 1.0, "temp_c") >= 38.0
    fever_u = _at(ob_u, first + 1.0, "temp_c") >= 38.0
    effect, lower, upper = paired_difference(pd.Series(fever_t), pd.Series(fever_u))
    assert upper < 0.0, (effect, lower, upper)  # less fever a day after the dose, same patients
    # Hypotension after the first dose, same patients untreated. Toci at grade 1 comes a day or more before
    # hypotension would, so the whole rest of the course is compared (measured: -0.10 [-0.14, -0.07]).
    after = ob_t.patient_id.map(first) < ob_t.time_day
    hypo_t = ob_t[after].groupby("patient_id").hypotension.any().reindex(first.index)
    hypo_u = ob_u[ob_u.patient_id.map(first) < ob_u.time_day].groupby("patient_id").hypotension.any().reindex(first.index)
    effect, lower, upper = paired_difference(hypo_t, hypo_u)
    assert upper < 0.0, (effect, lower, upper)
    # CRP falls, serum IL-6 rises (blocked receptor-mediated clearance).
    crp_ratio = _at(ob_t, first + 2.0, "crp_mg_l") / _at(ob_u, first + 2.0, "crp_mg_l")
    il6_ratio = _at(ob_t, first + 0.5, "il6_pg_ml") / _at(ob_u, first + 0.5, "il6_pg_ml")
    assert np.nanmedian(crp_ratio) < 0.7
    assert np.nanmedian(il6_ratio) > 1.5
    # ICANS is not reduced.
    pt_t, pt_u = treated.patients, untreated.patients
    assert (pt_t.icans_max_grade >= 1).mean() >= (pt_u.icans_max_grade >= 1).mean() - 0.02
    assert (pt_t.icans_max_grade >= 3).mean() >= (pt_u.icans_max_grade >= 3).mean() - 0.02


def test_dexamethasone_reduces_icans(cohorts):
    dex = replace(PRESETS["none"], name="dex_only", dex_icans_trigger_grade=1.0)
    treated = cohorts("dex-only", policy=dex).patients
    untreated = cohorts("none", policy=PRESETS["none"]).patients
    assert treated.steroids_given.mean() > 0.3
    assert (treated.icans_max_grade >= 2).mean() <= (untreated.icans_max_grade >= 2).mean() - 0.05
    assert treated.icans_max_grade.mean() < untreated.icans_max_grade.mean()


def test_severe_crs_has_the_laboratory_signature(cohorts):
    # unmanaged, so that enough patients reach grade 3 (the signature does not depend on management)
    pt = cohorts("none", policy=PRESETS["none"]).patients
    severe, mild = pt[pt.crs_max_grade >= 3], pt[pt.crs_max_grade == 1]
    assert len(severe) >= 10 and len(mild) >= 10
    for col in ("peak_il6_pg_ml", "peak_crp_mg_l", "peak_ferritin_ng_ml", "peak_ddimer_mg_l"):
        assert severe[col].median() > 1.1 * mild[col].median(), col
    assert severe.nadir_fibrinogen_g_l.median() < mild.nadir_fibrinogen_g_l.median()


def test_icans_has_the_barrier_and_injury_signature(cohorts):
    pt = cohorts("default").patients
    icans, none = pt[pt.icans_max_grade >= 1], pt[pt.icans_max_grade == 0]
    assert len(icans) >= 30 and len(none) >= 30
    for col in ("peak_csf_serum_albumin_ratio", "peak_csf_protein_mg_l", "peak_nfl_pg_ml",
                "peak_il1ra_pg_ml", "peak_gmcsf_pg_ml"):
        assert icans[col].median() > 1.1 * none[col].median(), col


# Facts of issue 12 (paired patients, standard ASCO 2021 management as the reference arm).

ANAKINRA_DAYS_0_7 = replace(PRESETS["asco2021"], name="anakinra_days_0_7", anakinra_prophylaxis_until_day=7.0)


def test_prophylactic_anakinra_lowers_crs_grade_2(cohorts):
    treated = cohorts("anakinra-0-7", policy=ANAKINRA_DAYS_0_7).patients
    standard = cohorts("default").patients
    assert treated.anakinra_mg.median() == 1500.0  # 100 mg every 12 h, days 0-7
    effect, lower, upper = paired_difference(treated.crs_max_grade >= 2, standard.crs_max_grade >= 2)
    assert upper < 0.0, (effect, lower, upper)  # measured: -0.063 [-0.091, -0.036]
    # ICANS >= 3 (the other half of the published effect) moves by -0.01 to -0.02, its interval touching
    # zero, so it is not asserted either way here; issue 12 tracks it.


@pytest.mark.slow
def test_prophylactic_dexamethasone_lowers_severe_crs():
    """ZUMA-1 cohort 6 (Oluwole 2021): less severe CRS and no more vasopressors with dexamethasone on days 0-2.

    The axi-cel preset under ZUMA-1 cohorts 1-2 management, with and without the prophylaxis, 5,000 paired
    patients. Holds for the right reason, dexamethasone's effect outlasting its plasma level (effect site,
    t1/2 ~1 day): with suppression tied to plasma (t1/2 ~4 h) the storm came later and larger. It failed
    (ASTCT CRS >= 3 -0.2 points, -1.0 to +0.6) while the endothelial sensitivity read the patient's LDH and
    so counted tumour burden twice. With EASIX at a reference LDH and the calibration refitted to that model
    (2026-12-02) it is -0.7 points (-1.2 to -0.1) here and -1.0 (-1.4 to -0.6) on 10,000 patients (seed 1);
    2,000 patients left the interval's upper end at zero. Under ASCO 2021 management the prophylaxis still
    raises it (docs/model.md says why).
    """
    from vpop.policy.settings import with_overrides
    from vpop.run.config import load_config

    config = load_config("axicel")
    prophylaxis = with_overrides(config.policy, {"prophylactic_dex_days": (0.0, 1.0, 2.0)}, name="c12 + dex d0-2")
    treated = cohort.simulate(replace(config, policy=prophylaxis), n=5000, seed=0).patients
    standard = cohort.simulate(config, n=5000, seed=0).patients
    for col in ("crs_max_grade", "crs_max_grade_lee2014"):
        effect, lower, upper = paired_difference(treated[col] >= 3, standard[col] >= 3)
        assert upper < 0.0, (col, effect, lower, upper)
    effect, lower, upper = paired_difference(treated.max_vasopressors >= 1, standard.max_vasopressors >= 1)
    assert effect <= 0.0, (effect, lower, upper)  # no more vasopressor use

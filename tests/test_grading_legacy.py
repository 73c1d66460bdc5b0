"""Legacy CRS and neurotoxicity scales: worked examples and properties (every scale)."""

from __future__ import annotations

import inspect

import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from vpop.grading import (
    CEREBRAL_EDEMA,
    CONSCIOUSNESS,
    CRS_SCALES,
    DEATH_CAUSE,
    NEURO_SCALES,
    O2_DEVICES,
    SEIZURE,
    effective_fio2,
    fio2_from_device,
    high_dose_vasopressors,
)


NAN = float("nan")

# Every input a CRS scale may read, with its "normal" value and dtype.
CRS_INPUTS = {
    "temp_c": (37.0, np.float32),
    "hypotension": (False, np.bool_),
    "vasopressors": (0, np.int32),
    "vasopressin": (False, np.bool_),
    "o2_device": ("none", np.int32),
    "o2_flow_lpm": (NAN, np.float32),
    "fever_waived": (False, np.bool_),
    "death_cause": ("none", np.int32),
    "fio2": (NAN, np.float32),
    "vasopressor_dose_ne": (NAN, np.float32),
    "vasopressor_hours": (0.0, np.float32),
    "creatinine_grade": (0, np.int32),
    "transaminitis_grade": (0, np.int32),
    "organ_toxicity_grade": (0, np.int32),
    "iv_therapy": (False, np.bool_),
    "coagulopathy_treated": (False, np.bool_),
}
NEURO_INPUTS = {
    "ice_score": (10.0, np.float32),
    "consciousness": ("alert", np.int32),
    "seizure": ("none", np.int32),
    "motor_weakness": (False, np.bool_),
    "cerebral_edema": ("none", np.int32),
    "raised_icp_signs": (False, np.bool_),
    "death_cause": ("none", np.int32),
    "age_years": (NAN, np.float32),
    "capd_score": (NAN, np.float32),
    "tremor_grade": (0, np.int32),
    "headache_grade": (0, np.int32),
}
ENUM_OF = {
    "o2_device": O2_DEVICES,
    "death_cause": DEATH_CAUSE,
    "consciousness": CONSCIOUSNESS,
    "seizure": SEIZURE,
    "cerebral_edema": CEREBRAL_EDEMA,
}


def _encode(name, value):
    if name in ENUM_OF and isinstance(value, str):
        return ENUM_OF[name].index(value)
    return value


def _call(fn, inputs, rows):
    """Call `fn` on a batch of rows (list of dicts), passing only the arguments it takes."""
    params = inspect.signature(fn).parameters
    args = {}
    for name, (default, dtype) in inputs.items():
        if name in params:
            args[name] = np.array([_encode(name, r.get(name, default)) for r in rows], dtype=dtype)
    return np.asarray(fn(**args)).tolist()


def crs(scale, **row):
    return _call(CRS_SCALES[scale], CRS_INPUTS, [row])[0]


def neuro(scale, **row):
    return _call(NEURO_SCALES[scale], NEURO_INPUTS, [row])[0]


FEVER = dict(temp_c=38.6)


# ------------------------------------------------------------------- derived inputs


def test_fio2_from_device():
    devices = jnp.arange(len(O2_DEVICES))
    got = np.asarray(fio2_from_device(devices, jnp.full(len(O2_DEVICES), jnp.nan)))
    expected = [0.21, 0.29, 0.29, 0.6, 0.5, 0.8, 0.4, 0.5, 0.5, 0.6]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(fio2_from_device(2, 5.0), 0.41, rtol=1e-6)
    np.testing.assert_allclose(fio2_from_device(2, 30.0), 1.0)
    np.testing.assert_allclose(fio2_from_device(3, 5.0), 0.6)  # high flow ignores flow
    np.testing.assert_allclose(effective_fio2(4, None, jnp.array([0.3, jnp.nan])), [0.3, 0.5], rtol=1e-6)


def test_high_dose_vasopressors():
    # No dose: two pressors, or vasopressin with one pressor.
    assert not bool(high_dose_vasopressors(1, False))
    assert not bool(high_dose_vasopressors(0, True))
    assert bool(high_dose_vasopressors(1, True))
    assert bool(high_dose_vasopressors(2, False))
    # Dose known: >= 20 ug/min NE-equivalent, only when a pressor runs.
    assert bool(high_dose_vasopressors(1, False, 20.0))
    assert not bool(high_dose_vasopressors(2, False, 19.9))
    assert not bool(high_dose_vasopressors(0, False, 50.0))
    assert bool(high_dose_vasopressors(2, False, jnp.nan))


# --------------------------------------------------------------- worked examples


LEE = [
    (dict(), 1),  # fever only
    (dict(hypotension=True), 2),
    (dict(vasopressors=1, vasopressor_dose_ne=10.0), 2),
    (dict(vasopressin=True), 2),  # vasopressin alone: one low-dose pressor
    (dict(vasopressors=1, vasopressor_dose_ne=20.0), 3),  # high dose
    (dict(vasopressors=2, vasopressor_dose_ne=5.0), 3),  # multiple
    (dict(vasopressors=1, vasopressin=True), 3),
    (dict(o2_device="low_flow", o2_flow_lpm=2.0), 2),  # FiO2 0.29
    (dict(o2_device="low_flow", fio2=0.39), 2),
    (dict(o2_device="low_flow", fio2=0.40), 3),
    (dict(o2_device="facemask"), 3),  # default FiO2 0.5
    (dict(o2_device="cpap"), 3),  # positive pressure is not ventilator support
    (dict(o2_device="mechanical_ventilation"), 4),
    (dict(creatinine_grade=2), 2),
    (dict(creatinine_grade=3), 3),
    (dict(creatinine_grade=4), 4),
    (dict(transaminitis_grade=3), 2),
    (dict(transaminitis_grade=4), 3),  # grade 4 transaminitis is 3, not 4
    (dict(organ_toxicity_grade=4), 4),
    (dict(iv_therapy=True, coagulopathy_treated=True), 1),  # Penn-only criteria
]


@pytest.mark.parametrize("row, grade", LEE)
def test_lee2014(row, grade):
    assert crs("lee2014", **FEVER, **row) == grade


CARTOX = [
    (dict(), 1),
    (dict(hypotension=True), 2),
    (dict(vasopressors=1, vasopressor_dose_ne=10.0, hypotension=True), 2),
    (dict(vasopressors=2, vasopressor_dose_ne=5.0, hypotension=True), 3),
    (dict(vasopressors=1, vasopressor_dose_ne=25.0, hypotension=False), 3),
    (dict(vasopressors=1, vasopressor_dose_ne=25.0, hypotension=True), 4),  # life-threatening
    (dict(fio2=0.35, o2_device="facemask"), 2),
    (dict(fio2=0.45, o2_device="facemask"), 3),
    (dict(o2_device="mechanical_ventilation"), 4),
    (dict(organ_toxicity_grade=2), 2),
    (dict(transaminitis_grade=4), 3),
    (dict(creatinine_grade=4), 4),
]


@pytest.mark.parametrize("row, grade", CARTOX)
def test_cartox(row, grade):
    assert crs("cartox", **FEVER, **row) == grade


def test_cartox_grade_1_organ_toxicity_without_fever_once_waived():
    assert crs("cartox", temp_c=37.0, fever_waived=True, organ_toxicity_grade=1) == 1
    assert crs("cartox", temp_c=37.0, fever_waived=True) == 0


PENN = [
    (dict(), 1),
    (dict(hypotension=True), 2),
    (dict(iv_therapy=True), 2),
    (dict(creatinine_grade=2), 2),
    (dict(transaminitis_grade=3), 2),
    (dict(transaminitis_grade=2), 1),
    (dict(creatinine_grade=3), 3),
    (dict(transaminitis_grade=4), 3),
    (dict(organ_toxicity_grade=3), 3),
    (dict(vasopressors=1, vasopressor_dose_ne=5.0, hypotension=True), 3),
    (dict(vasopressin=True), 3),
    (dict(coagulopathy_treated=True), 3),
    (dict(o2_device="low_flow", o2_flow_lpm=1.0), 3),  # any supplemental O2
    (dict(o2_device="bipap"), 3),
    (dict(vasopressors=1, vasopressor_dose_ne=20.0), 4),
    (dict(vasopressors=2), 4),  # high dose by default
    (dict(o2_device="mechanical_ventilation"), 4),
    (dict(creatinine_grade=4), 4),
]


@pytest.mark.parametrize("row, grade", PENN)
def test_penn(row, grade):
    assert crs("penn", **FEVER, **row) == grade


MSKCC = [
    (dict(), 1),
    (dict(hypotension=True), 1),  # fluids only: supportive care
    (dict(vasopressors=1, vasopressor_hours=2.0, hypotension=True), 2),
    (dict(vasopressors=1, vasopressor_hours=23.9, hypotension=True), 2),
    (dict(vasopressors=1, vasopressor_hours=24.0, hypotension=True), 3),
    (dict(vasopressin=True, vasopressor_hours=30.0), 3),
    (dict(vasopressors=2, hypotension=True, vasopressor_hours=1.0), 4),  # refractory to high dose
    (dict(vasopressors=2, hypotension=False, vasopressor_hours=1.0), 2),
    (dict(o2_device="low_flow", fio2=0.39), 2),
    (dict(o2_device="venturi"), 3),  # FiO2 0.4
    (dict(o2_device="mechanical_ventilation"), 4),
    (dict(creatinine_grade=4, organ_toxicity_grade=4), 1),  # organ toxicity not in MSKCC
]


@pytest.mark.parametrize("row, grade", MSKCC)
def test_mskcc(row, grade):
    assert crs("mskcc", **FEVER, **row) == grade


CTCAE5 = [
    (dict(), 1),
    (dict(hypotension=True), 2),
    (dict(vasopressors=1), 3),
    (dict(vasopressin=True), 3),
    (dict(vasopressors=1, vasopressin=True), 3),
    (dict(vasopressors=2), 4),
    (dict(o2_device="low_flow", o2_flow_lpm=3.0), 2),
    (dict(o2_device="facemask"), 3),
    (dict(o2_device="mechanical_ventilation"), 4),
    (dict(creatinine_grade=4), 1),  # organ toxicity graded separately
]


@pytest.mark.parametrize("row, grade", CTCAE5)
def test_ctcae5(row, grade):
    assert crs("ctcae5", **FEVER, **row) == grade


@pytest.mark.parametrize("scale", [s for s in CRS_SCALES])
def test_crs_scales_need_crs_present_and_grade_5_for_crs_death(scale):
    severe = dict(hypotension=True, vasopressors=2, o2_device="mechanical_ventilation", creatinine_grade=4)
    assert crs(scale, temp_c=37.9, **severe) == 0
    assert crs(scale, temp_c=38.0) == 1
    assert crs(scale, temp_c=37.0, fever_waived=True, **severe) == 4
    assert crs(scale, temp_c=37.0, death_cause="crs") == 5
    assert crs(scale, temp_c=39.0, death_cause="icans") < 5


CARTOX_NEURO = [
    (dict(ice_score=9.0), 1),
    (dict(ice_score=7.0), 1),
    (dict(ice_score=6.0), 2),
    (dict(ice_score=3.0), 2),
    (dict(ice_score=2.0), 3),
    (dict(ice_score=0.0), 3),
    (dict(ice_score=NAN), 0),
    (dict(consciousness="awakens_to_voice"), 0),  # enters via CARTOX-10 only
    (dict(consciousness="unarousable", ice_score=NAN), 4),
    (dict(seizure="rapidly_resolving"), 3),
    (dict(seizure="prolonged_or_repetitive"), 4),
    (dict(cerebral_edema="focal"), 4),
    (dict(cerebral_edema="diffuse"), 4),
    (dict(raised_icp_signs=True), 4),
    (dict(motor_weakness=True), 4),
    (dict(tremor_grade=3, headache_grade=3), 0),
    (dict(age_years=6.0, capd_score=9.0), 3),
    (dict(age_years=6.0, capd_score=8.0, ice_score=0.0), 0),
    (dict(death_cause="icans"), 5),
    (dict(death_cause="crs"), 0),
]


@pytest.mark.parametrize("row, grade", CARTOX_NEURO)
def test_neuro_cartox(row, grade):
    assert neuro("cartox", **row) == grade


CTCAE_NEURO = [
    (dict(ice_score=8.0), 1),
    (dict(ice_score=4.0), 2),
    (dict(ice_score=1.0), 3),
    (dict(consciousness="awakens_spontaneously"), 1),
    (dict(consciousness="awakens_to_voice"), 2),
    (dict(consciousness="awakens_to_touch"), 3),
    (dict(consciousness="unarousable"), 4),
    (dict(seizure="rapidly_resolving"), 3),
    (dict(seizure="prolonged_or_repetitive"), 4),
    (dict(motor_weakness=True), 3),
    (dict(cerebral_edema="focal"), 4),
    (dict(raised_icp_signs=True), 4),
    (dict(tremor_grade=2), 2),
    (dict(tremor_grade=3), 3),
    (dict(headache_grade=3), 0),  # recorded, not a neurologic event (as the trials counted them)
    (dict(tremor_grade=1, ice_score=5.0), 2),
    (dict(tremor_grade=2, ice_score=9.0), 2),
    (dict(age_years=11.9, capd_score=9.0), 3),
    (dict(age_years=12.0, capd_score=9.0), 0),
    (dict(death_cause="icans"), 5),
]


@pytest.mark.parametrize("row, grade", CTCAE_NEURO)
def test_neuro_ctcae(row, grade):
    assert neuro("ctcae", **row) == grade


# ------------------------------------------------------------------- properties


def _finite(lo, hi):
    return st.floats(lo, hi, allow_nan=False)


def _mostly(normal, strategy):
    """Normal half of the time, so that single worsenings are not masked by other findings."""
    return st.one_of(st.just(normal), strategy)


def crs_rows():
    return st.fixed_dictionaries(
        {
            "temp_c": _finite(35.0, 41.0),
            "hypotension": st.booleans(),
            "vasopressors": _mostly(0, st.integers(0, 3)),
            "vasopressin": _mostly(False, st.booleans()),
            "o2_device": _mostly("none", st.sampled_from(O2_DEVICES)),
            "o2_flow_lpm": st.one_of(st.just(NAN), _finite(0.0, 15.0)),
            "fever_waived": st.booleans(),
            "death_cause": st.sampled_from(("none", "other")),
            "fio2": st.one_of(st.just(NAN), _finite(0.21, 1.0)),
            "vasopressor_dose_ne": st.one_of(st.just(NAN), _finite(0.0, 60.0)),
            "vasopressor_hours": _finite(0.0, 72.0),
            "creatinine_grade": _mostly(0, st.integers(0, 4)),
            "transaminitis_grade": _mostly(0, st.integers(0, 4)),
            "organ_toxicity_grade": _mostly(0, st.integers(0, 4)),
            "iv_therapy": _mostly(False, st.booleans()),
            "coagulopathy_treated": _mostly(False, st.booleans()),
        }
    )


def _worsen_crs(row, finding, amount):
    """A copy of `row` with one finding made worse (or equal), or None if it cannot be."""
    r = dict(row)
    v = r[finding]
    if finding in ("hypotension", "vasopressin", "fever_waived", "iv_therapy", "coagulopathy_treated"):
        r[finding] = True
    elif finding == "vasopressors":
        r[finding] = v + 1 + int(amount) % 2
    elif finding == "o2_device":
        i = O2_DEVICES.index(v)
        r[finding] = O2_DEVICES[min(len(O2_DEVICES) - 1, i + 1 + int(amount) % 3)]
    elif finding == "death_cause":
        r[finding] = "crs"
    elif finding.endswith("_grade"):
        r[finding] = min(4, v + 1 + int(amount) % 2)
    else:  # temp, flow, fio2, dose, hours
        if v != v:  # NaN: missing, no order
            return None
        hi = {"temp_c": 41.5, "fio2": 1.0}.get(finding, 100.0)
        r[finding] = min(hi, v + amount)
    return r


def _check_monotone(scales, inputs, row, worsened):
    """Grade `row` and each of its single-finding worsenings in one call per scale."""
    cases = [(f, w) for f, w in worsened if w is not None]
    for scale, fn in scales.items():
        grades = _call(fn, inputs, [row] + [w for _, w in cases])
        for (finding, worse), after in zip(cases, grades[1:]):
            assert after >= grades[0], (scale, finding, row, worse)


@settings(max_examples=300, deadline=None)
@given(row=crs_rows(), amount=st.floats(0.0, 30.0, allow_nan=False))
def test_crs_worsening_one_finding_never_lowers_grade(row, amount):
    worsened = [(f, _worsen_crs(row, f, amount)) for f in CRS_INPUTS]
    _check_monotone(CRS_SCALES, CRS_INPUTS, row, worsened)


@settings(max_examples=60, deadline=None)
@given(
    temp=_finite(35.0, 37.9),
    waived=st.booleans(),
    fio2=st.sampled_from([NAN, 0.21]),
    dose=st.sampled_from([NAN, 0.0, 50.0]),
    hours=_finite(0.0, 100.0),
    death=st.sampled_from(("none", "other")),
    febrile=st.booleans(),
)
def test_crs_all_findings_normal_is_grade_0(temp, waived, fio2, dose, hours, death, febrile):
    row = dict(
        temp_c=temp, fever_waived=waived, fio2=fio2, vasopressor_dose_ne=dose,
        vasopressor_hours=hours, death_cause=death,
    )
    for scale, fn in CRS_SCALES.items():
        assert _call(fn, CRS_INPUTS, [row]) == [0], scale
        if febrile:  # fever alone is grade 1 on every scale
            assert _call(fn, CRS_INPUTS, [{**row, "temp_c": 38.0}]) == [1], scale


def neuro_rows():
    return st.fixed_dictionaries(
        {
            "ice_score": st.one_of(st.just(NAN), st.just(10.0), st.integers(0, 10).map(float)),
            "consciousness": _mostly("alert", st.sampled_from(CONSCIOUSNESS)),
            "seizure": _mostly("none", st.sampled_from(SEIZURE)),
            "motor_weakness": _mostly(False, st.booleans()),
            "cerebral_edema": _mostly("none", st.sampled_from(CEREBRAL_EDEMA)),
            "raised_icp_signs": _mostly(False, st.booleans()),
            "death_cause": st.sampled_from(("none", "other", "crs")),
            "age_years": st.sampled_from([NAN, 2.0, 11.9, 12.0, 40.0]),
            "capd_score": st.one_of(st.just(NAN), st.integers(0, 32).map(float)),
            "tremor_grade": _mostly(0, st.integers(0, 3)),
            "headache_grade": _mostly(0, st.integers(0, 3)),
        }
    )


def _worsen_neuro(row, finding, step):
    r = dict(row)
    v = r[finding]
    if finding in ("motor_weakness", "raised_icp_signs"):
        r[finding] = True
    elif finding in ("consciousness", "seizure", "cerebral_edema"):
        enum = ENUM_OF[finding]
        r[finding] = enum[min(len(enum) - 1, enum.index(v) + 1 + step % 2)]
    elif finding == "death_cause":
        r[finding] = "icans"
    elif finding == "ice_score":
        if v != v:
            return None
        r[finding] = float(max(0, v - 1 - step))
    elif finding == "capd_score":
        if v != v:
            return None
        r[finding] = float(min(32, v + 1 + step))
    elif finding in ("tremor_grade", "headache_grade"):
        r[finding] = min(3, v + 1)
    else:  # age is not a finding
        return None
    return r


@settings(max_examples=300, deadline=None)
@given(row=neuro_rows(), step=st.integers(0, 5))
def test_neuro_worsening_one_finding_never_lowers_grade(row, step):
    worsened = [(f, _worsen_neuro(row, f, step)) for f in NEURO_INPUTS]
    _check_monotone(NEURO_SCALES, NEURO_INPUTS, row, worsened)


@settings(max_examples=60, deadline=None)
@given(
    ice=st.sampled_from([NAN, 10.0]),
    age=st.sampled_from([NAN, 3.0, 11.9, 12.0, 70.0]),
    capd=st.one_of(st.just(NAN), st.integers(0, 8).map(float)),
    death=st.sampled_from(("none", "other", "crs")),
)
def test_neuro_all_findings_normal_is_grade_0(ice, age, capd, death):
    row = dict(ice_score=ice, age_years=age, capd_score=capd, death_cause=death)
    for scale, fn in NEURO_SCALES.items():
        assert _call(fn, NEURO_INPUTS, [row]) == [0], scale

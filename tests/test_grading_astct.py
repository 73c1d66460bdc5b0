"""ASTCT CRS and ICANS grading, ICE score and the fever-waiver latch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vpop.grading import (
    CEREBRAL_EDEMA,
    CONSCIOUSNESS,
    DEATH_CAUSE,
    ICE_ITEMS,
    O2_DEVICES,
    SEIZURE,
    crs_fever_waiver,
    crs_fever_waiver_step,
    crs_grade_astct,
    crs_treated,
    icans_grade_astct,
    ice_score,
)


NAN = float("nan")


def crs(
    temp_c=37.0,
    hypotension=False,
    vasopressors=0,
    vasopressin=False,
    o2_device="none",
    o2_flow_lpm=NAN,
    fever_waived=False,
    death_cause="none",
):
    """ASTCT CRS grade of one row, inputs given by name (fixed dtypes: one trace)."""
    g = crs_grade_astct(
        temp_c=np.float32(temp_c),
        hypotension=np.bool_(hypotension),
        vasopressors=np.int32(vasopressors),
        vasopressin=np.bool_(vasopressin),
        o2_device=np.int32(O2_DEVICES.index(o2_device)),
        o2_flow_lpm=np.float32(o2_flow_lpm),
        fever_waived=np.bool_(fever_waived),
        death_cause=np.int32(DEATH_CAUSE.index(death_cause)),
    )
    return int(g)


def icans(
    ice=10.0,
    consciousness="alert",
    seizure="none",
    motor_weakness=False,
    cerebral_edema="none",
    raised_icp_signs=False,
    death_cause="none",
    age_years=NAN,
    capd_score=NAN,
):
    g = icans_grade_astct(
        ice_score=np.float32(ice),
        consciousness=np.int32(CONSCIOUSNESS.index(consciousness)),
        seizure=np.int32(SEIZURE.index(seizure)),
        motor_weakness=np.bool_(motor_weakness),
        cerebral_edema=np.int32(CEREBRAL_EDEMA.index(cerebral_edema)),
        raised_icp_signs=np.bool_(raised_icp_signs),
        death_cause=np.int32(DEATH_CAUSE.index(death_cause)),
        age_years=np.float32(age_years),
        capd_score=np.float32(capd_score),
    )
    return int(g)


# ----------------------------------------------------------------------------- CRS


def test_fever_threshold_is_38_0():
    assert crs(temp_c=37.9) == 0
    assert crs(temp_c=38.0) == 1
    assert crs(temp_c=40.5) == 1


def test_no_fever_no_crs_even_with_hypotension_and_oxygen():
    assert crs(temp_c=37.0, hypotension=True, vasopressors=2, o2_device="bipap") == 0


@pytest.mark.parametrize(
    "kwargs, grade",
    [
        (dict(hypotension=True), 2),
        (dict(hypotension=True, vasopressin=True), 3),  # vasopressin alone: "a vasopressor"
        (dict(vasopressin=True), 3),
        (dict(hypotension=True, vasopressors=1), 3),
        (dict(hypotension=True, vasopressors=1, vasopressin=True), 3),  # R6
        (dict(hypotension=True, vasopressors=2), 4),
        (dict(hypotension=True, vasopressors=2, vasopressin=True), 4),
        (dict(hypotension=True, vasopressors=3), 4),
    ],
)
def test_hypotension_levels(kwargs, grade):
    assert crs(temp_c=38.5, **kwargs) == grade


@pytest.mark.parametrize(
    "device, flow, grade",
    [
        ("none", NAN, 1),
        ("blow_by", NAN, 2),
        ("low_flow", NAN, 2),  # unknown flow counts as <= 6 L/min
        ("low_flow", 1.0, 2),
        ("low_flow", 6.0, 2),
        ("low_flow", 7.0, 3),
        ("high_flow", 2.0, 3),
        ("high_flow", NAN, 3),
        ("facemask", NAN, 3),
        ("nonrebreather", NAN, 3),
        ("venturi", NAN, 3),
        ("cpap", NAN, 4),
        ("bipap", NAN, 4),
        ("mechanical_ventilation", NAN, 4),
    ],
)
def test_each_oxygen_device(device, flow, grade):
    assert crs(temp_c=38.2, o2_device=device, o2_flow_lpm=flow) == grade


def test_more_severe_of_hypotension_and_hypoxia():
    # R3 example: febrile, one vasopressor plus low-flow cannula -> grade 3.
    assert crs(temp_c=39, vasopressors=1, o2_device="low_flow", o2_flow_lpm=2) == 3
    assert crs(temp_c=39, hypotension=True, o2_device="cpap") == 4


def test_fever_waived_grades_by_hypotension_and_hypoxia():
    assert crs(temp_c=37.0, hypotension=True, fever_waived=True) == 2
    assert crs(temp_c=37.0, o2_device="facemask", fever_waived=True) == 3
    assert crs(temp_c=37.0, fever_waived=True) == 0
    assert crs(temp_c=38.0, fever_waived=True) == 1


@pytest.mark.parametrize("cause, grade", [("crs", 5), ("icans", 0), ("other", 0), ("none", 0)])
def test_grade_5_only_for_death_from_crs(cause, grade):
    assert crs(temp_c=37.0, death_cause=cause) == grade


def test_dtype_agnostic_float32_and_float64():
    temps = [37.9, 38.0]
    out = crs_grade_astct(temp_c=jnp.asarray(temps, jnp.float32), hypotension=False, vasopressors=0)
    assert out.tolist() == [0, 1] and out.dtype == jnp.int32
    with jax.enable_x64(True):
        out = crs_grade_astct(
            temp_c=jnp.asarray(np.array([38.0, 38.0], np.float64)),
            hypotension=False,
            vasopressors=0,
            o2_device=jnp.asarray([2, 2]),
            o2_flow_lpm=jnp.asarray(np.array([6.0, 6.000001])),
        )
        assert out.tolist() == [2, 3]
        out = crs_grade_astct(temp_c=jnp.asarray(np.array(temps)), hypotension=False, vasopressors=0)
        assert out.tolist() == [0, 1]


def test_broadcasting_and_vmap():
    out = crs_grade_astct(
        temp_c=jnp.array([[37.0], [39.0]]), hypotension=jnp.array([False, True]), vasopressors=0
    )
    assert out.shape == (2, 2) and out.tolist() == [[0, 0], [1, 2]]
    vm = jax.vmap(lambda t, h: crs_grade_astct(temp_c=t, hypotension=h, vasopressors=0))
    assert vm(jnp.array([38.0, 37.0]), jnp.array([True, True])).tolist() == [2, 0]


# ------------------------------------------------------------------ fever waiver (R2)


def _latch_loop(g_req, treated, patient):
    """Reference: the scalar step run patient by patient, in order."""
    out = np.zeros(len(g_req), bool)
    waived = seen = False
    for i in range(len(g_req)):
        if i == 0 or patient[i] != patient[i - 1]:
            waived = seen = False
        w, s = crs_fever_waiver_step(waived, seen, g_req[i], treated[i])
        waived, seen = bool(w), bool(s)
        out[i] = waived
    return out


def _grade_sequence(temp, hyp, toci, antipyretic=None, patient=None):
    n = len(temp)
    antipyretic = np.zeros(n, bool) if antipyretic is None else np.asarray(antipyretic)
    patient = np.zeros(n, np.int32) if patient is None else np.asarray(patient)
    g_req = crs_grade_astct(temp_c=np.asarray(temp, np.float32), hypotension=np.asarray(hyp), vasopressors=0)
    waived = crs_fever_waiver(g_req, antipyretic, np.asarray(toci), np.zeros(n, bool), patient)
    grade = crs_grade_astct(
        temp_c=np.asarray(temp, np.float32), hypotension=np.asarray(hyp), vasopressors=0, fever_waived=waived
    )
    return np.asarray(grade).tolist(), np.asarray(waived).tolist()


def test_fever_required_until_treated_after_crs():
    temp = [39.0, 37.0, 37.0, 37.0, 37.0]
    hyp = [True, True, True, False, True]
    toci = [False, False, True, True, True]
    grade, waived = _grade_sequence(temp, hyp, toci)
    # Row 1: CRS seen but not yet treated -> fever still required -> 0.
    # Row 2: tocilizumab given at or before this row -> waived -> hypotension grades 2.
    assert waived == [False, False, True, True, True]
    assert grade == [2, 0, 2, 0, 2]


def test_antipyretics_also_waive_fever():
    temp = [38.5, 37.0, 37.0]
    hyp = [False, True, True]
    grade, _ = _grade_sequence(temp, hyp, toci=[False] * 3, antipyretic=[False, False, True])
    assert grade == [1, 0, 2]


def test_treatment_without_crs_does_not_waive_fever():
    temp = [37.0, 37.0, 37.0]
    hyp = [True, True, True]
    grade, waived = _grade_sequence(temp, hyp, toci=[True, True, True])
    assert grade == [0, 0, 0] and waived == [False] * 3


def test_waiver_does_not_leak_between_patients():
    temp = [39.0, 37.0, 37.0, 37.0]
    hyp = [True, True, True, True]
    toci = [True, True, True, True]
    grade, waived = _grade_sequence(temp, hyp, toci, patient=[0, 0, 1, 1])
    assert waived == [True, True, False, False]
    assert grade == [2, 2, 0, 0]


def test_vectorised_waiver_equals_scalar_step():
    rng = np.random.default_rng(1)
    n = 400
    patient = np.sort(rng.integers(0, 30, n))
    g_req = rng.choice([0, 0, 0, 1, 2, 3], n)
    toci = rng.uniform(size=n) < 0.15
    anti = rng.uniform(size=n) < 0.1
    ster = rng.uniform(size=n) < 0.05
    vec = np.asarray(crs_fever_waiver(g_req, anti, toci, ster, patient))
    treated = np.asarray(crs_treated(anti, toci, ster))
    assert vec.tolist() == _latch_loop(g_req, treated, patient).tolist()
    assert vec.any() and not vec.all()


def test_scalar_step_in_jitted_vmapped_scan_matches_table_form():
    """The simulator's form: latch in a scan carry, one patient per vmap lane."""
    rng = np.random.default_rng(3)
    n_pat, n_t = 6, 12
    temp = rng.choice([37.0, 38.5], (n_pat, n_t)).astype(np.float32)
    hyp = rng.uniform(size=(n_pat, n_t)) < 0.5
    toci = np.cumsum(rng.uniform(size=(n_pat, n_t)) < 0.2, axis=1) > 0

    def one_patient(temp, hyp, toci):
        def step(carry, x):
            waived, seen = carry
            t, h, tz = x
            g_req = crs_grade_astct(temp_c=t, hypotension=h, vasopressors=0)
            waived, seen = crs_fever_waiver_step(waived, seen, g_req, crs_treated(tocilizumab_given=tz))
            return (waived, seen), crs_grade_astct(temp_c=t, hypotension=h, vasopressors=0, fever_waived=waived)

        return jax.lax.scan(step, (jnp.bool_(False), jnp.bool_(False)), (temp, hyp, toci))[1]

    scanned = jax.jit(jax.vmap(one_patient))(temp, hyp, toci)
    patient = np.repeat(np.arange(n_pat), n_t)
    flat = [a.reshape(-1) for a in (temp, hyp, toci)]
    g_req = crs_grade_astct(temp_c=flat[0], hypotension=flat[1], vasopressors=0)
    waived = crs_fever_waiver(g_req, False, flat[2], False, patient)
    table = crs_grade_astct(temp_c=flat[0], hypotension=flat[1], vasopressors=0, fever_waived=waived)
    assert np.asarray(scanned).reshape(-1).tolist() == np.asarray(table).tolist()
    assert np.asarray(waived).any()


# ---------------------------------------------------------------------------- ICE


def test_ice_score_counts_items():
    assert len(ICE_ITEMS) == 10
    ones = {k: True for k in ICE_ITEMS}
    assert int(ice_score(**ones)) == 10
    assert int(ice_score(**{k: 0 for k in ICE_ITEMS})) == 0
    some = {k: (i % 3 == 0) for i, k in enumerate(ICE_ITEMS)}  # items 0,3,6,9
    assert int(ice_score(**some)) == 4
    batch = {k: jnp.array([1, 0, 1]) for k in ICE_ITEMS}
    batch["counts_back"] = jnp.array([0, 0, 1])
    assert ice_score(**batch).tolist() == [9, 0, 10]


# -------------------------------------------------------------------------- ICANS


@pytest.mark.parametrize(
    "ice, grade", [(10, 0), (9, 1), (8, 1), (7, 1), (6, 2), (5, 2), (3, 2), (2, 3), (1, 3), (0, 3), (NAN, 0)]
)
def test_ice_bands(ice, grade):
    assert icans(ice=ice) == grade


def test_ice_zero_awake_vs_unarousable():
    assert icans(ice=0, consciousness="alert") == 3
    assert icans(ice=0, consciousness="unarousable") == 4


@pytest.mark.parametrize("level, grade", list(zip(CONSCIOUSNESS, [0, 1, 2, 3, 4])))
def test_each_consciousness_level(level, grade):
    assert icans(consciousness=level) == grade


@pytest.mark.parametrize("kind, grade", [("none", 0), ("rapidly_resolving", 3), ("prolonged_or_repetitive", 4)])
def test_seizures(kind, grade):
    assert icans(seizure=kind) == grade


def test_seizure_with_ice_takes_worst():
    assert icans(ice=3, seizure="rapidly_resolving") == 3  # N1 example


@pytest.mark.parametrize("edema, grade", [("none", 0), ("focal", 3), ("diffuse", 4)])
def test_cerebral_edema(edema, grade):
    assert icans(cerebral_edema=edema) == grade


def test_motor_weakness_and_raised_icp():
    assert icans(motor_weakness=True) == 4
    assert icans(raised_icp_signs=True) == 4


@pytest.mark.parametrize("cause, grade", [("icans", 5), ("crs", 0), ("other", 0)])
def test_grade_5_only_for_death_from_icans(cause, grade):
    assert icans(death_cause=cause) == grade


def test_pediatric_capd_threshold_and_age_boundary():
    assert icans(age_years=11.9, capd_score=9) == 3
    assert icans(age_years=11.9, capd_score=8) == 0  # CAPD 1-8 alone does not grade
    assert icans(age_years=11.9, capd_score=8, consciousness="awakens_to_voice") == 2
    assert icans(age_years=11.9, capd_score=NAN) == 0
    # Children: ICE is not used.
    assert icans(age_years=11.9, ice=2, capd_score=0) == 0
    # Exactly 12.0 is adult: ICE used, CAPD ignored.
    assert icans(age_years=12.0, ice=10, capd_score=20) == 0
    assert icans(age_years=12.0, ice=2, capd_score=0) == 3
    # Unknown age is adult.
    assert icans(age_years=NAN, ice=5, capd_score=20) == 2
    # Unarousable child is 4 through consciousness.
    assert icans(age_years=5.0, consciousness="unarousable") == 4


def test_icans_without_optional_arguments():
    out = icans_grade_astct(ice_score=jnp.array([10.0, 2.0]), consciousness=jnp.array([0, 0]))
    assert out.tolist() == [0, 3]

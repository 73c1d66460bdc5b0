"""ASTCT consensus grading of CRS and ICANS, row by row, in `jax.numpy`.

Every function here is pure and elementwise: it takes arrays of any shape
(they broadcast), does no Python branching on values, and so works on one
patient's scalars inside a jitted, vmapped simulator as well as on whole
columns of an observation table. Categorical inputs are the integer codes of
`vpop.observation.encoding`. Missing numbers are NaN.

**References:** Lee DW, Santomasso BD, Locke FL, et al. ASTCT consensus
grading for cytokine release syndrome and neurologic toxicity associated with
immune effector cells. *Biol Blood Marrow Transplant* 2019;25(4):625–638.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vpop.observation import encoding as enc  #: Temperature at or above which a patient has fever (°C).
FEVER_C = 38.0
#: Flow above which a nasal cannula counts as high flow (L/min).
LOW_FLOW_MAX_LPM = 6.0
#: Below this age (years) ICANS is graded with CAPD instead of ICE.
PEDIATRIC_AGE_YEARS = 12.0
#: CAPD score at or above which a child is graded ICANS 3.
CAPD_DELIRIUM = 9

# ASTCT hypoxia level by oxygen device (low_flow above 6 L/min is raised to 3).
_HYPOXIA_LEVEL = np.array([0, 2, 2, 3, 3, 3, 3, 4, 4, 4], np.int32)
_SEIZURE_LEVEL = np.array([0, 3, 4], np.int32)
_EDEMA_LEVEL = np.array([0, 3, 4], np.int32)


def as_bool(x) -> jax.Array:
    return jnp.asarray(x) != 0


def as_float(x) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def as_code(x) -> jax.Array:
    return jnp.asarray(x).astype(jnp.int32)


def missing_as_nan(x):
    """None (column absent) becomes NaN."""
    return jnp.asarray(jnp.nan) if x is None else as_float(x)


def fever(temp_c) -> jax.Array:
    """True where `temp_c` ≥ 38.0 °C (NaN is no fever)."""
    return as_float(temp_c) >= FEVER_C


def hypotension_level(hypotension, vasopressors, vasopressin=False) -> jax.Array:
    """ASTCT hypotension level (0, 2, 3 or 4), before the fever gate.

    * 4: two or more vasopressors other than vasopressin;
    * 3: one vasopressor (with or without vasopressin), or vasopressin alone
      (vpop counts vasopressin alone as "a vasopressor");
    * 2: hypotension without any vasopressor;
    * 0: no hypotension and no vasopressor.

    A running vasopressor implies hypotension, whatever `hypotension` says.
    """
    n = jnp.asarray(vasopressors)
    return jnp.where(
        n >= 2,
        4,
        jnp.where((n >= 1) | as_bool(vasopressin), 3, jnp.where(as_bool(hypotension), 2, 0)),
    ).astype(jnp.int32)


def hypoxia_level(o2_device, o2_flow_lpm=None) -> jax.Array:
    """ASTCT hypoxia level (0, 2, 3 or 4) from the oxygen device, before the fever gate.

    Blow-by and low-flow cannula ≤ 6 L/min are 2; a low-flow cannula above
    6 L/min, high-flow cannula, facemask, non-rebreather and Venturi mask are 3;
    CPAP, BiPAP and mechanical ventilation are 4. A missing (NaN) flow on a
    low-flow cannula is taken as ≤ 6 L/min.
    """
    device = as_code(o2_device)
    level = jnp.asarray(_HYPOXIA_LEVEL)[device]
    if o2_flow_lpm is not None:
        high = (device == enc.O2_LOW_FLOW) & (as_float(o2_flow_lpm) > LOW_FLOW_MAX_LPM)
        level = jnp.where(high, 3, level)
    return level.astype(jnp.int32)


@jax.jit
def crs_grade_astct(
    temp_c,
    hypotension,
    vasopressors,
    vasopressin=False,
    o2_device=0,
    o2_flow_lpm=None,
    fever_waived=False,
    death_cause=0,
) -> jax.Array:
    """ASTCT CRS grade (0–5) per row.

    Grade = max(hypotension level, hypoxia level), and at least 1, when the
    patient has fever (≥ 38.0 °C); 0 without fever, unless `fever_waived`
    (ASTCT: fever is no longer needed once CRS has been treated with
    antipyretic or anti-cytokine therapy; see `crs_fever_waiver_step`), in
    which case grade = max(hypotension level, hypoxia level). Death from CRS
    (`death_cause == DEATH_CRS`) is 5.

    **Arguments:**

    - `temp_c`: highest temperature since the previous assessment, °C.
    - `hypotension`: bool, hypotension present.
    - `vasopressors`: number of vasopressors running, not counting vasopressin.
    - `vasopressin`: bool, vasopressin running.
    - `o2_device`: `O2_DEVICES` code.
    - `o2_flow_lpm`: oxygen flow, L/min; NaN or None when unknown.
    - `fever_waived`: bool, the ASTCT rule R2 latch for this row.
    - `death_cause`: `DEATH_CAUSE` code.

    **Returns:** int32 array of grades, broadcast shape of the inputs.
    """
    organ = jnp.maximum(
        hypotension_level(hypotension, vasopressors, vasopressin),
        hypoxia_level(o2_device, o2_flow_lpm),
    )
    febrile = fever(temp_c)
    grade = jnp.where(febrile, jnp.maximum(organ, 1), jnp.where(as_bool(fever_waived), organ, 0))
    return jnp.where(as_code(death_cause) == enc.DEATH_CRS, 5, grade).astype(jnp.int32)


def crs_treated(antipyretics_given=False, tocilizumab_given=False, steroids_given=False):
    """True where antipyretic or anti-cytokine therapy (tocilizumab, steroids) has been given."""
    return as_bool(antipyretics_given) | as_bool(tocilizumab_given) | as_bool(steroids_given)


def crs_fever_waiver_step(fever_waived, crs_seen, crs_grade_fever_required, treated):
    """Update the ASTCT fever-waiver latch for one assessment (scalar-friendly form).

    This is the form a simulator keeps in its own loop carry. For one patient,
    with `fever_waived` and `crs_seen` both False before the first assessment,
    at each assessment in time order:

    ```python
    g_req = crs_grade_astct(..., fever_waived=False)
    fever_waived, crs_seen = crs_fever_waiver_step(fever_waived, crs_seen, g_req, treated)
    grade = crs_grade_astct(..., fever_waived=fever_waived)
    ```

    where `treated = crs_treated(antipyretics_given, tocilizumab_given,
    steroids_given)` at this assessment. The update is

    ```
    crs_seen     <- crs_seen | (g_req >= 1)
    fever_waived <- fever_waived | (crs_seen & treated)
    ```

    so fever stops being required from the first assessment at which (a) some
    assessment up to and including this one was graded ≥ 1 with fever required
    and (b) treatment is flagged as given at or before this assessment; once
    set it stays set. The latch applies to the grade of that same assessment
    (treatment given before the assessment may already have broken the fever).
    `crs_fever_waiver` computes exactly the same flags for whole tables.

    **Returns:** `(fever_waived, crs_seen)`, both bool arrays.
    """
    crs_seen = as_bool(crs_seen) | (jnp.asarray(crs_grade_fever_required) >= 1)
    fever_waived = as_bool(fever_waived) | (crs_seen & as_bool(treated))
    return fever_waived, crs_seen


def segment_start_index(patient_index) -> jax.Array:
    """For rows grouped by patient, the index of the first row of each row's patient."""
    p = jnp.asarray(patient_index).reshape(-1)
    idx = jnp.arange(p.shape[0])
    is_start = jnp.concatenate([jnp.ones((1,), bool), p[1:] != p[:-1]])
    return jax.lax.cummax(jnp.where(is_start, idx, 0), axis=0)


def segment_cumany(x, start_index) -> jax.Array:
    """Cumulative OR of bool `x` within segments (rows grouped by patient)."""
    c = jnp.cumsum(x.astype(jnp.int32))
    base = (c - x.astype(jnp.int32))[start_index]
    return (c - base) > 0


@jax.jit
def crs_fever_waiver(
    crs_grade_fever_required,
    antipyretics_given,
    tocilizumab_given,
    steroids_given,
    patient_index,
) -> jax.Array:
    """ASTCT fever-waiver flag (rule R2) for every row of a table, vectorised.

    Rows must be grouped by patient and sorted by time within a patient
    (`patient_index` is any per-row patient code, e.g. from `pandas.factorize`).
    Gives the same flags as running `crs_fever_waiver_step` over each patient's
    rows in order: row i is waived when some row j ≤ i of the same patient has
    treatment flagged and some row k ≤ j was graded ≥ 1 with fever required.

    **Arguments:** 1-D arrays of equal length: the CRS grade computed with
    `fever_waived=False`, the three treatment flags, and the patient code.

    **Returns:** bool array, the `fever_waived` input for `crs_grade_astct`.
    """
    start = segment_start_index(patient_index)
    crs_seen = segment_cumany(jnp.asarray(crs_grade_fever_required).reshape(-1) >= 1, start)
    treated = crs_treated(antipyretics_given, tocilizumab_given, steroids_given).reshape(-1)
    return segment_cumany(crs_seen & treated, start)


def is_pediatric(age_years) -> jax.Array:
    """True where age < 12 years (exactly 12.0 is adult; NaN/missing is adult)."""
    if age_years is None:
        return jnp.asarray(False)
    return as_float(age_years) < PEDIATRIC_AGE_YEARS


def encephalopathy_level(ice_score, consciousness, age_years=None, capd_score=None) -> jax.Array:
    """ASTCT level of the ICE (adults) or CAPD (children < 12 y) domain.

    Adults: ICE 10 → 0, 7–9 → 1, 3–6 → 2, 0–2 → 3, and 4 when ICE is 0 and
    the patient is unarousable. Missing ICE (NaN, not assessed) → 0.
    Children: CAPD ≥ 9 → 3; CAPD 0–8 or missing → 0 (the grade 1/2 split then
    comes from the consciousness domain; see docs/grading.md).
    """
    ice = missing_as_nan(ice_score)
    adult = jnp.where(
        jnp.isnan(ice),
        0,
        jnp.where(ice >= 10, 0, jnp.where(ice >= 7, 1, jnp.where(ice >= 3, 2, 3))),
    )
    adult = jnp.where((ice == 0) & (as_code(consciousness) == enc.LOC_UNAROUSABLE), 4, adult)
    capd = missing_as_nan(capd_score)
    child = jnp.where(capd >= CAPD_DELIRIUM, 3, 0)  # NaN compares False -> 0
    return jnp.where(is_pediatric(age_years), child, adult).astype(jnp.int32)


@jax.jit
def icans_grade_astct(
    ice_score,
    consciousness,
    seizure=0,
    motor_weakness=False,
    cerebral_edema=0,
    raised_icp_signs=False,
    death_cause=0,
    age_years=None,
    capd_score=None,
) -> jax.Array:
    """ASTCT ICANS grade (0–5) per row: the worst of the five domains.

    - ICE (adults, age ≥ 12 y or unknown): 7–9 → 1, 3–6 → 2, 0–2 → 3, 0 and
      unarousable → 4; NaN (not assessed) → 0.
    - CAPD (children < 12 y, replaces ICE): ≥ 9 → 3; NaN or < 9 → 0.
    - Consciousness: awakens spontaneously 1, to voice 2, to touch 3,
      unarousable 4.
    - Seizure: rapidly resolving 3, prolonged or repetitive 4.
    - Deep focal motor weakness 4.
    - Cerebral edema focal 3, diffuse 4; signs of raised ICP 4.
    - Death from ICANS 5.

    **Arguments:** arrays that broadcast: `ice_score` (0–10 or NaN), codes of
    `CONSCIOUSNESS`, `SEIZURE`, `CEREBRAL_EDEMA`, `DEATH_CAUSE`, bools
    `motor_weakness` and `raised_icp_signs`, `age_years` (NaN or None =
    adult) and `capd_score` (0–32 or NaN).

    **Returns:** int32 array of grades.
    """
    level = encephalopathy_level(ice_score, consciousness, age_years, capd_score)
    level = jnp.maximum(level, as_code(consciousness))
    level = jnp.maximum(level, jnp.asarray(_SEIZURE_LEVEL)[as_code(seizure)])
    level = jnp.maximum(level, jnp.where(as_bool(motor_weakness), 4, 0))
    level = jnp.maximum(level, jnp.asarray(_EDEMA_LEVEL)[as_code(cerebral_edema)])
    level = jnp.maximum(level, jnp.where(as_bool(raised_icp_signs), 4, 0))
    return jnp.where(as_code(death_cause) == enc.DEATH_ICANS, 5, level).astype(jnp.int32)

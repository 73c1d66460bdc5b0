"""The cohort engine: one patient's assessment loop, `vmap`ped over patients.

A patient's course is a `lax.scan` over assessments (default every 6 h for
28 days). At each assessment the engine

1. reads the bedside observations from the state and from the worst values
   of the interval just ended (`vpop.observation.readouts`);
2. grades them under every scale (`vpop.grading`), keeping the ASTCT
   fever-waiver latch in the loop carry;
3. lets the management policy decide doses (`vpop.policy.rules`), which enter the
   state as boluses;
4. integrates to the next assessment with the exponential integrator
   (`vpop.solver.etdrk`).

A dose decided at an assessment is recorded in the drug columns
(`tocilizumab_given`, ...) from the next assessment on, so that each row's
flags describe treatment given *before* that row was graded; grading the
written table again therefore reproduces the simulator's grades exactly.

Patients are independent; `simulate_batch` is `jit(vmap(simulate_patient))`
and `run_cohort` feeds it fixed-size batches, so neither the cohort size, the
seed nor parameter values trigger a recompilation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vpop.model import equations as model
from vpop.model.spec import BASE, Model
from vpop.policy import rules as policy_mod
from vpop.observation import readouts
from vpop.grading import astct
from vpop.observation.encoding import DEATH_CAUSE, O2_CPAP, O2_NONE
from vpop.grading.legacy import CRS_SCALES, NEURO_SCALES, grade_row
from vpop.solver.etdrk import integrate_interval


DEATH = {name: i for i, name in enumerate(DEATH_CAUSE)}

# Solver status per patient.
STATUS_OK = 0
STATUS_NONFINITE = 1  # the state became NaN/inf; the patient is excluded
STATUS_INACCURATE = 2  # step error estimate above the configured tolerance
STATUS_OUT_OF_RANGE = 3  # a read-out left its physical range (PHYSICAL_RANGE); the patient is excluded
STATUS_NAMES = {STATUS_OK: "ok", STATUS_NONFINITE: "nonfinite", STATUS_INACCURATE: "inaccurate",
                STATUS_OUT_OF_RANGE: "out_of_range"}

# Physical ranges of the read-outs checked at every assessment (docs/outputs.md, solver status): a
# value outside means the solve blew up, however finite it is. Bounds are far beyond any survivable
# value: MAP 0-250 mmHg, IL-6 below 1e7 pg/mL (fatal CRS peaks are ~1e4-1e5), CRP below 2,000 mg/L,
# ferritin below 1e7 ng/mL, CAR-T below 1e6 cells/uL.
PHYSICAL_RANGE = {"map_mmhg": (0.0, 250.0), "il6_pg_ml": (0.0, 1e7), "crp_mg_l": (0.0, 2000.0),
                  "ferritin_ng_ml": (0.0, 1e7), "car_t_cells_per_ul": (0.0, 1e6)}

PEAK_BIOMARKERS = (
    "car_t_cells_per_ul", "il6_pg_ml", "ifng_pg_ml", "tnf_pg_ml", "gmcsf_pg_ml", "il1b_pg_ml", "il1ra_pg_ml",
    "il10_pg_ml", "crp_mg_l", "ferritin_ng_ml", "ddimer_mg_l", "ang2_ng_ml", "vwf_iu_dl",
    "csf_serum_albumin_ratio", "csf_protein_mg_l", "csf_il6_pg_ml", "nfl_pg_ml",
)
NADIR_BIOMARKERS = ("fibrinogen_g_l", "platelets_1e9_l", "map_mmhg")


@dataclass(frozen=True)
class EngineSettings:
    """Static settings: changing them recompiles."""

    days: float = 28.0
    assessment_hours: float = 6.0
    # ETDRK4 steps per assessment interval: 6 steps of 1 h. Three steps of 2 h (charted hourly from the
    # continuous extension) run the engine 1.8x faster at 99.86-99.91 % grade agreement, but the step-error
    # estimate then flags 13 % of patients "inaccurate" (1.4 % at 6): too thin a margin and too loud a flag
    # for the default (docs/performance.md, issue 14). `solver: substeps: 3` opts in.
    substeps: int = 6
    method: str = "etdrk4"
    rtol: float = 0.1
    atol: float = 0.05
    record_rows: bool = True
    crs_scales: tuple[str, ...] = tuple(CRS_SCALES)
    neuro_scales: tuple[str, ...] = tuple(NEURO_SCALES)
    # Biomarker read-outs recorded at every assessment even when `record_rows` is off (the fitting
    # likelihood's predictions); names of `vpop.observation.readouts.biomarkers`.
    trajectories: tuple[str, ...] = ()
    # Chart times per assessment interval; 0 charts hourly (the bedside default). The fitting solve
    # uses fewer steps per interval and charts once per step group.
    charts_per_interval: int = 0
    # The model (states, drugs, equations; `vpop.model.spec.Model.extend` adds to it) and the
    # management rules (`vpop.policy.rules`, composed with `chain`): static, so they compile in.
    model: Model = field(default=BASE, repr=False)
    rule: policy_mod.Rule = field(default=policy_mod.STANDARD, repr=False)

    @property
    def chart_marks(self) -> int:
        """Chart times per assessment interval (hourly unless `charts_per_interval` says otherwise)."""
        if self.charts_per_interval:
            return self.charts_per_interval
        return max(1, int(round(self.assessment_hours)))

    @property
    def dt(self) -> float:
        return self.assessment_hours / 24.0

    @property
    def n_rows(self) -> int:
        return int(round(self.days / self.dt)) + 1

    def times(self) -> np.ndarray:
        return np.arange(self.n_rows) * self.dt


# Worst continuous signs over the course, in the units of the read-outs (summary `worst_<name>`):
# the smooth quantities the grades threshold, so a likelihood can relax a grade through them.
SEVERITY_SIGNS = ("fever_rise_c", "map_drop_mmhg", "fio2_need", "neuro_dysfunction", "capillary_leak")


def severity_signs(worst, y, p):
    """The interval's worst signs (`readouts.interval_signs`) and the leak at the assessment, as SEVERITY_SIGNS."""
    fever_rise, neg_map, fio2_need, neuro_max, _, _ = worst
    return fever_rise, p["map_baseline"] + neg_map, fio2_need, neuro_max, y[model.IDX["leak"]]


def _observe(t, y, worst, carry, p, key, k, settings: EngineSettings):
    """The observation row at assessment k (before this assessment's doses)."""
    fever_rise, neg_map, fio2_need, neuro_max, qalb_max, csf_il6_max = worst
    temp = 37.0 + fever_rise * (1.0 - p["antipyretic_effect"] * carry.antipyretic_active)
    map_min = -neg_map
    hypotension, pressors, vasopressin, ne_dose = readouts.haemodynamics(map_min, p)
    on_pressor = (pressors >= 1) | vasopressin
    vaso_start = policy_mod.run_start(on_pressor, carry.vaso_start, t)
    device, flow, fio2 = readouts.oxygen(fio2_need, p)
    items, ice, consciousness, motor, edema, capd = readouts.neurology(neuro_max, qalb_max, p)
    seizure = readouts.seizure(neuro_max, jnp.asarray(settings.dt, t.dtype), key, k, p)
    creatinine_grade, transaminitis_grade = readouts.organ_toxicity(y, p)
    pediatric = p["age_years"] < 12.0
    fever_now = temp >= 38.0
    fever_rows = jnp.where(fever_now, carry.fever_rows + 1, 0)
    recently_treated = (t - carry.last_anticytokine) <= 1.0 + 1e-6

    # Death: refractory shock (CRS) or persisting diffuse cerebral oedema (ICANS).
    diffuse = edema == readouts.EDEMA["diffuse"]
    crs_death = y[model.IDX["shock"]] >= p["shock_death_burden"]
    icans_death = diffuse & carry.prev_diffuse & (neuro_max >= p["loc_unarousable"])
    dies_now = carry.alive & (crs_death | icans_death)
    death_cause = jnp.where(dies_now, jnp.where(crs_death, DEATH["crs"], DEATH["icans"]), DEATH["none"])

    row = {
        "time_day": t,
        "age_years": p["age_years"],
        "temp_c": temp,
        "hypotension": hypotension,
        "vasopressors": pressors,
        "vasopressin": vasopressin,
        "vasopressor_dose_ne": ne_dose,
        "vasopressor_hours": jnp.where(on_pressor, (t - vaso_start) * 24.0, 0.0),
        "o2_device": device,
        "o2_flow_lpm": flow,
        "fio2": fio2,
        "antipyretics_given": carry.antipyretics_given,
        "tocilizumab_given": carry.tocilizumab_given,
        "steroids_given": carry.steroids_given,
        "anakinra_given": carry.anakinra_given,
        "ice_score": jnp.where(pediatric, jnp.nan, ice),
        "capd_score": jnp.where(pediatric, capd, jnp.nan),
        "consciousness": consciousness,
        "seizure": seizure,
        "motor_weakness": motor,
        "cerebral_edema": edema,
        "raised_icp_signs": diffuse,
        "death_cause": death_cause.astype(jnp.int32),
        "creatinine_grade": creatinine_grade,
        "transaminitis_grade": transaminitis_grade,
        "iv_therapy": (fever_rows >= 4) | recently_treated,
        "coagulopathy_treated": y[model.IDX["fibrinogen"]] < p["cryo_fibrinogen"],
        "tremor_grade": (neuro_max >= p["tremor_threshold"]).astype(jnp.int32)
        + (neuro_max >= 3.0 * p["tremor_threshold"]),
        "headache_grade": (csf_il6_max >= p["headache_csf_il6"]).astype(jnp.int32),
    }
    for name, ok in items.items():
        row[f"ice_{name}"] = jnp.where(pediatric, False, ok)
    updates = {"vaso_start": vaso_start, "fever_rows": fever_rows, "prev_diffuse": diffuse, "dies_now": dies_now}
    return row, updates


def _grade(row, carry, settings: EngineSettings):
    """Every scale's grade for one row, and the updated fever-waiver latch."""
    g_req = grade_row("crs", "astct", row, fever_waived=False)
    treated = astct.crs_treated(row["antipyretics_given"], row["tocilizumab_given"], row["steroids_given"])
    waived, crs_seen = astct.crs_fever_waiver_step(carry.fever_waived, carry.crs_seen, g_req, treated)
    grades = {}
    for name in settings.crs_scales:
        grades[f"crs_grade_{name}"] = grade_row("crs", name, row, fever_waived=waived).astype(jnp.int8)
    for name in settings.neuro_scales:
        grades[f"icans_grade_{name}"] = grade_row("neuro", name, row).astype(jnp.int8)
    return grades, waived, crs_seen


def policy_crs_grade(grades, row, fever_masked, policy):
    """The CRS grade the policy acts on: its trigger scale's, or, once a drug given earlier may mask
    fever (`fever_masked`), at least the ASTCT grade with the fever requirement waived, so hypotension
    or hypoxia alone are treated (`PolicySettings.act_on_masked_fever`)."""
    grade = _trigger_grade(grades, "crs", policy.crs_trigger_scale)
    masked = fever_masked & (policy.act_on_masked_fever > 0.5)
    unmasked = grade_row("crs", "astct", row, fever_waived=True).astype(grade.dtype)
    return jnp.where(masked, jnp.maximum(grade, unmasked), grade)


def _trigger_grade(grades, kind: str, index):
    """The grade under the policy's trigger scale (an index, so that a policy change never recompiles).

    Scales that were not simulated stand in as ASTCT; `vpop.run.cohort.check_policy_scales` refuses a policy
    that names one.
    """
    names = policy_mod.CRS_TRIGGER_SCALES if kind == "crs" else policy_mod.ICANS_TRIGGER_SCALES
    astct = grades[f"{kind}_grade_astct"]
    stack = jnp.stack([grades.get(f"{kind}_grade_{n}", astct) for n in names])
    return stack[index.astype(jnp.int32)]


# Dose kinds of a schedule given to `simulate_patient` (the order of its last-but-one axis).
SCHEDULE_KINDS = ("toci_mg", "dex_iv_mg", "dex_oral_mg", "mp_mg", "anakinra_mg")


class CourseState(NamedTuple):
    """The course's loop state for one patient (scalars) or a batch (arrays with a trailing patient axis)."""

    y: Any  # model state (n_states, ...)
    worst: tuple  # worst signs of the interval just integrated (`readouts.interval_signs`)
    alive: Any
    antipyretic_active: Any  # 1 while an antipyretic given at the last assessment masks fever
    antipyretics_given: Any
    tocilizumab_given: Any
    steroids_given: Any
    anakinra_given: Any
    last_anticytokine: Any  # day of the last anti-cytokine dose
    fever_waived: Any  # ASTCT fever-waiver latch
    crs_seen: Any
    vaso_start: Any  # start of the current run of vasopressor support, day
    fever_rows: Any  # consecutive febrile assessments
    prev_diffuse: Any  # diffuse cerebral oedema at the last assessment
    policy: Any  # the rule's state (`vpop.policy.rules`)
    status: Any
    max_error: Any
    doses: dict  # mg given so far, by dose name
    toci_doses: Any
    peaks: dict
    nadirs: dict
    car_t_peak_day: Any  # time of the CAR-T peak (Tmax), day
    car_t_auc: Any  # area under the CAR-T blood count while alive (trapezoid on the assessment grid), cells/uL x day
    max_vasopressors: Any  # ICU-level support while alive, so endpoints need no observation table
    organ_support_day: Any  # first assessment, while alive, with supplemental oxygen or a vasopressor (inf: never)
    positive_pressure: Any
    severity: tuple  # worst continuous signs over the course (SEVERITY_SIGNS)


def simulate_patient(p, key, policy, settings: EngineSettings, schedule=None):
    """One patient's whole course of treatment. Returns (rows, summary) of arrays.

    This is the only course in vpop: simulation, the time-course likelihood and the
    cohort-table likelihood all run it. `policy` (the settings' `PolicyArrays`) parameterises
    the rules `settings.rule`, which decide doses from the grades at each assessment;
    `schedule`, if given, adds doses fixed in advance (mg, shape (n_rows,
    len(SCHEDULE_KINDS)) for one patient, (n_rows, kinds, N) for a batch), given at the
    assessment they fall on, after the policy's doses: the doses a data set records.
    Everything is a fixed trip count, so the course is differentiable in `p` (forward or
    reverse mode) through the solve; grades and doses are piecewise constant in `p`.
    """
    mdl = settings.model
    p = mdl.with_defaults(p)
    dtype = p["tumor_burden"].dtype
    shape = jnp.shape(p["tumor_burden"])  # () for one patient, (N,) for a batch in SoA layout

    def full(value, dt=dtype):
        return jnp.full(shape, value, dt)

    dt = jnp.asarray(settings.dt, dtype)
    y0 = mdl.initial_state(p)
    false = full(False, bool)
    dose_names = tuple(d.dose for d in mdl.drugs)
    carry0 = CourseState(
        y=y0,
        worst=readouts.interval_signs(jnp.zeros((), dtype), y0, p),
        alive=full(True, bool),
        antipyretic_active=full(0.0),
        antipyretics_given=false,
        tocilizumab_given=false,
        steroids_given=false,
        anakinra_given=false,
        last_anticytokine=full(-1e9),
        fever_waived=false,
        crs_seen=false,
        vaso_start=full(-1e9),
        fever_rows=full(0, jnp.int32),
        prev_diffuse=false,
        policy=settings.rule.init(dtype, shape),
        status=full(STATUS_OK, jnp.int32),
        max_error=full(0.0),
        doses={k: full(0.0) for k in dose_names},
        toci_doses=full(0, jnp.int32),
        peaks={k: full(-jnp.inf) for k in PEAK_BIOMARKERS},
        nadirs={k: full(jnp.inf) for k in NADIR_BIOMARKERS},
        car_t_peak_day=full(0.0),
        car_t_auc=full(0.0),
        max_vasopressors=full(0, jnp.int32),
        organ_support_day=full(jnp.inf),
        positive_pressure=false,
        severity=tuple(full(-jnp.inf) for _ in SEVERITY_SIGNS),
    )

    def step(carry: CourseState, k):
        t = k.astype(dtype) * dt
        y = carry.y
        alive = carry.alive
        row, upd = _observe(t, y, carry.worst, carry, p, key, k, settings)
        grades, waived, crs_seen = _grade(row, carry, settings)
        bio = readouts.biomarkers(y, p)

        crs_trigger = policy_crs_grade(grades, row, carry.last_anticytokine > -1e8, policy)
        assessment = policy_mod.Assessment(
            t=t, crs_grade=crs_trigger,
            icans_grade=_trigger_grade(grades, "icans", policy.icans_trigger_scale),
            hypotension=row["hypotension"], weight_kg=p["weight_kg"], biomarkers=bio, toci_doses=carry.toci_doses)
        decided, pol_state = settings.rule.update(policy, carry.policy, assessment, {})
        treat = alive & ~upd["dies_now"]
        doses = {name: jnp.where(treat, decided.get(name, 0.0), 0.0) for name in dose_names}
        pol_state = jax.tree_util.tree_map(lambda new, old: jnp.where(treat, new, old), pol_state, carry.policy)
        if schedule is not None:
            planned = schedule[k]
            doses = {name: doses[name] + (planned[SCHEDULE_KINDS.index(name)] if name in SCHEDULE_KINDS else 0.0)
                     for name in dose_names}
        febrile = row["temp_c"] >= 38.0
        give_antipyretic = treat & febrile & (policy.antipyretics > 0.5)
        steroid = (doses["dex_iv_mg"] + doses["dex_oral_mg"] + doses["mp_mg"]) > 0
        anticytokine = functools.reduce(lambda a, b: a | b, [doses[n] > 0 for n in dose_names])
        y = mdl.give(y, doses, p)

        y_next, worst, err = integrate_interval(
            mdl.production_loss, readouts.interval_signs, t, t + dt, y, p, settings.substeps,
            settings.rtol, settings.atol, settings.chart_marks, settings.method,
        )
        finite = jnp.all(jnp.isfinite(y_next), axis=0)
        in_range = functools.reduce(lambda a, b: a & b, [(bio[n] >= lo) & (bio[n] <= hi)
                                                          for n, (lo, hi) in PHYSICAL_RANGE.items()])
        status = jnp.where(in_range | (carry.status == STATUS_NONFINITE), carry.status, STATUS_OUT_OF_RANGE)
        status = jnp.where(finite, status, STATUS_NONFINITE)
        status = jnp.where((status == STATUS_OK) & (err > 1.0), STATUS_INACCURATE, status)
        # A non-finite patient is frozen at its last finite state and flagged.
        y_next = jnp.where(finite, y_next, y)
        worst = tuple(jnp.where(finite, w, w0) for w, w0 in zip(worst, carry.worst))

        row_alive = alive
        new_carry = carry._replace(
            y=y_next,
            worst=worst,
            alive=alive & ~upd["dies_now"],
            antipyretic_active=give_antipyretic.astype(dtype),
            antipyretics_given=carry.antipyretics_given | give_antipyretic,
            tocilizumab_given=carry.tocilizumab_given | (doses["toci_mg"] > 0),
            steroids_given=carry.steroids_given | steroid,
            anakinra_given=carry.anakinra_given | (doses["anakinra_mg"] > 0),
            last_anticytokine=jnp.where(anticytokine, t, carry.last_anticytokine),
            fever_waived=waived,
            crs_seen=crs_seen,
            vaso_start=upd["vaso_start"],
            fever_rows=upd["fever_rows"],
            prev_diffuse=upd["prev_diffuse"],
            policy=pol_state,
            status=status,
            max_error=jnp.maximum(carry.max_error, jnp.where(finite, err, 0.0)),
            doses={name: carry.doses[name] + doses[name] for name in dose_names},
            toci_doses=carry.toci_doses + (doses["toci_mg"] > 0),
            peaks={n: jnp.where(row_alive, jnp.maximum(carry.peaks[n], bio[n]), carry.peaks[n]) for n in PEAK_BIOMARKERS},
            nadirs={n: jnp.where(row_alive, jnp.minimum(carry.nadirs[n], bio[n]), carry.nadirs[n]) for n in NADIR_BIOMARKERS},
            car_t_peak_day=jnp.where(row_alive & (bio["car_t_cells_per_ul"] > carry.peaks["car_t_cells_per_ul"]),
                                     t, carry.car_t_peak_day),
            # Trapezoid on the uniform assessment grid: the first and last assessments weigh half an interval.
            car_t_auc=carry.car_t_auc + jnp.where(
                row_alive, jnp.where((k == 0) | (k == settings.n_rows - 1), 0.5, 1.0) * dt * bio["car_t_cells_per_ul"],
                0.0),
            max_vasopressors=jnp.where(row_alive, jnp.maximum(carry.max_vasopressors, row["vasopressors"]),
                                       carry.max_vasopressors),
            organ_support_day=jnp.where(row_alive & ((row["o2_device"] > O2_NONE) | (row["vasopressors"] > 0)),
                                        jnp.minimum(carry.organ_support_day, t), carry.organ_support_day),
            positive_pressure=carry.positive_pressure | (row_alive & (row["o2_device"] >= O2_CPAP)),
            severity=tuple(jnp.where(row_alive, jnp.maximum(old, new), old)
                           for old, new in zip(carry.severity, severity_signs(carry.worst, y, p))),
        )
        out = dict(grades)
        out["alive"] = row_alive
        if settings.record_rows:
            out.update(row)
            out.update(bio)
        else:
            out.update({name: bio[name] for name in settings.trajectories})
        return new_carry, out

    final, rows = jax.lax.scan(step, carry0, jnp.arange(settings.n_rows))
    summary = {
        "solver_status": final.status,
        "solver_max_error": final.max_error,
        "tocilizumab_doses": final.toci_doses,
        "tocilizumab_mg": final.doses["toci_mg"],
        "dexamethasone_mg": final.doses["dex_iv_mg"] + final.doses["dex_oral_mg"],
        "methylprednisolone_mg": final.doses["mp_mg"],
        "anakinra_mg": final.doses["anakinra_mg"],
        **{f"peak_{n}": v for n, v in final.peaks.items()},
        **{f"nadir_{n}": v for n, v in final.nadirs.items()},
        "peak_car_t_day": final.car_t_peak_day,  # Tmax of CAR-T in blood (first assessment at the peak)
        "auc_car_t_cells_per_ul_day": final.car_t_auc,  # AUC of CAR-T in blood over the course (AUC0-28 by default)
        "max_vasopressors": final.max_vasopressors,
        "organ_support_day": final.organ_support_day,
        "positive_pressure_ventilation": final.positive_pressure,
        **{f"worst_{name}": v for name, v in zip(SEVERITY_SIGNS, final.severity)},
        # doses of drugs an extended model adds (`Model.extend`), by dose name
        **{f"dose_{name}": final.doses[name] for name in dose_names if name not in SCHEDULE_KINDS},
    }
    return rows, summary


def simulate_batch(p, keys, policy, settings: EngineSettings, schedule=None):
    """A batch of patients: `simulate_patient` with the patient axis trailing.

    The one-patient physics is elementwise in the patient, so it runs on
    arrays of patients directly: parameters of shape (N,), states (32, N).
    That structure-of-arrays layout keeps each state's patients contiguous, so
    XLA vectorises across patients; it is about twice as fast on the CPU as
    `jax.vmap(simulate_patient)`, whose batch-leading layout strides every
    state access (tests/test_engine.py checks the two agree). Outputs have the
    patient axis first, as `vmap` would give: rows (N, n_rows), summary (N,).
    """
    rows, summary = simulate_patient(p, keys, policy, settings, schedule)
    batch = jnp.shape(p["tumor_burden"])
    # Shared quantities (the assessment time) come out unbatched; give every row a patient axis.
    def per_patient(x):
        if x.shape[1:] != batch:
            x = x.reshape(x.shape[:1] + (1,) * len(batch))
        return jnp.moveaxis(jnp.broadcast_to(x, x.shape[:1] + batch), 0, -1)

    rows = jax.tree_util.tree_map(per_patient, rows)
    summary = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, batch), summary)
    return rows, summary


def vmapped_batch(p, keys, policy, settings: EngineSettings):
    """The same batch through `jax.vmap(simulate_patient)` (reference layout)."""
    return jax.vmap(lambda pi, ki: simulate_patient(pi, ki, policy, settings))(p, keys)


@functools.lru_cache(maxsize=16)
def compiled_batch(settings: EngineSettings):
    """`jit(simulate_batch)` for these static settings (cached)."""

    def batch(p, keys, policy):
        return simulate_batch(p, keys, policy, settings)

    return jax.jit(batch)

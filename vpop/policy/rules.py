"""Clinical management policies: grade-triggered tocilizumab, steroids, anakinra.

A policy is data: a flat dict of numbers (`PolicySettings.to_arrays`) read by
one pure function, `decide`, that runs at every assessment after grading:

    doses, state = decide(settings, state, t, crs_grade, icans_grade, hypotension, weight_kg, biomarkers)

Each rule has a trigger and an action. Triggers: a grade (under the scale the
policy names: `crs_trigger_scale`, `icans_trigger_scale`), a time window
(`toci_from_day`..`toci_until_day`, `steroid_from_day`..`steroid_until_day`)
and biomarker thresholds (IL-6, CRP, ferritin at the assessment, for
pre-emptive tocilizumab or dexamethasone). Actions: the drug, its dose, the
interval between doses and the most doses. Presets are compositions of
these fields, and a user policy is a preset plus overrides.

Because the settings are arrays rather than Python values, changing a policy
never recompiles the simulator. A trigger grade of `NEVER` switches a rule
off. The defaults follow the ASCO 2021 guideline (Santomasso, J Clin Oncol
2021), which grades by ASTCT; see docs/model.md §Management for each rule and
where the simulation simplifies it (e.g. every dose is given at an assessment,
so intervals are multiples of the assessment interval).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import jax.numpy as jnp

from vpop.errors import ConfigError


NEVER = 99.0  # a trigger grade no patient reaches
OFF = 1e30  # a biomarker level no patient reaches: the threshold trigger is off
MAX_PROPHYLAXIS_DAYS = 8
# scales a policy may read its triggers from (the order of vpop.grading.legacy's tables)
CRS_TRIGGER_SCALES = ("astct", "lee2014", "penn", "mskcc", "cartox", "ctcae5")
ICANS_TRIGGER_SCALES = ("astct", "cartox", "ctcae")
# biomarker triggers: policy field suffix -> read-out name (vpop.observation.readouts.biomarkers)
BIOMARKER_TRIGGERS = {"il6_trigger_pg_ml": "il6_pg_ml", "crp_trigger_mg_l": "crp_mg_l",
                      "ferritin_trigger_ng_ml": "ferritin_ng_ml"}


@dataclass(frozen=True)
class PolicySettings:
    name: str = "asco2021"
    antipyretics: bool = True
    # which scale's grades the triggers read (the scale must be simulated: grading.scales)
    crs_trigger_scale: str = "astct"
    icans_trigger_scale: str = "astct"
    # tocilizumab
    toci_trigger_grade: float = 2.0
    toci_grade1_after_days: float = 1e9  # CRS grade 1 lasting this long; ASCO says "consider" after 3 days: off by default
    toci_mg_per_kg: float = 8.0
    toci_mg_per_kg_under_30kg: float = 12.0
    toci_max_dose_mg: float = 800.0
    toci_min_interval_hours: float = 8.0
    toci_max_per_24h: float = 3.0
    toci_max_total: float = 4.0
    toci_from_day: float = 0.0  # grade and biomarker triggers act inside this window only
    toci_until_day: float = 1e9
    toci_il6_trigger_pg_ml: float = OFF  # pre-emptive: give at this IL-6 whatever the grade
    toci_crp_trigger_mg_l: float = OFF
    toci_ferritin_trigger_ng_ml: float = OFF
    # dexamethasone
    dex_crs_trigger_grade: float = 3.0
    dex_crs2_after_toci_doses: float = 2.0  # CRS 2 persisting after this many tocilizumab doses
    dex_icans_trigger_grade: float = 2.0
    dex_dose_mg: float = 10.0
    dex_interval_hours: float = 6.0
    dex_max_doses: float = 1e9  # intravenous dexamethasone doses in all
    dex_il6_trigger_pg_ml: float = OFF
    dex_crp_trigger_mg_l: float = OFF
    dex_ferritin_trigger_ng_ml: float = OFF
    steroid_from_day: float = 0.0  # window of the dexamethasone and methylprednisolone triggers
    steroid_until_day: float = 1e9
    # methylprednisolone (given as dexamethasone equivalents)
    mp_crs_trigger_grade: float = 4.0
    mp_icans_trigger_grade: float = 4.0
    mp_dose_mg: float = 250.0  # 1 g/day as 250 mg q6h
    mp_interval_hours: float = 6.0
    # anakinra
    anakinra_icans_trigger_grade: float = NEVER
    anakinra_crs_trigger_grade: float = NEVER
    anakinra_dose_mg: float = 100.0
    anakinra_interval_hours: float = 12.0
    anakinra_prophylaxis_until_day: float = -1.0
    # prophylactic oral dexamethasone on listed days (ZUMA-1 cohort 6: days 0, 1, 2)
    prophylactic_dex_days: tuple[float, ...] = field(default_factory=tuple)
    prophylactic_dex_mg: float = 10.0

    def to_arrays(self, dtype=jnp.float32) -> dict[str, jnp.ndarray]:
        d = asdict(self)
        d.pop("name")
        days = list(d.pop("prophylactic_dex_days"))
        d["crs_trigger_scale"] = CRS_TRIGGER_SCALES.index(d["crs_trigger_scale"])
        d["icans_trigger_scale"] = ICANS_TRIGGER_SCALES.index(d["icans_trigger_scale"])
        out = {k: jnp.asarray(float(v), dtype=dtype) for k, v in d.items()}
        out["prophylactic_dex_days"] = jnp.asarray(days + [-1.0] * (MAX_PROPHYLAXIS_DAYS - len(days)), dtype=dtype)
        return out


PRESETS: dict[str, PolicySettings] = {
    "asco2021": PolicySettings(),
    "none": PolicySettings(
        name="none",
        toci_trigger_grade=NEVER,
        dex_crs_trigger_grade=NEVER,
        dex_crs2_after_toci_doses=NEVER,
        dex_icans_trigger_grade=NEVER,
        mp_crs_trigger_grade=NEVER,
        mp_icans_trigger_grade=NEVER,
    ),
    "prophylactic_dex": PolicySettings(name="prophylactic_dex", prophylactic_dex_days=(0.0, 1.0, 2.0)),
    "early_toci": PolicySettings(name="early_toci", toci_trigger_grade=1.0),
    "anakinra_prophylaxis": PolicySettings(name="anakinra_prophylaxis", anakinra_prophylaxis_until_day=5.0),
}


def check_scales(policy: PolicySettings, crs_scales, neuro_scales, source: str = "policy") -> None:
    """Refuse a policy whose triggers read a scale the run does not grade."""
    for field_name, scale, allowed, simulated, section in (
            ("crs_trigger_scale", policy.crs_trigger_scale, CRS_TRIGGER_SCALES, crs_scales, "CRS"),
            ("icans_trigger_scale", policy.icans_trigger_scale, ICANS_TRIGGER_SCALES, neuro_scales, "neurotoxicity")):
        if scale not in allowed:
            raise ConfigError(f"{source}: {field_name}: got {scale!r}; allowed: {', '.join(allowed)}")
        if scale not in simulated:
            raise ConfigError(f"{source}: {field_name}: {scale!r} is not among the {section} scales this run grades "
                              f"({', '.join(simulated)}); add it to grading.scales")


def with_overrides(base: PolicySettings, overrides: dict, name: str | None = None) -> PolicySettings:
    """`base` with some fields replaced; None switches a trigger off (grade NEVER, biomarker OFF)."""
    d = asdict(base)
    for key, value in overrides.items():
        if value is None:
            value = NEVER if key.endswith("grade") else OFF if key.endswith(tuple(BIOMARKER_TRIGGERS)) else d[key]
        d[key] = value
    if name is not None:
        d["name"] = name
    return PolicySettings(**d)


def initial_state(dtype=jnp.float32, shape=()) -> dict[str, jnp.ndarray]:
    """Policy state of one patient (shape ()) or of a batch (shape (N,))."""
    never = jnp.full(shape, -1e9, dtype=dtype)
    return {
        "toci_times": jnp.full((4, *shape), -1e9, dtype=dtype),  # last four dose times
        "toci_count": jnp.zeros(shape, dtype=dtype),
        "last_dex": never,
        "dex_count": jnp.zeros(shape, dtype=dtype),
        "last_mp": never,
        "last_anakinra": never,
        "crs_since": never,  # start of the current run of CRS grade >= 1
    }


def decide(s, state, t, crs_grade, icans_grade, hypotension, weight_kg, biomarkers=None):
    """Doses to give now (mg) and the new policy state.

    `crs_grade`, `icans_grade`: grades under the policy's trigger scales;
    `biomarkers`: read-outs at this assessment (only those the thresholds
    name are used; None: no biomarker trigger fires).
    """
    hours = 1.0 / 24.0
    eps = 1e-6
    crs = crs_grade.astype(t.dtype)
    icans = icans_grade.astype(t.dtype)

    def above(drug):  # any biomarker at or over the drug's threshold
        hit = jnp.zeros(jnp.shape(crs), bool)
        if biomarkers is None:
            return hit
        for suffix, name in BIOMARKER_TRIGGERS.items():
            hit = hit | (biomarkers[name] >= s[f"{drug}_{suffix}"])
        return hit

    toci_window = (t >= s["toci_from_day"] - eps) & (t <= s["toci_until_day"] + eps)
    steroid_window = (t >= s["steroid_from_day"] - eps) & (t <= s["steroid_until_day"] + eps)
    crs_since = jnp.where(crs >= 1.0, jnp.where(state["crs_since"] < -1e8, t, state["crs_since"]), -1e9)

    # Tocilizumab: grade-triggered with the label's dose limits.
    toci_times = state["toci_times"]
    in_24h = jnp.sum(toci_times > t - 24.0 * hours + eps, axis=0)
    since_last = t - jnp.max(toci_times, axis=0)
    persistent_g1 = (crs >= 1.0) & (t - crs_since >= s["toci_grade1_after_days"] - eps)
    want_toci = toci_window & ((crs >= s["toci_trigger_grade"]) | persistent_g1 | above("toci"))
    can_toci = (
        (since_last >= s["toci_min_interval_hours"] * hours - eps)
        & (in_24h < s["toci_max_per_24h"])
        & (state["toci_count"] < s["toci_max_total"])
    )
    give_toci = want_toci & can_toci
    per_kg = jnp.where(weight_kg < 30.0, s["toci_mg_per_kg_under_30kg"], s["toci_mg_per_kg"])
    toci_mg = jnp.where(give_toci, jnp.minimum(per_kg * weight_kg, s["toci_max_dose_mg"]), 0.0)
    toci_count = state["toci_count"] + give_toci
    now = jnp.broadcast_to(t, toci_times.shape[1:])[None]
    toci_times = jnp.where(give_toci, jnp.concatenate([toci_times[1:], now]), toci_times)

    # Methylprednisolone for grade 4; dexamethasone otherwise.
    want_mp = steroid_window & ((crs >= s["mp_crs_trigger_grade"]) | (icans >= s["mp_icans_trigger_grade"]))
    give_mp = want_mp & (t - state["last_mp"] >= s["mp_interval_hours"] * hours - eps)
    # ASCO: dexamethasone for hypotension persisting after 1-2 tocilizumab doses.
    crs2_refractory = (crs >= 2.0) & hypotension & (state["toci_count"] >= s["dex_crs2_after_toci_doses"])
    want_dex = steroid_window & ((crs >= s["dex_crs_trigger_grade"]) | (icans >= s["dex_icans_trigger_grade"])
                                 | crs2_refractory | above("dex"))
    give_dex = (want_dex & ~want_mp & (t - state["last_dex"] >= s["dex_interval_hours"] * hours - eps)
                & (state["dex_count"] < s["dex_max_doses"]))
    dex_iv_mg = jnp.where(give_dex, s["dex_dose_mg"], 0.0)
    mp_mg = jnp.where(give_mp, s["mp_dose_mg"], 0.0)
    prophylaxis = jnp.any(jnp.abs(s["prophylactic_dex_days"] - t) < 1e-3)
    dex_oral_mg = jnp.where(prophylaxis, s["prophylactic_dex_mg"], 0.0)

    # Anakinra: prophylaxis window or grade trigger.
    want_ana = (t <= s["anakinra_prophylaxis_until_day"] + eps) | (icans >= s["anakinra_icans_trigger_grade"]) | (
        crs >= s["anakinra_crs_trigger_grade"]
    )
    give_ana = want_ana & (t - state["last_anakinra"] >= s["anakinra_interval_hours"] * hours - eps)
    anakinra_mg = jnp.where(give_ana, s["anakinra_dose_mg"], 0.0)

    new_state = {
        "toci_times": toci_times,
        "toci_count": toci_count,
        "last_dex": jnp.where(give_dex, t, state["last_dex"]),
        "dex_count": state["dex_count"] + give_dex,
        "last_mp": jnp.where(give_mp, t, state["last_mp"]),
        "last_anakinra": jnp.where(give_ana, t, state["last_anakinra"]),
        "crs_since": crs_since,
    }
    doses = {
        "toci_mg": toci_mg,
        "dex_iv_mg": dex_iv_mg,
        "dex_oral_mg": dex_oral_mg,
        "mp_mg": mp_mg,
        "anakinra_mg": anakinra_mg,
    }
    return doses, new_state

"""Clinical management policies: grade-triggered tocilizumab, steroids, anakinra.

A policy is data: a flat dict of numbers (`PolicySettings.to_arrays`) read by
one pure function, `decide`, that runs at every assessment after grading:

    doses, state = decide(settings, state, t, crs_grade, icans_grade, hypotension, weight_kg)

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


NEVER = 99.0  # a trigger grade no patient reaches
MAX_PROPHYLAXIS_DAYS = 8


@dataclass(frozen=True)
class PolicySettings:
    name: str = "asco2021"
    antipyretics: bool = True
    # tocilizumab
    toci_trigger_grade: float = 2.0
    toci_grade1_after_days: float = 1e9  # CRS grade 1 lasting this long; ASCO says "consider" after 3 days: off by default
    toci_mg_per_kg: float = 8.0
    toci_mg_per_kg_under_30kg: float = 12.0
    toci_max_dose_mg: float = 800.0
    toci_min_interval_hours: float = 8.0
    toci_max_per_24h: float = 3.0
    toci_max_total: float = 4.0
    # dexamethasone
    dex_crs_trigger_grade: float = 3.0
    dex_crs2_after_toci_doses: float = 2.0  # CRS 2 persisting after this many tocilizumab doses
    dex_icans_trigger_grade: float = 2.0
    dex_dose_mg: float = 10.0
    dex_interval_hours: float = 6.0
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


def initial_state(dtype=jnp.float32, shape=()) -> dict[str, jnp.ndarray]:
    """Policy state of one patient (shape ()) or of a batch (shape (N,))."""
    never = jnp.full(shape, -1e9, dtype=dtype)
    return {
        "toci_times": jnp.full((4, *shape), -1e9, dtype=dtype),  # last four dose times
        "toci_count": jnp.zeros(shape, dtype=dtype),
        "last_dex": never,
        "last_mp": never,
        "last_anakinra": never,
        "crs_since": never,  # start of the current run of CRS grade >= 1
    }


def decide(s, state, t, crs_grade, icans_grade, hypotension, weight_kg):
    """Doses to give now (mg) and the new policy state."""
    hours = 1.0 / 24.0
    eps = 1e-6
    crs = crs_grade.astype(t.dtype)
    icans = icans_grade.astype(t.dtype)
    crs_since = jnp.where(crs >= 1.0, jnp.where(state["crs_since"] < -1e8, t, state["crs_since"]), -1e9)

    # Tocilizumab: grade-triggered with the label's dose limits.
    toci_times = state["toci_times"]
    in_24h = jnp.sum(toci_times > t - 24.0 * hours + eps, axis=0)
    since_last = t - jnp.max(toci_times, axis=0)
    persistent_g1 = (crs >= 1.0) & (t - crs_since >= s["toci_grade1_after_days"] - eps)
    want_toci = (crs >= s["toci_trigger_grade"]) | persistent_g1
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
    want_mp = (crs >= s["mp_crs_trigger_grade"]) | (icans >= s["mp_icans_trigger_grade"])
    give_mp = want_mp & (t - state["last_mp"] >= s["mp_interval_hours"] * hours - eps)
    # ASCO: dexamethasone for hypotension persisting after 1-2 tocilizumab doses.
    crs2_refractory = (crs >= 2.0) & hypotension & (state["toci_count"] >= s["dex_crs2_after_toci_doses"])
    want_dex = (crs >= s["dex_crs_trigger_grade"]) | (icans >= s["dex_icans_trigger_grade"]) | crs2_refractory
    give_dex = want_dex & ~want_mp & (t - state["last_dex"] >= s["dex_interval_hours"] * hours - eps)
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

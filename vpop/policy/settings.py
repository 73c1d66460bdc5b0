"""A management policy's settings: the numbers its rules read, and the named presets.

A policy is data: `PolicySettings` (one field per number) becomes a `PolicyArrays`
NamedTuple of arrays (`to_arrays`), read by the pure rules of `vpop.policy.rules`
at every assessment after grading.

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

from dataclasses import asdict, dataclass, field, fields
from typing import NamedTuple

import jax
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

    def to_arrays(self, dtype=jnp.float32) -> "PolicyArrays":
        d = asdict(self)
        d.pop("name")
        days = list(d.pop("prophylactic_dex_days"))
        d["crs_trigger_scale"] = CRS_TRIGGER_SCALES.index(d["crs_trigger_scale"])
        d["icans_trigger_scale"] = ICANS_TRIGGER_SCALES.index(d["icans_trigger_scale"])
        out = {k: jnp.asarray(float(v), dtype=dtype) for k, v in d.items()}
        out["prophylactic_dex_days"] = jnp.asarray(days + [-1.0] * (MAX_PROPHYLAXIS_DAYS - len(days)), dtype=dtype)
        return PolicyArrays(**out)


# The settings as arrays: one typed field per number (a PyTree), so changing a policy never recompiles.
PolicyArrays = NamedTuple("PolicyArrays", [(f.name, jax.Array) for f in fields(PolicySettings) if f.name != "name"])


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


# Triggers that are neither a grade nor a biomarker, and the value that switches each off.
OTHER_TRIGGERS_OFF = {"dex_crs2_after_toci_doses": NEVER, "toci_grade1_after_days": 1e9}


def with_overrides(base: PolicySettings, overrides: dict, name: str | None = None) -> PolicySettings:
    """`base` with some fields replaced; None switches a trigger off (grade and dose-count triggers
    NEVER, biomarker thresholds OFF, a persistence trigger never reached)."""
    d = asdict(base)
    for key, value in overrides.items():
        if value is None:
            if key.endswith("grade"):
                value = NEVER
            elif key.endswith(tuple(BIOMARKER_TRIGGERS)):
                value = OFF
            elif key in OTHER_TRIGGERS_OFF:
                value = OTHER_TRIGGERS_OFF[key]
            else:
                value = d[key]
        d[key] = value
    if name is not None:
        d["name"] = name
    return PolicySettings(**d)

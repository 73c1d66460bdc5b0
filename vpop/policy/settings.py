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

from dataclasses import asdict, dataclass, field, fields, replace
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
    # Steroids, tocilizumab and anakinra mask fever. Clinicians then treat hypotension or hypoxia after
    # CAR-T as CRS without waiting for fever (Lee 2019 ASTCT consensus: fever masked by antipyretic or
    # anti-cytokine therapy is not required); the triggers read the ASTCT grade with the fever waived
    # once any of them has been given, prophylaxis included.
    act_on_masked_fever: bool = True
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
    # fever on this many assessments within 24 h (CRS grade >= 1 under the trigger scale; the CHOP pre-emptive
    # trigger is two temperatures >= 38.5 C in 24 h, Kadauke ASH 2020; rules see grades, not temperatures)
    toci_fever_assessments_in_24h: float = NEVER
    toci_prophylaxis_day: float = -1.0  # one tocilizumab dose on this day whatever the grade (ZUMA-1 cohort 3: day 2)
    # dexamethasone
    dex_crs_trigger_grade: float = 3.0
    dex_crs2_after_toci_doses: float = 2.0  # CRS 2 persisting after this many tocilizumab doses
    # the CRS grade that counts as refractory then (with hypotension): ASCO 2021's 2; a protocol that gives
    # steroids for severe CRS refractory to tocilizumab (Penn/CHOP) names its tocilizumab grade
    dex_refractory_grade: float = 2.0
    dex_icans_trigger_grade: float = 2.0
    # ICANS at the trigger grade must have lasted this long (one grade higher acts at once): the NCI algorithm
    # of Lee 2014 gave dexamethasone for grade 3 neurotoxicity lasting 24 h or any grade 4; 0 = at once
    dex_icans_after_hours: float = 0.0
    dex_dose_mg: float = 10.0
    dex_interval_hours: float = 6.0
    dex_max_doses: float = 1e9  # intravenous dexamethasone doses in all
    dex_il6_trigger_pg_ml: float = OFF
    dex_crp_trigger_mg_l: float = OFF
    dex_ferritin_trigger_ng_ml: float = OFF
    dex_grade1_after_days: float = 1e9  # CRS grade 1 lasting this long (ZUMA-1 cohort 4: 3 days); off by default
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


def _era(name: str, **fields) -> PolicySettings:
    return PolicySettings(name=name, **fields)


# Trial-era management: the trigger grades a protocol wrote, read under the scale its investigators graded
# with. [V] = seen in public material (docs/model.md §Management gives the sources), [M] = from memory of the
# protocol, to be checked against the primary paper. Features the rules cannot express are named.

# ZUMA-1 cohorts 1-2 (Neelapu NEJM 2017; 2015-2017 protocol): Lee 2014 CRS and CTCAE neurologic-event grades;
# tocilizumab at CRS grade >= 2 [M]; corticosteroids held until grade 3 CRS or neurologic events [V: Topp,
# ASH 2019 report: steroids "instead of waiting until grade 3"]; no steroid step at CRS 2 after tocilizumab.
# Neurologic events: dexamethasone for grade 3 lasting 24 h or any grade 4, the NCI algorithm (Lee 2014 [V])
# that KTE-C19 brought from the NCI to ZUMA-1 [M] (27 % of ZUMA-1 got steroids, fewer than the 28 % with
# neurologic events >= 3).
ZUMA1_C12 = _era("zuma1_c12", crs_trigger_scale="lee2014", icans_trigger_scale="ctcae",
                 toci_trigger_grade=2.0, dex_crs_trigger_grade=3.0, dex_crs2_after_toci_doses=NEVER,
                 dex_icans_trigger_grade=3.0, dex_icans_after_hours=24.0)

PRESETS: dict[str, PolicySettings] = {
    # ASCO 2021 (Santomasso, J Clin Oncol 2021;39:3978), ASTCT grades: the default of the current era [V].
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
    "zuma1_c12": ZUMA1_C12,
    # ZUMA-1 cohort 3 (Locke ASH 2017; How-I-treat Blood 2023;141:2430 Table 1): cohorts 1-2 management plus
    # tocilizumab 8 mg/kg on day 2 [V]. Its levetiracetam 750 mg bid from day 0 [V] has no drug in the model.
    "zuma1_c3": replace(ZUMA1_C12, name="zuma1_c3", toci_prophylaxis_day=2.0),
    # ZUMA-1 cohort 4 (Topp, Br J Haematol 2021): corticosteroids from grade 1 neurologic events and earlier
    # steroids and tocilizumab for CRS [V]: tocilizumab at CRS grade 1 lasting 24 h, dexamethasone at CRS
    # grade 1 lasting 3 days and from CRS grade 2 [M: the protocol's exact persistence times].
    "zuma1_c4": replace(ZUMA1_C12, name="zuma1_c4", toci_grade1_after_days=1.0, dex_grade1_after_days=3.0,
                        dex_crs_trigger_grade=2.0, dex_icans_trigger_grade=1.0, dex_icans_after_hours=0.0),
    # ZUMA-1 cohort 6 (Oluwole, Br J Haematol 2021): oral dexamethasone 10 mg on days 0 (before axi-cel), 1
    # and 2, plus earlier corticosteroid and tocilizumab intervention [V] (taken as cohort 4's).
    "zuma1_c6": replace(ZUMA1_C12, name="zuma1_c6", toci_grade1_after_days=1.0, dex_grade1_after_days=3.0,
                        dex_crs_trigger_grade=2.0, dex_icans_trigger_grade=1.0, dex_icans_after_hours=0.0,
                        prophylactic_dex_days=(0.0, 1.0, 2.0)),
    # Penn/CHOP algorithm of JULIET (Schuster NEJM 2019) and ELIANA (Maude NEJM 2018), Penn grades [V]:
    # tocilizumab for severe CRS (Penn grade >= 3) [M for the exact grade]; corticosteroids for CRS refractory
    # to tocilizumab (24 of 25 ELIANA/ENSIGN steroid patients also had tocilizumab [V: Levine JITC 2021]) or
    # life-threatening (grade 4); CTCAE neurologic events >= 3 [M].
    "penn_chop": _era("penn_chop", crs_trigger_scale="penn", icans_trigger_scale="ctcae", toci_trigger_grade=3.0,
                      dex_crs_trigger_grade=4.0, dex_refractory_grade=3.0, dex_icans_trigger_grade=3.0,
                      mp_crs_trigger_grade=NEVER),
    # CHOP pre-emptive tocilizumab in high-burden B-ALL (Kadauke, ASH 2020; NCT02906371) [V]: the Penn/CHOP
    # algorithm plus tocilizumab at persistent fever (two temperatures >= 38.5 C in 24 h: here two febrile
    # assessments in 24 h, fever being >= 38.0 C on the grades the rules read).
    "chop_preemptive_toci": _era("chop_preemptive_toci", crs_trigger_scale="penn", icans_trigger_scale="ctcae",
                                 toci_trigger_grade=3.0, dex_crs_trigger_grade=4.0, dex_refractory_grade=3.0,
                                 dex_icans_trigger_grade=3.0, mp_crs_trigger_grade=NEVER,
                                 toci_fever_assessments_in_24h=2.0),
    # TRANSCEND NHL 001 (Abramson Lancet 2020; 2016-2019), Lee 2014 and CTCAE: tocilizumab and/or steroids
    # for CRS grade >= 2, steroids for neurologic events grade >= 2 [M]; toci 20%, steroids 21% reported [V].
    "transcend": _era("transcend", crs_trigger_scale="lee2014", icans_trigger_scale="ctcae", toci_trigger_grade=2.0,
                      dex_crs_trigger_grade=3.0, dex_icans_trigger_grade=2.0),
    # KarMMa (Munshi NEJM 2021; 2017-2019), Lee 2014: tocilizumab at CRS grade >= 2 or grade 1 lasting 24 h,
    # steroids at CRS >= 3 or neurologic events >= 2 [M]; 52% tocilizumab against 84% CRS [V] is why the
    # persistent-grade-1 trigger is on.
    "karmma": _era("karmma", crs_trigger_scale="lee2014", icans_trigger_scale="ctcae", toci_trigger_grade=2.0,
                   toci_grade1_after_days=1.0, dex_crs_trigger_grade=3.0, dex_icans_trigger_grade=2.0),
    # CARTITUDE-1 (Berdeja Lancet 2021; 2018-2020; phase 2 graded by ASTCT): tocilizumab at CRS grade >= 2 or
    # grade 1 lasting 24 h, steroids at CRS >= 3 or ICANS >= 2 [M]; 69% tocilizumab against 95% CRS [M].
    "cartitude1": _era("cartitude1", toci_grade1_after_days=1.0),
    # Fred Hutch CD19 CAR-T (JCAR014) phase 1/2, 2014-2016 (Hay Blood 2017; Gust Cancer Discov 2017), Lee 2014:
    # tocilizumab and/or dexamethasone for severe (grade >= 3) CRS and neurotoxicity [M].
    "fred_hutch_2016": _era("fred_hutch_2016", crs_trigger_scale="lee2014", icans_trigger_scale="cartox",
                            toci_trigger_grade=3.0, dex_crs_trigger_grade=3.0, dex_crs2_after_toci_doses=NEVER,
                            dex_icans_trigger_grade=3.0),
    # MDACC prophylactic anakinra (Strati, NCT04432506; Blood 2023;141:2430 Table 1) [V]: anakinra 100 mg SC
    # from day 0 to day 7 (qd or bid: here every 12 h) on top of standard management (here ASCO 2021).
    "mdacc_anakinra": PolicySettings(name="mdacc_anakinra", anakinra_prophylaxis_until_day=7.0),
}

# One line each, for `vpop presets` and the scorecard.
DESCRIPTIONS: dict[str, str] = {
    "asco2021": "ASCO 2021 guideline, the default (ASTCT grades)",
    "none": "no tocilizumab and no corticosteroids (supportive care only)",
    "prophylactic_dex": "asco2021 plus oral dexamethasone 10 mg on days 0, 1 and 2",
    "early_toci": "asco2021 with tocilizumab from CRS grade 1",
    "anakinra_prophylaxis": "asco2021 plus anakinra 100 mg every 12 h to day 5",
    "zuma1_c12": "ZUMA-1 cohorts 1-2 (2015-2017): tocilizumab at Lee CRS >= 2, steroids held until grade 3",
    "zuma1_c3": "ZUMA-1 cohort 3: cohorts 1-2 management plus tocilizumab on day 2",
    "zuma1_c4": "ZUMA-1 cohort 4: steroids from neurologic event grade 1, earlier tocilizumab and steroids for CRS",
    "zuma1_c6": "ZUMA-1 cohort 6: cohort 4 management plus oral dexamethasone 10 mg on days 0-2",
    "penn_chop": "Penn/CHOP algorithm (JULIET, ELIANA): tocilizumab for severe (Penn >= 3) CRS",
    "chop_preemptive_toci": "Penn/CHOP algorithm plus tocilizumab at persistent fever (CHOP, high-burden B-ALL)",
    "transcend": "TRANSCEND NHL 001: tocilizumab at Lee CRS >= 2, steroids at CRS >= 3 or neurologic events >= 2",
    "karmma": "KarMMa: tocilizumab at Lee CRS >= 2 or grade 1 lasting 24 h, steroids at CRS >= 3",
    "cartitude1": "CARTITUDE-1: ASCO-like (ASTCT) with tocilizumab at CRS grade 1 lasting 24 h",
    "fred_hutch_2016": "Fred Hutch 2014-2016 (Hay, Gust): tocilizumab and steroids for grade >= 3 CRS or neurotoxicity",
    "mdacc_anakinra": "asco2021 plus prophylactic anakinra 100 mg every 12 h on days 0-7 (MDACC)",
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
OTHER_TRIGGERS_OFF = {"dex_crs2_after_toci_doses": NEVER, "toci_grade1_after_days": 1e9,
                      "toci_fever_assessments_in_24h": NEVER, "toci_prophylaxis_day": -1.0,
                      "dex_grade1_after_days": 1e9}


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

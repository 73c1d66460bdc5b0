"""From physiology to bedside observations: one patient, one assessment.

Each function maps model quantities to the columns of the observation table
(shared contract, docs/grading.md) through explicit thresholds that are
parameters (group "readout" in `vpop.model.parameters`). Signs worse within the
interval since the previous assessment (highest temperature, lowest blood
pressure, highest oxygen need, deepest encephalopathy) are read from the
interval's worst values; biomarkers are read at the assessment time.

Nothing here is random except the seizure draw, which uses the patient's own
key folded with the assessment index, so a patient's seizures are the same
every run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vpop.model import equations as model
from vpop.observation.encoding import CONSCIOUSNESS, CEREBRAL_EDEMA, O2_DEVICES, SEIZURE

# ICE items in the order encephalopathy takes them away: writing and attention
# go first, orientation next, naming and following commands last.
ICE_LOSS_ORDER: tuple[str, ...] = (
    "writes_sentence",
    "counts_back",
    "orientation_year",
    "orientation_hospital",
    "naming_3",
    "orientation_month",
    "orientation_city",
    "naming_2",
    "follows_commands",
    "naming_1",
)

O2 = {name: i for i, name in enumerate(O2_DEVICES)}
LOC = {name: i for i, name in enumerate(CONSCIOUSNESS)}
SZ = {name: i for i, name in enumerate(SEIZURE)}
EDEMA = {name: i for i, name in enumerate(CEREBRAL_EDEMA)}


def interval_signs(t, y, p):
    """Quantities whose worst value over an interval is reported (all maximised)."""
    g = model.signals(y, p)
    s = g["s"]
    return (g["fever_rise"], -g["map_mmhg"], g["fio2_need"], s["neuro"], s["qalb"], s["csf_il6"])


def haemodynamics(map_min, p):
    """Support needed to hold MAP >= 65 mmHg, from the lowest unsupported MAP."""
    # A child's limits sit `map_age_shift` below the adult's (vpop.population.sampler.parameters_of).
    shift = p["map_age_shift"]
    hypotension = map_min < p["map_fluids"] + shift
    pressors = jnp.where(map_min < p["map_two_pressors"] + shift, 2,
                         jnp.where(map_min < p["map_one_pressor"] + shift, 1, 0))
    vasopressin = map_min < p["map_vasopressin"] + shift
    ne_dose = jnp.where(pressors > 0, p["ne_per_mmhg"] * jnp.maximum(p["map_fluids"] + shift - map_min, 0.0), 0.0)
    return hypotension, pressors.astype(jnp.int32), vasopressin, ne_dose


def oxygen(fio2_need, p):
    """Device, flow and delivered FiO2 meeting the oxygen need."""
    fio2 = jnp.clip(fio2_need, 0.21, 1.0)
    device = jnp.where(
        fio2 <= p["fio2_room_air"],
        O2["none"],
        jnp.where(
            fio2 <= p["fio2_low_flow_max"],
            O2["low_flow"],
            jnp.where(fio2 <= p["fio2_high_flow_max"], O2["high_flow"],
                      jnp.where(fio2 <= p["fio2_bipap_max"], O2["bipap"], O2["mechanical_ventilation"])),
        ),
    )
    low_flow = jnp.clip(jnp.ceil((fio2 - 0.21) / 0.04 - 1e-6), 1.0, 6.0)
    flow = jnp.where(device == O2["none"], 0.0,
                     jnp.where(device == O2["low_flow"], low_flow,
                               jnp.where(device == O2["high_flow"], 40.0, jnp.nan)))
    fio2 = jnp.where(device == O2["none"], 0.21, fio2)
    return device.astype(jnp.int32), flow, fio2


def neurology(neuro_max, qalb_max, p):
    """ICE items, consciousness, motor weakness and cerebral oedema from dysfunction."""
    lost = jnp.clip(jnp.floor((neuro_max - p["ice_first_loss"]) / p["ice_per_point"]) + 1.0, 0.0, 10.0)
    consciousness = (
        (neuro_max >= p["loc_spontaneous"]).astype(jnp.int32)
        + (neuro_max >= p["loc_voice"])
        + (neuro_max >= p["loc_touch"])
        + (neuro_max >= p["loc_unarousable"])
    )
    unarousable = consciousness == LOC["unarousable"]
    lost = jnp.where(unarousable, 10.0, lost)
    items = {name: (rank >= lost) for rank, name in enumerate(ICE_LOSS_ORDER)}
    ice = 10.0 - lost
    motor = neuro_max >= p["motor_weakness_threshold"]
    edematous = neuro_max >= p["edema_neuro_threshold"]
    edema = jnp.where(edematous & (qalb_max >= p["edema_diffuse_qalb"]), EDEMA["diffuse"],
                      jnp.where(edematous & (qalb_max >= p["edema_focal_qalb"]), EDEMA["focal"], EDEMA["none"]))
    capd = jnp.where(unarousable, jnp.nan, jnp.clip(jnp.round(p["capd_per_neuro"] * neuro_max), 0.0, 32.0))
    return items, ice, consciousness.astype(jnp.int32), motor, edema.astype(jnp.int32), capd


def seizure(neuro_max, dt_days, key, row_index, p):
    """Seizure in the interval, drawn from the patient's own stream."""
    # float32 draws whatever the x64 mode, so a patient's seizures do not depend on precision.
    draw = lambda k: jax.random.uniform(jax.random.fold_in(k, row_index), dtype=jnp.float32)  # noqa: E731
    u = draw(key) if key.ndim == 1 else jax.vmap(draw)(key)  # one key, or a batch of keys
    hazard = p["seizure_hazard"] * jnp.maximum(neuro_max - p["seizure_threshold"], 0.0)
    prob = -jnp.expm1(-hazard * dt_days)
    kind = jnp.where(u < prob * p["seizure_prolonged_fraction"], SZ["prolonged_or_repetitive"],
                     jnp.where(u < prob, SZ["rapidly_resolving"], SZ["none"]))
    return kind.astype(jnp.int32)


def organ_toxicity(y, p):
    """CTCAE-style grades of the organ toxicities that legacy CRS scales read."""
    s = y[model.IDX["hypoperfusion"]]
    creatinine_grade = jnp.clip(jnp.floor(s / p["aki_burden_per_grade"]), 0, 4).astype(jnp.int32)
    ferritin = y[model.IDX["ferritin"]]
    ratio = ferritin / p["transaminitis_ferritin"]
    transaminitis_grade = jnp.clip(jnp.floor(jnp.log2(jnp.maximum(ratio, 1e-9))) + 1, 0, 4).astype(jnp.int32)
    return creatinine_grade, transaminitis_grade


def biomarkers(y, p):
    """Biomarker columns at the assessment time."""
    g = model.signals(y, p)
    s = g["s"]
    # CSF albumin = Q x serum albumin; serum albumin falls with capillary leak;
    # albumin is ~60 % of CSF protein.
    serum_albumin = 40.0 * model.albumin_fraction(s["leak"], p)
    csf_albumin = s["qalb"] * 1e-3 * serum_albumin * 1000.0
    return {
        "car_t_cells_per_ul": s["car_effector"] + s["car_memory"],
        "antigen_burden": s["antigen"],
        "ifng_pg_ml": s["ifng"],
        "tnf_pg_ml": s["tnf"],
        "gmcsf_pg_ml": s["gmcsf"],
        "il6_pg_ml": s["il6"],
        "il1b_pg_ml": s["il1"],
        "il1ra_pg_ml": s["il1ra"],
        "il10_pg_ml": s["il10"],
        "crp_mg_l": s["crp"],
        "ferritin_ng_ml": s["ferritin"],
        "fibrinogen_g_l": s["fibrinogen"],
        "ddimer_mg_l": s["ddimer"],
        "platelets_1e9_l": s["platelets"],
        "ang2_ng_ml": s["ang2"],
        "vwf_iu_dl": s["vwf"],
        "map_mmhg": g["map_mmhg"],
        "serum_albumin_g_l": serum_albumin,
        "csf_serum_albumin_ratio": s["qalb"] * 1e-3,
        "csf_protein_mg_l": csf_albumin / 0.6,
        "csf_il6_pg_ml": s["csf_il6"],
        "nfl_pg_ml": s["nfl"],
        "tocilizumab_ug_ml": g["toci_ugml"],
        "dexamethasone_ng_ml": g["dex_ngml"],
    }

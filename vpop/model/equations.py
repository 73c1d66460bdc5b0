"""One patient's biology: the right-hand side of the CRS/ICANS model.

The model is written for a single patient; cohorts `vmap` over it. Every
equation is in production-loss form,

    dy/dt = P(t, y) - D(t, y) * y,    P >= 0, D >= 0,

where P is a non-negative production (synthesis, release, influx, dosing
absorption) and D a non-negative first-order loss rate (clearance,
elimination, decay, consumption). This form is natural for turnover models,
keeps every state non-negative, and exposes the stiff part of the system:
the fast cytokine clearances (half-lives of minutes) live in D, so the
exponential integrator in `vpop.solver.etdrk` treats them exactly while the slow
CAR-T dynamics (days) set the step. `rhs` gives the ordinary f(t, y) for
reference solvers (diffrax, scipy).

`p` is a dict of scalars: the parameter table (`vpop.model.parameters`) plus the
patient's covariates and sensitivities (`vpop.population.sampler`). docs/model.md
writes out every equation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vpop.model.states import STATE_NAMES


# The states are declared once, with units and meanings, in `vpop.model.states`.
N_STATES = len(STATE_NAMES)
IDX = {name: i for i, name in enumerate(STATE_NAMES)}

# Basal stimulus of resting monocytes, so the myeloid state starts near 2 %.
_BASAL_MYELOID_STIMULUS = 0.02
# How sharply the proliferative burst ends at `car_expansion_days` (logistic width, days).
_BURST_SWITCH_DAYS = 0.5


def _relu(x):
    return jnp.maximum(x, 0.0)


def _ignited(x, p):
    """A self-amplifying loop's own stimulus, x^2 / (x + threshold): no gain at rest, linear once lit.

    Two loops feed themselves (monocytes' TNF/IL-1; IL-6 and the endothelium, lit here on the
    endothelium's own IL-6 output).
    With a linear gain at rest, a sensitive enough patient's loop ignites from nothing, and CRS or
    ICANS appear without CAR-T cells; with this form every resting state is stable and the loops are
    lit only by CAR-T signals (Norelli 2018, Giavridis 2018: CAR-T activation of monocytes starts CRS).
    """
    return x * x / (x + p["loop_ignition_threshold"])


def basal_myeloid(p):
    """Resting myeloid activation: the fixed point of the myeloid equation under the basal stimulus alone."""
    rate = p["myeloid_activation_rate"] * _BASAL_MYELOID_STIMULUS
    return rate / (rate + p["myeloid_deactivation"])


def dex_suppression(level, p):
    """Fractional suppression by dexamethasone at effect-site `level` (ng/mL): Emax model."""
    return p["dex_emax"] * level / (level + p["dex_ic50"])


def drug_levels(y, p):
    """Drug concentrations and their effects, from the drug states."""
    toci_ugml = y[IDX["toci"]] / p["toci_volume"]
    toci_block = toci_ugml / (toci_ugml + p["toci_ic50"])
    dex_ngml = 1000.0 * y[IDX["dex_central"]] / p["dex_central_volume"]
    # Suppression follows the effect site, not plasma: glucocorticoids act through gene expression, so
    # dexamethasone's effect lasts 36-54 h although its plasma half-life is ~4 h.
    dex_inh = dex_suppression(y[IDX["dex_effect"]], p)
    anakinra_pgml = 1e6 * y[IDX["anakinra"]] / p["anakinra_volume"]
    return toci_ugml, toci_block, dex_ngml, dex_inh, anakinra_pgml


def albumin_fraction(leak, p):
    """Serum albumin relative to normal: it falls with capillary leak (read-out and oncotic gradient)."""
    return 1.0 - p["albumin_loss_per_leak"] * jnp.minimum(leak, 1.0)


def oncotic_gradient(leak, p):
    """Plasma-to-interstitial colloid osmotic gradient relative to normal (1 at rest).

    The plasma side falls with serum albumin; the interstitial side, a fraction
    `interstitial_oncotic_fraction` of the plasma's at rest, stays. With the lung's 14 of 28 mmHg the
    gradient falls twice as fast as albumin: to 0.3 of normal at full leak.
    """
    f = p["interstitial_oncotic_fraction"]
    return _relu(albumin_fraction(leak, p) - f) / (1.0 - f)


def signals(y, p):
    """Algebraic quantities shared by the equations and the read-outs."""
    s = {name: y[i] for name, i in IDX.items()}
    toci_ugml, toci_block, dex_ngml, dex_inh, anakinra_pgml = drug_levels(y, p)
    il6_signal = s["il6"] * (1.0 - toci_block)  # IL-6 reaching unblocked receptors
    # Baseline IL-6 is already in the baseline CRP, fibrinogen and endothelium; only the excess drives them.
    il6_excess = _relu(il6_signal - p["il6_basal"])
    il1_signal = s["il1"] / (1.0 + (s["il1ra"] + anakinra_pgml) / p["il1ra_block_k"])
    hepatic_il6 = il6_excess / (il6_excess + p["il6_signal_ec50"])
    vasoplegia = (s["tnf"] / p["endo_ec_tnf"] + il1_signal / p["endo_ec_il1"])
    vasoplegia = vasoplegia / (1.0 + vasoplegia)
    map_mmhg = p["map_baseline"] - p["map_per_leak"] * s["leak"] - p["map_per_vasoplegia"] * vasoplegia
    fio2_need = 0.21 + p["fio2_per_leak"] * _relu(p["lung_sensitivity"] * s["leak"] - p["leak_hypoxia_threshold"])
    pyrogen = (
        il6_signal / p["fever_ec_il6"] + il1_signal / p["fever_ec_il1"] + s["tnf"] / p["fever_ec_tnf"]
    )
    fever_rise = p["fever_max_rise"] * pyrogen / (pyrogen + p["fever_drive_ec50"])
    # Serum factors cross into the CNS in proportion to barrier permeability.
    barrier = p["csf_il6_partition"] * s["qalb"] / p["qalb0"]
    il1_cns = s["il1"] * barrier / (
        1.0 + (s["il1ra"] * barrier + anakinra_pgml * p["anakinra_cns_fraction"]) / p["il1ra_block_k"]
    )
    return dict(
        s=s,
        toci_ugml=toci_ugml,
        toci_block=toci_block,
        dex_ngml=dex_ngml,
        dex_inh=dex_inh,
        anakinra_pgml=anakinra_pgml,
        il6_signal=il6_signal,
        il6_excess=il6_excess,
        il1_signal=il1_signal,
        hepatic_il6=hepatic_il6,
        map_mmhg=map_mmhg,
        fio2_need=fio2_need,
        fever_rise=fever_rise,
        barrier=barrier,
        il1_cns=il1_cns,
    )


def production_loss(t, y, p):
    """Production P(t, y) >= 0 and loss rate D(t, y) >= 0 of every state."""
    g = signals(y, p)
    s = g["s"]
    dex_inh = g["dex_inh"]
    secretion = 1.0 - dex_inh  # steroids suppress cytokine secretion and activation

    # CAR-T: antigen-driven logistic expansion, contraction, memory.
    stim = s["antigen"] / (s["antigen"] + p["car_antigen_ec50"])
    total_car = s["car_effector"] + s["car_memory"]
    # Antigen-driven plus homeostatic proliferation; the latter is fuelled by
    # lymphodepletion (IL-7/IL-15) and fades as lymphocytes return.
    homeostatic = p["car_homeostatic_prolif"] * p["ld_intensity"] * jnp.exp(-t / p["ld_cytokine_decay"])
    # Engraftment: expansion needs cells, not a fraction of one. Counted in infused-cell equivalents
    # (the blood level one infused cell gives), it is half-effective at `car_engraftment_cells`; at
    # clinical doses (1e7-1e9 cells) the factor is 1 to float precision, below one cell the clone contracts
    # (its proliferation then falls under the contraction rate).
    cells = s["car_effector"] * 7.0e4 * p["weight_kg"] / p["car_blood_fraction"]
    short = p["car_engraftment_cells"] / jnp.maximum(cells, 1e-30)  # written so no power overflows float32
    short = short * short
    engraftment = 1.0 / (1.0 + short * short)  # Hill 4: establishing a lineage is all or none
    # Antigen drives a programmed burst (Stein 2019: expansion to Tmax, then contraction whatever antigen
    # remains): the peak is set by the dose and the burst, not by how long a shrinking tumour lasts.
    burst = jax.nn.sigmoid((p["car_expansion_days"] - t) / _BURST_SWITCH_DAYS)
    prolif = (p["car_prolif_max"] * stim * burst + homeostatic) * p["car_prolif_factor"] * engraftment
    # Antigen-engaged effectors that secrete (cells/uL): secretion belongs to the proliferative burst; cells
    # past it are terminally differentiated and secrete little (Stein 2019's expansion phase; Kirouac 2023).
    engaged = s["car_effector"] * stim * burst
    # The infused cells' first activation: T cells release most of their IFN-gamma and TNF in the day or two
    # after first antigen contact (Hosseini 2020 drives cytokine release by activation events), so CRS starts
    # on day 1-3, before CAR-T are counted in blood. Proportional to the dose, so it vanishes with it.
    secreting = engaged + p["car_first_activation_boost"] * stim * s["car_first_activation"]
    # T cells first activated under glucocorticoid cover keep a lower cytokine output after the drug is gone
    # (Ramirez 1996: priming under glucocorticoid shifts CD4 cells away from Th1). The infused cells meet antigen
    # as they leave blood (car_homing_days), so the cohort keeps the suppression at those times, weighted by
    # the homing flux exp(-t / car_homing_days): prophylaxis on days 0-2 lowers the whole course, while
    # steroids given once CRS has started (the cells already primed) act only while they last.
    still_homing = jnp.exp(-t / p["car_homing_days"])  # share of the infused cells not yet at antigen
    primed = s["car_gc_primed"] / jnp.maximum(1.0 - still_homing, 1e-6)
    secreting = secreting * (1.0 - p["gc_priming_imprint"] * jnp.clip(primed, 0.0, 1.0))
    P_eff = prolif * s["car_effector"] + p["car_memory_reactivation"] * stim * s["car_memory"]
    D_eff = p["car_contraction"] + p["car_to_memory"] + prolif * total_car / p["car_capacity"]
    P_mem = p["car_to_memory"] * s["car_effector"]
    D_mem = p["car_memory_decline"] + p["car_memory_reactivation"] * stim
    P_ag = p["tumor_growth"] * s["antigen"]
    # Killing per tumour cell falls as targets outnumber effectors (effector:target ratio), so a bulky
    # tumour shrinks more slowly and keeps stimulating CAR-T past the first week.
    D_ag = p["tumor_kill_max"] * s["car_effector"] / (
        s["car_effector"] + p["tumor_kill_ec50"] + p["tumor_kill_target_load"] * s["antigen"])

    # Monocyte/macrophage amplification loop, damped by IL-10 and steroids.
    # Monocytes' own TNF and IL-1 amplify their activation only past a threshold (Hill 2): the
    # autocrine loop has no gain at rest, so it cannot ignite without CAR-T (a stable resting state
    # for every patient, however sensitive) and still amplifies once CAR-T signals have started it.
    autocrine = s["tnf"] / p["myeloid_ec_tnf"] + g["il1_signal"] / p["myeloid_ec_il1"]
    autocrine = _ignited(autocrine, p)
    myeloid_stimulus = (
        s["ifng"] / p["myeloid_ec_ifng"]
        + s["gmcsf"] / p["myeloid_ec_gmcsf"]
        + autocrine
        + secreting / p["myeloid_ec_contact"]
    )
    myeloid_stimulus = (
        _BASAL_MYELOID_STIMULUS
        + p["myeloid_sensitivity"] * myeloid_stimulus * secretion / (1.0 + s["il10"] / p["il10_inhibition_ic50"])
    )
    act = p["myeloid_activation_rate"] * myeloid_stimulus
    P_my = act
    D_my = act + p["myeloid_deactivation"]
    m = s["myeloid"]
    m2 = m * m
    # Resting monocytes' output is part of the baseline levels (il6_basal, ferritin0, ...):
    # myeloid production terms count only activation above rest, so no CAR-T means no drift.
    m_b = basal_myeloid(p)
    m_x = _relu(m - m_b)
    m2_x = _relu(m2 - m_b * m_b)
    cyto = p["cytokine_sensitivity"] * secretion

    P_ifng = cyto * p["ifng_per_car"] * secreting
    P_gm = cyto * p["gmcsf_per_car"] * secreting
    P_tnf = cyto * (p["tnf_per_myeloid"] * m_x + p["tnf_per_car"] * secreting)
    P_il1 = cyto * p["il1_per_myeloid"] * m_x
    P_il1ra = p["il1ra_clearance"] * p["il1ra_basal"] + cyto * p["il1ra_per_myeloid"] * m_x
    # Macrophages make most of their IL-6 in answer to IL-1 (Giavridis 2018: IL-1 blockade cut IL-6 and
    # abolished CRS lethality; Norelli 2018): a fraction `il6_il1_dependence` of their output needs IL-1
    # signalling, which is saturated in any storm but is taken away by anakinra.
    il1_help = 1.0 - p["il6_il1_dependence"] * p["il6_il1_ec50"] / (g["il1_signal"] + p["il6_il1_ec50"])
    P_il6 = (
        (p["il6_clearance_linear"] + p["il6_clearance_receptor"]) * p["il6_basal"]
        + cyto * (p["il6_per_myeloid"] * il1_help * m2_x + p["il6_per_endothelium"] * _ignited(s["endothelium"], p)
                  + p["il6_per_car"] * secreting)
    )
    D_il6 = p["il6_clearance_linear"] + p["il6_clearance_receptor"] * (1.0 - g["toci_block"])
    P_il10 = cyto * (p["il10_per_myeloid"] * m_x + p["il10_per_car"] * secreting)

    # Endothelial activation with the Ang-2 feed-forward loop.
    ang2_excess = _relu(s["ang2"] - 2.0)
    endo_stimulus = (
        s["tnf"] / p["endo_ec_tnf"]
        + g["il1_signal"] / p["endo_ec_il1"]
        + g["il6_excess"] / p["endo_ec_il6"]
        + s["ifng"] / p["endo_ec_ifng"]
    )
    endo_stimulus = (
        p["endothelial_sensitivity"] * endo_stimulus * (1.0 + p["ang2_feedforward"] * ang2_excess) * (1.0 - 0.5 * dex_inh)
    )
    e_act = p["endo_activation_rate"] * endo_stimulus
    P_endo = e_act
    D_endo = e_act + p["endo_recovery"]
    e = s["endothelium"]
    e2 = e * e
    P_ang2 = p["ang2_clearance"] * (p["ang2_0"] + p["ang2_release"] * e)
    P_vwf = p["vwf_clearance"] * (p["vwf_0"] + p["vwf_release"] * e)
    P_leak = p["leak_rate"] * e2
    # Leaked plasma returns down the oncotic gradient, which the leak itself erodes (Starling): plasma albumin
    # falls while the interstitial pressure stays, so resorption slows as leak grows and a severe leak feeds
    # itself (oncotic_gradient).
    D_leak = p["leak_return"] * oncotic_gradient(s["leak"], p)

    # Acute phase and coagulation.
    P_crp = p["crp_clearance"] * (p["crp0"] + p["crp_max"] * g["hepatic_il6"])
    P_fer = p["ferritin_clearance"] * (p["ferritin0"] + p["ferritin_per_myeloid"] * m2_x)
    consumption = p["fibrinogen_consumption"] * e2 * e
    P_fib = p["fibrinogen_turnover"] * p["fibrinogen0"] * (1.0 + p["fibrinogen_il6_gain"] * g["hepatic_il6"])
    D_fib = p["fibrinogen_turnover"] + consumption
    P_dd = p["ddimer_clearance"] * p["ddimer_basal"] + p["ddimer_per_fibrin"] * consumption * s["fibrinogen"]
    marrow = 1.0 - p["ld_marrow_suppression"] * p["ld_intensity"] * jnp.exp(-t / p["marrow_recovery_time"])
    P_plt = marrow * p["platelets0"] / p["platelet_lifespan"]
    D_plt = 1.0 / p["platelet_lifespan"] + p["platelet_consumption"] * e2

    # Blood-brain barrier, CNS inflammation, neuronal injury.
    bbb_drive = p["bbb_sensitivity"] * p["bbb_gain"] * e2 * (1.0 + s["glia"]) * (1.0 - 0.5 * dex_inh)
    P_q = p["qalb_relaxation"] * p["qalb0"] * (1.0 + bbb_drive)
    barrier = g["barrier"]
    P_csf = p["csf_turnover"] * (barrier * s["il6"] + p["glia_il6"] * s["glia"])
    # CNS myeloid cells are driven from the blood, not by their own IL-6: what reaches them through the
    # barrier (serum IL-6 above rest, GM-CSF, IL-1) and antigen-engaged CAR-T cells. A glia -> CSF IL-6 ->
    # glia loop would let a sensitive patient's CNS inflame without systemic inflammation and stay inflamed
    # for weeks after it; ICANS instead follows CRS (Gust 2017: 28/28 severe cases) and resolves as serum
    # cytokines fall (Santomasso 2018). Glia still make CSF IL-6 (above serum in severe ICANS), as output.
    serum_il6 = barrier * _relu(s["il6"] - p["il6_basal"]) / p["glia_ec_csf_il6"]
    glia_stimulus = (
        serum_il6
        + barrier * s["gmcsf"] / p["glia_ec_gmcsf"]
        + g["il1_cns"] / p["glia_ec_il1"]
        # engaged cells only: CAR-T cells sit in the CSF of patients without ICANS too (Gust 2017)
        + barrier * engaged / p["glia_ec_car"]
    )
    # Glia see the dexamethasone that crosses into the CSF, 15 % of plasma (Balis 1987), so a dose that
    # silences serum cytokines damps CNS inflammation less (ZUMA-1 cohort 4: 17 % neurologic events >= 3
    # under steroids from grade 1).
    dex_inh_cns = dex_suppression(p["dex_csf_fraction"] * s["dex_effect"], p)
    glia_act = p["glia_activation_rate"] * p["cns_sensitivity"] * glia_stimulus * (1.0 - dex_inh_cns)
    P_glia = glia_act
    D_glia = glia_act + p["glia_deactivation"]
    vulnerability = p["neuro_sensitivity"] * (p["nfl0"] / 12.0) ** p["nfl_vulnerability_exponent"]
    P_neuro = p["neuro_injury_rate"] * vulnerability * s["glia"] ** 2
    P_nfl = p["nfl_clearance"] * p["nfl0"] + p["nfl_release"] * s["neuro"]

    # Organ injury accumulators (no loss).
    P_hypo = _relu(p["map_perfusion_threshold"] + p["map_age_shift"] - g["map_mmhg"]) / 10.0
    P_shock = (_relu(p["map_death_threshold"] + p["map_age_shift"] - g["map_mmhg"]) / 10.0
               + 10.0 * _relu(g["fio2_need"] - p["fio2_death"]))

    # Drugs.
    toci_conc = g["toci_ugml"]
    D_toci = p["toci_clearance"] / p["toci_volume"] + p["toci_vmax"] / (p["toci_volume"] * (p["toci_km"] + toci_conc))
    k_q_c = p["dex_intercompartmental"] / p["dex_central_volume"]
    k_q_p = p["dex_intercompartmental"] / p["dex_peripheral_volume"]
    P_dex_c = p["dex_absorption"] * s["dex_depot"] + k_q_p * s["dex_peripheral"]
    D_dex_c = p["dex_clearance"] / p["dex_central_volume"] + k_q_c
    P_dex_p = k_q_c * s["dex_central"]
    D_ana = p["anakinra_clearance"] / p["anakinra_volume"]

    P = {
        "car_effector": P_eff, "car_memory": P_mem, "car_homing": 0.0,
        "car_first_activation": s["car_homing"] / p["car_homing_days"],
        "car_gc_primed": dex_inh * still_homing / p["car_homing_days"],
        "antigen": P_ag, "myeloid": P_my,
        "ifng": P_ifng, "gmcsf": P_gm, "tnf": P_tnf, "il1": P_il1, "il1ra": P_il1ra, "il6": P_il6, "il10": P_il10,
        "endothelium": P_endo, "ang2": P_ang2, "vwf": P_vwf, "leak": P_leak,
        "crp": P_crp, "ferritin": P_fer, "fibrinogen": P_fib, "ddimer": P_dd, "platelets": P_plt,
        "qalb": P_q, "csf_il6": P_csf, "glia": P_glia, "neuro": P_neuro, "nfl": P_nfl,
        "hypoperfusion": P_hypo, "shock": P_shock,
        "toci": 0.0, "dex_depot": 0.0, "dex_central": P_dex_c, "dex_peripheral": P_dex_p,
        "dex_effect": p["dex_effect_equilibration"] * g["dex_ngml"], "anakinra": 0.0,
    }
    D = {
        "car_effector": D_eff, "car_memory": D_mem, "car_homing": 1.0 / p["car_homing_days"],
        "car_first_activation": 1.0 / p["car_first_activation_days"], "car_gc_primed": 0.0,
        "antigen": D_ag, "myeloid": D_my,
        "ifng": p["ifng_clearance"], "gmcsf": p["gmcsf_clearance"], "tnf": p["tnf_clearance"],
        "il1": p["il1_clearance"], "il1ra": p["il1ra_clearance"], "il6": D_il6, "il10": p["il10_clearance"],
        "endothelium": D_endo, "ang2": p["ang2_clearance"], "vwf": p["vwf_clearance"], "leak": D_leak,
        "crp": p["crp_clearance"], "ferritin": p["ferritin_clearance"], "fibrinogen": D_fib,
        "ddimer": p["ddimer_clearance"], "platelets": D_plt,
        "qalb": p["qalb_relaxation"], "csf_il6": p["csf_turnover"], "glia": D_glia, "neuro": p["neuro_recovery"],
        "nfl": p["nfl_clearance"], "hypoperfusion": 0.0, "shock": 0.0,  # accumulators: no loss
        "toci": D_toci, "dex_depot": p["dex_absorption"], "dex_central": D_dex_c, "dex_peripheral": k_q_p,
        "dex_effect": p["dex_effect_equilibration"],
        "anakinra": D_ana,
    }
    return assemble(P, D, like=m)


def assemble(P: dict, D: dict, like):
    """Stack productions and loss rates given by state name into the declared order.

    Every declared state must have both, and no other name may appear: an equation
    written for a state that does not exist, or a state left without one, fails here
    (at trace time, so it costs nothing in the compiled course).
    """
    for what, terms in (("production", P), ("loss rate", D)):
        missing = [n for n in STATE_NAMES if n not in terms]
        unknown = [n for n in terms if n not in IDX]
        if missing or unknown:
            raise ValueError(f"{what} terms: missing for {missing}, undeclared states {unknown}")
    shape = jnp.shape(like)

    def stack(terms):
        return jnp.stack([jnp.broadcast_to(jnp.asarray(terms[n], like.dtype), shape) for n in STATE_NAMES])

    return stack(P), stack(D)


def rhs(t, y, p):
    """dy/dt for one patient (for reference solvers and gradients)."""
    P, D = production_loss(t, y, p)
    return P - D * y


def initial_state(p):
    """State at CAR-T infusion (day 0), after lymphodepletion."""
    car0 = p["car_dose_per_kg"] * p["car_blood_fraction"] / 7.0e4  # 70 mL blood per kg = 7e4 uL/kg
    m0 = basal_myeloid(p)
    y0 = {
        "car_effector": car0,
        "car_homing": car0,
        "antigen": p["tumor_burden"],
        "myeloid": m0,
        "il1ra": p["il1ra_basal"],
        "il6": p["il6_basal"],
        "ang2": p["ang2_0"],
        "vwf": p["vwf_0"],
        "crp": p["crp0"],
        "ferritin": p["ferritin0"],
        "fibrinogen": p["fibrinogen0"],
        "ddimer": p["ddimer_basal"],
        "platelets": p["platelets0"],
        "qalb": p["qalb0"],
        "csf_il6": p["csf_il6_partition"] * p["il6_basal"],
        "nfl": p["nfl0"],
    }
    ref = jnp.asarray(p["tumor_burden"])
    return jnp.stack([jnp.asarray(y0.get(name, 0.0), dtype=ref.dtype) * jnp.ones_like(ref) for name in STATE_NAMES])

"""The parameter table of the one-patient model.

Every parameter has a name, unit, typical value, source and plausible range.
The table is the single source of truth: `docs/model.md` renders it
(`python -m vpop.model.parameters` prints the Markdown), configs override values by
name, and the virtual population multiplies typical values by covariate
effects and exp(eta).

Sources are short citations; "calibrated" means the value was chosen so that
the default cohort reproduces the published targets listed in docs/model.md,
within the plausible range given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


LN2 = math.log(2.0)


def _k(half_life_days: float) -> float:
    """First-order rate constant (1/d) from a half-life in days."""
    return LN2 / half_life_days


MIN = 1.0 / (24.0 * 60.0)  # one minute, in days
HOUR = 1.0 / 24.0


@dataclass(frozen=True)
class ParamSpec:
    name: str
    value: float
    unit: str
    low: float
    high: float
    source: str
    description: str
    group: str


def _p(group, name, value, unit, low, high, source, description):
    return ParamSpec(name, float(value), unit, float(low), float(high), source, description, group)


PARAMETERS: tuple[ParamSpec, ...] = (
    # --- CAR-T cellular kinetics and antigen -------------------------------
    _p("car_t", "car_prolif_max", 0.9, "1/d", 0.5, 2.0,
       "Stein 2019 (net doubling 0.78 d = 0.89/d, plus contraction); Liso-cel popCK 2021 (doubling 0.755 d)",
       "maximal antigen-driven CAR-T proliferation rate"),
    _p("car_t", "car_homeostatic_prolif", 0.4, "1/d", 0.0, 1.0, "calibrated; Kimmel 2021 (expansion after lymphodepletion without antigen switch)",
       "homeostatic CAR-T proliferation at day 0 after standard lymphodepletion"),
    _p("car_t", "ld_cytokine_decay", 10.0, "d", 3.0, 30.0, "calibrated (IL-7/IL-15 fall as lymphocytes recover)", "time constant of the homeostatic drive"),
    _p("car_t", "car_contraction", 0.16, "1/d", 0.08, 0.35,
       "Stein 2019 (alpha 0.16/d, initial decline t1/2 4.3 d); Liso-cel popCK 2021 (t1/2 5.0 d)",
       "effector CAR-T contraction (death) rate"),
    _p("car_t", "car_to_memory", 0.00124, "1/d", 0.0002, 0.01,
       "Stein 2019 (FB*(alpha-beta), FB 0.0079)", "effector to memory conversion"),
    _p("car_t", "car_memory_decline", 0.0032, "1/d", 0.001, 0.01,
       "Stein 2019 (beta 0.0032/d, terminal t1/2 220 d)", "memory CAR-T decline rate"),
    _p("car_t", "car_memory_reactivation", 0.05, "1/d", 0.0, 0.5, "calibrated",
       "antigen-driven return of memory cells to the effector pool"),
    _p("car_t", "car_antigen_ec50", 0.02, "antigen units", 0.005, 3.0,
       "set with the kinetics re-parameterisation: stimulation saturates down to 2 % of the median burden, so "
       "expansion is driven by the dose and the burst, weakly by burden (Liu 2021: saturable stimulation; "
       "Singh 2021, Hardiansyah & Ng 2019: burden matters more than dose, not overwhelmingly); up to 3 for "
       "circulating leukaemic targets, met in proportion to their number (B-ALL preset 1.6: CHOP's 40 % blast "
       "line, Kadauke 2020; docs/populations.md)",
       "antigen level giving half-maximal CAR-T stimulation"),
    _p("car_t", "car_capacity", 1500.0, "cells/uL", 200.0, 10000.0, "Kimmel 2021 (K_C 7e10 cells, scaled to blood); calibrated",
       "carrying capacity of CAR-T in blood"),
    _p("car_t", "car_blood_fraction", 0.0125, "-", 0.002, 0.05,
       "Kimmel 2021 (0.36 cells/uL in blood after 1.8e8 cells)", "fraction of infused CAR-T seen in blood at day 0"),
    _p("car_t", "car_engraftment_cells", 1.5, "cells", 1.0, 10.0,
       "structural: an expanding clone starts from at least one cell (a single CAR-T clone can expand, Fraietta "
       "Nature 2018); the continuous model needs the threshold explicitly",
       "CAR-T cells, counted in infused-cell equivalents, at which expansion is half-effective (Hill 4): "
       "fewer than one infused cell cannot engraft"),
    _p("car_t", "ld_expansion_gain", 0.35, "-", 0.0, 1.0, "calibrated; Hay 2017 (Cy/Flu lymphodepletion predicts CRS)",
       "increase in proliferation per unit lymphodepletion intensity above none"),
    _p("car_t", "tumor_growth", 0.02, "1/d", 0.0, 0.2, "Kimmel 2021 (r_B 0.01-0.5/d)", "tumour growth rate"),
    _p("car_t", "tumor_kill_max", 1.15, "1/d", 0.5, 2.0, "Kimmel 2021 (gamma_B 1.15/d)", "maximal CAR-T killing rate of antigen-bearing cells"),
    _p("car_t", "tumor_kill_ec50", 5.0, "cells/uL", 2.0, 100.0, "calibrated (k_B in Kimmel 2021)", "CAR-T level giving half-maximal killing"),
    _p("car_t", "tumor_kill_target_load", 150.0, "cells/uL per antigen unit", 0.0, 300.0,
       "structural: effector-to-target-ratio killing (Singh 2021, Hardiansyah & Ng 2019); value set so a median "
       "LBCL tumour is not cleared within a week (ZUMA-1 best complete response 54 %, Neelapu 2017)",
       "CAR-T level per unit of antigen burden that halves the killing rate: a bulky tumour dilutes the "
       "effectors, so its fraction killed per day is lower"),
    _p("car_t", "car_expansion_days", 9.3, "d", 5.0, 14.0,
       "Stein 2019 (expansion phase to Tmax 9.3 d, tisa-cel, 4-1BB); CD28 products shorter (axi-cel preset 7.5: "
       "ZUMA-7 CAR-T Tmax median 8 d, IQR 8-9), cilta-cel longer (CARTITUDE-1 Tmax median 12.7 d)",
       "length of the antigen-driven proliferative burst: engaged CAR-T stop dividing after it whatever "
       "antigen remains (a programmed clonal burst)"),
    _p("car_t", "gc_priming_imprint", 1.0, "-", 0.0, 1.0,
       "Ramirez 1996 (CD4 T cells primed under glucocorticoid make little IFN-gamma on restimulation without it: a "
       "Th2 shift); 1 = cells keep the suppression they were first activated under. ZUMA-1 cohort 6 (Oluwole "
       "2021) checked, not fitted: docs/model.md",
       "share of the glucocorticoid suppression at a CAR-T cell's first activation that its cytokine output keeps "
       "after the drug is gone"),
    _p("car_t", "car_homing_days", 0.75, "d", 0.25, 2.0,
       "Santurio 2025 and Liu 2021 (a distribution phase precedes expansion: infused cells leave blood for "
       "lymphoid and tumour sites within about a day)",
       "mean time infused cells take to reach antigen"),
    _p("car_t", "car_first_activation_days", 1.0, "d", 0.5, 3.0,
       "Hosseini 2020 (T-cell activation rate 9.83/d; cytokine release follows activation events, which is why "
       "step-up dosing lowers the first-dose IL-6 peak); T-cell IFN-gamma/TNF output peaks 1-2 d after first "
       "antigen contact; CRS onset day 1-3 with CAR-T still scarce in blood (ZUMA-1, KarMMa)",
       "mean time the infused cells spend in the secretory burst of their first activation"),
    _p("car_t", "car_first_activation_boost", 25.0, "-", 0.0, 60.0,
       "calibrated; Hosseini 2020 (cytokines per activation event); ZUMA-1 CRS onset day 2 (1-12), KarMMa day 1, "
       "CARTITUDE-1 (low dose) day 7",
       "cytokine output of an infused cell in its first activation, relative to an antigen-engaged cell of the "
       "expansion phase"),
    # --- Cytokines ---------------------------------------------------------
    _p("cytokine", "ifng_clearance", _k(30 * MIN), "1/d", _k(35 * MIN), _k(25 * MIN),
       "Kurzrock 1985 (rIFN-gamma t1/2 25-35 min)", "IFN-gamma elimination"),
    _p("cytokine", "ifng_per_car", 400.0, "pg/mL/d per cell/uL", 50.0, 3000.0, "calibrated", "IFN-gamma secretion by antigen-engaged CAR-T"),
    _p("cytokine", "gmcsf_clearance", _k(60 * MIN), "1/d", _k(68 * MIN), _k(20 * MIN),
       "Cebon 1990 (rhGM-CSF t1/2 20 and 68 min)", "GM-CSF elimination"),
    _p("cytokine", "gmcsf_per_car", 120.0, "pg/mL/d per cell/uL", 10.0, 1000.0, "calibrated (higher for CD28 products)",
       "GM-CSF secretion by antigen-engaged CAR-T"),
    _p("cytokine", "tnf_clearance", _k(20 * MIN), "1/d", _k(49 * MIN), _k(5 * MIN),
       "rhTNF in humans, Clin Sci 1994 (2-cmt t1/2 5.1 and 49 min)", "TNF-alpha elimination"),
    _p("cytokine", "tnf_per_myeloid", 1000.0, "pg/mL/d", 200.0, 20000.0, "calibrated; Norelli 2018", "TNF-alpha from activated myeloid cells (at activation 1)"),
    _p("cytokine", "tnf_per_car", 40.0, "pg/mL/d per cell/uL", 0.0, 500.0, "calibrated", "TNF-alpha from antigen-engaged CAR-T"),
    _p("cytokine", "il1_clearance", _k(20 * MIN), "1/d", _k(41 * MIN), _k(3 * MIN),
       "rat IL-1beta t1/2 19-41 min (Cancer Res 1990; Reimers)", "IL-1beta elimination"),
    _p("cytokine", "il1_per_myeloid", 600.0, "pg/mL/d", 100.0, 10000.0, "calibrated; Norelli 2018, Giavridis 2018 (monocytes are the IL-1 source)",
       "IL-1beta from activated myeloid cells"),
    _p("cytokine", "il1ra_clearance", _k(5 * HOUR), "1/d", _k(7.6 * HOUR), _k(3.6 * HOUR),
       "anakinra label (t1/2 4-6 h), taken for endogenous IL-1Ra", "IL-1Ra elimination"),
    _p("cytokine", "il1ra_basal", 300.0, "pg/mL", 50.0, 1000.0, "calibrated", "baseline serum IL-1Ra"),
    _p("cytokine", "il1ra_per_myeloid", 40000.0, "pg/mL/d", 1000.0, 200000.0, "calibrated; Teachey 2016 (IL-1Ra rises in severe CRS)",
       "IL-1Ra from activated myeloid cells"),
    _p("cytokine", "il1ra_block_k", 3000.0, "pg/mL", 300.0, 30000.0, "calibrated (IL-1Ra must exceed IL-1 many-fold to block)",
       "IL-1Ra (or anakinra) level halving IL-1 signalling"),
    _p("cytokine", "il6_clearance_linear", _k(40 * MIN), "1/d", _k(80 * MIN), _k(20 * MIN),
       "Hosseini 2020 (total t1/2 20 min); split calibrated", "IL-6 clearance not mediated by IL-6R"),
    _p("cytokine", "il6_clearance_receptor", _k(40 * MIN), "1/d", _k(120 * MIN), _k(20 * MIN),
       "Nishimoto 2008 (IL-6R-mediated clearance, blocked by tocilizumab)", "IL-6 clearance through IL-6R (blocked by tocilizumab)"),
    _p("cytokine", "il6_basal", 3.0, "pg/mL", 1.0, 10.0, "normal serum IL-6 < 7 pg/mL (reference summaries)", "baseline serum IL-6"),
    _p("cytokine", "il6_per_myeloid", 68830.3227, "pg/mL/d", 10000.0, 1000000.0, "calibrated; Norelli 2018 (monocytes main IL-6 source)",
       "IL-6 from activated myeloid cells (scales with activation squared)"),
    _p("cytokine", "il6_il1_dependence", 0.7, "fraction", 0.0, 0.95,
       "Giavridis 2018 (IL-1 blockade lowered serum IL-6 and prevented CRS death in mice); Norelli 2018",
       "share of myeloid IL-6 output that needs IL-1 signalling (what anakinra can take away)"),
    _p("cytokine", "il6_il1_ec50", 1.0, "pg/mL", 0.1, 10.0, "calibrated (saturated at storm IL-1 levels of a few pg/mL)",
       "IL-1 signal giving half the IL-1-dependent myeloid IL-6 output"),
    _p("cytokine", "il6_per_endothelium", 8000.0, "pg/mL/d", 0.0, 50000.0, "calibrated; Obstfeld 2017 (endothelial IL-6)",
       "IL-6 from activated endothelium"),
    _p("cytokine", "il6_per_car", 60.0, "pg/mL/d per cell/uL", 0.0, 1000.0, "calibrated; Hosseini 2020 (IL-6 per activated T cell)",
       "IL-6 from antigen-engaged CAR-T"),
    _p("cytokine", "il10_clearance", _k(3 * HOUR), "1/d", _k(3.7 * HOUR), _k(1.9 * HOUR),
       "Huhn 1996; Radwanski 1998 (rhIL-10 t1/2 1.9-3.7 h)", "IL-10 elimination"),
    _p("cytokine", "il10_per_myeloid", 1500.0, "pg/mL/d", 100.0, 20000.0, "calibrated", "IL-10 from activated myeloid cells"),
    _p("cytokine", "il10_per_car", 20.0, "pg/mL/d per cell/uL", 0.0, 500.0, "calibrated", "IL-10 from antigen-engaged CAR-T"),
    _p("cytokine", "il10_inhibition_ic50", 150.0, "pg/mL", 20.0, 2000.0, "calibrated", "IL-10 level halving myeloid activation"),
    # --- Monocyte / macrophage amplification loop ---------------------------
    _p("myeloid", "myeloid_activation_rate", 1.0, "1/d", 0.2, 5.0, "calibrated; Santurio 2025 (macrophage-mediated CRS)",
       "activation rate of monocytes/macrophages per unit stimulus"),
    _p("myeloid", "myeloid_deactivation", 1.0, "1/d", 0.2, 3.0, "calibrated", "return of activated myeloid cells to rest"),
    _p("myeloid", "myeloid_ec_ifng", 300.0, "pg/mL", 20.0, 2000.0, "calibrated", "IFN-gamma giving unit myeloid stimulus"),
    _p("myeloid", "myeloid_ec_gmcsf", 150.0, "pg/mL", 10.0, 1000.0, "calibrated; Sterner 2019 (GM-CSF drives CRS)", "GM-CSF giving unit myeloid stimulus"),
    _p("myeloid", "myeloid_ec_tnf", 80.0, "pg/mL", 5.0, 500.0, "calibrated", "TNF-alpha giving unit myeloid stimulus"),
    _p("myeloid", "loop_ignition_threshold", 0.1, "stimulus units", 0.02, 2.0,
       "structural: no CRS or ICANS without CAR-T; CAR-T activation of monocytes starts CRS (Norelli Nat Med 2018, "
       "Giavridis Nat Med 2018)",
       "own stimulus at which a self-amplifying loop (monocyte TNF/IL-1, IL-6-endothelium) reaches "
       "half its linear gain (x^2/(x + threshold)): no gain at rest"),
    _p("myeloid", "myeloid_ec_il1", 40.0, "pg/mL", 1.0, 100.0, "calibrated; Giavridis 2018 (IL-1 amplifies)", "IL-1 signal giving unit myeloid stimulus"),
    _p("myeloid", "myeloid_ec_contact", 100.0, "cells/uL", 5.0, 500.0, "calibrated (CD40L / contact activation)",
       "antigen-engaged CAR-T giving unit myeloid stimulus"),
    # --- Endothelium, leak, haemodynamics ------------------------------------
    _p("endothelium", "endo_activation_rate", 0.8, "1/d", 0.1, 5.0, "calibrated", "endothelial activation rate per unit stimulus"),
    _p("endothelium", "endo_recovery", 0.5, "1/d", 0.1, 2.0, "calibrated", "endothelial recovery rate"),
    _p("endothelium", "endo_ec_tnf", 60.0, "pg/mL", 5.0, 500.0, "calibrated", "TNF-alpha giving unit endothelial stimulus"),
    _p("endothelium", "endo_ec_il1", 15.0, "pg/mL", 1.0, 200.0, "calibrated", "IL-1 signal giving unit endothelial stimulus"),
    _p("endothelium", "endo_ec_il6", 1500.0, "pg/mL", 100.0, 20000.0, "calibrated (IL-6 trans-signalling, blocked by tocilizumab)",
       "IL-6 signal giving unit endothelial stimulus"),
    _p("endothelium", "endo_ec_ifng", 600.0, "pg/mL", 50.0, 5000.0, "calibrated", "IFN-gamma giving unit endothelial stimulus"),
    _p("endothelium", "ang2_feedforward", 0.05, "per ng/mL", 0.0, 1.0, "calibrated; Hay 2017, Gust 2017 (Ang-2 feed-forward via Tie2)",
       "increase of endothelial stimulus per ng/mL Ang-2 above 2 ng/mL"),
    _p("endothelium", "ang2_clearance", _k(12 * HOUR), "1/d", _k(24 * HOUR), _k(2 * HOUR), "calibrated (t1/2 unverified)", "Ang-2 elimination"),
    _p("endothelium", "ang2_release", 18.0, "ng/mL at full activation", 2.0, 60.0, "calibrated; Hay 2017", "Ang-2 released by activated endothelium"),
    _p("endothelium", "vwf_clearance", _k(12 * HOUR), "1/d", _k(24 * HOUR), _k(6 * HOUR), "van Mourik 1999 (vWF t1/2 hours, unverified)", "vWF elimination"),
    _p("endothelium", "vwf_release", 250.0, "IU/dL at full activation", 50.0, 600.0, "calibrated; Hay 2017", "vWF released by activated endothelium"),
    _p("endothelium", "leak_rate", 0.5866, "1/d", 0.2, 5.0, "Fleck 1985 (albumin escape up to +300% in shock); calibrated",
       "capillary leak per squared endothelial activation"),
    _p("endothelium", "leak_return", 1.0, "1/d", 0.3, 3.0, "calibrated (lymphatic return)",
       "resorption of leaked plasma at a normal oncotic gradient"),
    _p("endothelium", "albumin_loss_per_leak", 0.35, "-", 0.2, 0.5,
       "serum albumin 40 -> 26 g/L at full leak (hypoalbuminaemia of severe CRS, ~25-35 %; convention)",
       "fractional fall of serum albumin per unit capillary leak (read-out and oncotic gradient)"),
    _p("endothelium", "interstitial_oncotic_fraction", 0.5, "-", 0.3, 0.7,
       "Guyton & Hall (pulmonary interstitial colloid osmotic pressure ~14 of plasma 28 mmHg) [M]",
       "interstitial over plasma colloid osmotic pressure: the share of the gradient that leak cannot remove"),
    _p("endothelium", "map_baseline", 88.0, "mmHg", 75.0, 100.0, "normal adult MAP; under 20 years 1.6 mmHg lower per year (Flynn 2017; vpop.population.sampler)",
       "mean arterial pressure before CRS (adults)"),
    _p("endothelium", "map_per_leak", 50.0, "mmHg per unit leak", 20.0, 150.0, "calibrated", "fall in MAP per unit capillary leak"),
    _p("endothelium", "map_per_vasoplegia", 15.0, "mmHg", 0.0, 40.0, "calibrated; Giavridis 2018 (macrophage nitric oxide)",
       "fall in MAP from IL-1/TNF-driven vasodilation"),
    _p("endothelium", "lung_sensitivity", 1.0, "-", 0.3, 3.0, "calibrated", "pulmonary share of capillary leak"),
    _p("endothelium", "fio2_per_leak", 1.7411, "FiO2 per unit leak", 0.3, 3.0, "calibrated",
       "extra inspired O2 fraction needed per unit pulmonary leak above the threshold"),
    _p("endothelium", "leak_hypoxia_threshold", 0.2312, "unit leak", 0.0, 0.4, "calibrated", "pulmonary leak tolerated without oxygen"),
    # --- Fever -------------------------------------------------------------
    _p("fever", "fever_max_rise", 3.0, "degC", 1.5, 4.0, "calibrated (CRS fevers up to 40-41 C)", "maximal rise of body temperature"),
    _p("fever", "fever_ec_il6", 400.0, "pg/mL", 20.0, 2000.0, "calibrated", "IL-6 signal giving unit pyrogenic drive"),
    _p("fever", "fever_ec_il1", 10.0, "pg/mL", 1.0, 100.0, "calibrated", "IL-1 signal giving unit pyrogenic drive"),
    _p("fever", "fever_ec_tnf", 80.0, "pg/mL", 10.0, 500.0, "calibrated", "TNF-alpha giving unit pyrogenic drive"),
    _p("fever", "fever_drive_ec50", 0.6, "-", 0.1, 3.0, "calibrated", "pyrogenic drive giving half the maximal temperature rise"),
    _p("fever", "antipyretic_effect", 0.3, "fraction", 0.0, 0.6, "calibrated (paracetamol lowers fever ~0.5-1 C)",
       "fraction of the temperature rise removed by antipyretics"),
    # --- Acute phase and coagulation ----------------------------------------
    _p("acute_phase", "il6_signal_ec50", 600.0, "pg/mL", 20.0, 2000.0, "calibrated", "free IL-6 giving half-maximal hepatic IL-6 signalling"),
    _p("acute_phase", "crp_clearance", 0.875, "1/d", 0.6, 1.1, "Pepys (CRP t1/2 19 h)", "CRP elimination"),
    _p("acute_phase", "crp_max", 350.0, "mg/L", 100.0, 500.0, "calibrated; Lee 2015 (CRP tracks IL-6, r=0.81)", "CRP at maximal IL-6 signalling"),
    _p("acute_phase", "ferritin_clearance", _k(30 * HOUR), "1/d", _k(72 * HOUR), _k(12 * HOUR), "unverified (~30 h)", "ferritin elimination"),
    _p("acute_phase", "ferritin_per_myeloid", 22000.0, "ng/mL", 2000.0, 200000.0,
       "calibrated to peak ferritin 2,035 (no/low-grade) vs 5,467 ng/mL (severe), Blood Adv HLH-like cohort",
       "ferritin at full myeloid activation (scales with activation squared)"),
    _p("acute_phase", "fibrinogen_turnover", 0.24, "1/d", 0.17, 0.3, "Collen 1972 (FCR 0.24/d)", "fibrinogen fractional catabolic rate"),
    _p("acute_phase", "fibrinogen_il6_gain", 1.0, "-", 0.0, 3.0, "calibrated (acute-phase rise)", "relative rise of fibrinogen synthesis at maximal IL-6 signalling"),
    _p("acute_phase", "fibrinogen_consumption", 1.1, "1/d", 0.0, 10.0,
       "Levine 2021 (ELIANA+ENSIGN: fibrinogen < 1.0 g/L in 8% of CRS patients; set on the tisa-cel B-ALL preset, "
       "simulated 3.5% at 1.0, 20% at 1.3); Hay 2017 (consumptive coagulopathy)",
       "fibrinogen consumption per cubed endothelial activation"),
    _p("acute_phase", "ddimer_clearance", 2.08, "1/d", 1.0, 3.0, "D-dimer t1/2 ~8 h (vascular-medicine summaries)", "D-dimer elimination"),
    _p("acute_phase", "ddimer_basal", 0.4, "mg/L FEU", 0.1, 1.0, "reference < 0.5 mg/L FEU (unverified)", "baseline D-dimer"),
    _p("acute_phase", "ddimer_per_fibrin", 3.0, "mg/L FEU per g/L/d", 0.5, 10.0, "calibrated", "D-dimer per unit fibrinogen consumed"),
    _p("acute_phase", "platelet_lifespan", 10.0, "d", 7.0, 12.0, "platelet kinetics summary (lifespan ~10 d)", "platelet lifespan"),
    _p("acute_phase", "ld_marrow_suppression", 0.6, "fraction", 0.0, 0.95, "calibrated (cytopenia after Flu/Cy)",
       "fall in platelet production after standard lymphodepletion"),
    _p("acute_phase", "marrow_recovery_time", 14.0, "d", 5.0, 30.0, "calibrated; Rejeski 2021 (prolonged cytopenia)", "time constant of marrow recovery"),
    _p("acute_phase", "platelet_consumption", 0.5, "1/d", 0.0, 3.0, "calibrated", "platelet consumption per squared endothelial activation"),
    # --- Blood-brain barrier and CNS ----------------------------------------
    _p("cns", "qalb_relaxation", 1.0, "1/d", 0.3, 3.0, "calibrated", "rate at which the CSF/serum albumin ratio follows barrier permeability"),
    _p("cns", "bbb_gain", 3.0, "-", 1.0, 20.0, "calibrated; Gust 2017, Santomasso 2018 (barrier disruption with NT)",
       "relative rise of the albumin ratio per squared endothelial activation"),
    _p("cns", "csf_turnover", 4.0, "1/d", 2.0, 6.0, "CSF turnover 3-4 volumes/d (unverified)", "clearance of CNS cytokine"),
    _p("cns", "csf_il6_partition", 0.08, "-", 0.01, 0.5, "calibrated; Gust 2017 (CSF cytokines near serum in severe NT)",
       "CSF/serum IL-6 ratio at the reference albumin ratio"),
    _p("cns", "glia_il6", 60.0, "pg/mL", 0.0, 1000.0, "calibrated; Santomasso 2018 (CNS-specific IL-6 production)", "CSF IL-6 from fully activated CNS myeloid cells"),
    _p("cns", "glia_activation_rate", 0.3801, "1/d", 0.1, 2.0, "calibrated (ICANS peaks days 5-14)", "activation rate of CNS myeloid/glial cells"),
    _p("cns", "glia_deactivation", 0.35, "1/d", 0.05, 1.0, "calibrated", "return of CNS myeloid cells to rest"),
    _p("cns", "glia_ec_csf_il6", 60.0, "pg/mL", 10.0, 1000.0, "calibrated; Gust 2017 (CNS IL-6 tracks serum IL-6 with barrier leak)",
       "CSF IL-6 of serum origin (above rest) giving unit glial stimulus"),
    _p("cns", "glia_ec_gmcsf", 60.0, "pg/mL", 5.0, 1000.0, "calibrated; Sterner 2019 (GM-CSF and neurotoxicity)", "CNS-entering GM-CSF giving unit glial stimulus"),
    _p("cns", "glia_ec_il1", 10.0, "pg/mL", 1.0, 100.0, "calibrated; Norelli 2018 (IL-1 blockade prevents NT)", "CNS IL-1 signal giving unit glial stimulus"),
    _p("cns", "glia_ec_car", 60.0, "cells/uL", 5.0, 1000.0, "calibrated (CAR-T trafficking to CSF)", "CNS-entering CAR-T giving unit glial stimulus"),
    _p("cns", "neuro_injury_rate", 0.805, "1/d", 0.2, 5.0, "calibrated (excitotoxicity; Santomasso 2018)", "rate of neuronal dysfunction per squared glial activation"),
    _p("cns", "neuro_recovery", 0.5, "1/d", 0.1, 2.0, "calibrated", "recovery of neuronal function"),
    _p("cns", "nfl_clearance", _k(21.0), "1/d", _k(60.0), _k(7.0), "unverified (elevations persist for weeks; Barro 2020)", "serum NfL elimination"),
    _p("cns", "nfl_release", 40.0, "pg/mL/d", 5.0, 300.0, "calibrated; Schoeberl 2022 (NfL rises with ICANS grade)", "serum NfL released per unit neuronal dysfunction"),
    _p("cns", "nfl_vulnerability_exponent", 0.5, "-", 0.0, 1.5, "calibrated; Schoeberl 2022, Butt 2022 (baseline NfL predicts ICANS)",
       "exponent of the effect of baseline NfL on neuronal vulnerability"),
    # --- Tocilizumab (Moes 2022: hyper-inflamed patients, 1 cmt + Michaelis-Menten)
    _p("drugs", "toci_clearance", 0.725, "L/d", 0.3, 1.5, "Moes 2022", "tocilizumab linear clearance"),
    _p("drugs", "toci_volume", 4.34, "L", 3.0, 6.0, "Moes 2022", "tocilizumab volume of distribution"),
    _p("drugs", "toci_vmax", 4.19, "mg/d", 1.0, 10.0, "Moes 2022 (Frey 2010: 7.5 mg/d)", "target-mediated maximal elimination"),
    _p("drugs", "toci_km", 0.22, "ug/mL", 0.1, 3.0, "Moes 2022 (Frey 2010: 2.7 ug/mL)", "target-mediated elimination Km"),
    _p("drugs", "toci_ic50", 0.1, "ug/mL", 0.01, 1.0, "calibrated; Nishimoto 2008 (signalling blocked while drug detectable)",
       "tocilizumab level giving half IL-6R blockade"),
    # --- Dexamethasone (Krzyzanski 2021, 2 cmt) -----------------------------
    _p("drugs", "dex_clearance", 9.29 * 24, "L/d", 150.0, 360.0, "Krzyzanski 2021 (9.29 L/h)", "dexamethasone clearance"),
    _p("drugs", "dex_central_volume", 51.3, "L", 30.0, 80.0, "Krzyzanski 2021", "dexamethasone central volume"),
    _p("drugs", "dex_intercompartmental", 0.538 * 24, "L/d", 5.0, 30.0, "Krzyzanski 2021 (0.538 L/h)", "dexamethasone intercompartmental clearance"),
    _p("drugs", "dex_peripheral_volume", 5.06, "L", 2.0, 10.0, "Krzyzanski 2021", "dexamethasone peripheral volume"),
    _p("drugs", "dex_absorption", 0.46 * 24, "1/d", 5.0, 30.0, "Krzyzanski 2021 (ka 0.46/h)", "dexamethasone absorption rate (oral/IM)"),
    _p("drugs", "dex_bioavailability", 0.9, "-", 0.7, 1.0, "MIMS (oral F ~90%)", "oral dexamethasone bioavailability"),
    _p("drugs", "dex_effect_equilibration", 0.69, "1/d", 0.3, 2.0,
       "dexamethasone's biological half-life 36-54 h vs ~4 h in plasma (long-acting glucocorticoid; Goodman & "
       "Gilman's pharmacology); equilibration t1/2 ~1 day",
       "rate at which the effect-site level follows plasma dexamethasone"),
    _p("drugs", "dex_ic50", 20.0, "ng/mL", 0.5, 40.0,
       "set from ZUMA-1 cohort 4 (Topp 2021: steroids from grade 1, neurologic events >= 3 17 %, CRS >= 3 2 %) "
       "with a log-normal prior at the in vitro nM potency (4 ng/mL, SD 1 in log); docs/calibration.md",
       "dexamethasone effect-site level giving half-maximal suppression"),
    _p("drugs", "dex_emax", 0.85, "-", 0.5, 1.0, "calibrated", "maximal suppression of cytokine production and activation"),
    _p("drugs", "dex_csf_fraction", 0.15, "-", 0.1, 1.0,
       "Balis 1987 J Clin Oncol 5:202 (CSF:plasma dexamethasone 0.15 +/- 0.02 after IV bolus, nonhuman primates; "
       "CSF levels track free plasma drug, dexamethasone 70 % protein bound)",
       "dexamethasone level in the CSF relative to plasma: what glia are exposed to"),
    _p("drugs", "mp_to_dex", 1.0 / 5.33, "mg dex per mg", 0.15, 0.25, "glucocorticoid equivalence (dex 0.75 mg = MP 4 mg)",
       "methylprednisolone given as dexamethasone-equivalent dose"),
    # --- Anakinra ----------------------------------------------------------
    _p("drugs", "anakinra_clearance", 1.4 * 1.44 * 70, "L/d", 100.0, 200.0, "anakinra PK (CL 1.17-1.62 mL/min/kg at 70 kg)", "anakinra clearance"),
    _p("drugs", "anakinra_volume", 24.0, "L", 10.0, 40.0, "derived from CL and t1/2 4-6 h", "anakinra volume of distribution"),
    _p("drugs", "anakinra_cns_fraction", 0.02, "-", 0.0, 0.2, "calibrated (limited CNS entry)", "CSF/serum anakinra ratio"),
    # --- Organ injury and death --------------------------------------------
    _p("organ", "map_perfusion_threshold", 65.0, "mmHg", 60.0, 70.0, "MAP target in shock (surviving-sepsis convention)",
       "MAP below which the kidney accrues hypoperfusion"),
    _p("organ", "map_death_threshold", 42.0, "mmHg", 30.0, 50.0, "calibrated", "MAP below which refractory shock accrues"),
    _p("organ", "shock_death_burden", 1.0, "mmHg*d/10", 0.3, 5.0, "calibrated; Hay 2017 (grade 5 CRS 3.8%)", "refractory-shock burden that is fatal"),
    _p("organ", "fio2_death", 0.98, "FiO2", 0.9, 1.0, "calibrated", "oxygen need counted as refractory hypoxaemia"),
    # --- Read-outs: physiology -> bedside observations (thresholds) --------
    _p("readout", "map_fluids", 70.0, "mmHg", 60.0, 75.0, "convention (hypotension needing fluids)", "unsupported MAP below which fluids are given (hypotension)"),
    _p("readout", "map_one_pressor", 62.0, "mmHg", 55.0, 68.0, "convention (MAP target 65 mmHg)", "unsupported MAP below which one vasopressor is needed"),
    _p("readout", "map_vasopressin", 56.0, "mmHg", 50.0, 62.0, "convention", "unsupported MAP below which vasopressin is added"),
    _p("readout", "map_two_pressors", 50.0, "mmHg", 40.0, 58.0, "convention", "unsupported MAP below which a second vasopressor is needed"),
    _p("readout", "ne_per_mmhg", 1.5, "ug/min per mmHg", 0.5, 4.0, "convention", "norepinephrine-equivalent dose per mmHg of MAP below the fluids threshold"),
    _p("readout", "fio2_room_air", 0.23, "FiO2", 0.21, 0.26, "convention (SpO2 >= 92% on room air)", "oxygen need below which no oxygen is given"),
    _p("readout", "fio2_low_flow_max", 0.45, "FiO2", 0.4, 0.5, "ASTCT 2019 (low flow <= 6 L/min; ~4% FiO2 per L/min)", "oxygen need met by a low-flow cannula"),
    _p("readout", "fio2_high_flow_max", 0.7, "FiO2", 0.55, 0.85, "convention", "oxygen need met by high-flow oxygen"),
    _p("readout", "fio2_bipap_max", 0.85, "FiO2", 0.7, 0.95, "convention", "oxygen need met by non-invasive positive pressure"),
    _p("readout", "ice_first_loss", 0.3455, "neuro units", 0.1, 0.5, "calibrated", "neuronal dysfunction at which the first ICE point is lost"),
    _p("readout", "ice_per_point", 0.0876, "neuro units", 0.03, 0.15, "calibrated", "additional dysfunction per further ICE point lost"),
    _p("readout", "loc_spontaneous", 0.55, "neuro units", 0.3, 1.0, "calibrated", "dysfunction at which the patient only awakens spontaneously"),
    _p("readout", "loc_voice", 0.7, "neuro units", 0.5, 1.2, "calibrated", "dysfunction at which the patient awakens only to voice"),
    _p("readout", "loc_touch", 0.85, "neuro units", 0.7, 1.4, "calibrated", "dysfunction at which the patient awakens only to touch"),
    _p("readout", "loc_unarousable", 1.1, "neuro units", 0.9, 2.0, "calibrated", "dysfunction at which the patient is unarousable"),
    _p("readout", "seizure_threshold", 0.7, "neuro units", 0.3, 1.2, "calibrated", "dysfunction above which seizures can occur"),
    _p("readout", "seizure_hazard", 1.2, "1/d per neuro unit", 0.1, 5.0, "calibrated (seizures in ~5-10% of axi-cel patients)", "seizure hazard per unit dysfunction above the threshold"),
    _p("readout", "seizure_prolonged_fraction", 0.25, "-", 0.0, 1.0, "calibrated", "fraction of seizures that are prolonged or repetitive"),
    _p("readout", "motor_weakness_threshold", 1.45, "neuro units", 1.0, 3.0, "calibrated", "dysfunction above which deep focal motor weakness appears"),
    _p("readout", "edema_focal_qalb", 28.0, "x1e-3", 15.0, 50.0, "calibrated (moderate-severe barrier dysfunction > 25e-3, Reiber)", "albumin ratio above which focal oedema is seen (with dysfunction)"),
    _p("readout", "edema_diffuse_qalb", 42.0, "x1e-3", 25.0, 80.0, "calibrated", "albumin ratio above which diffuse oedema is seen (with dysfunction)"),
    _p("readout", "edema_neuro_threshold", 1.0, "neuro units", 0.5, 2.0, "calibrated", "dysfunction needed for oedema to be seen"),
    _p("readout", "tremor_threshold", 0.3652, "neuro units", 0.0, 0.5, "calibrated (CTCAE neurologic events exceed ICANS)", "dysfunction at which tremor (CTCAE grade 1) appears"),
    _p("readout", "headache_csf_il6", 54.3884, "pg/mL", 1.0, 100.0, "calibrated", "CSF IL-6 at which headache (CTCAE grade 1) is recorded"),
    _p("readout", "capd_per_neuro", 22.0, "CAPD points per neuro unit", 10.0, 40.0, "calibrated (CAPD >= 9 ~ ICE <= 2)", "CAPD points per unit neuronal dysfunction (children < 12)"),
    _p("readout", "aki_burden_per_grade", 0.8, "mmHg*d/10", 0.2, 3.0, "calibrated (AKI after hypotension)", "hypoperfusion burden per CTCAE creatinine grade"),
    _p("readout", "transaminitis_ferritin", 8000.0, "ng/mL", 2000.0, 30000.0, "calibrated (hepatotoxicity with HLH-like hyperferritinaemia, Lichtenstein 2021)",
       "ferritin at CTCAE transaminitis grade 1 (each doubling adds a grade)"),
    _p("readout", "cryo_fibrinogen", 1.5, "g/L", 1.0, 2.0, "convention (cryoprecipitate for fibrinogen < 1.5 g/L)", "fibrinogen below which coagulopathy is treated"),
)

TABLE: dict[str, ParamSpec] = {p.name: p for p in PARAMETERS}


def typical_values() -> dict[str, float]:
    """The typical value of every parameter, by name."""
    return {p.name: p.value for p in PARAMETERS}


def markdown_table() -> str:
    """The parameter table as Markdown, for docs/model.md."""
    lines = ["| group | name | value | unit | plausible range | source | meaning |", "|---|---|---|---|---|---|---|"]
    for p in PARAMETERS:
        lines.append(
            f"| {p.group} | `{p.name}` | {p.value:.4g} | {p.unit} | {p.low:.3g} – {p.high:.3g} | {p.source} | {p.description} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(markdown_table())

"""The model's states, declared once: name, unit and meaning.

The equations (`vpop.model.equations`) are assembled by these names and checked against
them, and the state vector's order is this declaration's order.
"""

from __future__ import annotations

from typing import NamedTuple


class State(NamedTuple):
    name: str
    unit: str
    description: str
    group: str


STATES: tuple[State, ...] = (
    State("car_effector", "cells/uL", "CAR-T effector cells in blood", "CAR-T and tumour"),
    State("car_memory", "cells/uL", "CAR-T memory cells in blood", "CAR-T and tumour"),
    State("car_homing", "cells/uL",
          "infused CAR-T cells still on their way to antigen (the distribution phase; a marker of the infused cohort, "
          "counted in car_effector)", "CAR-T and tumour"),
    State("car_first_activation", "cells/uL",
          "infused CAR-T cells still in the secretory burst of their first activation (a marker of the infused "
          "cohort; they are counted in car_effector)", "CAR-T and tumour"),
    State("car_gc_primed", "fraction 0-1",
          "share of the infused cells' first activations that happened under glucocorticoid cover, weighted by the "
          "suppression at the time (cumulative, in units of the infused cohort)", "CAR-T and tumour"),
    State("antigen", "1 = median burden", "antigen-bearing tumour burden", "CAR-T and tumour"),
    State("myeloid", "fraction 0-1", "activated fraction of monocytes/macrophages", "myeloid loop"),
    State("ifng", "pg/mL", "serum IFN-gamma", "cytokines"),
    State("gmcsf", "pg/mL", "serum GM-CSF", "cytokines"),
    State("tnf", "pg/mL", "serum TNF-alpha", "cytokines"),
    State("il1", "pg/mL", "serum IL-1beta", "cytokines"),
    State("il1ra", "pg/mL", "endogenous IL-1 receptor antagonist", "cytokines"),
    State("il6", "pg/mL", "free serum IL-6", "cytokines"),
    State("il10", "pg/mL", "serum IL-10", "cytokines"),
    State("endothelium", "fraction 0-1", "endothelial activation", "endothelium"),
    State("ang2", "ng/mL", "angiopoietin-2", "endothelium"),
    State("vwf", "IU/dL", "von Willebrand factor antigen", "endothelium"),
    State("leak", "1 = severe", "capillary leak (plasma displaced)", "endothelium"),
    State("crp", "mg/L", "C-reactive protein", "acute phase and coagulation"),
    State("ferritin", "ng/mL", "ferritin", "acute phase and coagulation"),
    State("fibrinogen", "g/L", "fibrinogen", "acute phase and coagulation"),
    State("ddimer", "mg/L FEU", "D-dimer", "acute phase and coagulation"),
    State("platelets", "1e9/L", "platelet count", "acute phase and coagulation"),
    State("qalb", "x1e-3", "CSF/serum albumin ratio (blood-brain barrier leak)", "CNS"),
    State("csf_il6", "pg/mL", "CSF IL-6", "CNS"),
    State("glia", "fraction 0-1", "activation of CNS myeloid/glial cells", "CNS"),
    State("neuro", "neuro units", "neuronal dysfunction (excitotoxicity)", "CNS"),
    State("nfl", "pg/mL", "serum neurofilament light", "CNS"),
    State("hypoperfusion", "mmHg*d/10", "cumulative MAP deficit below the perfusion threshold", "organ injury"),
    State("shock", "mmHg*d/10", "cumulative refractory-shock burden", "organ injury"),
    State("toci", "mg", "tocilizumab amount in the body", "drugs"),
    State("dex_depot", "mg", "oral dexamethasone in the gut depot", "drugs"),
    State("dex_central", "mg", "dexamethasone, central compartment", "drugs"),
    State("dex_peripheral", "mg", "dexamethasone, peripheral compartment", "drugs"),
    State("dex_effect", "ng/mL", "dexamethasone at its site of action (the genomic effect outlasts the plasma level)",
          "drugs"),
    State("anakinra", "mg", "anakinra amount in the body", "drugs"),
)

STATE_NAMES: tuple[str, ...] = tuple(s.name for s in STATES)

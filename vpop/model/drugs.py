"""Drugs, declared once: which dose a policy gives and which state it enters.

A dose of `Drug.dose` mg (a key of the policy's dose mapping) is added to the state
`Drug.state` at the assessment it is given, times the parameter `Drug.factor` when one is
named (oral bioavailability; methylprednisolone given as dexamethasone equivalents).
"""

from __future__ import annotations

from typing import NamedTuple


class Drug(NamedTuple):
    dose: str  # the policy's dose name, mg
    state: str  # the state the dose enters
    factor: str | None = None  # parameter multiplying the dose (None: 1)
    description: str = ""


DRUGS: tuple[Drug, ...] = (
    Drug("toci_mg", "toci", None, "tocilizumab, intravenous"),
    Drug("dex_iv_mg", "dex_central", None, "dexamethasone, intravenous"),
    Drug("dex_oral_mg", "dex_depot", "dex_bioavailability", "dexamethasone, oral"),
    Drug("mp_mg", "dex_central", "mp_to_dex", "methylprednisolone, as dexamethasone equivalents"),
    Drug("anakinra_mg", "anakinra", None, "anakinra, subcutaneous (as a bolus)"),
)

"""The ICE (Immune effector Cell-associated Encephalopathy) score.

Ten one-point items (ASTCT consensus, Lee DW et al. 2019): orientation to
year, month, city and hospital (4), naming three objects (3), following a
simple command (1), writing a standard sentence (1) and counting back from
100 by ten (1).
"""

from __future__ import annotations

import jax.numpy as jnp


#: The ten ICE items, in the order `ice_score` takes them.
ICE_ITEMS = (
    "orientation_year",
    "orientation_month",
    "orientation_city",
    "orientation_hospital",
    "naming_1",
    "naming_2",
    "naming_3",
    "follows_commands",
    "writes_sentence",
    "counts_back",
)


def ice_score(
    orientation_year,
    orientation_month,
    orientation_city,
    orientation_hospital,
    naming_1,
    naming_2,
    naming_3,
    follows_commands,
    writes_sentence,
    counts_back,
):
    """ICE score, 0–10, from its ten items.

    **Arguments:** each item is a bool or 0/1 array (any shape; they
    broadcast): true / 1 when the patient performed the task correctly.

    **Returns:** an int32 array, the number of items performed (0–10).

    **References:** Lee DW, Santomasso BD, et al. ASTCT consensus grading for
    cytokine release syndrome and neurologic toxicity associated with immune
    effector cells. *Biol Blood Marrow Transplant* 2019;25(4):625–638.
    """
    items = (
        orientation_year,
        orientation_month,
        orientation_city,
        orientation_hospital,
        naming_1,
        naming_2,
        naming_3,
        follows_commands,
        writes_sentence,
        counts_back,
    )
    total = jnp.zeros((), jnp.int32)
    for item in items:
        total = total + (jnp.asarray(item) != 0).astype(jnp.int32)
    return total

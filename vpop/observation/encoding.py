"""Integer codes for the categorical columns of the observation table.

Every enum is a tuple of its allowed strings; the integer code of a value is
its index in the tuple. The order is meaningful: within `O2_DEVICES`,
`CONSCIOUSNESS`, `SEIZURE` and `CEREBRAL_EDEMA` a higher code is a worse
finding, which the grading functions and the monotonicity tests rely on.

The grading functions take these integer codes (any integer dtype), never
strings, so they can run inside `jax.jit` and `jax.vmap`.
"""

from __future__ import annotations

import numpy as np


O2_DEVICES = (
    "none",
    "blow_by",
    "low_flow",
    "high_flow",
    "facemask",
    "nonrebreather",
    "venturi",
    "cpap",
    "bipap",
    "mechanical_ventilation",
)
CONSCIOUSNESS = (
    "alert",
    "awakens_spontaneously",
    "awakens_to_voice",
    "awakens_to_touch",
    "unarousable",
)
SEIZURE = ("none", "rapidly_resolving", "prolonged_or_repetitive")
CEREBRAL_EDEMA = ("none", "focal", "diffuse")
DEATH_CAUSE = ("none", "crs", "icans", "other")

#: Enum column name -> allowed values (code = index).
ENUMS: dict[str, tuple[str, ...]] = {
    "o2_device": O2_DEVICES,
    "consciousness": CONSCIOUSNESS,
    "seizure": SEIZURE,
    "cerebral_edema": CEREBRAL_EDEMA,
    "death_cause": DEATH_CAUSE,
}

# Named codes, for readable code and tests.
O2_NONE, O2_BLOW_BY, O2_LOW_FLOW, O2_HIGH_FLOW, O2_FACEMASK = 0, 1, 2, 3, 4
O2_NONREBREATHER, O2_VENTURI, O2_CPAP, O2_BIPAP, O2_MECHANICAL_VENTILATION = 5, 6, 7, 8, 9
# positive-pressure ventilation (ICU-level support): the worst codes, CPAP and up
POSITIVE_PRESSURE = O2_DEVICES[O2_CPAP:]
LOC_ALERT, LOC_SPONTANEOUS, LOC_VOICE, LOC_TOUCH, LOC_UNAROUSABLE = 0, 1, 2, 3, 4
SEIZURE_NONE, SEIZURE_RAPID, SEIZURE_PROLONGED = 0, 1, 2
EDEMA_NONE, EDEMA_FOCAL, EDEMA_DIFFUSE = 0, 1, 2
DEATH_NONE, DEATH_CRS, DEATH_ICANS, DEATH_OTHER = 0, 1, 2, 3


def code(enum: tuple[str, ...], name: str) -> int:
    """The integer code of `name` in `enum` (raises `ValueError` if absent)."""
    try:
        return enum.index(name)
    except ValueError:
        raise ValueError(f"{name!r} is not one of {', '.join(enum)}") from None


def encode(enum: tuple[str, ...], values) -> np.ndarray:
    """Encode an array of strings as int8 codes (raises `ValueError` on unknown)."""
    lookup = {name: i for i, name in enumerate(enum)}
    values = np.asarray(values, dtype=object)
    uniques, inverse = np.unique(values.astype(str), return_inverse=True)
    unknown = [u for u in uniques if u not in lookup]
    if unknown:
        raise ValueError(f"unknown value(s) {unknown}; allowed: {', '.join(enum)}")
    table = np.array([lookup[u] for u in uniques], dtype=np.int8)
    return table[inverse].reshape(values.shape)


def decode(enum: tuple[str, ...], codes) -> np.ndarray:
    """Decode integer codes back to an object array of strings."""
    return np.asarray(enum, dtype=object)[np.asarray(codes)]

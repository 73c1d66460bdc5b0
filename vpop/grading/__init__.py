"""Clinical grading of CRS and ICANS: ASTCT consensus and legacy scales.

Row-level functions (`crs_grade_astct`, `icans_grade_astct`, the legacy
`crs_grade_*` / `neuro_grade_*`) are pure `jax.numpy` and elementwise, so
they run on one virtual patient's scalars inside a jitted, vmapped simulator
and on whole columns of an observation table. `grade_observations` and
`summarise_patients` do the table path; `episode_summary` turns per-row
grades into per-patient episodes. See docs/grading.md.
"""

from vpop.grading.astct import (
    crs_fever_waiver as crs_fever_waiver,
    crs_fever_waiver_step as crs_fever_waiver_step,
    crs_grade_astct as crs_grade_astct,
    crs_treated as crs_treated,
    hypotension_level as hypotension_level,
    hypoxia_level as hypoxia_level,
    icans_grade_astct as icans_grade_astct,
    is_pediatric as is_pediatric,
)
from vpop.observation.encoding import (
    CEREBRAL_EDEMA as CEREBRAL_EDEMA,
    CONSCIOUSNESS as CONSCIOUSNESS,
    DEATH_CAUSE as DEATH_CAUSE,
    ENUMS as ENUMS,
    O2_DEVICES as O2_DEVICES,
    SEIZURE as SEIZURE,
)
from vpop.grading.episodes import (
    episode_summary as episode_summary,
    episode_summary_grid as episode_summary_grid,
)
from vpop.grading.ice import ICE_ITEMS as ICE_ITEMS, ice_score as ice_score
from vpop.grading.legacy import (
    CRS_SCALES as CRS_SCALES,
    NEURO_SCALES as NEURO_SCALES,
    SCALE_ALIASES as SCALE_ALIASES,
    crs_grade_cartox as crs_grade_cartox,
    crs_grade_ctcae5 as crs_grade_ctcae5,
    crs_grade_lee2014 as crs_grade_lee2014,
    crs_grade_mskcc as crs_grade_mskcc,
    crs_grade_penn as crs_grade_penn,
    effective_fio2 as effective_fio2,
    fio2_from_device as fio2_from_device,
    high_dose_vasopressors as high_dose_vasopressors,
    neuro_grade_cartox as neuro_grade_cartox,
    neuro_grade_ctcae as neuro_grade_ctcae,
)
# The table path needs pandas; the engine imports this package for the row-level functions only,
# so the table names are imported on first use (PEP 562).
_TABLE_NAMES = ("grade_arrays", "grade_observations", "read_observations", "resolve_scales",
                "summarise_patients", "validate_observations")


def __getattr__(name: str):
    if name not in _TABLE_NAMES:
        raise AttributeError(f"module 'vpop.grading' has no attribute {name!r}")
    from vpop.grading import table

    value = getattr(table, name)
    globals()[name] = value
    return value

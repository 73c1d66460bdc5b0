"""vpop: virtual patient cohorts for CAR T-cell toxicities (CRS and ICANS), in JAX.

    import vpop
    config = vpop.load_config("configs/default.yaml")
    result = vpop.simulate(config, n=500, seed=1)
    result.patients, result.observations, result.summary_table()
    vpop.simulate_patient(config, seed=1, patient=0)   # one patient's time course

See README.md and docs/.
"""

__version__ = "0.1.0"

# The public names are imported on first use (PEP 562), so `import vpop.cli` or
# `import vpop.engine` does not pay for pandas and pyarrow before it needs them:
# `vpop simulate` loads its compiled engine while those import (issue 14, target 2).
_PUBLIC = {
    "CohortResult": "vpop.run.cohort",
    "simulate": "vpop.run.cohort",
    "simulate_patient": "vpop.run.cohort",
    "SimulationConfig": "vpop.run.config",
    "load_config": "vpop.run.config",
    "grade_observations": "vpop.grading.table",
    "read_observations": "vpop.grading.table",
    "summarise_patients": "vpop.grading.table",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'vpop' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))

"""vpop: virtual patient cohorts for CAR T-cell toxicities (CRS and ICANS), in JAX.

    import vpop
    config = vpop.load_config("configs/default.yaml")
    result = vpop.simulate(config, n=500, seed=1)
    result.patients, result.observations, result.summary_table()
    vpop.simulate_patient(config, seed=1, patient=0)   # one patient's time course

See README.md and docs/.
"""

__version__ = "0.1.0"

from vpop.run.cohort import (
    CohortResult as CohortResult,
    simulate as simulate,
    simulate_patient as simulate_patient,
)
from vpop.run.config import SimulationConfig as SimulationConfig, load_config as load_config
from vpop.grading.table import (
    grade_observations as grade_observations,
    read_observations as read_observations,
    summarise_patients as summarise_patients,
)

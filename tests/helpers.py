"""Helpers shared by the simulator tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vpop.run.cohort import compiled_sampler, split_keys
from vpop.population.sampler import PopulationSampler, patient_keys


def sample_patients(config, ids, dtype=jnp.float64):
    """Individual parameters (dict of arrays) and event keys of patients `ids`."""
    sampler = PopulationSampler(config.population, config.parameters)
    keys = patient_keys(config.seed, np.asarray(ids))
    pop_keys, event_keys = split_keys(keys)
    cov, p = compiled_sampler(sampler, dtype)(pop_keys)
    return cov, p, event_keys


def one(tree, i):
    return jax.tree_util.tree_map(lambda x: x[i], tree)

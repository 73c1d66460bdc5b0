"""Shared test setup: float64 available, small cohorts, one compile per settings."""

from __future__ import annotations

import jax
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture(scope="session")
def default_config():
    from vpop.run.config import load_config

    return load_config(None)

"""Shared test setup: float64 available, small cohorts, one compile per settings."""

from __future__ import annotations

import jax
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture(scope="session")
def default_config():
    from vpop.run.config import load_config

    return load_config(None)


def pytest_collection_modifyitems(config, items):
    """Slow tests run in CI (CI=true) or when asked for (`-m slow`, VPOP_SLOW=1); the default suite skips them."""
    import os

    if os.environ.get("CI", "").lower() == "true" or os.environ.get("VPOP_SLOW") == "1" or config.getoption("-m"):
        return
    skip = pytest.mark.skip(reason="slow: runs in CI, or with VPOP_SLOW=1 or -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

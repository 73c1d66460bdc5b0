"""Shared test setup: float64 available, small cohorts, one compile per settings."""

from __future__ import annotations

import jax
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture(scope="session")
def default_config():
    from vpop.run.config import load_config

    return load_config(None)


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core, but no more than the memory holds (a worker that compiles the
    fitting programs reached 4.3 GiB resident in the 2026-12-01 CI run). CI's 2 cores and 24 GiB give 2."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory_gib = 8.0
    return max(1, min(cores, int(memory_gib // 6)))


def pytest_collection_modifyitems(config, items):
    """Slow tests run in CI (CI=true) or when asked for (`-m slow`, VPOP_SLOW=1); the default suite skips them."""
    import os

    if os.environ.get("CI", "").lower() == "true" or os.environ.get("VPOP_SLOW") == "1" or config.getoption("-m"):
        return
    skip = pytest.mark.skip(reason="slow: runs in CI, or with VPOP_SLOW=1 or -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _persistent_cache_stays_in_its_test():
    """A test that runs `vpop simulate` in this process turns JAX's persistent cache on, and JAX's
    config is global: switch it off after that test, so the rest of the suite never writes
    executables to disk from this long-lived process (subprocesses keep their own cache)."""
    yield
    if jax.config.jax_compilation_cache_dir:
        from jax.experimental.compilation_cache import compilation_cache

        jax.config.update("jax_compilation_cache_dir", None)
        compilation_cache.reset_cache()


def _memory_maps() -> int:
    try:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


# Linux caps a process's memory mappings (vm.max_map_count, 65,530 by default) and every compiled XLA
# executable holds about twenty of them. One long test process compiles thousands of programs; past the
# cap the next mmap fails and XLA aborts while compiling (CI's exit 134, in backend_compile_and_load and
# in the cache write) or LLVM crashes. Measured here: the suite passes 20,000 maps by a third of the way
# through, and one module (test_fitting_estimators) adds 40,000 on its own, so the check runs after every
# test, not every module.
_MAX_MAPS = 25_000


@pytest.fixture(autouse=True)
def _bounded_memory():
    """Every config compiles its own programs, and JAX and the engine's caches keep each one alive:
    over the whole suite (CI runs the slow tests too) the process would run out of memory mappings and
    grow by gigabytes. Past the mapping limit, drop every compiled program after the test (later tests
    recompile what they need); that bounds the memory too. Resident memory is not the trigger: the heap
    freed by a clear stays resident (no `malloc_trim`, which is not needed), so it would fire after
    every test."""
    yield
    if _memory_maps() > _MAX_MAPS:
        import gc

        from vpop.engine import course, sharding

        course.compiled_batch.cache_clear()
        sharding.sharded_batch.cache_clear()
        jax.clear_caches()
        gc.collect()

"""The engine's saved program: the same outputs as the traced engine, keyed by all that made it, and no
tracing in a later process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace

import jax
import numpy as np
import pytest

from vpop.engine import saved_program
from vpop.model.spec import BASE
from vpop.policy import rules as policy_mod
from vpop.run import driver
from vpop.run.config import load_config


@pytest.fixture(scope="module")
def engine_call():
    """(jitted engine, settings, args, outputs of the traced engine) of a short course, from the driver."""
    jitted, settings, args = _engine_call()
    return jitted, settings, args, jitted.lower(*args).compile()(*args)


def _engine_call(days=1.0, n=4):
    """(jitted engine, settings, args) of a short course, captured from the driver."""
    cfg = load_config(None)
    cfg = replace(cfg, engine=replace(cfg.engine, days=days), batch_size=n)
    captured = {}

    def spy(jitted, settings, *args):
        captured["call"] = (jitted, settings, args)
        return jitted.lower(*args).compile()  # traced: no saved program is involved here

    original = driver.executable
    driver.executable = spy
    try:
        driver.EXECUTABLES.clear()
        from vpop.run import cohort
        cohort.simulate(cfg, n=n, seed=3, record_rows=True)
    finally:
        driver.executable = original
        driver.EXECUTABLES.clear()
    return captured["call"]


@pytest.fixture
def programs(tmp_path, monkeypatch):
    folder = tmp_path / "programs"
    monkeypatch.setattr(saved_program, "folder", lambda: folder)
    return folder


def _same(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_saved_program_gives_the_traced_engines_outputs_bit_for_bit(programs, engine_call):
    jitted, settings, args, traced = engine_call
    first = saved_program.compile(jitted, settings, *args)  # traces, saves
    files = list(programs.glob(f"*{saved_program.SUFFIX}"))
    assert len(files) == 1
    _same(traced, first(*args))
    jax.clear_caches()
    again = saved_program.compile(jitted, settings, *args)  # loads the file
    _same(traced, again(*args))


def test_key_changes_with_settings_shapes_source_and_precision(programs, monkeypatch, engine_call):
    jitted, settings, args, _ = engine_call
    base = saved_program.key(settings, args)
    assert saved_program.key(settings, args) == base  # deterministic
    assert saved_program.key(replace(settings, days=2.0), args) != base
    wider = jax.tree_util.tree_map(lambda x: np.concatenate([x, x]) if np.ndim(x) else x, args)
    assert saved_program.key(settings, wider) != base
    assert saved_program.key(settings, args, "another.function") != base
    monkeypatch.setattr(saved_program, "source_digest", lambda: "edited source")
    assert saved_program.key(settings, args) != base
    monkeypatch.undo()
    with jax.enable_x64(not jax.config.jax_enable_x64):
        assert saved_program.key(settings, args) != base


def test_extended_model_or_custom_rules_are_always_traced(programs, engine_call):
    jitted, settings, args, _ = engine_call
    assert saved_program.eligible(settings)
    custom = replace(settings, rule=policy_mod.chain(policy_mod.tocilizumab))
    assert not saved_program.eligible(custom)
    assert not saved_program.eligible(replace(settings, model=BASE.extend()))  # equal, but not the built-in

    class Traced:  # stands in for the jitted engine: records that the traced path was taken
        calls = 0

        def lower(self, *a):
            Traced.calls += 1
            return self

        def compile(self):
            return "traced"

    assert saved_program.compile(Traced(), custom, *args) == "traced" and Traced.calls == 1
    assert not programs.exists() or not list(programs.iterdir())


def test_a_corrupt_file_is_ignored_and_rewritten(programs, engine_call):
    jitted, settings, args, traced = engine_call
    path = programs / f"{saved_program.key(settings, args, jitted.__qualname__)}{saved_program.SUFFIX}"
    programs.mkdir(parents=True)
    path.write_bytes(b"not a program")
    out = saved_program.compile(jitted, settings, *args)(*args)
    _same(traced, out)
    assert path.read_bytes() != b"not a program"


SECOND_PROCESS = textwrap.dedent("""
    import json, sys
    from dataclasses import replace
    from vpop.engine import compile_cache
    compile_cache.enable()
    from vpop.engine import course
    if sys.argv[1] == "forbid-tracing":
        def refuse(*a, **k):
            raise AssertionError("the engine was traced")
        course.simulate_patient = refuse
    from vpop.run import cohort
    from vpop.run.config import load_config
    cfg = load_config(None)
    cfg = replace(cfg, engine=replace(cfg.engine, days=1.0), batch_size=4)
    res = cohort.simulate(cfg, n=4, seed=0, record_rows=False)
    print(json.dumps({"crs": [float(x) for x in res.patients["crs_max_grade"]], "scipy": "scipy" in sys.modules}))
""")


def _process(cache, mode):
    env = dict(os.environ, VPOP_CACHE_DIR=str(cache))
    env.pop("VPOP_NO_CACHE", None)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return subprocess.run([sys.executable, "-c", SECOND_PROCESS, mode], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_a_later_process_runs_the_engine_without_tracing_it(tmp_path):
    cache = tmp_path / "cache"
    # Without a saved program the engine must be traced: the guard is real.
    refused = _process(cache, "forbid-tracing")
    assert refused.returncode != 0 and "the engine was traced" in refused.stderr
    first = _process(cache, "trace")
    assert first.returncode == 0, first.stderr
    assert list((cache / "vpop-programs").glob(f"*{saved_program.SUFFIX}"))
    second = _process(cache, "forbid-tracing")
    assert second.returncode == 0, second.stderr
    first_out, second_out = (json.loads(p.stdout.splitlines()[-1]) for p in (first, second))
    assert second_out["crs"] == first_out["crs"]
    # The engine calls no LAPACK, so loading it does not initialise the bindings (which import scipy).
    assert not second_out["scipy"]


def test_linear_algebra_bindings_are_initialised_only_for_a_program_that_calls_them():
    import jax.numpy as jnp
    from jax import export
    from jax._src.export import _export

    x = jnp.eye(3) * 2.0
    plain = export.export(jax.jit(lambda a: jnp.exp(a) + 1.0))(x)
    solving = export.export(jax.jit(lambda a: jnp.linalg.solve(a, a[:, 0])))(x)
    assert not saved_program.uses_lapack(plain)
    assert saved_program.uses_lapack(solving)
    hook = _export._ensure_backends_initialized
    calls = []
    _export._ensure_backends_initialized = lambda platforms: calls.append(platforms)
    try:
        for exported in (plain, solving):
            with saved_program._lapack_left_alone(exported):
                jax.jit(lambda a: exported.call(a)).lower(x)
    finally:
        _export._ensure_backends_initialized = hook
    assert len(calls) == 1  # the solving program's lowering only
    assert _export._ensure_backends_initialized is hook  # restored
    np.testing.assert_allclose(jax.jit(solving.call)(x), [1.0, 0.0, 0.0])

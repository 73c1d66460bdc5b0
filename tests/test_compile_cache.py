"""The persistent compilation cache: a second process loads the engine instead of compiling it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from vpop.engine import compile_cache
SCRIPT = textwrap.dedent("""
    import json, time
    t0 = time.perf_counter()
    import jax
    from jax import monitoring
    hits = []
    monitoring.register_event_listener(lambda name, **kw: hits.append(name) if "cache_hits" in name else None)
    from vpop.engine import compile_cache
    folder = compile_cache.enable()
    from dataclasses import replace
    from vpop.run import cohort
    from vpop.run.config import load_config
    cfg = load_config(None)
    cfg = replace(cfg, engine=replace(cfg.engine, days=1.0), batch_size=4)
    res = cohort.simulate(cfg, n=4, seed=0, record_rows=False)
    print(json.dumps({"folder": str(folder), "compile": res.compile_seconds, "hits": len(hits),
                      "total": time.perf_counter() - t0}))
""")


def _run(cache):
    env = dict(os.environ, VPOP_CACHE_DIR=str(cache))
    env.pop("VPOP_NO_CACHE", None)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_second_process_hits_the_cache(tmp_path):
    cache = tmp_path / "jax-cache"
    cold = _run(cache)
    assert cold["folder"] == str(cache)
    entries = [p.name for p in cache.iterdir()]
    assert any(name.startswith("jit_batch") for name in entries), entries  # the engine was cacheable
    warm = _run(cache)
    assert warm["hits"] >= 1 and warm["hits"] > cold["hits"]
    assert warm["compile"] < cold["compile"]
    print(f"engine compile: cold {cold['compile']:.2f} s, warm {warm['compile']:.2f} s")


def test_cache_can_be_turned_off(monkeypatch, tmp_path):
    monkeypatch.setenv("VPOP_NO_CACHE", "1")
    assert compile_cache.enable(tmp_path / "c") is None
    assert not (tmp_path / "c").exists()
    monkeypatch.delenv("VPOP_NO_CACHE")
    monkeypatch.setenv("VPOP_CACHE_DIR", str(tmp_path / "d"))
    assert compile_cache.default_dir() == tmp_path / "d"

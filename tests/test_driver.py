"""The one cohort driver: plain, in-memory and streamed runs agree; bad outputs and sizes are refused first."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import vpop
from vpop.cli import main
from vpop.cli import simulate as simulate_cli
from vpop.run import budget, cohort, driver, endpoints, folder, streaming

N, SEED = 21, 2
# 2 days, batches of 8: the same compiled engine as the `small` fixture below.
SMALL = "extends: axicel.yaml\nname: small\nschedule: {days: 2}\ncohort: {batch_size: 8}\n"


@pytest.fixture(scope="module")
def small(default_config):
    return replace(default_config, name="small", engine=replace(default_config.engine, days=2.0), batch_size=8)


@pytest.fixture(scope="module")
def plain(small):
    return cohort.simulate(small, n=N, seed=SEED, record_rows=True)


@pytest.fixture
def small_file(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    return path


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def test_plain_cli_writes_batch_by_batch_the_tables_of_vpop_simulate(small_file, plain, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["simulate", str(small_file), "--n", str(N), "--seed", str(SEED), "--out", str(out), "--quiet"]) == 0
    patients = pd.read_parquet(out / "patients.parquet")
    obs = pd.read_parquet(out / "observations.parquet")
    pd.testing.assert_frame_equal(patients, plain.patients, check_exact=True)
    pd.testing.assert_frame_equal(obs, plain.observations, check_exact=True)
    # written as batches finished (one row group per batch of 8), not held until the end
    assert pq.ParquetFile(out / "patients.parquet").num_row_groups == 3
    assert pq.ParquetFile(out / "observations.parquet").num_row_groups == 3
    assert sorted(p.name for p in out.iterdir()) == [".vpop.lock", "config.yaml", "observations.parquet",
                                                      "patients.parquet"]


def test_stream_with_a_chunk_size_off_the_batches_is_bit_identical(small, plain, tmp_path, monkeypatch):
    # chunks of 5 patients cut batches of 8: every engine call has the plain run's batch shape, and
    # patients stay in their places of the plain run's batches
    shapes = []
    real = driver.executable

    def spy(jitted, settings, p, keys, policy):
        shapes.append(keys.shape[0])
        return real(jitted, settings, p, keys, policy)

    monkeypatch.setattr(driver, "executable", spy)
    res = streaming.simulate_stream(small, tmp_path / "s", n=N, seed=SEED, chunk_size=5)
    assert res.complete and res.chunks_total == 5
    assert set(shapes) == {8}
    parts = sorted((tmp_path / "s" / "patients").glob("part-*.parquet"))
    patients = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    pd.testing.assert_frame_equal(patients, plain.patients, check_exact=True)
    obs = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / "s" / "observations").glob("part-*"))],
                    ignore_index=True)
    pd.testing.assert_frame_equal(obs, plain.observations, check_exact=True)
    pd.testing.assert_frame_equal(res.summary_table(), plain.summary_table())


@pytest.mark.parametrize("where", ["/proc/vpop-x", "file/sub"])
def test_unwritable_out_is_refused_before_simulating(where, small_file, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    out = where if where.startswith("/") else str(tmp_path / where)
    ran = []
    monkeypatch.setattr(driver, "run", lambda *a, **k: ran.append(1))
    for extra in ([], ["--stream"]):
        before = files_under(tmp_path)
        assert main(["simulate", str(small_file), "--n", "8", "--out", out, "--quiet", *extra]) == 2
        err = capsys.readouterr().err
        assert "--out" in err and "Traceback" not in err and ("cannot write" in err or "not a folder" in err)
        assert files_under(tmp_path) == before and not ran


def test_read_only_folder_is_refused(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    real_write = Path.write_bytes

    def refuse(self, data):  # a read-only file system, even for root
        if self.parent == ro / "out":
            raise OSError(30, "Read-only file system")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", refuse)
    with pytest.raises(vpop.errors.UserError, match="Read-only file system"):
        folder.claim(ro / "out")
    assert list(ro.iterdir()) == []  # the folder it had created is gone again


def test_absurd_cohorts_are_refused_with_the_estimate(small_file, tmp_path, capsys, monkeypatch):
    huge = tmp_path / "huge.yaml"
    huge.write_text(SMALL.replace("cohort: {batch_size: 8}", "cohort: {n: 1000000000000000, batch_size: 8}"))
    out = tmp_path / "o"
    assert main(["simulate", str(huge), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"would take [\d,.]+ years", err) and not out.exists()
    # a cohort whose files cannot fit in the free space
    monkeypatch.setattr(budget, "free_disk", lambda path: 1.0e9)
    assert main(["simulate", str(small_file), "--stream", "--n", "1000000", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"need about [\d.]+ GB \(estimate\) but .* has 1.0 GB free", err) and not out.exists()
    # in memory: tables larger than the machine
    monkeypatch.setattr(budget, "physical_memory", lambda: 1.0e6)
    with pytest.raises(vpop.errors.UserError, match="of memory"):
        vpop.simulate(vpop.load_config(str(small_file)), n=100)


def test_long_runs_print_the_estimate_and_redirected_runs_print_progress(small_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(budget, "CPU_PATIENTS_PER_SECOND", 0.01)  # every run "long"
    monkeypatch.setattr(simulate_cli, "PROGRESS_SECONDS", 0.0)
    assert main(["simulate", str(small_file), "--n", "16", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err  # captured: not a terminal
    assert "estimate: about" in err
    lines = err.splitlines()
    compiling = next(i for i, line in enumerate(lines) if "compiling the engine" in line)
    assert any("8/16 patients" in line for line in lines[compiling:])  # advances within the run
    assert "16/16 patients (100%)" in err


def test_summary_prints_the_trial_scale_and_plain_words(small_file, tmp_path, capsys):
    assert main(["simulate", str(small_file), "--n", "16", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "ZUMA-1" in out and "Lee 2014" in out and "CRS grade >= 3 (lee2014)" in out
    assert "ICANS grade >= 3 (ctcae)" in out
    assert "step error above tolerance" not in out and "docs/outputs.md" in out


def test_plain_runs_into_one_folder_are_locked(small_file, tmp_path, capsys):
    out = tmp_path / "o"
    held = folder.claim(out)  # another run writing there
    try:
        assert main(["simulate", str(small_file), "--n", "8", "--out", str(out), "--quiet"]) == 2
        assert "another vpop run" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == [".vpop.lock"]
        assert main(["simulate", str(small_file), "--n", "8", "--out", str(out), "--quiet", "--stream"]) == 2
        assert "another vpop run" in capsys.readouterr().err
    finally:
        held.release()
    assert main(["simulate", str(small_file), "--n", "8", "--out", str(out), "--quiet"]) == 0


def test_repr_is_short_and_true(small, plain):
    text = repr(plain)
    assert len(text) < 300 and "config='small'" in text and f"n={N}" in text and f"seed={SEED}" in text
    k = int((plain.patients["crs_max_grade"] >= 3).sum())
    assert f"CRS grade >= 3: {100 * k / N:.1f}%" in text


def test_simulate_patient_is_that_patient_of_the_cohort(small, plain):
    one = vpop.simulate_patient(small, seed=SEED, patient=4)
    want = plain.observations[plain.observations["patient_id"] == 4].reset_index(drop=True)
    assert one["patient_id"].unique().tolist() == [4] and len(one) == len(want)
    assert (one["crs_grade_astct"].to_numpy() == want["crs_grade_astct"].to_numpy()).all()
    np.testing.assert_allclose(one["il6_pg_ml"], want["il6_pg_ml"], rtol=1e-5)
    bigger = vpop.simulate_patient(small, seed=SEED, patient=4, tumor_burden=20.0)
    assert bigger["il6_pg_ml"].max() > one["il6_pg_ml"].max()
    with pytest.raises(vpop.errors.UserError, match="unknown override 'tumour'"):
        vpop.simulate_patient(small, tumour=1.0)


def test_plot_helpers_return_figures(plain):
    from matplotlib.figure import Figure

    fig = plain.plot_grades()
    assert isinstance(fig, Figure)
    heights = sorted(round(b.get_height(), 6) for b in fig.axes[0].patches)
    assert abs(sum(heights) - 200.0) < 1e-6  # CRS bars and ICANS bars each add up to 100%
    fig = plain.plot_biomarkers(["il6_pg_ml", "temp_c"])
    assert isinstance(fig, Figure) and len(fig.axes) == 2


def test_the_sampler_compiles_once_per_specification(small):
    """Equal samplers share one compiled sampler, and so do samplers at other doses (a dose sweep's cells),
    each drawing at its own dose; another parameter value is another sampler."""
    from vpop.population.sampler import PopulationSampler, patient_keys

    import jax.numpy as jnp

    a = driver.compiled_sampler(PopulationSampler(small.population, small.parameters), jnp.float32)
    b = driver.compiled_sampler(PopulationSampler(small.population, dict(small.parameters)), jnp.float32)
    assert a.func is b.func
    c = driver.compiled_sampler(PopulationSampler(small.population, {**small.parameters, "leak_rate": 0.1}),
                                jnp.float32)
    assert c.func is not a.func
    field = "dose_per_kg" if small.population.dose_per_kg is not None else "flat_dose"
    doubled = replace(small.population, **{field: 2.0 * getattr(small.population, field)})
    d = driver.compiled_sampler(PopulationSampler(doubled, small.parameters), jnp.float32)
    assert d.func is a.func
    keys, _ = driver.split_keys(patient_keys(0, np.arange(4)))
    np.testing.assert_allclose(np.asarray(d(keys)[0]["car_dose_per_kg"]), 2.0 * np.asarray(a(keys)[0]["car_dose_per_kg"]),
                               rtol=1e-6)


def test_endpoints_mean_the_same_everywhere(plain):
    from vpop.trials.compare import patient_endpoints
    from vpop.trials.sweep import cell_table

    pts = plain.patients
    k = int((pts["crs_max_grade"] >= 3).sum())
    summary = plain.summary_table().set_index("endpoint")
    assert summary.loc["CRS grade >= 3", "count"] == k
    assert patient_endpoints(pts)["CRS grade >= 3 (astct)"].sum() == k
    table = cell_table(pts, ["astct"], ["astct"], ["astct"])
    assert table.set_index(["endpoint", "scale"]).loc[("CRS grade >= 3", "astct"), "count"] == k
    assert endpoints.severe(pts).sum() == int(((pts["crs_max_grade"] >= 3) | (pts["icans_max_grade"] >= 3)).sum())


def test_precision_follows_the_config_without_a_global_switch():
    """A float64 config runs in float64 in a process without x64, and leaves x64 off."""
    import subprocess
    import sys

    code = (
        "import jax, vpop\n"
        "from dataclasses import replace\n"
        "cfg = vpop.load_config()\n"
        "cfg = replace(cfg, engine=replace(cfg.engine, days=1.0), batch_size=2)\n"
        "e64 = vpop.simulate(replace(cfg, dtype='float64'), n=2, record_rows=False).patients['solver_max_error']\n"
        "e32 = vpop.simulate(cfg, n=2, record_rows=False).patients['solver_max_error']\n"
        "print(jax.config.jax_enable_x64, bool((e64 != e32).any()))\n"
    )
    import os

    env = {**os.environ, "JAX_ENABLE_X64": "0", "VPOP_NO_CACHE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["False", "True"]
    source = "\n".join(p.read_text() for p in Path(vpop.__file__).parent.joinpath("run").glob("*.py"))
    assert "jax_enable_x64\", True" not in source and "jax_enable_x64', True" not in source


def test_sample_by_device_share_samples_each_share_and_keeps_patient_order():
    """The sampler sees each device's share (shape batch / devices), arrays and dicts split alike, and the
    concatenated draws are the whole batch's in patient order."""
    import jax
    import jax.numpy as jnp

    from vpop.run.driver import sample_by_device_share

    shapes = []

    def sample(keys, given):
        shapes.append((keys.shape, given["x"].shape))
        return {"c": keys[:, 0] * 10}, {"p": given["x"] + keys[:, 1]}

    keys = jnp.arange(16).reshape(8, 2)
    given = {"x": jnp.arange(8.0)}
    whole = sample(keys, given)
    shapes.clear()
    shared = sample_by_device_share(sample, 4, keys, given)
    assert shapes == [((2, 2), (2,))] * 4
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(shared)):
        assert (a == b).all()
    shapes.clear()
    sample_by_device_share(sample, 1, keys, given)
    assert shapes == [((8, 2), (8,))]

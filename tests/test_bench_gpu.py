"""scripts/bench_gpu.py: the prepared GPU benchmark, exercised on the CPU.

The device run happens once, on a lent machine, with no second chance to fix a
crash; so the smoke mode runs every stage here, and the correctness check is
shown to fail when the device run is deliberately wrong.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_gpu.py"
sys.path.insert(0, str(ROOT / "scripts"))

import bench_gpu  # noqa: E402

COLUMNS = ["crs_astct", "crs_lee2014", "icans_astct"]


def test_agreement_passes_only_when_every_scale_reaches_the_threshold():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 5, size=(10_000, 3)).astype(np.int8)
    same = bench_gpu.agreement(ref.copy(), ref, COLUMNS)
    assert same["passed"] and same["all_scales"] == 1.0 and same["patients_differing"] == 0

    few = ref.copy()
    few[:5, 1] += 1  # 0.05 % of one scale: within 99.9 %
    assert bench_gpu.agreement(few, ref, COLUMNS)["passed"]

    many = ref.copy()
    many[:20, 1] += 1  # 0.2 % of one scale: the other scales agreeing must not hide it
    check = bench_gpu.agreement(many, ref, COLUMNS)
    assert not check["passed"]
    assert check["min_scale"] == "crs_lee2014" and check["per_scale"]["crs_lee2014"] == pytest.approx(0.998)
    assert check["per_scale"]["crs_astct"] == 1.0 and check["patients_differing"] == 20


def test_agreement_refuses_matrices_of_different_patients_or_scales():
    a = np.zeros((10, 3), np.int8)
    with pytest.raises(ValueError):
        bench_gpu.agreement(a, np.zeros((9, 3), np.int8), COLUMNS)
    with pytest.raises(ValueError):
        bench_gpu.agreement(a, a, COLUMNS[:2])


def test_targets_read_the_measured_rows():
    result = {"vpop": [{"n": 100_000, "patients_per_s": 2e5, "run_s": 0.5},
                       {"n": 1_000_000, "patients_per_s": 1e5, "run_s": 10.0},
                       {"n": 10_000_000, "patients_per_s": 1e5, "run_s": 100.0, "peak_device_bytes": 2**31}],
              "diffrax": [{"n": 100_000, "run_s": 5.0}]}
    t = bench_gpu.targets(result)
    assert t["1M <= 10 s"].endswith("(met)")
    assert t[">= 50x the 2-core CPU"] == f"{1e5 / bench_gpu.CPU_2CORE_PATIENTS_PER_S:.0f}x (missed)"
    assert t[">= 10x diffrax at 100k"] == "10.0x (met)"  # 2e5 patients/s x 5 s / 1e5 patients
    assert "2.00 GiB" in t["10M streamed"]
    slow = dict(result, vpop=[dict(result["vpop"][1], run_s=12.0)])
    assert bench_gpu.targets(slow)["1M <= 10 s"].endswith("(missed)")


def test_roofline_fractions_use_the_h200_limits():
    row = {"patients_per_s": 1000.0}
    bench_gpu.roofline(row, {"steps_per_patient": 100, "flops_per_patient_step": 67e6, "bytes_per_patient_step": 48e3})
    assert row["fraction_fp32_peak"] == pytest.approx(1e5 * 67e6 / 67e12)
    assert row["fraction_bandwidth"] == pytest.approx(1e5 * 48e3 / 4.8e12)


def test_device_reduction_gives_the_patient_tables_maximum_grades():
    """The benchmark's on-device maximum grades are vpop's: same patients, same numbers as `simulate`."""
    from vpop.run.cohort import simulate

    cfg = bench_gpu._config()
    cohort = bench_gpu.Cohort(cfg, "float32")
    mine = cohort.run(24, 24, seed=3, keep=True)
    table = simulate(cfg, n=24, seed=3, record_rows=False).patients
    for j, col in enumerate(bench_gpu.scale_columns(cohort.settings)):
        kind, scale = col.split("_", 1)
        name = f"{kind}_max_grade" + ("" if scale == "astct" else f"_{scale}")
        np.testing.assert_array_equal(mine["max_grades"][:, j], table[name].to_numpy(), err_msg=col)
    assert sum(mine["status_counts"]) == 24


def _run(args, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    return subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path), *args],
                          capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
def test_smoke_run_measures_every_stage_and_prints_the_table_last(tmp_path):
    out = _run([], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert r["meta"]["mode"] == "smoke" and r["meta"]["platform"] == "cpu"
    c = r["correctness"]
    assert c["passed"] and c["n"] == bench_gpu.SMOKE["agreement_n"]
    assert set(c["per_scale"]) == set(r["meta"]["scales"]) and len(c["per_scale"]) == 9
    assert c["reference"]["dtype"] == "float64" and c["device_dtype"] == "float32"
    cost = r["cost"]
    assert cost["flops_per_patient_step"] > 1000 and cost["bytes_per_patient_step"] > 1000
    assert cost["steps_per_patient"] == 113
    sizes = [row["n"] for row in r["vpop"]]
    assert sizes == sorted(bench_gpu.SMOKE["sizes"])
    for row in r["vpop"]:
        assert row["patients_per_s"] > 0 and row["compile_s"] > 0 and "fraction_bandwidth" in row
        assert sum(row["status_counts"]) == row["n"]
        assert all(sum(counts) == row["n"] for counts in row["grade_counts"])
    assert r["diffrax"][0]["median_steps"] > 10 and r["diffrax"][0]["finite"]
    # fitting either measured or skipped with its reason, never silently absent
    assert "skipped" in r["fit"] or r["fit"]["gradients"][0]["gradient_ms"] > 0
    assert r["stream"]["n"] == bench_gpu.SMOKE["stream_n"] and r["stream"]["failed"] == 0
    table = (tmp_path / "bench_gpu.md").read_text().strip()
    assert out.stdout.strip().endswith(table.splitlines()[-1])
    assert "| vpop | 600 |" in table and "PASS" in table


@pytest.mark.slow
def test_a_deliberately_wrong_device_run_fails_the_agreement_check(tmp_path):
    out = _run(["--only-correctness", "--perturb", "car_prolif_max=1.5"], tmp_path)
    assert out.returncode == 1, out.stderr[-3000:]
    r = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert r["correctness"]["passed"] is False and r["correctness"]["patients_differing"] > 0
    assert "vpop" not in r and "FAIL" in out.stdout

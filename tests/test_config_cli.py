"""Strict configs, the `vpop simulate` command, its outputs, and the grade round trip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from vpop.cli import main
from vpop.run.config import load_config
from vpop.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_configs_load():
    cfg = load_config(None)
    assert cfg.n == 1000 and cfg.product["costimulation"] == "CD28"
    assert cfg.population.dose_per_kg == 2.0e6
    assert cfg.policy.name == "asco2021"


@pytest.mark.parametrize(
    "text, needle",
    [
        ("extends: axicel.yaml\ncohort: {nn: 5}\n", "cohort.nn: unknown key 'nn'"),
        ("extends: axicel.yaml\ncohort: {n: -5}\n", "cohort.n: got -5; allowed: an integer >= 1"),
        ("extends: axicel.yaml\nsolver: {dtype: float16}\n", "solver.dtype: got 'float16'; allowed: one of: float32, float64"),
        ("extends: axicel.yaml\nparameters: {il6_per_macrophage: 3}\n", "parameters.il6_per_macrophage: unknown model parameter"),
        ("extends: axicel.yaml\npolicy: {preset: sometimes}\n", "policy.preset: got 'sometimes'"),
        ("extends: axicel.yaml\npolicy: {toci_trigger: 2}\n", "policy.toci_trigger: unknown key"),
        ("extends: axicel.yaml\nproduct: {flat_dose: 1.0e8}\n", "give exactly one of dose_per_kg"),
        ("extends: axicel.yaml\ngrading: {scales: [lee2014]}\n", "must include 'astct'"),
        ("extends: missing.yaml\n", "config file not found"),
        ("cohort: [1, 2\n", "not valid YAML"),
    ],
)
def test_bad_configs_name_the_field_and_what_is_allowed(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert needle in str(err.value)
    assert str(tmp_path) in str(err.value)


def test_cli_user_error_exits_2_without_traceback_or_output(tmp_path, capsys):
    path = write(tmp_path, "extends: axicel.yaml\ncohort: {n: 0}\n")
    out = tmp_path / "run"
    assert main(["simulate", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cohort.n" in err and "Traceback" not in err
    assert not out.exists()
    assert main(["simulate", "--n", "0", "--out", str(out)]) == 2
    assert not out.exists()


def test_simulate_writes_the_three_outputs_and_grading_them_again_gives_the_same_grades(tmp_path, capsys):
    cfg = write(tmp_path, "extends: axicel.yaml\nname: small\nschedule: {days: 10}\n")
    out = tmp_path / "run"
    assert main(["simulate", str(cfg), "--n", "40", "--seed", "3", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    for label in ("CRS any grade", "CRS grade >= 3", "ICANS any grade", "ICANS grade >= 3", "CRS onset",
                  "tocilizumab given", "corticosteroids given", "failed solves", "simulate"):
        assert label in printed
    patients = pd.read_parquet(out / "patients.parquet")
    obs = pd.read_parquet(out / "observations.parquet")
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert len(patients) == 40 and patients.patient_id.tolist() == list(range(40))
    for col in ("crs_max_grade", "icans_max_grade", "crs_onset_day", "icans_onset_day", "crs_duration_days",
                "tocilizumab_doses", "peak_il6_pg_ml", "solver_status", "tumor_burden", "age_years"):
        assert col in patients.columns
    assert resolved["cohort"] == {"n": 40, "seed": 3, "batch_size": 4096}
    assert resolved["vpop_version"] and resolved["schedule"]["days"] == 10
    assert set(obs.groupby("patient_id").size()) <= {41}

    graded, summary = tmp_path / "graded.parquet", tmp_path / "summary.parquet"
    stripped = tmp_path / "obs.parquet"
    obs.drop(columns=[c for c in obs.columns if c.startswith(("crs_grade_", "icans_grade_"))]).to_parquet(stripped)
    assert main(["grade", str(stripped), "--out", str(graded), "--patients", str(summary), "--scale", "all"]) == 0
    again = pd.read_parquet(summary).sort_values("patient_id").reset_index(drop=True)
    for col in [c for c in again.columns if c.startswith(("crs_max_grade", "icans_max_grade", "crs_onset_day",
                                                          "icans_onset_day"))]:
        np.testing.assert_array_equal(again[col].to_numpy(float), patients[col].to_numpy(float), err_msg=col)


def test_python_api_in_a_few_lines():
    import vpop

    cfg = vpop.load_config()
    from dataclasses import replace

    cfg = replace(cfg, engine=replace(cfg.engine, days=3.0))
    result = vpop.simulate(cfg, n=8, seed=1)
    assert len(result.patients) == 8
    assert {"patient_id", "time_day", "temp_c", "ice_score"} <= set(result.observations.columns)
    assert set(result.summary_table().endpoint) >= {"CRS any grade", "ICANS grade >= 3"}


def test_model_doc_parameter_table_is_current():
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "render_docs.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_every_parameter_has_unit_source_and_a_range_holding_its_value():
    from vpop.model.parameters import PARAMETERS

    names = [p.name for p in PARAMETERS]
    assert len(names) == len(set(names))
    for p in PARAMETERS:
        assert p.unit and p.source and p.description, p.name
        assert p.low <= p.value <= p.high, p.name

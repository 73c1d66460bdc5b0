"""Configs refuse what YAML or the model would accept silently, and presets are found by name anywhere.

Duplicate keys (PyYAML keeps the last), covariate distributions that reach
impossible values, and model parameters outside the parameter table's
plausible range (unless `allow_outside_range: true`, which warns) are errors
that name the file, the field and what is allowed; `vpop simulate NAME` and
`vpop.load_config(NAME)` take a shipped preset from any folder.
"""

from __future__ import annotations

import warnings

import pytest

from vpop.cli import main
from vpop.errors import ConfigError
from vpop.run.config import OutsideRangeWarning, load_config, load_yaml_file, preset_names


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(path) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return str(err.value)


# --- duplicate keys ------------------------------------------------------------------


def test_duplicate_key_names_file_key_and_both_lines(tmp_path):
    path = write(tmp_path, "extends: axicel.yaml\ncohort:\n  n: 10\n  seed: 1\n  n: 20\n")
    msg = refused(path)
    assert str(path) in msg and "duplicate key 'n'" in msg and "line 5" in msg and "line 3" in msg


def test_duplicate_top_level_section_is_refused(tmp_path):
    # the old loader silently kept the second `cohort:` mapping
    msg = refused(write(tmp_path, "extends: axicel.yaml\ncohort: {n: 10}\ncohort: {seed: 2}\n"))
    assert "duplicate key 'cohort'" in msg and "line 3" in msg


def test_same_key_in_different_mappings_and_yaml_merges_are_fine(tmp_path):
    data = load_yaml_file(write(tmp_path, "a: {n: 1}\nb: {n: 2}\nbase: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n"))
    assert data["c"] == {"x": 3, "y": 2}


@pytest.mark.parametrize("what", ["sweep", "policies", "targets"])
def test_every_yaml_input_refuses_duplicates(tmp_path, what):
    path = write(tmp_path, "- none\n- {preset: none, toci_max_total: 1, toci_max_total: 2}\n", f"{what}.yaml")
    with pytest.raises(ConfigError) as err:
        load_yaml_file(path, what)
    assert str(path) in str(err.value) and "duplicate key 'toci_max_total'" in str(err.value)


def test_compare_with_a_duplicate_in_the_policies_file_exits_2_and_writes_nothing(tmp_path, capsys):
    pols = write(tmp_path, "- none\n- {preset: none, preset: early_toci}\n", "pols.yaml")
    out = tmp_path / "cmp"
    assert main(["compare", "--policies", str(pols), "--n", "5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pols.yaml: line 2: duplicate key 'preset'" in err and "Traceback" not in err
    assert not out.exists()


# --- covariates -----------------------------------------------------------------------


@pytest.mark.parametrize("field, text", [
    ("weight_kg.low", "weight_kg: {dist: normal, center: 80, spread: 40, low: -20, high: 200}"),
    ("tumor_burden.low", "tumor_burden: {dist: normal, center: 1, spread: 1, low: -1, high: 10}"),
    ("age_years.low", "age_years: {dist: normal, center: 60, spread: 10, low: -5, high: 90}"),
    ("age_years.high", "age_years: {dist: normal, center: 60, spread: 10, low: 18, high: 300}"),
    ("ldh.center", "ldh: {dist: normal, center: -10, spread: 1, low: 0, high: 10}"),
])
def test_covariate_distributions_reaching_impossible_values_are_refused(tmp_path, field, text):
    msg = refused(write(tmp_path, f"extends: axicel.yaml\npopulation:\n  covariates:\n    {text}\n"))
    assert f"population.covariates.{field}" in msg and "allowed: a value from" in msg
    assert "np." not in msg


# --- parameters ------------------------------------------------------------------------


def test_parameter_outside_its_plausible_range_is_refused_with_the_range(tmp_path):
    msg = refused(write(tmp_path, "extends: axicel.yaml\nparameters: {car_prolif_max: 1000}\n"))
    assert "parameters.car_prolif_max: 1000 is outside the plausible range 0.5 to 2 1/d" in msg
    assert "allow_outside_range: true" in msg
    msg = refused(write(tmp_path, "extends: axicel.yaml\nproduct: {parameters: {car_contraction: 0.01}}\n"))
    assert "product.parameters.car_contraction: 0.01 is outside the plausible range 0.08 to 0.35" in msg


def test_allow_outside_range_accepts_and_warns_naming_the_parameter(tmp_path):
    path = write(tmp_path, "extends: axicel.yaml\nallow_outside_range: true\nparameters: {car_prolif_max: 3}\n")
    with pytest.warns(OutsideRangeWarning, match="car_prolif_max: 3 is outside"):
        cfg = load_config(path)
    assert cfg.parameters["car_prolif_max"] == 3.0


@pytest.mark.parametrize("text, needle", [
    ("parameters: {car_contraction: -0.1}", "parameters.car_contraction: got -0.1; allowed: a finite number >= 0"),
    ("parameters: {dex_bioavailability: 1.5}", "parameters.dex_bioavailability: got 1.5; allowed: a finite number >= 0.0 and <= 1.0"),
    ("parameters: {fio2_room_air: 1.2}", "parameters.fio2_room_air: got 1.2"),
])
def test_physically_impossible_parameters_are_refused_even_when_outside_range_is_allowed(tmp_path, text, needle):
    msg = refused(write(tmp_path, f"extends: axicel.yaml\nallow_outside_range: true\n{text}\n"))
    assert needle in msg


def test_shipped_presets_are_inside_every_range_and_load_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in preset_names():
            load_config(name)


# --- presets by name -------------------------------------------------------------------


def test_presets_load_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert load_config("axicel").name == "axicel"
    assert load_config("idecel.yaml").trial == "KarMMa"
    import vpop

    assert vpop.load_config("tisacel_ball").disease == "B-ALL"


def test_a_local_file_wins_over_a_preset_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "extends: lisocel.yaml\nname: mine\n", "axicel.yaml")
    assert load_config("axicel.yaml").name == "mine"


def test_unknown_config_lists_the_presets_and_simulate_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    msg = refused("axicell")
    assert "axicell: config file not found" in msg
    for name in preset_names():
        assert name in msg
    assert main(["simulate", "axicell", "--n", "2", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "axicel, ciltacel" in err and "Traceback" not in err and not (tmp_path / "o").exists()


def test_vpop_presets_lists_each_product_with_trial_and_scale_and_each_policy(capsys):
    from vpop.policy.settings import PRESETS

    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for name in preset_names():
        assert sum(line.split()[0] == name for line in lines if line.strip()) == 1, name
    axicel = next(line for line in lines if line.split() and line.split()[0] == "axicel")
    assert "ZUMA-1" in axicel and "Lee 2014" in axicel and "2 × 10⁶ cells/kg" in axicel
    tisa = next(line for line in lines if line.split() and line.split()[0] == "tisacel_dlbcl")
    assert "JULIET" in tisa and "Penn" in tisa
    for name in PRESETS:
        assert sum(line.split()[0] == name for line in lines if line.strip()) == 1, name


def test_trial_must_be_a_published_cohort(tmp_path):
    msg = refused(write(tmp_path, "extends: axicel.yaml\ntrial: ZUMA-99\n"))
    assert "trial: got 'ZUMA-99'" in msg and "ZUMA-1" in msg


# --- patient table --------------------------------------------------------------------


def test_missing_patients_file_names_the_config_and_the_field(tmp_path, capsys):
    path = write(tmp_path, "extends: axicel.yaml\npopulation: {patients_file: nowhere.csv}\n")
    msg = refused(path)
    assert str(path) in msg and "population.patients_file" in msg and "nowhere.csv" in msg
    assert main(["simulate", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "population.patients_file" in capsys.readouterr().err and not (tmp_path / "o").exists()

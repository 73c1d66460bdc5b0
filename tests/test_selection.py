"""Allen-Rieger-Musante virtual-population selection and prevalence weighting."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from vpop.errors import ConfigError
from vpop.trials.selection import (SelectionOptions, Target, ks_statistics, load_targets, prevalence_weights, select,
                            targets_from_dict)

KS_REACHED = 0.06  # selected population vs target, each target (N_plausible = 20,000)
KS_MISSED = 0.25  # plain random sampling from the plausible population is at least this far


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(1)
    n = 20_000
    outputs = pd.DataFrame({
        "peak": rng.lognormal(0.0, 1.0, n),  # plausible: log-normal(1, 1)
        "tmax": rng.normal(8.0, 3.0, n),
        "grade": rng.choice(5, n),  # uniform grades 0-4
    })
    targets = [
        Target.lognormal("peak", np.exp(0.7), 0.5),
        Target.normal("tmax", 10.0, 1.5),
        Target.categorical("grade", {0: 0.05, 1: 0.5, 2: 0.3, 3: 0.1, 4: 0.05}),
    ]
    return outputs, targets


def test_selection_reaches_target_that_random_sampling_misses(synthetic):
    outputs, targets = synthetic
    res = select(outputs, targets, SelectionOptions(repeats=20, seed=0))
    assert res.n_selected >= 300
    for name, ks in res.ks.items():
        assert ks < KS_REACHED, (name, ks)
        assert res.ks_plausible[name] > KS_MISSED, (name, res.ks_plausible[name])
    # a random subset of the same size misses too
    rng = np.random.default_rng(2)
    subset = outputs.iloc[rng.choice(len(outputs), res.n_selected, replace=False)]
    assert all(v > KS_MISSED for v in ks_statistics(subset, targets).values())
    # independent check of the KS values with scipy
    sel = outputs[res.selected]
    assert abs(stats.kstest(np.log(sel["peak"]), "norm", args=(0.7, 0.5)).statistic - res.ks["peak"]) < 1e-9
    assert abs(stats.kstest(sel["tmax"], "norm", args=(10.0, 1.5)).statistic - res.ks["tmax"]) < 1e-9
    assert 0 < res.sf <= res.sf_max * (1 + 1e-9)
    assert res.report()["yield"] == pytest.approx(res.n_selected / len(outputs))


def test_selection_with_sample_targets_and_joint_density(synthetic):
    outputs = synthetic[0].iloc[:8000]
    rng = np.random.default_rng(3)
    targets = [Target.from_samples("peak", rng.lognormal(0.7, 0.5, 400)),
               Target.from_samples("tmax", rng.normal(10.0, 1.5, 400), scale="linear")]
    for density in ("marginal", "joint"):
        res = select(outputs, targets, SelectionOptions(repeats=10, density=density))
        sel = outputs[res.selected]
        ks = stats.ks_2samp(sel["peak"], targets[0].samples).statistic
        assert abs(ks - res.ks["peak"]) < 1e-9
        assert ks < 0.1 and res.ks["tmax"] < 0.1, (density, res.ks)


def test_prevalence_weighting(synthetic):
    outputs, targets = synthetic
    w = prevalence_weights(outputs, targets)
    assert w.weights.sum() == pytest.approx(1.0)
    assert 100 < w.ess < len(outputs)
    assert all(v < KS_REACHED for v in w.ks.values()), w.ks


def test_categorical_ks_is_largest_cdf_difference():
    df = pd.DataFrame({"g": [0, 1, 1, 2]})
    t = Target.categorical("g", {0: 0.5, 1: 0.25, 2: 0.25})
    assert ks_statistics(df, [t])["g"] == pytest.approx(0.25)  # CDF (0.25, 0.75, 1) vs (0.5, 0.75, 1)


def _targets_file(tmp_path, data):
    p = tmp_path / "targets.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("data, field", [
    ({"targets": {"peak": {"dist": "gamma"}}}, "targets.peak.dist"),
    ({"targets": {"peak": {"dist": "lognormal", "median": 5}}}, "targets.peak.sd_log"),
    ({"targets": {"peak": {"dist": "lognormal", "median": -5, "sd_log": 1}}}, "targets.peak.median"),
    ({"targets": {"peak": {"dist": "normal", "mean": 5, "sd": 1, "sd_log": 2}}}, "targets.peak.sd_log"),
    ({"targets": {"g": {"dist": "categorical", "probabilities": {0: 0.5, 1: 0.2}}}}, "targets.g.probabilities"),
    ({"targets": {"p": {"dist": "samples", "samples": [1, "x"]}}}, "targets.p.samples[1]"),
    ({"targets": {"p": {"dist": "normal", "mean": 1, "sd": 1}}, "options": {"repeat": 3}}, "options.repeat"),
    ({"targets": {"p": {"dist": "normal", "mean": 1, "sd": 1}}, "plausible": {"p": [3, 1]}}, "plausible.p"),
    ({"target": {}}, "target"),
])
def test_bad_targets_file_names_file_and_field(tmp_path, data, field):
    path = _targets_file(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_targets(path)
    assert str(path) in str(err.value) and f"{field}:" in str(err.value)


def test_targets_file_samples_from_csv(tmp_path):
    pd.DataFrame({"v": [1.0, 2.0, 3.0]}).to_csv(tmp_path / "obs.csv", index=False)
    ts = load_targets(_targets_file(tmp_path, {"targets": {"peak": {"dist": "samples", "samples_file": "obs.csv",
                                                                    "column": "v"}},
                                               "options": {"repeats": 5, "density": "joint"}}))
    assert ts.targets[0].scale == "log" and list(ts.targets[0].samples) == [1.0, 2.0, 3.0]
    assert ts.options.repeats == 5 and ts.options.density == "joint"
    with pytest.raises(ConfigError, match="targets.peak: unknown output"):
        targets_from_dict({"targets": {"peak": {"dist": "normal", "mean": 1, "sd": 1}}}, allowed_outputs={"x"})


@pytest.mark.slow
def test_end_to_end_selection_on_simulated_patients(tmp_path):
    """CLI: 200 plausible axi-cel-like patients (14 days), selected toward lower CAR-T peaks."""
    from vpop.cli import main
    from vpop.run.config import shipped_config

    cfg = tmp_path / "axi14.yaml"
    cfg.write_text(yaml.safe_dump({"extends": str(shipped_config("axicel.yaml")), "name": "axicel_short",
                                   "schedule": {"days": 14}}))
    targets = _targets_file(tmp_path, {
        "targets": {
            "peak_car_t_cells_per_ul": {"dist": "lognormal", "median": 25.0, "sd_log": 0.7},
            "crs_max_grade": {"dist": "categorical", "probabilities": {0: 0.2, 1: 0.5, 2: 0.25, 3: 0.05}},
        },
        "options": {"repeats": 20, "seed": 0},
    })
    out = tmp_path / "sel"
    assert main(["population", "select", str(cfg), "--targets", str(targets), "--n-plausible", "200",
                 "--seed", "4", "--out", str(out), "--quiet"]) == 0
    report = yaml.safe_load((out / "selection_report.yaml").read_text())["selection"]
    assert report["n_selected"] >= 15
    assert report["ks_sum_selected"] < 0.6 * report["ks_sum_plausible"], report
    table = pd.read_csv(out / "selected_patients.csv")
    assert len(table) == report["n_selected"]
    assert {"patient_id", "age_years", "eta_car_prolif_factor"} <= set(table.columns)
    weights = pd.read_csv(out / "prevalence_weights.csv")
    assert weights["weight"].sum() == pytest.approx(1.0) and weights["selected"].sum() == len(table)
    # bad targets: exit status 2
    bad = _targets_file(tmp_path, {"targets": {"not_an_output": {"dist": "normal", "mean": 1, "sd": 1}}})
    assert main(["population", "select", str(cfg), "--targets", str(bad), "--n-plausible", "200",
                 "--out", str(out), "--quiet"]) == 2

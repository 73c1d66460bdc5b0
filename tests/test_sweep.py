"""Scenario sweeps (strict file, resumable cells, tidy table), dose pools and the trial CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from vpop.trials import designs

from vpop.trials import sweep
from vpop.cli import main
from vpop.errors import ConfigError

# n=200, 10 days, ASTCT only: the same compiled engine as tests/test_compare.py
SMALL_CONFIG = """\
extends: default.yaml
name: small
cohort: {n: 200, seed: 1}
schedule: {days: 10}
grading: {scales: [astct]}
"""


@pytest.fixture
def small_config_file(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL_CONFIG)
    return path


def write(tmp_path, text, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_sweep_file_is_checked_strictly(tmp_path, small_config_file):
    bad = {
        "config: small.yaml\nfactors: {dosee: [1, 2]}\n": "factors.dosee: unknown key",
        "config: small.yaml\nfactors: {dose: [1, -2]}\n": "factors.dose: got",
        "config: small.yaml\nfactors: {dose: [1], dose_multiplier: [2]}\n": "not both",
        "config: nowhere.yaml\n": "config file not found",
        "config: small.yaml\nfactors: {covariate: {name: tumour, values: [1]}}\n": "factors.covariate.name",
        "config: small.yaml\nfactors: {covariate: {name: tumor_burden, field: median, values: [1]}}\n": "field",
        "config: small.yaml\nfactors: {policy: [asco2021, {preset: none, toci_trigger_grde: 1}]}\n": "toci_trigger_grde",
        "config: small.yaml\nfactors: {policy: [none, none]}\n": "must differ",
        "config: small.yaml\nscales: [astct, lee]\n": "scales: got",
        "config: small.yaml\ncohort: {n: 0}\n": "cohort.n",
    }
    for text, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            sweep.load_sweep(write(tmp_path, text))


def test_cells_cross_the_factors(tmp_path, small_config_file):
    spec = sweep.load_sweep(write(tmp_path, """\
config: small.yaml
factors:
  dose_multiplier: [0.5, 2]
  covariate: {name: tumor_burden, field: center, values: [0.5, 1.0, 3.0]}
  policy: [asco2021, {name: toci g1, preset: asco2021, toci_trigger_grade: 1}]
"""))
    cells = sweep.cells_of(spec)
    assert len(cells) == 2 * 3 * 2
    cfg = sweep.cell_config(spec, cells[-1])
    assert cfg.population.dose_per_kg == pytest.approx(4.0e6)
    assert cfg.population.marginals["tumor_burden"].center == 3.0
    assert cfg.policy.name == "toci g1" and cfg.policy.toci_trigger_grade == 1.0
    keys = {sweep.cell_key(spec, c, sweep.cell_config(spec, c)) for c in cells}
    assert len(keys) == len(cells)


def test_median_interval_from_order_statistics():
    med, lo, hi = sweep.median_ci(np.arange(1, 101))
    assert med == 50.5 and lo < med < hi
    assert (lo, hi) == (41.0, 60.0)
    assert np.isnan(sweep.median_ci(np.array([]))[0])


def test_sweep_runs_resumes_and_writes_tidy_table(tmp_path, small_config_file, capsys, monkeypatch):
    monkeypatch.setenv("VPOP_CACHE_DIR", str(tmp_path / "jax-cache"))  # vpop sweep stores the engine as simulate does
    monkeypatch.delenv("VPOP_NO_CACHE", raising=False)
    from vpop.run import driver
    monkeypatch.setattr(driver, "EXECUTABLES", {})  # compiled here, not taken from an earlier test's memory
    path = write(tmp_path, """\
name: dose sweep
config: small.yaml
cohort: {n: 200, seed: 1}
factors:
  dose_multiplier: [0.25, 4]
  policy: [none]
scales: [astct]
""")
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 0
    assert "2 cells run, 0 skipped" in capsys.readouterr().out
    table = pd.read_csv(out / "sweep.csv", keep_default_na=False)
    assert set(table["dose_multiplier"]) == {0.25, 4.0}
    assert {"cell", "config", "dose_multiplier", "policy", "endpoint", "scale", "kind", "value", "ci_low", "ci_high",
            "count", "n"} <= set(table.columns)
    rates = table[(table["kind"] == "rate") & (table["endpoint"] == "CRS grade >= 3")].set_index("dose_multiplier")
    assert (rates["n"] == 200).all()
    assert rates.loc[4.0, "value"] > rates.loc[0.25, "value"]  # more cells, more severe CRS
    assert ((rates["ci_low"] <= rates["value"]) & (rates["value"] <= rates["ci_high"])).all()
    assert "ICU-level support" in set(table["endpoint"])
    assert "CRS onset day (median)" in set(table["endpoint"])
    assert len(list((out / "cells").glob("cell-*.csv"))) == 2
    assert any(p.name.startswith("jit_batch") for p in (tmp_path / "jax-cache").iterdir())  # the engine, cached
    # a second run finds every cell done: nothing is simulated, the same table comes back
    res = sweep.run_sweep(path, out)
    assert (res.ran, res.skipped) == (0, 2)
    pd.testing.assert_frame_equal(pd.read_csv(out / "sweep.csv", keep_default_na=False), table)
    assert not list((out / "cells").glob(".*tmp*"))


@pytest.mark.parametrize("text, message", [
    ("factors: {covariate: {name: age_years, field: low, values: [10, 200]}}\n", "invalid distribution"),
    ("scales: [astct, lee2014]\n", "lee2014 not simulated"),
])
def test_sweep_config_errors_leave_no_output_behind(tmp_path, small_config_file, capsys, text, message):
    path = write(tmp_path, "config: small.yaml\ncohort: {n: 8}\n" + text)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_dose_pools_are_the_same_patients_at_each_dose(small_config_file):
    from vpop.run.config import load_config

    cfg = load_config(small_config_file)
    definition = designs.DLTDefinition(crs_grade=3, icans_grade=3, window_days=28.0)
    pool = designs.dose_pools(cfg, [0.5e6, 8e6], definition, n=200, seed=1, record_rows=True)  # shared compile
    assert pool.outcomes.shape == (200, 2)
    rates = pool.true_rates
    assert rates[1] > rates[0]
    # the same virtual patients: most patients with a DLT at the low dose also have one at the high dose
    low, high = pool.outcomes[:, 0], pool.outcomes[:, 1]
    assert (low & high).sum() >= 0.8 * low.sum()
    res = designs.boin(pool, 0.3, n_trials=200, seed=0)
    oc = res.operating_characteristics()
    assert oc["true_dlt_rate"].tolist() == pytest.approx(rates.tolist())


def test_escalate_cli_with_given_rates(tmp_path, capsys):
    out = tmp_path / "esc"
    assert main(["escalate", "--p-true", "0.05,0.15,0.3,0.5", "--design", "boin", "--trials", "300",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "BOIN: 300 simulated trials" in text
    oc = pd.read_csv(out / "operating_characteristics.csv")
    summary = json.loads((out / "summary.json").read_text())
    assert len(oc) == 4 and summary["trials"] == 300
    assert oc["p_select"].sum() + summary["p_no_mtd"] == pytest.approx(1.0)
    assert main(["escalate", "--p-true", "0.05,1.5", "--trials", "10"]) == 2
    assert main(["escalate", "--p-true", "0.1,0.2", "--design", "mtpi", "--trials", "10"]) == 2
    assert main(["escalate", "--trials", "10"]) == 2  # neither --doses nor --p-true


def test_compare_cli_writes_paired_differences(tmp_path, small_config_file, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(small_config_file), "--policies", "none,prophylactic_dex", "--n", "200",
                 "--out", str(out)]) == 0
    assert "reference none" in capsys.readouterr().out
    diff = pd.read_csv(out / "differences.csv")
    rates = pd.read_csv(out / "rates.csv")
    assert set(diff["policy"]) == {"prophylactic_dex"} and set(rates["policy"]) == {"none", "prophylactic_dex"}
    assert main(["compare", str(small_config_file), "--policies", "none,nonsense", "--n", "200"]) == 2
    record = yaml.safe_load((out / "comparison.yaml").read_text())
    assert record["reference"] == "none" and record["n"] == 200
    assert record["policies"]["prophylactic_dex"]["prophylactic_dex_days"] == [0.0, 1.0, 2.0]


def test_compare_cli_takes_user_policies_from_a_file(tmp_path, small_config_file, capsys):
    pols = write(tmp_path, """\
policies:
  - none
  - {name: il6 pre-emptive, preset: none, toci_il6_trigger_pg_ml: 300, toci_max_total: 1}
""", "policies.yaml")
    out = tmp_path / "cmp"
    assert main(["compare", str(small_config_file), "--policies", str(pols), "--n", "200", "--out", str(out)]) == 0
    rates = pd.read_csv(out / "rates.csv").set_index(["policy", "endpoint"])["rate"]
    assert rates["none", "tocilizumab given"] == 0.0 and rates["il6 pre-emptive", "tocilizumab given"] > 0.0
    record = yaml.safe_load((out / "comparison.yaml").read_text())
    assert record["policies"]["il6 pre-emptive"]["toci_max_total"] == 1.0
    bad = write(tmp_path, "- {preset: none, toci_il6_trigger: 300}\n", "bad.yaml")
    capsys.readouterr()
    assert main(["compare", str(small_config_file), "--policies", str(bad), "--n", "200"]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: policies[0]" in err and "toci_il6_trigger" in err and "Traceback" not in err


def test_sweep_with_posterior_carries_parameter_uncertainty(tmp_path, small_config_file):
    from test_posterior import write_posterior

    from vpop.model.parameters import TABLE

    typical = TABLE["car_prolif_max"].value
    # two very different expansion rates: the posterior interval must span both cohorts' rates
    write_posterior(tmp_path / "fit", {"car_prolif_max": np.repeat([0.5 * typical, 1.6 * typical], 10)})
    path = write(tmp_path, """\
name: posterior sweep
config: small.yaml
cohort: {n: 200, seed: 1}
factors:
  policy: [none]
scales: [astct]
posterior: {path: fit, draws: 2, n: 200}
""")
    res = sweep.run_sweep(path, tmp_path / "out")
    t = res.table.set_index(["endpoint", "kind"])
    assert np.isnan(t.loc[("CRS onset day (median)", "median"), "post_low"])  # medians get no posterior interval
    row = t.loc[("CRS grade >= 3", "rate")]
    assert row["post_draws"] == 2
    assert row["post_low"] <= row["post_value"] <= row["post_high"]
    assert row["post_high"] - row["post_low"] > 2 * (row["ci_high"] - row["ci_low"])
    # a different posterior file is a different cell: nothing stale is reused
    write_posterior(tmp_path / "fit", {"car_prolif_max": np.repeat([typical, typical], 10)})
    again = sweep.run_sweep(path, tmp_path / "out")
    assert again.ran == 1
    narrow = again.table.set_index(["endpoint", "kind"]).loc[("CRS grade >= 3", "rate")]
    assert narrow["post_high"] - narrow["post_low"] < row["post_high"] - row["post_low"]


def test_sweep_posterior_errors_name_the_field(tmp_path, small_config_file):
    base = "name: x\nconfig: small.yaml\nscales: [astct]\n"
    with pytest.raises(ConfigError, match=r"posterior\.path: .*no fitted posterior"):
        sweep.load_sweep(write(tmp_path, base + "posterior: {path: nowhere}\n"))
    from test_posterior import write_posterior

    write_posterior(tmp_path / "fit", {"car_prolif_max": np.ones(4)})
    with pytest.raises(ConfigError, match=r"posterior\.draws: got 1; allowed: an integer >= 2"):
        sweep.load_sweep(write(tmp_path, base + "posterior: {path: fit, draws: 1}\n"))


@pytest.mark.slow
def test_sweep_draws_from_the_joint_calibration_of_each_cells_trial(tmp_path, small_config_file):
    """`posterior: {path: calibration}`: each cell uses the shipped posterior of the trial its config is
    modelled on (small.yaml extends the default, modelled on ZUMA-1: the axi-cel preset's draws)."""
    from vpop.fitting.posterior import calibration_posterior

    draws = calibration_posterior("axicel")
    assert set(draws) == {"fever_drive_ec50", "leak_rate", "neuro_injury_rate"}
    path = write(tmp_path, """\
name: calibrated sweep
config: small.yaml
cohort: {n: 100, seed: 1}
factors:
  policy: [none]
scales: [astct]
posterior: {path: calibration, draws: 2, n: 100}
""")
    res = sweep.run_sweep(path, tmp_path / "out")
    row = res.table.set_index(["endpoint", "kind"]).loc[("CRS any grade", "rate")]
    assert row["post_draws"] == 2 and row["post_low"] <= row["post_value"] <= row["post_high"]

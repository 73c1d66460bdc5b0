"""Paired policy comparisons: statistics and a small simulated comparison."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from vpop.trials import compare
from vpop.errors import ConfigError
from vpop.policy.settings import NEVER, PRESETS

N = 200  # every simulating test uses n=200, 10 days and ASTCT grading only: one compiled engine for all
DAYS = 10.0


def small_config(config):
    """The default config shortened to 10 days and graded by ASTCT only (a small, fast engine)."""
    return replace(config, engine=replace(config.engine, days=DAYS, crs_scales=("astct",), neuro_scales=("astct",)))


def test_paired_difference_self_is_exactly_zero():
    x = np.array([1, 0, 1, 1, 0, 0, 1, 0], dtype=bool)
    d = compare.paired_difference(x, x)
    assert d.difference == 0.0 and d.only_policy == 0 and d.only_reference == 0
    assert d.ci_low <= 0 <= d.ci_high  # all pairs concordant: phi = 1, a degenerate interval here
    assert d.wald_low == d.wald_high == 0.0
    assert np.isnan(d.nnt) and np.isnan(d.nnt_low)  # no NNT where the interval does not exclude 0


def test_paired_difference_and_nnt_formula():
    rng = np.random.default_rng(0)
    ref = rng.random(2000) < 0.40
    pol = ref & (rng.random(2000) < 0.5)  # the policy prevents half the events
    d = compare.paired_difference(pol, ref)
    assert d.difference == pytest.approx(pol.mean() - ref.mean())
    assert d.rate_reference == pytest.approx(ref.mean()) and d.rate_policy == pytest.approx(pol.mean())
    assert d.nnt == pytest.approx(1.0 / (ref.mean() - pol.mean()))
    assert d.ci_low < d.difference < d.ci_high < 0
    assert d.nnt_low == pytest.approx(1.0 / -d.ci_low) and d.nnt_high == pytest.approx(1.0 / -d.ci_high)
    assert d.nnt_low < d.nnt < d.nnt_high
    # large n: Newcombe and Wald-McNemar agree closely
    assert d.ci_low == pytest.approx(d.wald_low, abs=0.005) and d.ci_high == pytest.approx(d.wald_high, abs=0.005)
    # harm: negative NNT (number needed to harm)
    h = compare.paired_difference(ref, pol)
    assert h.nnt == pytest.approx(-d.nnt)


def test_paired_interval_is_narrower_than_unpaired_for_correlated_outcomes():
    ref = np.zeros(100, dtype=bool)
    ref[:40] = True
    pol = ref.copy()
    pol[:10] = False  # 10 discordant pairs, all in favour of the policy
    d = compare.paired_difference(pol, ref)
    assert d.difference == pytest.approx(-0.10)
    assert d.ci_high < 0  # paired: significant; unpaired 30% vs 40% of 100 would not be
    assert -0.2 < d.ci_low


def test_resolve_policy_presets_and_overrides():
    assert compare.resolve_policy("early_toci") == PRESETS["early_toci"]
    p = compare.resolve_policy({"preset": "none", "name": "dex only", "dex_icans_trigger_grade": 2})
    assert p.name == "dex only" and p.dex_icans_trigger_grade == 2.0 and p.toci_trigger_grade == NEVER
    with pytest.raises(ConfigError, match="toci_trigger_grde"):
        compare.resolve_policy({"preset": "none", "toci_trigger_grde": 1})
    with pytest.raises(ConfigError):
        compare.resolve_policy("no_such_preset")


@pytest.fixture(scope="module")
def small_comparison(default_config):
    cfg = small_config(default_config)
    return compare.compare_policies(cfg, {"none": "none", "none again": "none", "prophylactic_dex": "prophylactic_dex"},
                                    n=N, seed=1)


def test_prophylactic_dex_reduces_icans_with_ci(small_comparison):
    diff = small_comparison.differences.set_index(["policy", "endpoint"])
    row = diff.loc["prophylactic_dex", "ICANS grade >= 3 (astct)"]
    assert row["reference"] == "none"
    assert row["difference"] < 0 and row["ci_high"] < 0
    assert row["nnt"] == pytest.approx(1.0 / -row["difference"]) and row["nnt"] > 1
    rates = small_comparison.rates.set_index(["policy", "endpoint"])["rate"]
    assert row["difference"] == pytest.approx(rates["prophylactic_dex", "ICANS grade >= 3 (astct)"]
                                              - rates["none", "ICANS grade >= 3 (astct)"])
    # with no management, no tocilizumab
    assert rates["none", "tocilizumab given"] == 0.0
    assert rates["none", "ICU-level support"] >= rates["none", "vasopressors"]
    assert set(compare.endpoint_names()) == set(diff.loc["prophylactic_dex"].index)


def test_icu_support_tracked_by_engine_matches_the_observation_table(default_config):
    from vpop.run.cohort import simulate

    # untreated, at 5x the dose and with leakier lungs (inside the parameter table's ranges), so that some
    # patients reach vasopressors and positive pressure and the two derivations have something to agree on
    cfg = replace(small_config(default_config), policy=PRESETS["none"])
    cfg = replace(cfg, population=replace(cfg.population, dose_per_kg=5 * cfg.population.dose_per_kg),
                  parameters={**cfg.parameters, "lung_sensitivity": 3.0, "leak_rate": 2.0})
    res = simulate(cfg, n=N, seed=1)
    engine = compare.patient_endpoints(res.patients)
    legacy = res.patients.drop(columns=["max_vasopressors", "positive_pressure_ventilation"])
    from_rows = compare.patient_endpoints(legacy, res.observations)
    for col in ("vasopressors", "positive-pressure ventilation", "ICU-level support"):
        np.testing.assert_array_equal(engine[col].to_numpy(), from_rows[col].to_numpy(), err_msg=col)
    assert 0 < engine["vasopressors"].sum() < N and engine["positive-pressure ventilation"].sum() > 0
    # without either source the ICU-level endpoints are left out rather than guessed
    assert "ICU-level support" not in compare.patient_endpoints(legacy).columns


def test_policy_compared_with_itself_gives_exactly_zero(small_comparison):
    same = small_comparison.differences[small_comparison.differences["policy"] == "none again"]
    assert len(same) == len(compare.endpoint_names())
    assert (same["difference"] == 0.0).all()
    assert (same["only_policy"] == 0).all() and (same["only_reference"] == 0).all()


def test_unpaired_tables_are_refused():
    a = pd.DataFrame({"x": [True, False]}, index=pd.Index([0, 1], name="patient_id"))
    b = pd.DataFrame({"x": [True, False]}, index=pd.Index([0, 2], name="patient_id"))
    from vpop.errors import UserError
    with pytest.raises(UserError, match="same patients"):
        compare.compare_endpoints({"a": a, "b": b})


@pytest.mark.slow
def test_posterior_differences_carry_the_parameters_uncertainty(default_config, tmp_path):
    """Two very different leak rates in the posterior: the paired difference between no management and
    ASCO 2021 moves with them, so its interval with parameter uncertainty is wider than the sampling one."""
    from test_posterior import write_posterior

    from vpop.fitting.posterior import load_theta_draws

    leak = default_config.parameters.get("leak_rate", 0.5)
    write_posterior(tmp_path / "fit", {"leak_rate": np.repeat([0.4 * leak, 2.5 * leak], 4)})
    posterior = {"draws": load_theta_draws(tmp_path / "fit"), "k": 2, "n": 300}
    cmp = compare.compare_policies(small_config(default_config), ["none", "asco2021"], n=N, seed=3,
                                   posterior={**posterior, "n": N})
    assert cmp.posterior_draws == 2
    row = cmp.differences.set_index("endpoint").loc["CRS grade >= 3 (astct)"]
    assert row["post_low"] <= row["post_difference"] <= row["post_high"]
    assert row["post_high"] - row["post_low"] > 1.5 * (row["wald_high"] - row["wald_low"])


@pytest.mark.slow
def test_compare_cli_with_the_calibration_posterior(capsys, tmp_path):
    from vpop.cli.main import main

    assert main(["compare", "--policies", "none,asco2021", "--n", "60", "--posterior", "calibration", "--draws", "2",
                 "--draws-n", "60", "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "with parameter uncertainty (95%)" in out and "2 posterior draws" in out
    diff = pd.read_csv(tmp_path / "cmp" / "differences.csv")
    assert {"post_difference", "post_low", "post_high"} <= set(diff.columns)
    assert main(["compare", "--policies", "none,asco2021", "--posterior", "calibration", "--draws", "1"]) == 2
    err = capsys.readouterr().err
    assert "--draws: got 1; allowed: an integer >= 2" in err and "Traceback" not in err

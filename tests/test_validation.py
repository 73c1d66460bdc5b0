"""The validation scorecard (vpop validate): its statistics on synthetic inputs, and a small deterministic run."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from vpop.fitting.cohort_tables import Target, read_cohort_table
from vpop.stats import wilson_interval
from vpop.trials import validation as v

Z = v.Z95


# --- paired statistics on synthetic inputs ------------------------------------------------------------------


def test_an_arm_compared_with_itself_gives_exactly_zero_with_zero_width():
    rng = np.random.default_rng(0)
    x = rng.random(500) < 0.3
    d = v.paired_proportion_difference(x, x)
    assert (d.value, d.low, d.high) == (0.0, 0.0, 0.0)
    peaks = rng.lognormal(5.0, 1.0, 500)
    r = v.paired_ratio(peaks, peaks)
    assert (r.value, r.low, r.high) == (1.0, 1.0, 1.0)


def test_paired_difference_is_the_discordant_pairs_with_the_paired_normal_variance():
    # 100 pairs: 30 events under both, b = 20 under the arm only, c = 5 under the reference only
    ref = np.array([1] * 30 + [0] * 20 + [1] * 5 + [0] * 45, bool)
    arm = np.array([1] * 30 + [1] * 20 + [0] * 5 + [0] * 45, bool)
    d = v.paired_proportion_difference(arm, ref)
    se = math.sqrt(20 + 5 - (20 - 5) ** 2 / 100) / 100
    assert d.value == pytest.approx(0.15)
    assert (d.low, d.high) == pytest.approx((0.15 - Z * se, 0.15 + Z * se))
    assert d.low > 0  # a known effect: the interval excludes 0
    assert v.holds(d, "higher") and not v.holds(d, "lower") and not v.holds(d, "no more")


def test_the_paired_interval_is_narrower_than_an_unpaired_one_when_arms_are_correlated():
    """Pairing is the point: the same patients' outcomes agree, and the interval knows it."""
    rng = np.random.default_rng(1)
    ref = rng.random(2000) < 0.3
    arm = ref & (rng.random(2000) > 0.2)  # the arm prevents a fifth of the reference's events
    d = v.paired_proportion_difference(arm, ref)
    p1, p0 = arm.mean(), ref.mean()
    unpaired = Z * math.sqrt(p1 * (1 - p1) / 2000 + p0 * (1 - p0) / 2000)
    assert d.high < 0 and (d.high - d.low) / 2 < 0.6 * unpaired


def test_paired_ratio_of_a_known_fold_change():
    rng = np.random.default_rng(2)
    ref = rng.lognormal(4.0, 1.0, 400)
    exact = v.paired_ratio(3.0 * ref, ref)
    assert exact.value == pytest.approx(3.0) and exact.high - exact.low == pytest.approx(0.0, abs=1e-9)
    noisy = v.paired_ratio(2.0 * ref * rng.lognormal(0.0, 0.3, 400), ref)
    assert 1.0 < noisy.low < 2.0 < noisy.high and v.holds(noisy, "higher")


def test_risk_ratio_is_katz_and_adds_a_half_to_empty_cells():
    rr = v.risk_ratio(30, 100, 10, 100)
    se = math.sqrt(1 / 30 - 1 / 100 + 1 / 10 - 1 / 100)
    assert rr.value == pytest.approx(3.0)
    assert (rr.low, rr.high) == pytest.approx((3.0 * math.exp(-Z * se), 3.0 * math.exp(Z * se)))
    zero = v.risk_ratio(5, 100, 0, 100)
    assert zero.value == pytest.approx((5.5 / 101) / (0.5 / 101)) and math.isfinite(zero.high)
    assert v.holds(v.Effect("ratio", 3.0, 1.6, 4.9, 10), "between 1.5 and 5")
    assert not v.holds(v.Effect("ratio", 3.0, 1.4, 4.9, 10), "between 1.5 and 5")
    assert not v.holds(v.Effect("ratio", 3.0, 1.6, 5.1, 10), "between 1.5 and 5")


def test_rules_of_the_facts():
    e = lambda lo, hi, kind="difference": v.Effect(kind, (lo + hi) / 2, lo, hi, 10)  # noqa: E731
    assert v.holds(e(-0.2, -0.01), "lower") and not v.holds(e(-0.2, 0.01), "lower")
    assert v.holds(e(-0.2, 0.01), "not lower") and not v.holds(e(-0.2, -0.01), "not lower")
    assert v.holds(e(-0.01, 0.2), "no more") and not v.holds(e(0.01, 0.2), "no more")
    assert v.holds(e(1.1, 2.0, "ratio"), "higher") and not v.holds(e(0.9, 2.0, "ratio"), "higher")
    assert v.holds(v.proportion(300, 300), "at least 0.97")
    assert not v.holds(v.proportion(50, 50), "at least 0.97")  # 50/50 has a Wilson lower bound of 0.93
    assert v.holds(v.proportion(0, 40), "none") and not v.holds(v.proportion(1, 40), "none")
    assert not v.holds(v.Effect("difference", v.NAN, v.NAN, v.NAN, 0), "not lower")  # no patients: never holds
    with pytest.raises(ValueError):
        v.holds(e(0, 1), "roughly")


# --- IN / OUT --------------------------------------------------------------------------------------------


def test_in_means_inside_the_published_wilson_interval_exactly():
    t = Target("ZUMA-1", "lee2014", "crs_grade3plus", 101, 0.13, "percent", 2)
    lo, hi = wilson_interval(13, 101)
    assert v.in_published_interval(lo, t) == (True, lo, hi)
    assert v.in_published_interval(hi, t)[0]
    assert not v.in_published_interval(lo - 1e-9, t)[0]
    assert not v.in_published_interval(hi + 1e-9, t)[0]
    # nothing looser: the value the trial reported, 13%, is IN; 22% (well outside 7.7%-21.0%) is OUT
    assert v.in_published_interval(0.13, t)[0] and not v.in_published_interval(0.22, t)[0]


def test_published_spreads_are_read_from_the_note():
    assert v.published_spread("range 1-12") == (1.0, 12.0, "range")
    assert v.published_spread("IQR 5-8") == (5.0, 8.0, "IQR")
    assert v.published_spread("Q1 8.2, Q3 57.9; verified") == (8.2, 57.9, "IQR")
    assert v.published_spread("IQR 1-7; verified") == (1.0, 7.0, "IQR")
    assert v.published_spread("neurologic events by CTCAE") is None


def test_median_interval_brackets_the_median_with_order_statistics():
    med, lo, hi = v.median_interval(np.arange(1.0, 101.0))
    assert med == 50.5 and lo == 41.0 and hi == 60.0  # n/2 -/+ 1.96 sqrt(n)/2 = 40.2, 59.8 (0-based)
    assert all(math.isnan(x) for x in v.median_interval(np.array([np.nan])))


def test_every_cohort_of_the_shipped_table_is_mapped_to_a_preset_and_its_trials_policy():
    from vpop.data import published_cohorts_path
    from vpop.policy.settings import PRESETS
    from vpop.run.config import preset_names

    cohorts = {t.cohort for t in read_cohort_table(published_cohorts_path())}
    assert cohorts <= set(v.COHORTS)
    for c in v.COHORTS.values():
        assert c.product in preset_names() and c.policy in PRESETS and c.subset in v.SUBSETS


# --- a small deterministic run -------------------------------------------------------------------------------


N_QUICK = 6


@pytest.fixture(scope="module")
def card():
    return v.validate(n=N_QUICK, seed=3)


FACTS = ("prophylactic dexamethasone", "cohort 4", "prophylactic tocilizumab on day 2", "prophylactic anakinra",
         "pre-emptive tocilizumab at persistent fever", "CAR-T dose within the studied range",
         "fewer than one CAR-T cell", "tumour burden, top vs bottom quartile", "tocilizumab for CRS",
         "steroids", "ICANS >= 3: CRS first", "oxygen or vasopressors: CRS first", "no CAR-T cells")


@pytest.mark.slow
def test_scorecard_has_every_row_and_every_fact(card):
    from vpop.data import published_cohorts_path

    table = pd.read_csv(published_cohorts_path(), dtype=str, keep_default_na=False)
    assert len(card.rows) == len(table)
    assert list(card.rows["cohort"]) == [c.strip() for c in table["cohort"]]
    assert set(card.rows["verdict"]) <= {"IN", "OUT", "not scored"}
    scored = card.rows[card.rows["verdict"] != "not scored"]
    for r in scored[scored["unit"] == "percent"].itertuples():  # the published interval is the Wilson one
        assert (r.pub_low, r.pub_high) == pytest.approx(wilson_interval(int(round(r.published * r.n)), r.n))
        assert (r.verdict == "IN") == (r.pub_low <= r.simulated <= r.pub_high)
    assert (card.rows.loc[card.rows["verdict"] == "not scored", "reason"] != "").all()
    for name in FACTS:
        assert card.facts["fact"].str.contains(name, regex=False).any(), name
    assert card.facts["holds"].dtype == bool
    summary = card.summary()
    assert "scored rows IN" in summary and "facts hold" in summary


@pytest.mark.slow
def test_the_same_seed_gives_the_same_scorecard(card):
    again = v.validate(n=N_QUICK, seed=3)
    pd.testing.assert_frame_equal(card.rows, again.rows)
    pd.testing.assert_frame_equal(card.facts, again.facts)


@pytest.mark.slow
def test_markdown_names_its_command_and_lists_rows_and_facts(card):
    text = v.markdown(card, "vpop validate --quick --seed 3")
    assert text.startswith("# Validation scorecard") and "`vpop validate --quick --seed 3`" in text
    assert card.summary() in text
    assert text.count("\n| ZUMA-1 |") == int((card.rows["cohort"] == "ZUMA-1").sum())
    assert text.count("HOLDS") + text.count("**FAILS**") == len(card.facts)


def test_cli_refuses_a_bad_out_before_simulating(tmp_path, capsys):
    from vpop.cli.main import main

    assert main(["validate", "--quick", "--out", str(tmp_path / "nowhere" / "v.md")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "does not exist" in err and "Traceback" not in err
    assert main(["validate", "--n", "1", "--out", str(tmp_path / "v.md")]) == 2
    assert "--n: got 1" in capsys.readouterr().err and not (tmp_path / "v.md").exists()


class FakeRunner:
    """Synthetic patient tables in place of simulations: score_rows' bookkeeping without the model."""

    def __init__(self, n=40, seed=0):
        self.n, self.rng = n, np.random.default_rng(seed)

    def run(self, arm):
        from vpop.fitting.cohort_tables import SCALE_COLUMNS

        n, rng = self.n, self.rng
        df = {"patient_id": np.arange(n), "tumor_burden": rng.lognormal(0, 1, n), "_ok": np.ones(n, bool),
              "tocilizumab_doses": rng.integers(0, 3, n), "steroids_given": rng.random(n) < 0.3,
              "peak_car_t_cells_per_ul": rng.lognormal(3, 1, n), "peak_car_t_day": rng.integers(5, 15, n) * 1.0,
              "auc_car_t_cells_per_ul_day": rng.lognormal(5, 1, n)}
        for kind, col in SCALE_COLUMNS.values():
            prefix = "crs" if kind == "crs" else "icans"
            df[col] = rng.integers(0, 5, n)
            for what in ("onset_day", "duration_days"):
                df[col.replace("max_grade", what)] = np.where(df[col] > 0, rng.integers(1, 10, n) * 1.0, np.nan)
        obs = pd.DataFrame({"patient_id": np.repeat(np.arange(n), 3), "time_day": np.tile([0.0, 4.0, 8.0], n),
                            "il6_pg_ml": rng.random(3 * n)})
        return pd.DataFrame(df), obs


def test_score_rows_scores_every_row_of_the_table_by_its_kind():
    from vpop.data import published_cohorts_path

    rows = v.score_rows(FakeRunner())
    table = pd.read_csv(published_cohorts_path(), dtype=str, keep_default_na=False)
    assert len(rows) == len(table) and set(rows["verdict"]) <= {"IN", "OUT", "not scored"}
    by = rows.set_index(["cohort", "endpoint"])
    zuma = by.loc[("ZUMA-1", "crs_grade3plus")]
    assert (zuma.preset, zuma.policy) == ("axicel", "zuma1_c12")
    assert (zuma.pub_low, zuma.pub_high) == pytest.approx(wilson_interval(13, 101))
    assert (zuma.verdict == "IN") == (zuma.pub_low <= zuma.simulated <= zuma.pub_high)
    onset = by.loc[("ZUMA-1", "crs_onset_median")]  # a timing median scored against the note's range 1-12
    assert (onset.pub_low, onset.pub_high) == (1.0, 12.0) and onset.verdict in ("IN", "OUT")
    assert by.loc[("ZUMA-1", "neuro_onset_median")].reason == "no IQR or range published"
    assert by.loc[("MDACC-TMTV-matched-historical-no-anakinra", "crs_grade2plus")].verdict == "not scored"
    assert by.loc[("CARTITUDE-1-PK", "car_cmax_mean")].reason.startswith("copies/ug gDNA")
    auc = by.loc[("ZUMA-7-axi-cel-arm", "car_auc0_28_median")]  # CAR-T exposure against the note's Q1-Q3
    assert (auc.pub_low, auc.pub_high) == (76.4, 758.0) and auc.verdict in ("IN", "OUT")
    chop = rows[rows["cohort"].str.contains("early-fever") & (rows["endpoint"] == "crs_grade4")]
    assert set(chop["subset"]) == {"high_burden_early_fever"}


def test_crs_first_counts_onsets_at_or_before_the_event_and_no_crs_as_a_miss():
    p = pd.DataFrame({"_ok": [True, True, True, True, True, False],
                      "crs_onset_day": [1.0, 2.0, 3.0, np.nan, 1.0, 9.0],
                      "organ_support_onset_day": [2.0, 2.0, 2.5, 4.0, np.nan, 1.0]})
    # before, same assessment, after, never CRS, never supported, failed solve
    assert v.crs_first(p, "organ_support_onset_day") == (2, 4)

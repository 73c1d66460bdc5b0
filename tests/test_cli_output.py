"""What the commands print and write is readable and consistent.

Rates as percentages, differences in percentage points, the NNT only where
the difference's interval excludes zero, doses with their unit and without
500000 / 1e+06, rates given on the command line reported as given,
`comparison.yaml` with null where a rule is off (not the 99 / 1e9 / 1e30
sentinels), every flag with help text and its default, and a wrong flag
answered with the sub-command's own usage.
"""

from __future__ import annotations

import argparse
import math

import pandas as pd
import pytest
import yaml

from vpop.cli import main
from vpop.cli.main import build_parser
from vpop.cli.trials import differences_table, policy_record
from vpop.cli.format import cells, pct, plain
from vpop.policy.settings import PRESETS

# the same small engine as tests/test_compare.py and tests/test_sweep.py: n=200, 10 days, ASTCT only
SMALL_CONFIG = """\
extends: default.yaml
name: small
cohort: {n: 200, seed: 1}
schedule: {days: 10}
grading: {scales: [astct]}
"""


def subparsers(parser=None, prefix="vpop"):
    parser = parser or build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from subparsers(sub, f"{prefix} {name}")


def test_numbers_are_written_as_people_write_them():
    assert [cells(5e5), cells(1e6), cells(2.5e6), cells(4.5e8), cells(40)] == [
        "5 × 10⁵", "1 × 10⁶", "2.5 × 10⁶", "4.5 × 10⁸", "40"]
    assert [plain(0.12), plain(2.0), plain(1500), plain(0.1 + 0.2)] == ["0.12", "2", "1500", "0.30000000000000004"]
    assert pct(0.1234) == "12.3%" and pct(float("nan")) == "—"


def test_differences_print_as_percentages_and_nnt_only_when_the_interval_excludes_zero():
    diff = pd.DataFrame([
        # clear benefit: -18.5 points (-24.3 to -13.4): NNT 1/0.185 = 5.4 -> 6 (rounded up), interval 5 to 8
        {"policy": "asco2021", "endpoint": "CRS grade >= 3", "rate_reference": 0.225, "rate_policy": 0.04,
         "difference": -0.185, "ci_low": -0.243, "ci_high": -0.134, "nnt": 1 / 0.185, "nnt_low": 1 / 0.243,
         "nnt_high": 1 / 0.134},
        # interval through zero: no NNT, although the point estimate has one (200)
        {"policy": "asco2021", "endpoint": "CRS any grade", "rate_reference": 0.885, "rate_policy": 0.88,
         "difference": -0.005, "ci_low": -0.023, "ci_high": 0.012, "nnt": 200.0, "nnt_low": math.nan,
         "nnt_high": math.nan},
        # harm
        {"policy": "asco2021", "endpoint": "tocilizumab given", "rate_reference": 0.0, "rate_policy": 0.42,
         "difference": 0.42, "ci_low": 0.351, "ci_high": 0.489, "nnt": -1 / 0.42, "nnt_low": -1 / 0.351,
         "nnt_high": -1 / 0.489},
    ])
    table = differences_table(diff)
    benefit, null, harm = table.to_dict("records")
    assert benefit["reference"] == "22.5%" and benefit["policy rate"] == "4.0%"
    assert benefit["difference (95% CI)"] == "-18.5 pp (-24.3 pp to -13.4 pp)"
    assert benefit["NNT or NNH (95% CI)"] == "NNT 6 (5 to 8)"
    assert null["NNT or NNH (95% CI)"] == ""
    assert harm["NNT or NNH (95% CI)"].startswith("NNH 3 ")
    text = table.to_string()
    assert "0.225" not in text and "0.885" not in text


def test_comparison_yaml_writes_null_for_rules_that_are_off():
    rec = policy_record(PRESETS["none"])
    assert rec["toci_trigger_grade"] is None and rec["dex_crs2_after_toci_doses"] is None  # NEVER (99)
    assert rec["toci_il6_trigger_pg_ml"] is None  # OFF (1e30)
    assert rec["toci_until_day"] is None and rec["dex_max_doses"] is None  # 1e9
    assert rec["anakinra_prophylaxis_until_day"] is None  # -1: no prophylaxis
    assert rec["toci_mg_per_kg"] == 8.0 and rec["prophylactic_dex_days"] == []
    text = yaml.safe_dump(rec)
    for sentinel in ("99.0", "1000000000.0", "1.0e+30", "1e+30"):
        assert sentinel not in text
    asco = policy_record(PRESETS["asco2021"])
    assert asco["toci_trigger_grade"] == 2.0 and asco["anakinra_crs_trigger_grade"] is None


def test_escalate_reports_given_rates_as_given(tmp_path, capsys):
    out = tmp_path / "esc"
    assert main(["escalate", "--p-true", "0.05,0.12,0.3", "--trials", "200", "--design", "3+3",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "0.05, 0.12, 0.3" in printed
    rows = [line.split() for line in printed.splitlines()]
    level2 = next(r for r in rows if r[:1] == ["2"])
    assert level2[1] == "0.12"  # the pool's sampled mean was printed as 0.122
    assert "%" in printed and "0.122" not in printed
    oc = pd.read_csv(out / "operating_characteristics.csv")
    assert oc["true_dlt_rate"].tolist() == [0.05, 0.12, 0.3]


def test_compare_help_shows_95_percent_not_95_percent_percent(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = capsys.readouterr().out
    assert "95%%" not in out and "95%" in out


def test_every_flag_has_help_and_shows_its_default():
    missing = []
    for name, parser in subparsers():
        help_text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction, argparse._VersionAction)):
                continue
            flag = action.option_strings[0] if action.option_strings else action.dest
            if not action.help:
                missing.append(f"{name} {flag}: no help")
                continue
            d = action.default
            if action.option_strings and d is not None and d is not False and d != argparse.SUPPRESS:
                if f"default: {d}" not in " ".join(help_text.split()) and "default" not in action.help:
                    missing.append(f"{name} {flag}: default {d} not shown")
    assert not missing, missing


@pytest.mark.parametrize("argv, usage", [
    (["compare", "--policies", "none,asco2021", "--bogus"], "usage: vpop compare"),
    (["escalate", "--p-true", "0.1", "--desing", "crm"], "usage: vpop escalate"),
    (["grade", "obs.csv", "--out", "g.csv", "--scales", "all"], "usage: vpop grade"),
    (["population", "select", "c.yaml", "--targets", "t.yaml", "--out", "o", "--nplausible", "5"],
     "usage: vpop population select"),
])
def test_a_wrong_flag_prints_the_subcommands_usage(argv, usage, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert usage in err and "unrecognized arguments" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_compare_prints_percentages_and_writes_null_sentinels(tmp_path, capsys):
    cfg = tmp_path / "small.yaml"
    cfg.write_text(SMALL_CONFIG)
    out = tmp_path / "cmp"
    assert main(["compare", str(cfg), "--policies", "none,asco2021", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "%" in printed and " pp " in printed
    record = yaml.safe_load((out / "comparison.yaml").read_text())
    assert record["policies"]["none"]["toci_trigger_grade"] is None
    text = (out / "comparison.yaml").read_text()
    assert "99.0" not in text and "1000000000.0" not in text
    # fractions stay in the machine-readable tables
    assert pd.read_csv(out / "rates.csv")["rate"].between(0, 1).all()

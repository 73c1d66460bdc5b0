"""Management policies as data: triggers by grade, scale, time window and biomarker; dose limits."""

from __future__ import annotations

from dataclasses import replace

import jax.numpy as jnp
import numpy as np
import pytest

from vpop.engine import course as engine

from vpop.policy import rules as policy
from vpop.trials.compare import resolve_policy
from vpop.run.config import load_config
from vpop.errors import ConfigError

QUIET = {"il6_pg_ml": 10.0, "crp_mg_l": 5.0, "ferritin_ng_ml": 500.0}


def decide(settings: policy.PolicySettings, t, crs=0, icans=0, bio=QUIET, state=None, weight=70.0, toci_doses=0):
    """The standard rules' doses at one assessment (every drug listed, 0 when not given)."""
    s = settings.to_arrays(jnp.float64)
    state = policy.STANDARD.init(jnp.float64) if state is None else state
    b = {k: jnp.asarray(v, jnp.float64) for k, v in bio.items()}
    a = policy.Assessment(jnp.asarray(t, jnp.float64), jnp.asarray(crs), jnp.asarray(icans), jnp.asarray(False),
                          jnp.asarray(weight, jnp.float64), b, jnp.asarray(toci_doses))
    return policy.STANDARD.update(s, state, a, {})


def test_chain_composes_rules_in_order_and_a_rule_sees_earlier_doses():
    seen = []

    def record(settings, state, a, doses):
        seen.append(sorted(doses))
        return {**doses, "extra_mg": jnp.asarray(1.0)}, state + 1

    rule = policy.chain(policy.tocilizumab, policy.Rule(lambda dtype=jnp.float32, shape=(): jnp.zeros(shape), record))
    doses, state = decide_with(rule, policy.PRESETS["asco2021"], 1.0, crs=2)
    assert seen == [["toci_mg"]]  # the second rule sees the first rule's decision
    assert float(doses["toci_mg"]) > 0 and float(doses["extra_mg"]) == 1.0
    assert float(state[1]) == 1.0  # each rule keeps its own state


def decide_with(rule, settings, t, crs=0, icans=0):
    a = policy.Assessment(jnp.asarray(t, jnp.float64), jnp.asarray(crs), jnp.asarray(icans), jnp.asarray(False),
                          jnp.asarray(70.0, jnp.float64), QUIET, jnp.asarray(0))
    return rule.update(settings.to_arrays(jnp.float64), rule.init(jnp.float64), a, {})


def test_null_switches_off_the_crs2_after_tocilizumab_steroid_rule():
    """`dex_crs2_after_toci_doses: null` used to leave the rule on (a "tocilizumab only" arm gave steroids)."""
    toci_only = policy.with_overrides(policy.PRESETS["asco2021"], {"dex_crs2_after_toci_doses": None,
                                                                   "dex_crs_trigger_grade": None})
    s = toci_only.to_arrays(jnp.float64)
    a = policy.Assessment(jnp.asarray(2.0, jnp.float64), jnp.asarray(2), jnp.asarray(0), jnp.asarray(True),
                          jnp.asarray(70.0, jnp.float64), QUIET, jnp.asarray(3))
    doses, _ = policy.STANDARD.update(s, policy.STANDARD.init(jnp.float64), a, {})
    assert float(doses["dex_iv_mg"]) == 0.0
    on = policy.PRESETS["asco2021"].to_arrays(jnp.float64)  # the same patient under the standard rule: steroids
    assert float(policy.STANDARD.update(on, policy.STANDARD.init(jnp.float64), a, {})[0]["dex_iv_mg"]) == 10.0


def test_penn_chop_gives_steroids_for_severe_crs_refractory_to_tocilizumab_not_for_any_grade_2():
    """Penn/CHOP: steroids for CRS still severe (Penn >= 3) with hypotension after two tocilizumab doses;
    ASCO 2021 already at grade 2. Penn grade 2 is any hospitalisation for CRS, so ASCO's step read under
    Penn gave steroids to nearly every child who had tocilizumab."""
    def dex(settings, crs):
        s = settings.to_arrays(jnp.float64)
        a = policy.Assessment(jnp.asarray(2.0, jnp.float64), jnp.asarray(crs), jnp.asarray(0), jnp.asarray(True),
                              jnp.asarray(40.0, jnp.float64), QUIET, jnp.asarray(2))
        return float(policy.STANDARD.update(s, policy.STANDARD.init(jnp.float64), a, {})[0]["dex_iv_mg"])

    penn, asco = policy.PRESETS["penn_chop"], policy.PRESETS["asco2021"]
    assert dex(penn, 2) == 0.0 and dex(penn, 3) == 10.0
    assert dex(asco, 2) == 10.0
    assert dex(policy.PRESETS["chop_preemptive_toci"], 2) == 0.0
    assert dex(policy.with_overrides(penn, {"dex_refractory_grade": 2.0}), 2) == 10.0


def test_biomarker_threshold_triggers_preemptive_tocilizumab():
    pre = resolve_policy({"preset": "asco2021", "name": "il6 pre-emptive", "toci_il6_trigger_pg_ml": 1000})
    doses, _ = decide(pre, 1.0, crs=1, bio={**QUIET, "il6_pg_ml": 1500.0})
    assert float(doses["toci_mg"]) == pytest.approx(8.0 * 70.0)
    doses, _ = decide(pre, 1.0, crs=1, bio={**QUIET, "il6_pg_ml": 900.0})
    assert float(doses["toci_mg"]) == 0.0  # grade 1 alone does not trigger ASCO tocilizumab
    doses, _ = decide(policy.PRESETS["asco2021"], 1.0, crs=1, bio={**QUIET, "il6_pg_ml": 1e6})
    assert float(doses["toci_mg"]) == 0.0  # thresholds are off by default
    ferr = resolve_policy({"dex_ferritin_trigger_ng_ml": 5000})
    assert float(decide(ferr, 2.0, bio={**QUIET, "ferritin_ng_ml": 6000.0})[0]["dex_iv_mg"]) == 10.0
    assert float(decide(ferr, 2.0, bio={**QUIET, "ferritin_ng_ml": 4000.0})[0]["dex_iv_mg"]) == 0.0


def test_time_window_limits_the_triggers():
    late = resolve_policy({"toci_from_day": 1.0, "toci_until_day": 3.0, "steroid_until_day": 2.0})
    assert float(decide(late, 0.5, crs=2)[0]["toci_mg"]) == 0.0
    assert float(decide(late, 1.5, crs=2)[0]["toci_mg"]) > 0.0
    assert float(decide(late, 3.5, crs=2)[0]["toci_mg"]) == 0.0
    assert float(decide(late, 1.5, icans=2)[0]["dex_iv_mg"]) == 10.0
    assert float(decide(late, 2.5, icans=2)[0]["dex_iv_mg"]) == 0.0


def test_dexamethasone_stops_at_the_maximum_doses():
    capped = resolve_policy({"dex_max_doses": 3})
    state, given = None, []
    for k in range(8):  # grade 3 ICANS at every 6-hourly assessment
        doses, state = decide(capped, k * 0.25, icans=3, state=state)
        given.append(float(doses["dex_iv_mg"]))
    assert given == [10.0] * 3 + [0.0] * 5


def test_null_switches_a_trigger_off():
    p = resolve_policy({"toci_trigger_grade": None, "toci_il6_trigger_pg_ml": None})
    assert p.toci_trigger_grade == policy.NEVER and p.toci_il6_trigger_pg_ml == policy.OFF


def test_trigger_grade_is_read_under_the_named_scale():
    grades = {"crs_grade_astct": jnp.asarray([1, 1]), "crs_grade_lee2014": jnp.asarray([2, 3]),
              "icans_grade_astct": jnp.asarray([0, 2]), "icans_grade_ctcae": jnp.asarray([1, 3])}
    for scale, want in (("astct", [1, 1]), ("lee2014", [2, 3])):
        idx = jnp.asarray(float(policy.CRS_TRIGGER_SCALES.index(scale)))
        np.testing.assert_array_equal(engine._trigger_grade(grades, "crs", idx), want)
    idx = jnp.asarray(float(policy.ICANS_TRIGGER_SCALES.index("ctcae")))
    np.testing.assert_array_equal(engine._trigger_grade(grades, "icans", idx), [1, 3])
    arrays = resolve_policy({"crs_trigger_scale": "penn"}).to_arrays()
    assert int(arrays.crs_trigger_scale) == policy.CRS_TRIGGER_SCALES.index("penn")


def test_policy_on_an_ungraded_scale_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("extends: default.yaml\ngrading: {scales: [astct]}\npolicy: {preset: asco2021, crs_trigger_scale: penn}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: policy: crs_trigger_scale: 'penn' is not among the CRS scales"):
        load_config(path)
    path.write_text("extends: default.yaml\npolicy: {crs_trigger_scale: grade}\n")
    with pytest.raises(ConfigError, match=r"policy\.crs_trigger_scale.*astct, lee2014"):
        load_config(path)
    from vpop.run.cohort import simulate

    cfg = load_config(None)
    cfg = replace(cfg, engine=replace(cfg.engine, crs_scales=("astct",)),
                  policy=resolve_policy({"crs_trigger_scale": "lee2014"}))
    with pytest.raises(ConfigError, match="crs_trigger_scale: 'lee2014' is not among"):
        simulate(cfg, n=4)


def test_preemptive_tocilizumab_follows_il6_in_the_simulation(default_config):
    from vpop.run.cohort import simulate

    from test_compare import N, small_config

    pol = resolve_policy({"preset": "none", "name": "il6 only", "toci_il6_trigger_pg_ml": 300})
    pts = simulate(replace(small_config(default_config), policy=pol), n=N, seed=1, record_rows=False).patients
    treated = pts["tocilizumab_doses"] > 0
    assert 0 < treated.sum() < N
    assert (pts.loc[treated, "peak_il6_pg_ml"] >= 300).all()
    assert not treated[pts["peak_il6_pg_ml"] < 300].any()


# --- trial-era triggers (issue 12: each trial under its own management) ---------------------------------------


def run_course(settings, crs_by_row, icans_by_row=None, dt=0.25):
    """Doses decided at each 6-hourly assessment for given grade sequences (the rules' state carried)."""
    state, out = None, []
    icans_by_row = icans_by_row or [0] * len(crs_by_row)
    for k, (crs, icans) in enumerate(zip(crs_by_row, icans_by_row)):
        doses, state = decide(settings, k * dt, crs=crs, icans=icans, state=state)
        out.append({name: float(v) for name, v in doses.items()})
    return out


def test_fever_on_two_assessments_in_24h_triggers_preemptive_tocilizumab_even_when_not_in_a_row():
    chop = policy.PRESETS["chop_preemptive_toci"]
    # febrile at 0 h, afebrile at 6 h (antipyretic), febrile at 12 h: two fevers in 24 h -> tocilizumab at 12 h
    given = [d["toci_mg"] for d in run_course(chop, [1, 0, 1, 0])]
    assert given[:2] == [0.0, 0.0] and given[2] == pytest.approx(8.0 * 70.0) and given[3] == 0.0
    # fevers 30 h apart are not persistent fever; the Penn/CHOP standard never gives it at grade 1
    assert all(d["toci_mg"] == 0.0 for d in run_course(chop, [1, 0, 0, 0, 0, 1]))
    assert all(d["toci_mg"] == 0.0 for d in run_course(policy.PRESETS["penn_chop"], [1, 1, 1, 1]))


def test_prophylactic_tocilizumab_is_one_dose_on_its_day_whatever_the_grade():
    c3 = policy.PRESETS["zuma1_c3"]
    given = [d["toci_mg"] for d in run_course(c3, [0] * 16)]  # days 0 .. 3.75, no CRS at all
    assert given[8] == pytest.approx(560.0) and sum(g > 0 for g in given) == 1  # day 2 only
    assert all(d["toci_mg"] == 0.0 for d in run_course(policy.PRESETS["zuma1_c12"], [0] * 16))
    off = policy.with_overrides(c3, {"toci_prophylaxis_day": None})
    assert all(d["toci_mg"] == 0.0 for d in run_course(off, [0] * 16))


def test_cohort4_gives_steroids_for_grade1_crs_lasting_three_days_and_grade1_neurologic_events():
    c4, c12 = policy.PRESETS["zuma1_c4"], policy.PRESETS["zuma1_c12"]
    dex = [d["dex_iv_mg"] for d in run_course(c4, [1] * 14)]  # grade 1 CRS from day 0 to day 3.25
    assert dex[:12] == [0.0] * 12 and dex[12] == 10.0  # first at day 3.0
    assert all(d["dex_iv_mg"] == 0.0 for d in run_course(c12, [1] * 14))
    assert run_course(c4, [0], [1])[0]["dex_iv_mg"] == 10.0
    assert run_course(c12, [0], [2])[0]["dex_iv_mg"] == 0.0  # cohorts 1-2 wait for grade 3
    assert run_course(c4, [0], [1])[0]["dex_iv_mg"] == 10.0  # cohort 4 does not wait
    # cohorts 1-2 (the NCI algorithm): grade 3 neurologic events lasting 24 h, or grade 4 at once
    dex = [d["dex_iv_mg"] for d in run_course(c12, [0] * 6, [3] * 6)]
    assert dex == [0.0] * 4 + [10.0, 10.0]  # from day 1.0, every 6 h while it lasts
    assert run_course(c12, [0], [4])[0]["mp_mg"] == 250.0  # grade 4: methylprednisolone at once
    # a run broken by a lower grade starts the 24 h again
    dex = [d["dex_iv_mg"] for d in run_course(c12, [0] * 9, [3, 3, 3, 2, 3, 3, 3, 3, 3])]
    assert dex == [0.0] * 8 + [10.0]
    assert run_course(policy.with_overrides(c12, {"dex_icans_after_hours": 0.0}), [0], [3])[0]["dex_iv_mg"] == 10.0
    # cohort 4: tocilizumab at grade 1 lasting 24 h; cohorts 1-2 at grade 2 only
    assert [d["toci_mg"] > 0 for d in run_course(c4, [1] * 5)] == [False] * 4 + [True]
    assert not any(d["toci_mg"] > 0 for d in run_course(c12, [1] * 5))


def test_trial_presets_read_their_trials_scales_and_the_new_triggers_switch_off_with_null():
    p = policy.PRESETS
    assert (p["zuma1_c12"].crs_trigger_scale, p["zuma1_c12"].icans_trigger_scale) == ("lee2014", "ctcae")
    assert p["penn_chop"].crs_trigger_scale == "penn" and p["asco2021"].crs_trigger_scale == "astct"
    assert p["zuma1_c6"].prophylactic_dex_days == (0.0, 1.0, 2.0)
    assert p["mdacc_anakinra"].anakinra_prophylaxis_until_day == 7.0
    off = policy.with_overrides(p["chop_preemptive_toci"], {"toci_fever_assessments_in_24h": None,
                                                            "dex_grade1_after_days": None})
    assert off.toci_fever_assessments_in_24h == policy.NEVER and off.dex_grade1_after_days == 1e9
    from vpop.policy.settings import DESCRIPTIONS

    assert set(DESCRIPTIONS) == set(p)


def test_every_shipped_product_preset_runs_its_trials_policy():
    from vpop.run.config import load_config, preset_names

    want = {"ZUMA-1": "zuma1_c12", "JULIET": "penn_chop", "ELIANA": "penn_chop", "TRANSCEND-NHL-001": "transcend",
            "KarMMa": "karmma", "CARTITUDE-1": "cartitude1"}
    for name in preset_names():
        cfg = load_config(name)
        if name == "default":  # the default run keeps today's management
            assert cfg.policy == policy.PRESETS["asco2021"]
        elif cfg.trial:
            assert cfg.policy == policy.PRESETS[want[cfg.trial]], name

"""The joint calibration (issue 12 §3): emulator, hierarchical posterior, coverage, what the presets ship."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vpop.trials import joint_calibration as jc

jax = pytest.importorskip("jax")


def test_quadratic_features_are_one_linear_and_every_product_once():
    x = np.array([[2.0, 3.0]])
    np.testing.assert_allclose(jc.quadratic_features(x), [[1, 2, 3, 4, 6, 9]])
    assert jc.N_INPUTS == len(jc.FREE) + len(jc.VARIABILITY) == 5
    assert jc.quadratic_features(np.zeros((1, jc.N_INPUTS))).shape == (1, 21)  # 1 + 5 + 15
    np.testing.assert_allclose(np.asarray(jc.quadratic_features(jax.numpy.asarray(x))), jc.quadratic_features(x))


def test_emulator_recovers_a_known_quadratic_logit():
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.6, 0.6, size=(40, jc.N_INPUTS))
    true = rng.normal(0, 0.5, size=21)
    true[0] = -1.0
    p = 1 / (1 + np.exp(-jc.quadratic_features(x) @ true))
    n = np.full((40, 1), 2e6)
    em = jc.fit_emulator(x, rng.binomial(n.astype(np.int64), p[:, None]).astype(float), n)
    np.testing.assert_allclose(em.coef[0], true, atol=0.02)
    assert em.loo_rmse[0] < 0.01
    # and the leave-one-out error sees a surface the quadratic cannot follow
    bumpy = 1 / (1 + np.exp(-(np.sin(6 * x[:, 0]) * 2)))
    em2 = jc.fit_emulator(x, rng.binomial(n.astype(np.int64), bumpy[:, None]).astype(float), n)
    assert em2.loo_rmse[0] > 10 * em.loo_rmse[0]


def test_effects_come_from_what_each_preset_declares():
    from vpop.run.config import load_config

    assert jc.product_effects(load_config("axicel")) == (1.0, 0.0, 0.0)
    assert jc.product_effects(load_config("lisocel")) == (0.0, 0.0, 0.0)
    assert jc.product_effects(load_config("idecel")) == (0.0, 1.0, 0.0)
    assert jc.product_effects(load_config("tisacel_ball")) == (0.0, 0.0, 1.0)


def test_a_calibration_point_scales_only_the_sensitivities():
    from vpop.run.config import load_config

    cfg = load_config("axicel")
    out = jc.with_inputs(cfg, {"leak_rate": 0.123}, 2.0)
    assert out.parameters["leak_rate"] == 0.123
    for k, v in cfg.population.omega.items():
        assert out.population.omega[k] == pytest.approx(v * 2.0 if k in jc.SENSITIVITIES else v)
    # each variability group has its own scale: the neurologic susceptibility apart from the inflammatory ones
    out = jc.with_inputs(cfg, {}, [2.0, 3.0])
    groups = dict(jc.VARIABILITY)
    assert groups["neuro_iiv_scale"] == ("neuro_sensitivity",)
    for k, v in cfg.population.omega.items():
        want = v * 3.0 if k in groups["neuro_iiv_scale"] else v * 2.0 if k in groups["iiv_scale"] else v
        assert out.population.omega[k] == pytest.approx(want), k


def _synthetic(truth_phi, log_scale, n_trial=20000):
    """Two presets (one with the CD28 effect), five rows each (ten counts for eight unknowns); a linear
    logit in every input."""
    rng = np.random.default_rng(3)
    centre = np.array([[0.0, 0.0, 0.0, 0.0, 0.0], [0.2, -0.1, 0.1, 0.0, 0.0]])
    coef = np.zeros((10, 21))
    coef[:, 0] = [-1.0, -2.0, 0.0, 0.7, -1.5, 0.5, -0.5, -2.5, -0.3, 0.2]
    for r in range(8):
        coef[r, 1:5] = rng.normal(0, 1.5, size=4)
    # the second variability scale: a slope in every row, and one more row per preset that it drives most
    coef[:, 5] = np.random.default_rng(4).normal(0, 0.8, size=10)
    coef[8:, 5] = [1.5, -1.2]
    coef[8:, 1:5] = np.random.default_rng(5).normal(0, 0.5, size=(2, 4))
    data = jc.PosteriorData(jax.numpy.asarray(coef), jax.numpy.asarray([0, 0, 0, 0, 1, 1, 1, 1, 0, 1]),
                            jax.numpy.asarray(centre), jax.numpy.asarray([0.6, 0.6, 0.6, 0.35, 0.6]),
                            jax.numpy.asarray([[1.0, 0, 0], [0, 0, 0]]), jax.numpy.full(10, float(n_trial)),
                            jax.numpy.asarray(np.log([[0.01, 100.0]] * 3)))
    logits, _ = jc.emulated_logits(data, jax.numpy.asarray(truth_phi), jax.numpy.asarray(log_scale))
    counts = np.round(n_trial / (1 + np.exp(-np.asarray(logits))))  # the expected counts: no noise
    return data, counts


@pytest.mark.slow
def test_posterior_recovers_known_constants_from_rich_tables():
    truth = np.array([[0.2, -0.2, 0.1], [0.0, 0.2, -0.1]])
    data, counts = _synthetic(truth, [0.1, -0.2])
    post = jc.sample_posterior(data, counts, warmup=300, draws=300, chains=1, seed=1)
    np.testing.assert_allclose(np.median(post.phi, axis=0), truth, atol=0.05)
    np.testing.assert_allclose(np.median(post.log_iiv_scale, axis=0), [0.1, -0.2], atol=0.05)
    assert post.diagnostics["divergences"] < 15


@pytest.mark.slow
def test_the_design_box_confines_the_posterior():
    """A table that wants a value far outside the box gets the box's edge, not an extrapolated surface."""
    truth = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # 2.0 is far outside the +-0.6 box
    data, counts = _synthetic(truth, [0.0, 0.0], n_trial=2000)
    post = jc.sample_posterior(data, counts, warmup=150, draws=150, chains=1, seed=2)
    assert np.quantile(post.phi[:, 0, 0], 0.95) < 0.6 + 0.1


def test_shipped_presets_carry_the_joint_posterior_medians():
    """The blocks, the stored result and the posterior files agree, and the files load for sweeps."""
    import json
    from pathlib import Path

    from vpop.fitting.posterior import load_theta_draws
    from vpop.trials.calibration_blocks import block_values

    root = Path(__file__).resolve().parents[1]
    stored = json.loads((root / "docs" / "calibration.json").read_text())
    for preset, values in stored["values"].items():
        block = block_values((root / "vpop" / "configs" / f"{preset}.yaml").read_text())
        assert block == pytest.approx(values, rel=1e-5), preset
        draws = load_theta_draws(root / "vpop" / "data" / "calibration" / f"{preset}.nc")
        for k, v in values.items():
            assert np.median(draws[k]) == pytest.approx(v, rel=1e-6), (preset, k)


def test_the_plausible_range_bounds_the_posterior_too():
    """Inside the box but beyond the parameter table's range: the posterior stops at the range."""
    truth = np.array([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    data, counts = _synthetic(truth, [0.0, 0.0], n_trial=2000)
    data = data._replace(bounds=jax.numpy.asarray(np.log([[0.1, np.exp(0.2)], [0.01, 100.0], [0.01, 100.0]])))
    post = jc.sample_posterior(data, counts, warmup=150, draws=150, chains=1, seed=2)
    assert np.quantile(post.phi[:, 0, 0], 0.95) < 0.2 + 0.08


@pytest.mark.slow
def test_coverage_truths_stay_where_the_prior_puts_mass():
    """A preset whose box reaches past the plausible range (the B-ALL fever constant near its top, 3.0):
    the coverage check draws its truths inside the range, since no interval can cover a value the prior
    excludes; the other constants keep the inner 60 % of their box."""
    from types import SimpleNamespace

    from vpop.model.parameters import TABLE

    top = np.log(TABLE["fever_drive_ec50"].high)
    centre = np.array([[top - 0.05, np.log(TABLE["leak_rate"].value), np.log(TABLE["neuro_injury_rate"].value),
                        0.0, 0.0]])
    half = np.array([0.6, 0.6, 0.6, 0.35, 0.6])
    coef = np.zeros((2, 21))
    coef[:, 0] = [-1.0, 0.5]
    coef[:, 1:6] = [[1.0, 0.5, 0.0, 0.3, 0.4], [0.0, 1.0, 1.0, 0.2, -0.3]]
    design = jc.Design(presets=["p"], centre=centre, half_width=half, effects=np.zeros((1, 3)),
                       targets=[SimpleNamespace(n=500), SimpleNamespace(n=500)], row_preset=np.zeros(2, int),
                       x={}, events={}, patients={})
    cov = jc.coverage(design, jc.Emulator(coef, np.zeros(2)), replicates=6, warmup=20, draws=20)
    fever = cov[cov.parameter == "fever_drive_ec50"].truth.to_numpy()
    assert (fever <= top + 1e-12).all() and (fever >= centre[0, 0] - 0.36 - 1e-12).all()
    leak = cov[cov.parameter == "leak_rate"].truth.to_numpy()
    assert (np.abs(leak - centre[0, 1]) <= 0.36 + 1e-12).all() and np.ptp(leak) > 0.1


# --- timing medians ----------------------------------------------------------------------------------------


def test_median_standard_error_from_an_iqr_or_a_range():
    # IQR: sigma = log width / 1.349, SE of a median 1.2533 sigma / sqrt(n)
    want = 1.2533 * (np.log(8 / 5) / (2 * 0.6745)) / np.sqrt(97)
    assert jc.median_log_se(5, 8, "IQR", 97) == pytest.approx(want, rel=1e-6)
    # range: sigma = log width / twice the expected largest normal score of n (about 2.5 at n = 100)
    from scipy.stats import norm

    z = norm.ppf((101 - 0.375) / (101 + 0.25))
    assert jc.median_log_se(1, 12, "range", 101) == pytest.approx(1.2533 * np.log(12) / (2 * z) / np.sqrt(101))
    assert 2.4 < z < 2.6
    # a published 0 is read as the first assessment, so the log stays finite
    assert np.isfinite(jc.median_log_se(0, 7, "range", 20))


def test_timing_targets_are_the_medians_with_a_spread():
    from vpop.data import published_cohorts_path

    rows = jc.timing_targets(published_cohorts_path())
    got = {(tt.target.cohort, tt.target.endpoint) for tt in rows}
    assert ("ZUMA-1", "crs_onset_median") in got and ("CARTITUDE-1", "crs_duration_median") in got
    assert ("JULIET", "crs_onset_median") not in got  # no IQR or range published
    assert not any(tt.target.endpoint.startswith("car_") for tt in rows)  # CAR-T kinetics are set apart
    assert all(0 < tt.log_se < 1 for tt in rows)



def test_a_timing_median_counts_the_patients_who_had_the_event(tmp_path):
    """JULIET's neurologic onset is the median of the 23 of 111 with an event (neuro_any 21 %), so its
    standard error is that of a median of 23; without the any-grade row the trial size stands in."""
    from vpop.data import published_cohorts_path
    from vpop.trials.validation import published_spread

    src = pd.read_csv(published_cohorts_path(), dtype=str, keep_default_na=False)
    note = src[(src["cohort"] == "JULIET") & (src["endpoint"] == "neuro_onset_median")]["note"].iloc[0]
    lo, hi, kind = published_spread(note)
    rows = {(tt.target.cohort, tt.target.endpoint): tt for tt in jc.timing_targets(published_cohorts_path())}
    assert rows[("JULIET", "neuro_onset_median")].log_se == pytest.approx(jc.median_log_se(lo, hi, kind, 23))
    table = tmp_path / "t.csv"
    src[~((src["cohort"] == "JULIET") & (src["endpoint"] == "neuro_any"))].to_csv(table, index=False)
    alone = {(tt.target.cohort, tt.target.endpoint): tt for tt in jc.timing_targets(table)}
    assert alone[("JULIET", "neuro_onset_median")].log_se == pytest.approx(jc.median_log_se(lo, hi, kind, 111))


def test_timing_emulator_leaves_out_points_without_a_median():
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.5, 0.5, size=(40, jc.N_INPUTS))
    true = rng.normal(0, 0.3, size=21)
    y = (jc.quadratic_features(x) @ true)[:, None]
    y[::7] = np.nan  # no patient had the event at these points
    em = jc.fit_timing_emulator(x, y)
    np.testing.assert_allclose(em.coef[0], true, atol=1e-4)
    assert em.loo_rmse[0] < 1e-4


@pytest.mark.slow
def test_a_timing_median_informs_a_constant_the_rates_cannot():
    """Rates flat in the leak constant of preset 0; tight medians that move with it pin it down (several
    rows, so a model discrepancy cannot explain them all away)."""
    data, counts = _synthetic(np.zeros((2, 3)), [0.0, 0.0], n_trial=2000)
    coef = np.asarray(data.coef).copy()
    coef[[0, 1, 2, 3, 8], 2] = 0.0  # preset 0's rows no longer see its second constant
    coef[[0, 1, 2, 3, 8], 6:] = 0.0
    slopes, intercepts = np.array([1.0, 1.5, -0.8, 1.2]), np.log([3.0, 2.0, 6.0, 1.5])
    t_coef = np.zeros((4, 21))
    t_coef[:, 0], t_coef[:, 2] = intercepts, slopes  # log median = intercept + slope x_leak
    data = data._replace(coef=jax.numpy.asarray(coef), t_coef=jax.numpy.asarray(t_coef),
                         t_preset=jax.numpy.zeros(4, int), t_sd=jax.numpy.full(4, 0.02))
    truth = 0.3
    post = jc.sample_posterior(data, counts, warmup=300, draws=300, chains=1, seed=3,
                               log_medians=intercepts + slopes * truth)
    assert abs(np.median(post.phi[:, 0, 1]) - truth) < 0.1
    assert post.timing_discrepancy is not None
    # without the median the constant is left to its prior and the box
    flat = jc.sample_posterior(data._replace(t_coef=None, t_preset=None, t_sd=None), counts, warmup=300,
                               draws=300, chains=1, seed=3)
    assert np.std(flat.phi[:, 0, 1]) > 2 * np.std(post.phi[:, 0, 1])


def test_a_timing_row_without_enough_medians_is_dropped():
    """A row whose event is too rare at most design points has no surface to fit: it leaves the design."""
    n_feat = jc.quadratic_features(np.zeros((1, jc.N_INPUTS))).shape[1]
    log_medians = {"a": np.zeros((32, 2)), "b": np.zeros((32, 1))}
    log_medians["a"][: 32 - n_feat, 1] = np.nan  # n_feat points left: one too few
    keep = jc.rows_with_enough_medians(log_medians, np.array([0, 0, 1]), ["a", "b"])
    assert keep.tolist() == [True, False, True]
    assert log_medians["a"].shape == (32, 1) and log_medians["b"].shape == (32, 1)


def test_left_out_timing_rows_survive_the_stored_design():
    """The design cache (docs/calibration-design.json) keeps which timing rows were left out, so a refit from it
    (`--reuse-design`) names them on the page as the run that made it did."""
    import importlib.util
    from pathlib import Path

    from vpop.data import published_cohorts_path

    path = Path(__file__).resolve().parents[1] / "scripts" / "calibrate_joint.py"
    spec = importlib.util.spec_from_file_location("calibrate_joint", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    timing = jc.timing_targets(published_cohorts_path())
    d = jc.Design(["axicel"], np.zeros((1, jc.N_INPUTS)), np.ones(jc.N_INPUTS), np.zeros((1, 3)), [],
                  np.zeros(0, int), {"axicel": np.zeros((4, jc.N_INPUTS))}, {"axicel": np.zeros((4, 0))},
                  {"axicel": np.zeros((4, 0))}, 0.0, timing[1:], np.zeros(len(timing) - 1, int),
                  {"axicel": np.zeros((4, len(timing) - 1))}, timing[:1])
    back = script.design_from_json(script.design_to_json(d))
    assert [tt.target.row for tt in back.timing_left_out] == [timing[0].target.row]
    assert [tt.target.row for tt in back.timing] == [tt.target.row for tt in timing[1:]]
    label = jc.timing_labels(back.timing_left_out)
    assert label == f"{timing[0].target.cohort} {timing[0].target.endpoint} (row {timing[0].target.row})"


def test_the_variability_prior_is_anchored_not_recentred_on_the_shipped_sds():
    """The scales' prior centre is the log step from the SDs a design was run around to VARIABILITY_ANCHOR:
    halve the shipped SDs and the centre moves up by log 2, so the absolute anchor stays put."""
    sds = dict(jc.VARIABILITY_ANCHOR)
    np.testing.assert_allclose(jc.scale_prior_centre(sds), 0.0, atol=1e-12)
    halved = {k: v / 2 for k, v in sds.items()}
    np.testing.assert_allclose(jc.scale_prior_centre(halved), np.log(2.0), rtol=1e-12)
    neuro_only = dict(sds, neuro_sensitivity=sds["neuro_sensitivity"] * 3)
    np.testing.assert_allclose(jc.scale_prior_centre(neuro_only), [0.0, -np.log(3.0)], atol=1e-12)


def test_with_uninformative_rows_the_scales_follow_their_fixed_prior():
    """No patients in any row: the posterior of each log scale is its prior, Normal(centre, 1), cut to the
    design box, so its median is that truncated normal's; a prior still at 0 (the old re-centred one) would
    give a median of 0."""
    from scipy.stats import truncnorm

    centre = np.array([4.0, -4.0])
    data, counts = _synthetic(np.zeros((2, 3)), [0.0, 0.0])
    data = data._replace(n=jax.numpy.zeros_like(data.n), scale_prior=jax.numpy.asarray(centre))
    post = jc.sample_posterior(data, np.zeros_like(counts), warmup=300, draws=600, chains=1, seed=4)
    half = np.asarray(data.half_width)[3:]
    sd = np.asarray(jc.VARIABILITY_PRIOR_SD)
    want = [truncnorm.median((-h - c) / s, (h - c) / s, loc=c, scale=s) for h, c, s in zip(half, centre, sd)]
    np.testing.assert_allclose(np.median(post.log_iiv_scale, axis=0), want, atol=0.05)
    assert want[0] > 0.15 and want[1] < -0.3  # far enough from 0 for the check to tell the priors apart


def test_the_constraint_rows_ask_every_preset_for_support_after_crs():
    """One pseudo-row per preset on its main trial, after the table's rows, counted as the scorecard's fact."""
    import pandas as pd

    from vpop.data import published_cohorts_path
    from vpop.trials.validation import COHORTS, rate_count

    targets = jc.calibration_targets(published_cohorts_path())
    cons = [t for t in targets if jc.is_constraint(t)]
    assert targets[-len(cons):] == cons and [t.cohort for t in cons] == list(jc.CONSTRAINT_COHORTS)
    assert all(t.row < 0 and t.count == t.n == jc.PSEUDO_N for t in cons)
    assert {COHORTS[c].product for c in jc.CONSTRAINT_COHORTS} == {COHORTS[t.cohort].product for t in targets}
    pts = pd.DataFrame({"_ok": [True] * 5, "crs_onset_day": [1.0, 2.0, 3.0, np.nan, 1.0],
                        "organ_support_onset_day": [2.0, 2.0, 2.5, 4.0, np.nan]})
    assert rate_count(cons[0], pts) == (2, 4)

"""Per-patient episodes: onset, resolution, duration, episode merging, days at grade."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from vpop.grading import episode_summary, episode_summary_grid, grade_observations, summarise_patients


def one(times, grades, **kw):
    s = episode_summary(np.zeros(len(times), int), times, grades, **kw)
    return {k: (v[0] if v.ndim == 1 else v[0].tolist()) for k, v in s.items()}


def nan(x):
    return isinstance(x, float) and math.isnan(x)


def test_single_episode_onset_resolution_duration():
    s = one([0, 1, 2, 3, 4], [0, 1, 2, 0, 0])
    assert s["max_grade"] == 2
    assert s["onset_day"] == 1.0
    assert s["resolution_day"] == 3.0
    assert s["duration_days"] == 2.0
    assert s["episodes"] == 1


def test_never_graded():
    s = one([0, 1, 2], [0, 0, 0])
    assert s["max_grade"] == 0 and s["episodes"] == 0
    assert nan(s["onset_day"]) and nan(s["resolution_day"]) and nan(s["duration_days"])
    assert s["days_grade"] == [0.0] * 5


def test_unresolved_within_record():
    s = one([0, 1, 2], [0, 1, 3])
    assert s["onset_day"] == 1.0
    assert nan(s["resolution_day"]) and nan(s["duration_days"])
    assert s["episodes"] == 1


def test_restart_within_7_days_is_one_episode():
    # Stops at day 2 (first grade-0 row), restarts at day 8.9: gap 6.9 < 7.
    s = one([0, 1, 2, 8.9, 10, 11], [0, 1, 0, 2, 0, 0])
    assert s["episodes"] == 1
    assert s["onset_day"] == 1.0
    assert s["resolution_day"] == 10.0
    assert s["duration_days"] == 9.0
    assert s["max_grade"] == 2


def test_restart_after_7_days_is_a_second_episode():
    # Gap of exactly 7 days: a new episode; the first episode resolved on day 2.
    s = one([0, 1, 2, 9, 10], [0, 1, 0, 2, 0])
    assert s["episodes"] == 2
    assert s["resolution_day"] == 2.0
    assert s["duration_days"] == 1.0


def test_merge_gap_is_configurable():
    s = one([0, 1, 2, 4, 5], [0, 1, 0, 1, 0], merge_gap_days=1.0)
    assert s["episodes"] == 2 and s["resolution_day"] == 2.0


def test_three_runs_two_merge():
    # runs at 1 (stop 2), 5 (stop 6, gap 3 -> merge), 20 (gap 14 -> new)
    s = one([0, 1, 2, 5, 6, 20, 21], [0, 1, 0, 1, 0, 3, 3])
    assert s["episodes"] == 2
    assert s["resolution_day"] == 6.0
    assert s["max_grade"] == 3


def test_days_at_each_grade():
    # dt per row: 0, 1, 2, 0.5, 1.5 ; grades 1, 2, 2, 0, 5
    s = one([0, 1, 3, 3.5, 5], [1, 2, 2, 0, 5])
    assert s["days_grade"] == [0.0, 3.0, 0.0, 0.0, 1.5]
    assert s["onset_day"] == 0.0
    # The grade-5 row restarts the event 1.5 days after it stopped: same episode, unresolved.
    assert s["episodes"] == 1 and nan(s["resolution_day"])


def _reference(p, t, g, gap=7.0):
    """Straightforward per-patient loop, used as an oracle for the vectorised code."""
    out = []
    for pid in dict.fromkeys(p):
        m = p == pid
        tt, gg = t[m], g[m]
        pos = gg >= 1
        onset = tt[pos][0] if pos.any() else np.nan
        runs = []  # (start time, stop time or nan)
        i = 0
        while i < len(gg):
            if pos[i]:
                j = i
                while j + 1 < len(gg) and pos[j + 1]:
                    j += 1
                runs.append((tt[i], tt[j + 1] if j + 1 < len(gg) else np.nan))
                i = j + 1
            else:
                i += 1
        episodes, resolution, first_done = 0, np.nan, False
        for k, (start, stop) in enumerate(runs):
            merged = k > 0 and start - runs[k - 1][1] < gap
            if not merged:
                episodes += 1
                if k > 0:
                    first_done = True
            if not first_done:
                resolution = stop
        dt = np.diff(tt, prepend=tt[0])
        days = [dt[gg == grade].sum() for grade in range(1, 6)]
        out.append((gg.max(), onset, resolution, episodes, days))
    return out


def test_vectorised_matches_reference_on_random_patients():
    rng = np.random.default_rng(7)
    sizes = rng.integers(1, 40, 200)
    p = np.repeat(np.arange(200) * 3 + 5, sizes)  # codes need not be 0..n-1
    t = np.concatenate([np.cumsum(rng.uniform(0.1, 4.0, k)) for k in sizes])
    g = rng.choice([0, 0, 0, 1, 2, 3, 4, 5], p.size)
    s = episode_summary(p, t, g)
    ref = _reference(p, t, g)
    assert len(ref) == 200
    np.testing.assert_array_equal(s["max_grade"], [r[0] for r in ref])
    np.testing.assert_array_equal(s["onset_day"], [r[1] for r in ref])
    np.testing.assert_array_equal(s["resolution_day"], [r[2] for r in ref])
    np.testing.assert_array_equal(s["episodes"], [r[3] for r in ref])
    np.testing.assert_allclose(s["days_grade"], [r[4] for r in ref])
    np.testing.assert_array_equal(s["duration_days"], s["resolution_day"] - s["onset_day"])
    assert (s["episodes"] >= 2).any() and np.isnan(s["resolution_day"]).any()


def test_grid_form_matches_flat_form():
    g = np.array([[0, 1, 0, 0], [2, 2, 2, 2], [0, 0, 0, 0]])
    t = np.array([0.0, 1.0, 2.0, 3.0])
    s = episode_summary_grid(t, g)
    assert s["max_grade"].tolist() == [1, 2, 0]
    assert s["resolution_day"][0] == 2.0 and np.isnan(s["resolution_day"][1])
    assert s["days_grade"][1].tolist() == [0.0, 3.0, 0.0, 0.0, 0.0]


def test_rows_must_be_grouped():
    with pytest.raises(ValueError, match="contiguous"):
        episode_summary(np.array([1, 2, 1]), np.array([0.0, 0.0, 1.0]), np.array([0, 0, 0]))


def test_summarise_patients_columns_and_values():
    df = pd.DataFrame(
        {
            "patient_id": ["a", "a", "a", "b", "b"],
            "time_day": [0.0, 1.0, 2.0, 0.0, 1.0],
            "temp_c": [37.0, 39.0, 37.0, 37.0, 37.0],
            "hypotension": [False, True, False, False, False],
            "vasopressors": [0, 0, 0, 0, 0],
            "o2_device": ["none"] * 5,
            "consciousness": ["alert", "alert", "alert", "alert", "awakens_to_voice"],
            "ice_score": [10, 10, 10, 10, 5],
        }
    )
    graded = grade_observations(df, ["astct", "lee2014", "ctcae_neuro"])
    summary = summarise_patients(graded, ["astct", "lee2014", "ctcae_neuro"])
    expected = [
        "patient_id", "crs_max_grade", "icans_max_grade", "crs_onset_day", "icans_onset_day",
        "crs_resolution_day", "icans_resolution_day", "crs_duration_days", "icans_duration_days",
        "crs_episodes", "icans_episodes",
        *[f"crs_days_grade{g}" for g in range(1, 6)], *[f"icans_days_grade{g}" for g in range(1, 6)],
        "crs_max_grade_lee2014", "crs_onset_day_lee2014", "crs_resolution_day_lee2014",
        "crs_duration_days_lee2014", "crs_episodes_lee2014",
        "icans_max_grade_ctcae", "icans_onset_day_ctcae", "icans_resolution_day_ctcae",
        "icans_duration_days_ctcae", "icans_episodes_ctcae",
    ]
    assert list(summary.columns) == expected
    a, b = summary.iloc[0], summary.iloc[1]
    assert a["patient_id"] == "a" and a["crs_max_grade"] == 2 and a["crs_onset_day"] == 1.0
    assert a["crs_resolution_day"] == 2.0 and a["crs_duration_days"] == 1.0
    assert a["crs_days_grade2"] == 1.0 and a["crs_max_grade_lee2014"] == 2
    assert b["crs_max_grade"] == 0 and np.isnan(b["crs_onset_day"])
    assert b["icans_max_grade"] == 2 and b["icans_onset_day"] == 1.0 and np.isnan(b["icans_resolution_day"])
    assert b["icans_max_grade_ctcae"] == 2

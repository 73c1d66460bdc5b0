"""Per-patient toxicity episodes from per-row grades, vectorised in NumPy.

Rows are grouped by patient and sorted by time within a patient (as in the
observation table). Everything is computed with segment operations over the
rows (`np.maximum.reduceat`, cumulative sums, `np.bincount`); there is no
Python loop over patients.

Definitions (per patient, for one grade column):

* **max grade**: the highest grade of any row.
* **onset day**: time of the first row graded ≥ 1 (NaN if none).
* **run**: a maximal stretch of consecutive rows graded ≥ 1. A run *stops* at
  the time of the first grade-0 row after it; a run still going at the last
  row never stops (unresolved).
* **episode**: runs are merged into one episode when the next run starts
  less than `merge_gap_days` (7 days) after the previous run stopped (an
  event that stops and restarts within 7 days is one episode, the TRANSCEND
  convention). A gap of exactly 7 days starts a new episode.
* **resolution day**: the time at which the first episode stops, i.e. the
  first grade-0 row after the last run of the first episode (NaN if the
  first episode is still going at the last row).
* **duration days**: resolution day − onset day (NaN if unresolved).
* **days at grade g**: the sum, over the patient's rows graded g, of the time
  since the previous row of that patient (the first row contributes 0).
"""

from __future__ import annotations

import numpy as np


#: Runs that restart less than this many days after stopping are one episode.
MERGE_GAP_DAYS = 7.0
#: Grades reported in `days_grade` (columns g = 1..5).
GRADES = (1, 2, 3, 4, 5)


def segment_starts(patient_codes) -> np.ndarray:
    """Indices of the first row of each patient (rows grouped by patient)."""
    p = np.asarray(patient_codes).reshape(-1)
    if p.size == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.empty(p.size, dtype=bool)
    change[0] = True
    np.not_equal(p[1:], p[:-1], out=change[1:])
    return np.flatnonzero(change)


def episode_summary(
    patient_codes, time_day, grade, *, merge_gap_days: float = MERGE_GAP_DAYS, _check_contiguous: bool = True
) -> dict[str, np.ndarray]:
    """Per-patient episode statistics for one grade column.

    **Arguments:**

    - `patient_codes`: 1-D array, one code per row (any dtype that supports
      `!=`); rows of a patient must be contiguous.
    - `time_day`: 1-D float array, strictly increasing within a patient.
    - `grade`: 1-D integer array of grades 0–5.
    - `merge_gap_days`: runs restarting less than this long after stopping are
      one episode.

    **Returns:** a dict of arrays with one entry per patient, in order of first
    appearance: `max_grade` (int), `onset_day`, `resolution_day`,
    `duration_days` (float, NaN where undefined), `episodes` (int) and
    `days_grade` (float, shape `(patients, 5)`, columns grades 1..5).

    **Raises:** `ValueError` if the arrays differ in length or a patient's rows
    are not contiguous (a code appears in two separate blocks).
    """
    p = np.asarray(patient_codes).reshape(-1)
    t = np.asarray(time_day, dtype=np.float64).reshape(-1)
    g = np.asarray(grade).astype(np.int64).reshape(-1)
    if not (p.size == t.size == g.size):
        raise ValueError("patient_codes, time_day and grade must have the same length")
    n = p.size
    starts = segment_starts(p)
    n_pat = starts.size
    if n == 0:
        empty = np.zeros(0)
        return dict(
            max_grade=np.zeros(0, np.int64), onset_day=empty, resolution_day=empty,
            duration_days=empty, episodes=np.zeros(0, np.int64), days_grade=np.zeros((0, 5)),
        )
    if _check_contiguous and n_pat != np.unique(p).size:
        raise ValueError("rows of each patient must be contiguous (grouped by patient)")
    ends = np.append(starts[1:], n) - 1  # last row of each patient
    seg = np.repeat(np.arange(n_pat), np.diff(np.append(starts, n)))  # patient index per row
    is_start = np.zeros(n, bool)
    is_start[starts] = True
    is_end = np.zeros(n, bool)
    is_end[ends] = True

    max_grade = np.maximum.reduceat(g, starts)

    pos = g >= 1
    idx = np.arange(n)
    first_pos = np.minimum.reduceat(np.where(pos, idx, n), starts)
    has = first_pos <= ends
    onset = np.full(n_pat, np.nan)
    onset[has] = t[first_pos[has]]

    # Runs of consecutive positive rows.
    prev_pos = np.concatenate([[False], pos[:-1]]) & ~is_start
    next_pos = np.concatenate([pos[1:], [False]]) & ~is_end
    run_start = np.flatnonzero(pos & ~prev_pos)
    run_end = np.flatnonzero(pos & ~next_pos)
    run_pat = seg[run_start]
    resolved = ~is_end[run_end]
    stop = np.full(run_end.size, np.nan)
    stop[resolved] = t[run_end[resolved] + 1]
    # A run merges into the next run of the same patient when that run
    # restarts less than merge_gap_days after this one stopped.
    same_next = np.zeros(run_start.size, bool)
    same_next[:-1] = run_pat[1:] == run_pat[:-1]
    gap = np.full(run_start.size, np.inf)
    gap[:-1] = t[run_start[1:]] - stop[:-1]
    merge_next = same_next & (gap < merge_gap_days)
    starts_episode = np.ones(run_start.size, bool)
    starts_episode[1:] = ~merge_next[:-1]
    episodes = np.bincount(run_pat, weights=starts_episode, minlength=n_pat).astype(np.int64)

    # The first episode ends at the first run (per patient) that does not merge.
    resolution = np.full(n_pat, np.nan)
    if run_start.size:
        k = np.arange(run_start.size)
        run_pat_starts = segment_starts(run_pat)
        first_end = np.minimum.reduceat(np.where(merge_next, run_start.size, k), run_pat_starts)
        resolution[run_pat[run_pat_starts]] = stop[first_end]
    duration = resolution - onset

    dt = np.diff(t, prepend=t[0])
    dt[starts] = 0.0
    gi = np.clip(g, 0, 5)
    days = np.bincount(seg * 6 + gi, weights=dt, minlength=n_pat * 6).reshape(n_pat, 6)[:, 1:]

    return dict(
        max_grade=max_grade.astype(np.int64),
        onset_day=onset,
        resolution_day=resolution,
        duration_days=duration,
        episodes=episodes,
        days_grade=days,
    )


def episode_summary_grid(time_day, grade, *, merge_gap_days: float = MERGE_GAP_DAYS):
    """`episode_summary` for a simulator's `(patients, times)` grade array.

    `time_day` has shape `(times,)` (shared) or `(patients, times)`; `grade`
    has shape `(patients, times)`. Returns the same dict, one entry per row of
    `grade`.
    """
    g = np.asarray(grade)
    if g.ndim != 2:
        raise ValueError(f"grade must have shape (patients, times), not {g.shape}")
    t = np.broadcast_to(np.asarray(time_day, dtype=np.float64), g.shape)
    codes = np.repeat(np.arange(g.shape[0]), g.shape[1])
    # contiguous by construction: the check's sort was half of this function's time in a sweep
    return episode_summary(codes, t.reshape(-1), g.reshape(-1), merge_gap_days=merge_gap_days,
                           _check_contiguous=False)

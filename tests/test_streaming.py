"""Streamed cohorts: equal to the plain run, resumable, every patient exactly once."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from vpop.run import cohort

from vpop.run import streaming
from vpop.errors import UserError

N, SEED, CHUNK = 45, 3, 16


@pytest.fixture(scope="module")
def small(default_config):
    return replace(default_config, engine=replace(default_config.engine, days=2.0), batch_size=8)


@pytest.fixture(scope="module")
def plain(small):
    return cohort.simulate(small, n=N, seed=SEED, record_rows=True)


def _read(folder):
    parts = sorted(folder.glob("part-*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def test_stream_equals_plain_run(small, plain, tmp_path):
    seen = []
    res = streaming.simulate_stream(small, tmp_path / "s", n=N, seed=SEED, chunk_size=CHUNK,
                                    progress=lambda done, total: seen.append((done, total)))
    assert res.complete and res.chunks_total == 3 and len(res.patients) == N
    assert seen[0] == (0, N) and seen[-1] == (N, N)
    patients = _read(tmp_path / "s" / "patients").sort_values("patient_id", ignore_index=True)
    pd.testing.assert_frame_equal(patients, plain.patients, check_exact=True)
    obs = _read(tmp_path / "s" / "observations")
    pd.testing.assert_frame_equal(obs, plain.observations.reset_index(drop=True), check_exact=True)
    expected = cohort.cohort_summary(plain.patients)
    pd.testing.assert_frame_equal(res.summary_table(), expected, check_exact=False, rtol=1e-12)
    assert streaming.verify_dataset(tmp_path / "s") == N


def test_resume_after_interruption_gives_the_same_dataset(small, plain, tmp_path):
    out = tmp_path / "r"
    with pytest.raises(streaming._StopForTest):
        streaming.simulate_stream(small, out, n=N, seed=SEED, chunk_size=CHUNK,
                                  stop_after_chunks=1)
    assert [p.name for p in sorted((out / "patients").glob("part-*"))] == ["part-000000.parquet"]
    assert list((out / "patients").glob(".part-000001.parquet.tmp-*"))  # half-written, never taken as done
    with pytest.raises(UserError, match="--resume"):  # a started folder needs --resume
        streaming.simulate_stream(small, out, n=N, seed=SEED, chunk_size=CHUNK)
    with pytest.raises(UserError, match="seed: folder has 3, this run has 4"):
        streaming.simulate_stream(small, out, n=N, seed=4, chunk_size=CHUNK, resume=True)
    with pytest.raises(UserError, match="chunk size"):
        streaming.simulate_stream(small, out, n=N, seed=SEED, chunk_size=10, resume=True)
    other = replace(small, parameters={"il6_per_myeloid": 1.0e5})
    with pytest.raises(UserError, match="config"):
        streaming.simulate_stream(other, out, n=N, seed=SEED, chunk_size=CHUNK, resume=True)

    res = streaming.simulate_stream(small, out, n=N, seed=SEED, chunk_size=CHUNK, resume=True)
    assert res.complete and res.chunks_run == 2
    assert not list((out / "patients").glob(".*tmp*"))
    assert streaming.verify_dataset(out) == N
    patients = _read(out / "patients")
    assert patients["patient_id"].tolist() == list(range(N))  # each patient exactly once, in order
    pd.testing.assert_frame_equal(patients, plain.patients, check_exact=True)
    # Resuming a finished run does nothing and gives the summary again.
    again = streaming.simulate_stream(small, out, n=N, seed=SEED, chunk_size=CHUNK, resume=True)
    assert again.chunks_run == 0
    pd.testing.assert_frame_equal(again.summary_table(), res.summary_table())
    assert json.loads((out / "manifest.json").read_text())["n_chunks"] == 3


def test_processes_share_the_chunks(small, plain, tmp_path):
    out = tmp_path / "p"
    first = streaming.simulate_stream(small, out, n=N, seed=SEED, chunk_size=CHUNK,
                                      process_index=1, process_count=2)
    assert not first.complete and first.chunks_run == 1 and first.summary is None
    second = streaming.simulate_stream(small, out, n=N, seed=SEED, chunk_size=CHUNK,
                                       process_index=0, process_count=2)
    assert second.complete and second.chunks_run == 2
    pd.testing.assert_frame_equal(_read(out / "patients"), plain.patients, check_exact=True)


def test_histogram_quantiles_match_pandas():
    rng = np.random.default_rng(0)
    values = np.round(rng.uniform(0, 28, 1001) * 4) / 4
    values[::7] = np.nan
    h = streaming._Histogram()
    for part in np.array_split(values, 5):
        h.add(part)
    s = pd.Series(values).dropna()
    for q in (0.25, 0.5, 0.75, 0.1, 0.9):
        assert h.quantile(q) == s.quantile(q)
    assert h.n == len(s)

"""Cohorts larger than memory: simulate in chunks into a partitioned Parquet dataset.

    vpop simulate CONFIG --n 1000000 --stream [--chunk-size K] [--resume] [--no-observations]

writes

    DIR/manifest.json                      what run this is (config hash, n, seed, chunk size, ...)
    DIR/config.yaml                        the resolved config, as for a plain run
    DIR/patients/part-000000.parquet       patients [0, K), then [K, 2K), ...
    DIR/observations/part-000000.parquet   their observation rows (unless --no-observations)

Chunk c holds patients ``c*K .. min((c+1)*K, n) - 1``; patient i is simulated
from ``fold_in(PRNGKey(seed), i)`` exactly as by `vpop.run.cohort.simulate`, so the
dataset equals the plain run's tables, row for row. Each part is written to a
hidden temporary name (``.part-000123.parquet.tmp-PID``, which Parquet readers
ignore) and then renamed; the patients part is renamed last and is the mark
that a chunk is done. `--resume` skips the done chunks, deletes stray
temporary files, and refuses (UserError) a folder written by a different run
(other config, n, seed, chunk size or observation setting).

Memory: one chunk's arrays and tables at a time, so peak memory depends on the
chunk size and batch size, not on n. The summary (`summarize_dataset`) reads
only the few columns it needs, one part at a time, and keeps exact counts;
onset medians and quartiles come from an exact histogram of onset days
(mergeable counts per distinct value; onsets lie on the assessment grid, so
there are at most `n_rows` distinct values), giving the same numbers as
`cohort_summary` on the whole table.

Several processes (`jax.distributed`, one per host or per GPU) share the
chunks: process i does chunks i, i+P, i+2P, ... into the same folder (see
docs/scaling.md). Each process's local devices split every batch
(`vpop.engine.sharding`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from vpop.engine import course as engine_mod
from vpop.policy import rules as policy_mod
from vpop.engine import sharding
from vpop.run.config import SimulationConfig
from vpop.errors import UserError
from vpop.stats import wilson_interval

FORMAT = "vpop-stream/1"
MANIFEST = "manifest.json"
PATIENTS = "patients"
OBSERVATIONS = "observations"
CHUNK_BATCHES = 4  # default chunk: this many batches

SUMMARY_COLUMNS = ["solver_status", "crs_max_grade", "icans_max_grade", "crs_onset_day", "icans_onset_day",
                   "tocilizumab_doses", "steroids_given", "death_cause"]


class _StopForTest(Exception):
    """Raised by the `stop_after_chunks` test hook to simulate a killed run."""


def part_name(chunk: int) -> str:
    return f"part-{chunk:06d}.parquet"


def config_hash(config: SimulationConfig) -> str:
    """Hash of everything that shapes a patient except n and seed (compared on --resume)."""
    resolved = config.resolved_dict()
    resolved.pop("cohort", None)
    payload = {"config": resolved, "engine": asdict(config.engine), "dtype": config.dtype,
               "parameters": config.parameters}
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def default_chunk_size(config: SimulationConfig) -> int:
    return CHUNK_BATCHES * sharding.global_batch(config.batch_size, 1 << 62)


class PartitionedPatients:
    """The patients dataset of a streamed run: `len()` without reading; `read()` loads it (all of it)."""

    def __init__(self, folder: Path, n: int):
        self.folder, self.n = Path(folder), n

    def __len__(self) -> int:
        return self.n

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet"))

    def read(self, columns: list[str] | None = None) -> pd.DataFrame:
        frames = [pd.read_parquet(p, columns=columns) for p in self.parts()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


@dataclass
class StreamResult:
    config: SimulationConfig
    out: Path
    n: int
    seed: int
    chunk_size: int
    chunks_total: int
    chunks_done: int
    chunks_run: int
    compile_seconds: float
    run_seconds: float
    summary: pd.DataFrame | None = None
    n_failed: int = 0
    n_inaccurate: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.chunks_done == self.chunks_total

    @property
    def patients(self) -> PartitionedPatients:
        return PartitionedPatients(self.out / PATIENTS, self.n)

    def summary_table(self) -> pd.DataFrame:
        if self.summary is None:
            raise RuntimeError(f"{self.out}: {self.chunks_done}/{self.chunks_total} chunks done; no summary yet")
        return self.summary


def _manifest(config, n, seed, chunk_size, record_rows) -> dict:
    from vpop import __version__

    return {"format": FORMAT, "config_name": config.name, "config_hash": config_hash(config), "n": int(n),
            "seed": int(seed), "chunk_size": int(chunk_size), "observations": bool(record_rows),
            "n_chunks": -(-int(n) // int(chunk_size)), "dtype": config.dtype, "vpop_version": __version__}


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, path)


def _check_manifest(out: Path, want: dict, resume: bool) -> None:
    path = out / MANIFEST
    if not path.exists():
        if not resume and any((out / PATIENTS).glob("part-*.parquet")):
            raise UserError(f"--out: {out}/{PATIENTS} already holds parts of another run; choose another --out")
        return
    if not resume:
        raise UserError(f"--out: {out} already holds a streamed cohort; pass --resume to continue it "
                        f"or choose another --out")
    try:
        have = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"--resume: cannot read {path}: {err}") from err
    if have.get("format") != FORMAT:
        raise UserError(f"--resume: {path} has format {have.get('format')!r}, expected {FORMAT!r}")
    labels = {"config_hash": "config (hash)", "n": "n", "seed": "seed", "chunk_size": "chunk size",
              "observations": "observations (--no-observations)"}
    wrong = [f"{labels[k]}: folder has {have.get(k)!r}, this run has {want[k]!r}"
             for k in labels if have.get(k) != want[k]]
    if wrong:
        raise UserError(f"--resume: {out} was written by a different run; " + "; ".join(wrong))


def _write_part(df: pd.DataFrame, final: Path) -> None:
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    df.to_parquet(tmp, index=False)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def simulate_stream(
    config: SimulationConfig,
    out: str | Path,
    n: int | None = None,
    seed: int | None = None,
    record_rows: bool = True,
    progress: Callable[[int, int], None] | None = None,
    chunk_size: int | None = None,
    resume: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
    stop_after_chunks: int | None = None,
    write_config: dict | None = None,
) -> StreamResult:
    """Simulate the cohort chunk by chunk into `out` (see the module docstring).

    `progress(done, total)` counts patients of this process's chunks,
    including those done before a resume. `stop_after_chunks` (tests) stops
    as if killed after that many chunks, leaving a stray temporary file.
    Several processes: pass or let jax give `process_index`/`process_count`;
    they behave as `resume=True` (the folder is shared).
    """
    from vpop.run import cohort as cohort_mod
    from vpop.population.sampler import PopulationSampler, patient_keys

    if config.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if config.dtype == "float64" else jnp.float32
    try:
        from vpop.population import patient_table as table_mod
        table = table_mod.table_of(config)
    except ImportError:  # pragma: no cover
        table_mod, table = None, None
    n = (config.n if n is None else int(n)) if table is None else table.cohort_size(n)
    seed = config.seed if seed is None else int(seed)
    chunk_size = default_chunk_size(config) if chunk_size is None else int(chunk_size)
    if chunk_size < 1:
        raise UserError(f"--chunk-size: got {chunk_size}; allowed: an integer >= 1")
    pi = jax.process_index() if process_index is None else int(process_index)
    pc = jax.process_count() if process_count is None else int(process_count)
    resume = resume or pc > 1

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a folder")
    want = _manifest(config, n, seed, chunk_size, record_rows)
    out.mkdir(parents=True, exist_ok=True)
    _check_manifest(out, want, resume)
    (out / PATIENTS).mkdir(exist_ok=True)
    if record_rows:
        (out / OBSERVATIONS).mkdir(exist_ok=True)
    if not (out / MANIFEST).exists():
        _atomic_write_text(out / MANIFEST, json.dumps(want, indent=2) + "\n")
    if write_config is not None and pi == 0:
        import yaml
        _atomic_write_text(out / "config.yaml", yaml.safe_dump(write_config, sort_keys=False))

    n_chunks = want["n_chunks"]
    mine = list(sharding.process_share(n_chunks, pi, pc))
    mine_set = set(mine)
    for sub in (PATIENTS, OBSERVATIONS):  # stray temporaries of this process's chunks (a killed run)
        for tmp in (out / sub).glob(".part-*.parquet.tmp-*") if (out / sub).exists() else ():
            try:
                chunk = int(tmp.name.split("-")[1].split(".")[0])
            except (IndexError, ValueError):
                continue
            if chunk in mine_set:
                tmp.unlink(missing_ok=True)

    def bounds(c):
        return c * chunk_size, min((c + 1) * chunk_size, n)

    def done(c):
        return (out / PATIENTS / part_name(c)).exists()

    todo = [c for c in mine if not done(c)]
    total = sum(b - a for a, b in map(bounds, mine))
    finished = total - sum(b - a for a, b in map(bounds, todo))
    if progress is not None:
        progress(finished, total)

    batch = sharding.global_batch(config.batch_size, min(chunk_size, n))  # batch_size per device
    settings = replace(config.engine, record_rows=record_rows)
    sampler = PopulationSampler(config.population, config.parameters)
    policy_mod.check_scales(config.policy, config.engine.crs_scales, config.engine.neuro_scales,
                            f"policy {config.policy.name!r}")
    policy = config.policy.to_arrays(dtype)
    sample = cohort_mod.compiled_sampler(sampler, dtype)
    sample_given = table_mod.given_sampler(sampler, dtype) if table is not None else None
    run = sharding.batch_function(settings)

    t_start = time.perf_counter()
    compile_seconds = 0.0
    compiled = False
    for count, c in enumerate(todo):
        lo, hi = bounds(c)
        cov_parts, row_parts, sum_parts = [], [], []
        for start in range(lo, hi, batch):
            stop = min(start + batch, hi)
            ids = cohort_mod.padded_ids(start, hi, batch)
            if table is None:
                pop_keys, event_keys = cohort_mod.split_keys(patient_keys(seed, ids))
                cov, p = sample(pop_keys)
            else:
                keys, given, eta = table_mod.batch_rows(table, ids, seed)
                pop_keys, event_keys = cohort_mod.split_keys(keys)
                cov, p = sample_given(pop_keys, given, eta)
            if not compiled:
                t0 = time.perf_counter()
                run = cohort_mod.executable(run, settings, p, event_keys, policy)
                compile_seconds = time.perf_counter() - t0
                compiled = True
            rows, summ = run(p, event_keys, policy)
            take = stop - start
            cov_parts.append({k: np.asarray(v)[:take] for k, v in cov.items()})
            row_parts.append({k: np.asarray(v)[:take] for k, v in rows.items()})
            sum_parts.append({k: np.asarray(v)[:take] for k, v in summ.items()})
            del rows, summ, cov, p
        cov = {k: np.concatenate([x[k] for x in cov_parts]) for k in cov_parts[0]}
        rows = {k: np.concatenate([x[k] for x in row_parts]) for k in row_parts[0]}
        summ = {k: np.concatenate([x[k] for x in sum_parts]) for k in sum_parts[0]}
        del cov_parts, row_parts, sum_parts
        ids = np.arange(lo, hi) if table is None else table.ids[lo:hi]
        if record_rows:
            obs = cohort_mod.observation_table(ids, rows, settings)
            _write_part(obs, out / OBSERVATIONS / part_name(c))
            del obs
        patients = cohort_mod.patient_table(ids, cov, rows, summ, settings)
        del rows
        if stop_after_chunks is not None and count >= stop_after_chunks:
            # Simulate a kill in the middle of writing: a half-written temporary, no rename.
            (out / PATIENTS / f".{part_name(c)}.tmp-{os.getpid()}").write_bytes(b"PAR1 half-written")
            raise _StopForTest(f"stopped after {count} chunks")
        _write_part(patients, out / PATIENTS / part_name(c))
        del patients
        finished += hi - lo
        if progress is not None:
            progress(finished, total)
    elapsed = time.perf_counter() - t_start

    chunks_done = sum(done(c) for c in range(n_chunks))
    result = StreamResult(config, out, n, seed, chunk_size, n_chunks, chunks_done, len(todo),
                          compile_seconds, elapsed - compile_seconds)
    if result.complete:
        result.summary, info = summarize_dataset(out)
        result.n_failed, result.n_inaccurate = info["n_failed"], info["n_inaccurate"]
        result.extra.update(info)
    return result


class _Histogram:
    """Exact counts per distinct value: mergeable, exact quantiles."""

    def __init__(self):
        self.counts: dict[float, int] = {}

    def add(self, values: np.ndarray) -> None:
        values = values[~np.isnan(values)]
        for v, k in zip(*np.unique(values, return_counts=True)):
            self.counts[float(v)] = self.counts.get(float(v), 0) + int(k)

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def quantile(self, q: float) -> float:
        """As `pandas.Series.quantile(q)` (linear interpolation) of the values counted."""
        m = self.n
        if m == 0:
            return float("nan")
        values = np.array(sorted(self.counts))
        cum = np.cumsum([self.counts[v] for v in values])
        h = (m - 1) * q
        lo = int(np.floor(h))
        hi = min(lo + 1, m - 1)
        at = lambda r: values[np.searchsorted(cum, r, side="right")]
        return float(np.quantile(np.array([at(lo), at(hi)]), h - lo))


def summarize_dataset(out: str | Path) -> tuple[pd.DataFrame, dict]:
    """`cohort_summary` of a streamed run, reading a few columns of one part at a time.

    Returns (the summary table, info: n, n_failed, n_inaccurate, parts).
    """
    folder = Path(out) / PATIENTS
    rates = {k: 0 for k in ("crs1", "crs3", "icans1", "icans3", "toci", "steroids", "died")}
    onset = {"crs": _Histogram(), "icans": _Histogram()}
    n_ok = n_all = n_failed = n_inaccurate = 0
    parts = sorted(folder.glob("part-*.parquet"))
    for path in parts:
        df = pd.read_parquet(path, columns=SUMMARY_COLUMNS)
        n_all += len(df)
        status = df["solver_status"].to_numpy()
        n_failed += int((status == "nonfinite").sum())
        n_inaccurate += int((status == "inaccurate").sum())
        ok = df[status != "nonfinite"]
        n_ok += len(ok)
        rates["crs1"] += int((ok["crs_max_grade"] >= 1).sum())
        rates["crs3"] += int((ok["crs_max_grade"] >= 3).sum())
        rates["icans1"] += int((ok["icans_max_grade"] >= 1).sum())
        rates["icans3"] += int((ok["icans_max_grade"] >= 3).sum())
        rates["toci"] += int((ok["tocilizumab_doses"] > 0).sum())
        rates["steroids"] += int(ok["steroids_given"].sum())
        rates["died"] += int(ok["death_cause"].isin(["crs", "icans"]).sum())
        onset["crs"].add(ok["crs_onset_day"].to_numpy(np.float64))
        onset["icans"].add(ok["icans_onset_day"].to_numpy(np.float64))
        del df, ok

    rows = []

    def rate(label, k):
        lo, hi = wilson_interval(k, n_ok)
        rows.append({"endpoint": label, "value": k / n_ok if n_ok else float("nan"), "ci_low": lo, "ci_high": hi,
                     "count": k, "n": n_ok, "unit": "fraction"})

    def median(label, hist):
        rows.append({"endpoint": label, "value": hist.quantile(0.5), "ci_low": hist.quantile(0.25),
                     "ci_high": hist.quantile(0.75), "count": hist.n, "n": n_ok, "unit": "day (IQR)"})

    rate("CRS any grade", rates["crs1"])
    rate("CRS grade >= 3", rates["crs3"])
    rate("ICANS any grade", rates["icans1"])
    rate("ICANS grade >= 3", rates["icans3"])
    median("CRS onset", onset["crs"])
    median("ICANS onset", onset["icans"])
    rate("tocilizumab given", rates["toci"])
    rate("corticosteroids given", rates["steroids"])
    rate("died of CRS or ICANS", rates["died"])
    info = {"n": n_all, "n_failed": n_failed, "n_inaccurate": n_inaccurate, "parts": len(parts)}
    return pd.DataFrame(rows), info


def verify_dataset(out: str | Path) -> int:
    """Check that every patient 0..n-1 is in the dataset exactly once (reads only patient_id). Returns n."""
    out = Path(out)
    manifest = json.loads((out / MANIFEST).read_text())
    n, k = manifest["n"], manifest["chunk_size"]
    seen = 0
    for c in range(manifest["n_chunks"]):
        path = out / PATIENTS / part_name(c)
        if not path.exists():
            raise ValueError(f"{path}: missing")
        ids = pd.read_parquet(path, columns=["patient_id"])["patient_id"].to_numpy()
        lo, hi = c * k, min((c + 1) * k, n)
        if len(ids) != hi - lo:
            raise ValueError(f"{path}: {len(ids)} patients, expected {hi - lo}")
        seen += len(ids)
    extra = sorted(set(p.name for p in (out / PATIENTS).glob("part-*.parquet"))
                   - {part_name(c) for c in range(manifest["n_chunks"])})
    if extra:
        raise ValueError(f"{out / PATIENTS}: unexpected parts {extra}")
    return seen

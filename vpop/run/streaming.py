"""Cohorts larger than memory: simulate in chunks into a partitioned Parquet dataset.

    vpop simulate CONFIG --n 1000000 --stream [--chunk-size K] [--resume] [--no-observations]

writes

    DIR/manifest.json                      what run this is (config hash, n, seed, chunk size, ...)
    DIR/config.yaml                        the resolved config, as for a plain run
    DIR/patients/part-000000.parquet       patients [0, K), then [K, 2K), ...
    DIR/observations/part-000000.parquet   their observation rows (unless --no-observations)

Chunk c holds patients ``c*K .. min((c+1)*K, n) - 1``; patient i is simulated
from ``fold_in(PRNGKey(seed), i)`` by the same driver (`vpop.run.driver`), in the
same place of the same batch, as by `vpop.run.cohort.simulate`, so the dataset
equals the plain run's tables, row for row and bit for bit, whatever K
(docs/scaling.md, "What is identical"). Each part is written to a
hidden temporary name (``.part-000123.parquet.tmp-PID``, which Parquet readers
ignore) and then renamed; the patients part is renamed last and is the mark
that a chunk is done. `--resume` skips the done chunks, deletes stray
temporary files, and refuses (UserError) a folder written by a different run
(other config, n, seed, chunk size or observation setting).

Memory: one batch's arrays and tables at a time (a part is written batch by
batch, one row group each), so peak memory depends on the batch size, not on
n or K. The folder is locked while a run writes it (`vpop.run.folder`). The summary (`summarize_dataset`) reads
only the few columns it needs, one part at a time, and keeps exact counts;
onset medians and quartiles come from an exact histogram of onset days
(mergeable counts per distinct value; onsets lie on the assessment grid, so
there are at most `n_rows` distinct values), giving the same numbers as
`cohort_summary` on the whole table (`vpop.run.endpoints.Summary`).

Several processes (`jax.distributed`, one per host or per GPU) share the
chunks: process i does chunks i, i+P, i+2P, ... into the same folder (see
docs/scaling.md). Each process's local devices split every batch
(`vpop.engine.sharding`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import jax
import pandas as pd

from vpop.engine import sharding
from vpop.errors import UserError
from vpop.run import budget, driver, folder
from vpop.run.config import SimulationConfig
from vpop.run.endpoints import Endpoint, Histogram, Summary, summary_endpoints
from vpop.run.files import ParquetAppender, split_summary

FORMAT = "vpop-stream/1"
MANIFEST = "manifest.json"
PATIENTS = "patients"
OBSERVATIONS = "observations"
CHUNK_BATCHES = 4  # default chunk: this many batches

SUMMARY_COLUMNS = Summary(summary_endpoints()).columns  # the patient columns the summary reads


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


class _PartsSink:
    """Each chunk into a hidden temporary part per table, renamed when the chunk is done (patients last)."""

    def __init__(self, out: Path, stop_after_chunks: int | None = None):
        self.out, self.stop_after, self.count = out, stop_after_chunks, 0
        self.open: dict[str, ParquetAppender] = {}

    def _tmp(self, sub: str, chunk: int) -> Path:
        return self.out / sub / f".{part_name(chunk)}.tmp-{os.getpid()}"

    def batch(self, chunk, patients, observations):
        if not self.open:
            self.open = {PATIENTS: ParquetAppender(self._tmp(PATIENTS, chunk))}
            if observations is not None:
                self.open[OBSERVATIONS] = ParquetAppender(self._tmp(OBSERVATIONS, chunk))
        self.open[PATIENTS].append(patients)
        if observations is not None:
            self.open[OBSERVATIONS].append(observations)

    def chunk_done(self, chunk):
        if OBSERVATIONS in self.open:
            self.open[OBSERVATIONS].close(sync=True)
            os.replace(self._tmp(OBSERVATIONS, chunk), self.out / OBSERVATIONS / part_name(chunk))
        if self.stop_after is not None and self.count >= self.stop_after:
            # Simulate a kill in the middle of writing: a half-written temporary, no rename.
            self.open[PATIENTS].close()
            self._tmp(PATIENTS, chunk).write_bytes(b"PAR1 half-written")
            raise _StopForTest(f"stopped after {self.count} chunks")
        self.open[PATIENTS].close(sync=True)
        os.replace(self._tmp(PATIENTS, chunk), self.out / PATIENTS / part_name(chunk))
        self.open = {}
        self.count += 1

    def abort(self):
        for appender in self.open.values():
            appender.close()


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
    stage: Callable[[str], None] | None = None,
    on_estimate: Callable[[budget.Estimate], None] | None = None,
) -> StreamResult:
    """Simulate the cohort chunk by chunk into `out` (see the module docstring).

    `progress(done, total)` counts patients of this process's chunks,
    including those done before a resume. `stop_after_chunks` (tests) stops
    as if killed after that many chunks, leaving a stray temporary file.
    Several processes: pass or let jax give `process_index`/`process_count`;
    they behave as `resume=True` (the folder is shared, and not locked).
    """
    plan = driver.plan(config, n, seed, record_rows, balanced=False)  # batches tile the fixed chunks
    n, seed = plan.n, plan.seed
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
    n_chunks = want["n_chunks"]
    mine = list(sharding.process_share(n_chunks, pi, pc))

    def bounds(c):
        return c * chunk_size, min((c + 1) * chunk_size, n)

    def done(c):
        return (out / PATIENTS / part_name(c)).exists()

    todo = [c for c in mine if not done(c)]
    total = sum(b - a for a, b in map(bounds, mine))
    n_todo = sum(b - a for a, b in map(bounds, todo))

    claim = folder.claim(out, lock=pc == 1)  # writable (checked first), and ours alone
    try:
        _check_manifest(out, want, resume)
        est = budget.check(plan, out, n_todo=n_todo)
        if on_estimate is not None and todo:
            on_estimate(est)
    except BaseException:
        claim.release(remove_if_empty=True)
        raise
    try:
        (out / PATIENTS).mkdir(exist_ok=True)
        if record_rows:
            (out / OBSERVATIONS).mkdir(exist_ok=True)
        if not (out / MANIFEST).exists():
            _atomic_write_text(out / MANIFEST, json.dumps(want, indent=2) + "\n")
        if write_config is not None and pi == 0:
            import yaml
            _atomic_write_text(out / "config.yaml", yaml.safe_dump(write_config, sort_keys=False))
        mine_set = set(mine)
        for sub in (PATIENTS, OBSERVATIONS):  # stray temporaries of this process's chunks (a killed run)
            for tmp in (out / sub).glob(".part-*.parquet.tmp-*") if (out / sub).exists() else ():
                try:
                    chunk = int(tmp.name.split("-")[1].split(".")[0])
                except (IndexError, ValueError):
                    continue
                if chunk in mine_set:
                    tmp.unlink(missing_ok=True)
        finished = total - n_todo
        if progress is not None:
            progress(finished, total)
        sink = _PartsSink(out, stop_after_chunks)
        try:
            stats = driver.run(plan, [(c, *bounds(c)) for c in todo], sink, progress=progress, stage=stage,
                               done_before=finished, total=total)
        finally:
            sink.abort()
    finally:
        claim.release()

    chunks_done = sum(done(c) for c in range(n_chunks))
    result = StreamResult(config, out, n, seed, chunk_size, n_chunks, chunks_done, len(todo),
                          stats.compile_seconds, stats.run_seconds)
    result.extra["estimate"] = est
    if result.complete:
        table, info = summarize_dataset(out, plan.endpoints)
        result.summary, result.extra["trial_summary"] = split_summary(plan, table)
        result.n_failed, result.n_inaccurate = info["n_failed"], info["n_inaccurate"]
        result.extra.update(info)
    return result


_Histogram = Histogram  # the exact mergeable histogram (kept under its old name)


def summarize_dataset(out: str | Path, endpoints: Sequence[Endpoint] | None = None) -> tuple[pd.DataFrame, dict]:
    """`cohort_summary` of a streamed run, reading a few columns of one part at a time.

    `endpoints`: default the terminal summary's (ASTCT). Returns (the summary
    table, info: n, n_failed, n_inaccurate, parts).
    """
    folder_ = Path(out) / PATIENTS
    summary = Summary(summary_endpoints() if endpoints is None else endpoints)
    parts = sorted(folder_.glob("part-*.parquet"))
    for path in parts:
        summary.add(pd.read_parquet(path, columns=summary.columns))
    info = {"n": summary.n_all, "n_failed": summary.n_failed, "n_inaccurate": summary.n_inaccurate,
            "parts": len(parts)}
    return summary.table(), info


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

"""`vpop simulate` without --stream: OUT/patients.parquet, OUT/observations.parquet, OUT/config.yaml.

The driver's batches are appended to the two Parquet files as they finish
(one row group per batch, `pyarrow.parquet.ParquetWriter`), so memory holds
one batch's tables and the summary's counts, whatever the cohort size. The
files are written under a hidden folder in OUT (``OUT/.partial-PID/``) and
moved into OUT when the run is complete: an interrupted run leaves the
previous outputs as they were. The folder is locked while the run writes
(`vpop.run.folder`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vpop.run import budget, driver, folder

PATIENTS_FILE = "patients.parquet"
OBSERVATIONS_FILE = "observations.parquet"
CONFIG_FILE = "config.yaml"


class ParquetAppender:
    """One Parquet file written batch by batch (a row group per batch, the first batch's schema)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.writer: pq.ParquetWriter | None = None
        self.schema: pa.Schema | None = None

    def append(self, df: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(df, preserve_index=False)
        if self.writer is None:
            self.schema = table.schema
            self.writer = pq.ParquetWriter(self.path, self.schema)
        self.writer.write_table(table if table.schema.equals(self.schema) else table.cast(self.schema))

    def close(self, sync: bool = False) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            if sync:
                with open(self.path, "rb") as f:
                    os.fsync(f.fileno())


class ParquetFileSink:
    """Appends each batch's tables to `dir/patients.parquet` (and `observations.parquet`)."""

    def __init__(self, directory: Path):
        self.patients = ParquetAppender(Path(directory) / PATIENTS_FILE)
        self.observations = ParquetAppender(Path(directory) / OBSERVATIONS_FILE)

    def batch(self, chunk, patients, observations):
        self.patients.append(patients)
        if observations is not None:
            self.observations.append(observations)

    def chunk_done(self, chunk):
        pass

    def close(self) -> None:
        self.patients.close()
        self.observations.close()


def split_summary(plan, table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(the ASTCT summary rows, the rows under the trial's scales or None)."""
    from vpop.run.endpoints import summary_endpoints

    k = len(summary_endpoints())
    trial = table.iloc[k:].reset_index(drop=True)
    return table.iloc[:k].reset_index(drop=True), (trial if len(trial) else None)


@dataclass
class FolderResult:
    """A plain run written to a folder: the summary, not the tables (read them from `out`)."""

    config: object
    out: Path
    n: int
    seed: int
    compile_seconds: float
    run_seconds: float
    summary: pd.DataFrame
    n_failed: int
    n_inaccurate: int
    extra: dict = field(default_factory=dict)

    def summary_table(self) -> pd.DataFrame:
        return self.summary

    @property
    def patients_path(self) -> Path:
        return self.out / PATIENTS_FILE


def simulate_to_folder(config, out: str | Path, n: int | None = None, seed: int | None = None,
                       record_rows: bool = True, progress: Callable[[int, int], None] | None = None,
                       stage: Callable[[str], None] | None = None, write_config: dict | None = None,
                       on_estimate: Callable[[budget.Estimate], None] | None = None) -> FolderResult:
    """Simulate the cohort into `out` in bounded memory (see the module docstring)."""
    import yaml

    plan = driver.plan(config, n, seed, record_rows)
    out = Path(out)
    with folder.claim(out):  # writable (checked first), and ours alone; removed again if we fail here
        est = budget.check(plan, out)
        if on_estimate is not None:
            on_estimate(est)
        for stale in out.glob(".partial-*"):  # a killed run's; we hold the lock, so no one else's
            shutil.rmtree(stale, ignore_errors=True)
        tmp = out / f".partial-{os.getpid()}"
        tmp.mkdir()
        sink = ParquetFileSink(tmp)
        try:
            stats = driver.run(plan, [(0, 0, plan.n)], sink, progress=progress, stage=stage)
            sink.close()
            if write_config is not None:
                (tmp / CONFIG_FILE).write_text(yaml.safe_dump(write_config, sort_keys=False))
            for f in tmp.iterdir():
                os.replace(f, out / f.name)
            if not record_rows:
                (out / OBSERVATIONS_FILE).unlink(missing_ok=True)  # stale file from an earlier run
        finally:
            sink.close()
            shutil.rmtree(tmp, ignore_errors=True)
    s = stats.summary
    summary, trial = split_summary(plan, s.table())
    return FolderResult(config, out, plan.n, plan.seed, stats.compile_seconds, stats.run_seconds, summary,
                        s.n_failed, s.n_inaccurate, {"trial_summary": trial, "estimate": est})

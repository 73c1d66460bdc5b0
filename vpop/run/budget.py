"""Time, disk and memory a run will need, estimated before it starts; refusing what cannot finish or fit.

The figures per patient were measured on the default config (28 days,
assessments every 6 h, 6 solver steps each; docs/performance.md) and scale
with the work per patient (assessments x steps) and the rows per patient:

* disk: ~330 bytes per patient in patients.parquet, ~185 bytes per
  observation row (113 rows per patient by default: ~19 kB per patient);
* memory, in-memory runs only (`vpop.simulate`): ~900 bytes per observation
  row and ~3 kB per patient of pandas tables;
* time: ~1,000 patients/s per CPU core typical (a quiet 2-core machine does
  ~2,500/s); an accelerator ~50,000 patients/s.

A run is refused (UserError, exit 2, before anything is written) when even
at 20x the typical speed it would take more than a year, when its files
would not fit in the free space of the output's file system, or (in memory)
when its tables would exceed this machine's memory. The estimate is in the
message. `vpop simulate` prints the estimate before runs expected to take
longer than a minute.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from vpop.errors import UserError

PATIENT_BYTES = 330
OBSERVATION_ROW_BYTES = 185
MEMORY_ROW_BYTES = 900
MEMORY_PATIENT_BYTES = 3000
CPU_PATIENTS_PER_SECOND = 1000.0  # per core, default config
ACCELERATOR_PATIENTS_PER_SECOND = 50_000.0  # per device, default config
FASTEST_FACTOR = 20.0  # refuse only what cannot finish even this much faster than typical
MAX_SECONDS = 365 * 86400.0
LONG_RUN_SECONDS = 60.0
DEFAULT_WORK = 113 * 6  # assessments x steps of the default config
MAX_PATIENTS = 2 ** 32  # patient ids are folded into the random keys as uint32


@dataclass(frozen=True)
class Estimate:
    seconds: float  # typical wall time
    disk_bytes: float
    memory_bytes: float

    def describe(self) -> str:
        return f"about {duration(self.seconds)} and {size(self.disk_bytes)} on disk"


def duration(seconds: float) -> str:
    for unit, s in (("years", 365 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= s:
            return f"{seconds / s:,.1f} {unit}"
    return f"{seconds:.0f} s"


def size(nbytes: float) -> str:
    for unit, b in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= b:
            return f"{nbytes / b:,.1f} {unit}"
    return f"{nbytes:.0f} bytes"


def throughput(settings) -> float:
    """Typical patients per second on this process's devices, for these engine settings."""
    import jax

    devices = jax.local_devices()
    if devices and devices[0].platform != "cpu":
        rate = ACCELERATOR_PATIENTS_PER_SECOND * len(devices)
    else:
        rate = CPU_PATIENTS_PER_SECOND * (os.cpu_count() or 1)
    return rate * DEFAULT_WORK / max(1, settings.n_rows * settings.substeps)


def estimate(plan, n: int | None = None) -> Estimate:
    """Estimate for `n` patients of `plan` (default: all of them)."""
    n = plan.n if n is None else n
    rows = plan.settings.n_rows
    disk = n * (PATIENT_BYTES + (rows * OBSERVATION_ROW_BYTES if plan.record_rows else 0))
    memory = n * (MEMORY_PATIENT_BYTES + (rows * MEMORY_ROW_BYTES if plan.record_rows else 0))
    return Estimate(n / throughput(plan.settings), disk, memory)


def physical_memory() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return float("inf")


def free_disk(path: Path) -> float:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return float(shutil.disk_usage(path).free)
    except OSError:
        return float("inf")


def check(plan, out: Path | None, in_memory: bool = False, n_todo: int | None = None) -> Estimate:
    """Refuse (UserError) a run that cannot finish or fit; return its estimate.

    `n_todo`: patients still to simulate (a resumed run), default all.
    """
    est = estimate(plan, n_todo)
    what = f"{(plan.n if n_todo is None else n_todo):,} patients"
    if est.seconds / FASTEST_FACTOR > MAX_SECONDS:
        raise UserError(f"n: {what} would take {duration(est.seconds)} here (estimate; even "
                        f"{FASTEST_FACTOR:g}x faster, more than a year); allowed: a cohort that can finish, "
                        "e.g. split it over machines with --stream --distributed (docs/scaling.md)")
    if plan.n > MAX_PATIENTS:
        raise UserError(f"n: got {plan.n:,} ({duration(est.seconds)}, {size(est.disk_bytes)} on disk, estimate); "
                        f"allowed: at most {MAX_PATIENTS:,} patients (patient ids are 32-bit)")
    if out is not None:
        free = free_disk(out)
        if est.disk_bytes > free:
            hint = "" if not plan.record_rows else " or leave out observations (--no-observations)"
            raise UserError(f"--out: {what} need about {size(est.disk_bytes)} (estimate) but {out} has "
                            f"{size(free)} free; allowed: a smaller --n, another --out{hint}")
    if in_memory:
        mem = physical_memory()
        if est.memory_bytes > 0.8 * mem:
            raise UserError(f"n: {what} need about {size(est.memory_bytes)} of memory in Python (estimate); this "
                            f"machine has {size(mem)}; allowed: a smaller n, record_rows=False, or `vpop simulate` "
                            "(writes Parquet as it goes, bounded memory)")
    return est

"""The output folder of a run: checked writable before any work, and locked while a run writes it.

`claim(out)` creates the folder (and missing parents) and writes and removes
a probe file in it: a folder that cannot be written (``/proc/x``, read-only,
immutable, a file in the way) is refused with a UserError before anything is
simulated, and the folders it created are removed again. It then takes an
exclusive lock (`fcntl.flock` on ``OUT/.vpop.lock``, held until `release`):
a second run into the same folder, plain or streamed, is refused while the
first is writing. The lock dies with its process, so a killed run never
leaves a stale lock. Processes of one distributed run share a folder and
take no lock (`lock=False`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from vpop.errors import UserError

LOCK = ".vpop.lock"


@dataclass
class Claim:
    out: Path
    created: list[Path] = field(default_factory=list)  # folders this run created, outermost first
    fd: int | None = None

    def release(self, remove_if_empty: bool = False) -> None:
        """Drop the lock; with `remove_if_empty`, remove the folders this run created if it left nothing."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if remove_if_empty:
            lock = self.out / LOCK
            if self.created and lock.exists() and [p.name for p in self.out.iterdir()] == [LOCK]:
                lock.unlink(missing_ok=True)
            for folder in reversed(self.created):
                try:
                    folder.rmdir()
                except OSError:
                    break

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        self.release(remove_if_empty=err is not None)


def _undo(created: list[Path]) -> None:
    for folder in reversed(created):
        shutil.rmtree(folder, ignore_errors=True)


def claim(out: str | Path, flag: str = "--out", lock: bool = True) -> Claim:
    """Make sure `out` is a writable folder and lock it (see the module docstring)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag}: {out} exists and is not a folder")
    missing = []
    p = out.absolute()
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    created: list[Path] = []
    try:
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
        probe = out / f".vpop-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        _undo(created)
        reason = err.strerror or str(err)
        raise UserError(f"{flag}: cannot write to {out} ({reason}); allowed: a folder you can write to") from None
    claim = Claim(out, created)
    if not lock:
        return claim
    import fcntl

    try:
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        _undo(created)
        raise UserError(f"{flag}: cannot write to {out} ({err.strerror}); allowed: a folder you can write to") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        holder = _holder(out / LOCK)
        raise UserError(f"{flag}: another vpop run{holder} is writing to {out}; wait for it to finish or "
                        "choose another --out") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    claim.fd = fd
    return claim


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (process {pid})" if pid.isdigit() else ""

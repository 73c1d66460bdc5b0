"""JAX's persistent compilation cache, on by default for `vpop simulate`, `sweep` and `compare`.

The first `vpop simulate` of a config compiles the engine (several seconds
on a CPU); the compiled executable is stored on disk and later processes
load it instead of compiling. `vpop simulate`, `vpop sweep` and `vpop compare`
call `enable()` before their first compilation. From Python call it yourself before the first simulation:

    import vpop.engine.compile_cache
    vpop.engine.compile_cache.enable()            # ~/.cache/vpop/jax, or $VPOP_CACHE_DIR
    result = vpop.simulate(cfg, n=1000)

Where: ``$VPOP_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/vpop/jax``, else
``~/.cache/vpop/jax``. ``VPOP_NO_CACHE=1`` turns it off. A cache directory
already configured for JAX (``JAX_COMPILATION_CACHE_DIR`` or
``jax.config.update("jax_compilation_cache_dir", ...)``) is kept.

Entries are keyed by the unoptimised program, the jaxlib version, XLA flags
and the device count/topology, so changing any of these compiles again; JAX
never evicts entries from a local directory (delete the folder to reclaim
space). The engine uses no host callbacks (they would make programs
uncacheable). Do not point the cache at a folder others can write: a cache
entry is executable code.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import jax


def default_dir() -> Path:
    if os.environ.get("VPOP_CACHE_DIR"):
        return Path(os.environ["VPOP_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vpop" / "jax"


def disabled() -> bool:
    return os.environ.get("VPOP_NO_CACHE", "").strip().lower() not in ("", "0", "false", "no")


def enable(path: str | Path | None = None) -> Path | None:
    """Turn on the persistent cache (every program, however fast to compile). Returns its folder or None."""
    if disabled():
        return None
    configured = jax.config.jax_compilation_cache_dir
    if path is None and configured:
        folder = Path(configured)
    else:
        folder = Path(path).expanduser() if path is not None else default_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            warnings.warn(f"vpop: compilation cache off: cannot create {folder}: {err}", stacklevel=2)
            return None
        jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return folder

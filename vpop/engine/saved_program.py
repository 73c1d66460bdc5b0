"""The engine's lowered program kept beside the compilation cache, so a later process need not trace it.

JAX finds a compiled program in its persistent cache (`vpop.engine.compile_cache`)
by the program itself, so every process still traces the Python engine and
lowers it before it can look the executable up: about a second on a CPU, a
fixed cost of every `vpop simulate` (issue 14, target 2). This module saves
the lowered program once (StableHLO, through `jax.export`) and later
processes deserialise it in a few milliseconds instead; compiling it then
loads the executable from the persistent cache as before.

A saved program is used only where its key sees everything that made it:

* the built-in model and management rules (`settings.model is BASE`,
  `settings.rule is STANDARD`): an extension's Python is not hashed, so an
  extended model is always traced;
* vpop's own source: the key hashes every ``.py`` file of the package, so an
  edited vpop never loads a program traced from the old code;
* the jax and jaxlib versions, the x64 flag, the platform, the static
  settings (their repr) and the argument tree, shapes and dtypes;
* one local device, and the persistent cache on (``VPOP_NO_CACHE=1`` turns
  both off); several devices take `vpop.engine.sharding`'s own path.

A file that cannot be read or deserialised is ignored and rewritten. The
outputs are those of the traced engine bit for bit (tests/test_saved_program.py).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import jax
import jaxlib
from jax import export

import vpop
from vpop.engine import compile_cache
from vpop.model.spec import BASE
from vpop.policy import rules as policy_mod
from vpop.policy.settings import PolicyArrays

SUFFIX = ".jaxexport"


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 of vpop's Python source (paths and contents), computed once per process."""
    root = Path(vpop.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _serialisable() -> bool:
    """Whether jax.export can serialise the engine here (registering the policy's NamedTuple once)."""
    try:
        import flatbuffers  # noqa: F401  (what jax.export's serialisation imports; fail here, not mid-save)
    except ImportError:  # without it, the engine is traced as before
        return False
    # The policy's arrays are a NamedTuple: jax.export serialises only node types it was told about.
    export.register_namedtuple_serialization(PolicyArrays, serialized_name="vpop.policy.PolicyArrays")
    return True


def folder() -> Path | None:
    """Where saved programs live (inside the compilation cache), or None when they are not used."""
    if compile_cache.disabled() or not jax.config.jax_compilation_cache_dir:
        return None
    return Path(jax.config.jax_compilation_cache_dir) / "vpop-programs"


def eligible(settings) -> bool:
    """Whether this engine's program is fully determined by what the key hashes."""
    return (getattr(settings, "model", None) is BASE and getattr(settings, "rule", None) is policy_mod.STANDARD
            and len(jax.local_devices()) == 1 and folder() is not None)


def key(settings, args, function: str = "") -> str:
    """The file name's hash: source, versions, precision, platform, settings, argument structure and the
    traced function's qualified name (one settings object may be traced by more than one function)."""
    leaves, tree = jax.tree_util.tree_flatten(args)
    parts = (source_digest(), function, jax.__version__, jaxlib.__version__,
             bool(jax.config.jax_enable_x64), jax.default_backend(), repr(settings), str(tree),
             tuple((tuple(x.shape), str(x.dtype)) for x in leaves))
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _load(path: Path):
    try:
        return export.deserialize(bytearray(path.read_bytes()))
    except Exception:  # a truncated or foreign file: trace again and overwrite it
        return None


def _save(path: Path, exported) -> None:
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(exported.serialize())
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one
    except OSError as err:
        warnings.warn(f"vpop: could not save the engine's program to {path}: {err}", stacklevel=3)
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def compile(jitted, settings, *args):
    """`jitted.lower(*args).compile()`, from a saved program when one fits (saving it the first time)."""
    if not (eligible(settings) and _serialisable()):
        return jitted.lower(*args).compile()
    path = folder() / f"{key(settings, args, getattr(jitted, '__qualname__', type(jitted).__qualname__))}{SUFFIX}"
    exported = _load(path) if path.exists() else None
    if exported is None:
        exported = export.export(jitted)(*args)
        _save(path, exported)

    def batch(*arrays):  # named as the engine is, so the cache entry is still `jit_batch-...`
        return exported.call(*arrays)

    with _lapack_left_alone(exported):
        return jax.jit(batch).lower(*args).compile()


def uses_lapack(exported) -> bool:
    """Whether the saved program may call LAPACK: its custom-call targets (`lapack_...`) are named in the
    serialised module. Conservative: a source location that happens to contain the word counts too."""
    return b"lapack" in bytes(exported.mlir_module_serialized)


@contextlib.contextmanager
def _lapack_left_alone(exported):
    """Lower a saved program without initialising JAX's LAPACK kernels when it calls none.

    Calling an exported program on the CPU initialises the LAPACK bindings first, and that imports
    scipy.linalg (0.15 s of every `vpop simulate`, issue 14 target 2). The engine does no linear algebra;
    a program that does keeps the initialisation. If JAX's private hook has moved, nothing is changed.
    """
    from jax._src.export import _export

    hook = getattr(_export, "_ensure_backends_initialized", None)
    if hook is None or uses_lapack(exported):
        yield
        return
    _export._ensure_backends_initialized = lambda platforms: None
    try:
        yield
    finally:
        _export._ensure_backends_initialized = hook

"""Run the engine on every local device: the patient axis sharded with `shard_map`.

Patients are independent, so the batch is split over a 1-D mesh of the local
devices (axis ``"patients"``) and each device runs its *own* `lax.scan` over
its share of patients (`jax.shard_map` around `vmap(simulate_patient)`). There
is no collective inside the loop: a vmapped adaptive loop under automatic
(`jit` + `NamedSharding`) partitioning would instead need a cross-device
reduction every iteration (diffrax#407, jax#20968).

    from vpop.engine import sharding
    run = sharding.batch_function(settings)      # engine.compiled_batch on 1 device
    batch = sharding.round_batch(4096)           # a multiple of the device count
    rows, summary = run(p, keys, policy)

With one local device `batch_function` returns `engine.compiled_batch(settings)`
itself, so a single-device run is exactly the unsharded program. With several,
the default mode ``per_device`` dispatches that same one-device executable on
every device (bit-for-bit equal to one device); ``VPOP_SHARDING=shard_map``
uses a single `jit(shard_map(...))` SPMD program instead, which XLA optimises
slightly differently (agreement to ~1 ulp, not bit for bit; see
`MultiDeviceBatch`).

Several processes (hosts, or one process per GPU) are started with
`initialize_distributed()` (`jax.distributed.initialize`); each process then
simulates its own patient-id range on its own local devices
(`process_share`), and writes its own chunks (see `vpop.run.streaming` and
docs/scaling.md). Nothing is exchanged between processes during a run.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vpop.engine import course as engine_mod
AXIS = "patients"

try:  # jax >= 0.6: jax.shard_map; older releases: jax.experimental.shard_map
    _shard_map = jax.shard_map
except AttributeError:  # pragma: no cover - depends on the installed jax
    from jax.experimental.shard_map import shard_map as _shard_map

import inspect as _inspect

_NO_CHECK = {"check_vma": False} if "check_vma" in _inspect.signature(_shard_map).parameters else {"check_rep": False}


def unchecked_shard_map(f, mesh: Mesh, in_specs, out_specs):
    """`shard_map` without replication checking: for bodies with no collectives (per-device work only)."""
    return _shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, **_NO_CHECK)


def request_cpu_devices(n: int) -> int:
    """Ask for `n` CPU devices (threads of one process) before JAX starts its backends; returns the local count.

    The count can only be set before the first computation, so a command that wants it (`vpop fit --method
    nuts`, whose chains run in parallel over devices) calls this first. It changes the CPU backend only: on a
    machine with an accelerator the local devices stay the accelerator's. Once the backends are up, nothing
    changes.
    """
    from jax._src import xla_bridge

    if n > 1 and not xla_bridge.backends_are_initialized():
        jax.config.update("jax_num_cpu_devices", int(n))
    return device_count()


def local_devices() -> tuple:
    """The devices this process runs on (all local devices of the default backend)."""
    return tuple(jax.local_devices())


def device_count() -> int:
    return len(local_devices())


def global_batch(batch_size: int, n: int, devices: int | None = None, balance: bool = False) -> int:
    """Patients per engine call: `batch_size` per device (fewer when n is small), times the devices.

    With `balance`, for a run that is one stretch of ids (not a stream of fixed chunks, whose batches must
    tile each chunk), a device's share of n that needs several calls is split evenly among the fewest calls
    `batch_size` allows, rounded up to a multiple of an eighth of `batch_size` (at least 8, the CPU's
    float32 vector width). So the last call is not mostly padding (n = 10,000 at 4,096: three calls of
    3,584, 10,752 patients simulated instead of 12,288), while a process meets at most eight batch shapes
    however n changes, each compiled once. Patient i's course does not depend on the batch it runs in
    (its key is fold_in(seed, i)).
    """
    d = device_count() if devices is None else int(devices)
    share = -(-int(n) // d)  # patients per device
    cap = max(1, min(int(batch_size), share))
    calls = -(-share // cap)
    if not balance or calls == 1:
        return d * cap
    granule = max(8, int(batch_size) // 8)
    per = -(-share // calls)  # the share over the fewest calls
    return d * min(cap, -(-per // granule) * granule)


def round_batch(batch: int, devices: int | None = None) -> int:
    """`batch` rounded up to a multiple of the device count (padding fills the rest)."""
    d = device_count() if devices is None else int(devices)
    return -(-int(batch) // d) * d


@functools.lru_cache(maxsize=8)
def mesh(devices: tuple | None = None) -> Mesh:
    devs = local_devices() if devices is None else tuple(devices)
    return Mesh(np.asarray(devs, dtype=object), (AXIS,))


@functools.lru_cache(maxsize=16)
def sharded_batch(settings: engine_mod.EngineSettings, devices: tuple | None = None):
    """`jit(shard_map(vmap(simulate_patient)))` over a 1-D mesh of `devices` (default: all local).

    Parameters with a patient axis are split over the devices; 0-d ones (shared by every patient,
    `vpop.run.driver.shared_as_scalars`) and the policy are replicated.
    """
    m = mesh(devices)

    def per_device(p, keys, policy):
        # The one-device batch body, looked up at trace time (so patched functions are seen).
        body = getattr(engine_mod, "simulate_batch", None)
        if body is not None:
            return body(p, keys, policy, settings)
        return jax.vmap(lambda pi, ki: engine_mod.simulate_patient(pi, ki, policy, settings))(p, keys)

    def run(p, keys, policy):
        # No collectives inside: per-device values need no replication checking (the
        # engine's loop carries start from constants, which the check would reject).
        specs = jax.tree_util.tree_map(_spec, p)
        mapped = unchecked_shard_map(per_device, m, in_specs=(specs, P(AXIS), P()), out_specs=P(AXIS))
        return mapped(p, keys, policy)

    return jax.jit(run, out_shardings=NamedSharding(m, P(AXIS)))


def _spec(x):
    """Split along the patient axis, or replicate a 0-d (shared) value."""
    return P(AXIS) if np.ndim(x) else P()


MODES = ("per_device", "shard_map")


def default_mode() -> str:
    """``$VPOP_SHARDING`` (``per_device`` or ``shard_map``); default ``per_device``."""
    mode = os.environ.get("VPOP_SHARDING", "per_device")
    if mode not in MODES:
        raise ValueError(f"VPOP_SHARDING={mode!r}; allowed: {', '.join(MODES)}")
    return mode


def batch_function(settings: engine_mod.EngineSettings, devices: tuple | None = None, mode: str | None = None):
    """The batch engine for these settings: split over the devices when there are several.

    One device: `engine.compiled_batch(settings)` itself. Several: a
    `MultiDeviceBatch` (called like the jitted function; its outputs convert with `np.asarray`).
    """
    devs = local_devices() if devices is None else tuple(devices)
    if len(devs) == 1:
        return engine_mod.compiled_batch(settings)
    return _multi(settings, devs, mode or default_mode())


@functools.lru_cache(maxsize=16)
def _multi(settings, devices, mode):
    return MultiDeviceBatch(settings, devices, mode)


class MultiDeviceBatch:
    """`(p, keys, policy) -> (rows, summary)` over several devices, each running its own loop.

    ``mode="per_device"``: the single-device executable (`engine.compiled_batch`)
    is dispatched asynchronously on each device with its slice of patients, so
    every device runs exactly the one-device program: results are bit-for-bit
    those of one device (tested in float64 on 4 fake CPU devices).

    ``mode="shard_map"``: one SPMD program, `jit(shard_map(vmap(...)))` over a
    1-D mesh. Also one independent loop per device, but XLA optimises the
    partitioned program differently (different fusion, so a few float
    operations are contracted/rounded differently): float64 results agree to
    about 1 ulp (~1e-15 relative), integer outputs (grades, doses) agree exactly on the tests,
    but not bit for bit. See docs/scaling.md.
    """

    def __init__(self, settings, devices, mode):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}; allowed: {', '.join(MODES)}")
        self.settings, self.devices, self.mode = settings, tuple(devices), mode
        if mode == "shard_map":
            self._fn = sharded_batch(settings, self.devices)
        else:
            self._fn = engine_mod.compiled_batch(settings)

    # Duck-typed like a jitted function for `cohort.executable` (`.lower(...).compile()`):
    # compilation happens on the first call, per device.
    def lower(self, *args):
        return self

    def compile(self):
        return self

    def __call__(self, p, keys, policy):
        d = len(self.devices)
        n = keys.shape[0]
        if n % d:
            raise ValueError(f"batch of {n} patients is not a multiple of the {d} devices (use round_batch)")
        if self.mode == "shard_map":
            return self._fn(put(p, self.devices), put(keys, self.devices), put(policy, self.devices, replicate=True))
        b = n // d
        outs = []
        for i, dev in enumerate(self.devices):  # asynchronous dispatch: the devices run concurrently
            part = functools.partial(device_share, i=i, size=b, device=dev)
            outs.append(self._fn(jax.tree_util.tree_map(part, p), part(keys), jax.device_put(policy, dev)))
        return jax.tree_util.tree_map(lambda *xs: Gathered(xs), *outs)


def device_share(x, i: int, size: int, device):
    """Device i's share of a batch (patients on axis 0, `size` each), put on `device`; a 0-d value (a
    parameter shared by every patient) goes whole."""
    return jax.device_put(x[i * size:(i + 1) * size] if np.ndim(x) else x, device)


class Gathered:
    """One output of a several-device call: the devices' parts, joined on first use (`np.asarray`).

    Joining waits for the devices, so it is left to the caller: the driver dispatches the next batch
    first and converts this one's outputs while the devices run (`vpop.run.driver.run`).
    """

    def __init__(self, parts):
        self.parts = tuple(parts)

    @property
    def shape(self) -> tuple:
        first = self.parts[0].shape
        return (sum(x.shape[0] for x in self.parts),) + tuple(first[1:])

    @property
    def dtype(self):
        return self.parts[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate([np.asarray(x) for x in self.parts])
        return out if dtype is None else out.astype(dtype)


def process_share(n_items: int, process_index: int | None = None, process_count: int | None = None) -> range:
    """The items (e.g. chunk indices) this process handles: every `process_count`-th from its index.

    Interleaving keeps the processes' loads even when later chunks are
    shorter (the last chunk) and lets one process finish another's leftovers
    with `--resume`.
    """
    i = jax.process_index() if process_index is None else int(process_index)
    k = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= i < k:
        raise ValueError(f"process index {i} is outside 0..{k - 1}")
    return range(i, n_items, k)


def initialize_distributed() -> None:
    """`jax.distributed.initialize()` from the environment; call before any JAX computation.

    On Slurm, Open MPI and TPU pods every argument is detected. Elsewhere set
    ``VPOP_COORDINATOR_ADDRESS`` (host:port of process 0),
    ``VPOP_NUM_PROCESSES`` and ``VPOP_PROCESS_ID`` (and optionally
    ``VPOP_LOCAL_DEVICE_IDS``, comma-separated) in each process.
    """
    kwargs = {}
    if os.environ.get("VPOP_COORDINATOR_ADDRESS"):
        kwargs["coordinator_address"] = os.environ["VPOP_COORDINATOR_ADDRESS"]
    if os.environ.get("VPOP_NUM_PROCESSES"):
        kwargs["num_processes"] = int(os.environ["VPOP_NUM_PROCESSES"])
    if os.environ.get("VPOP_PROCESS_ID"):
        kwargs["process_id"] = int(os.environ["VPOP_PROCESS_ID"])
    if os.environ.get("VPOP_LOCAL_DEVICE_IDS"):
        kwargs["local_device_ids"] = [int(x) for x in os.environ["VPOP_LOCAL_DEVICE_IDS"].split(",")]
    jax.distributed.initialize(**kwargs)


def put(tree, settings_devices: tuple | None = None, replicate: bool = False):
    """Place host arrays on the mesh: patient axis sharded (or replicated)."""
    devs = local_devices() if settings_devices is None else tuple(settings_devices)
    if len(devs) == 1:
        return tree
    m = mesh(devs)
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, NamedSharding(m, P() if replicate else _spec(x))), tree)

"""The cohort driver: the one batch loop behind `vpop.simulate`, `vpop simulate` and `--stream`.

    plan = driver.plan(config, n=10_000, seed=0)
    stats = driver.run(plan, [(0, 0, plan.n)], sink)     # chunks: (index, first id, stop id)

Patient i is simulated from `fold_in(PRNGKey(seed), i)`. Batches are aligned
on patient ids: batch b holds ids ``b*B .. (b+1)*B - 1`` (B = `plan.batch`,
the last one padded by repeating the last patient), whatever the chunk
asked for. So patient i sits at the same place of the same compiled program
in a plain run and in a streamed run of any chunk size, and its outputs are
bit for bit the same (docs/scaling.md, "What is identical").

After each batch the driver hands the sink that batch's patient table and
observation table (`sink.batch`, in slices of at most TABLE_PATIENTS patients), and the sink's `chunk_done(index)` when a
chunk is complete; sinks keep them in memory (`MemorySink`) or write them
(`vpop.run.files`, `vpop.run.streaming`). A `Summary` of the endpoints
(`vpop.run.endpoints`) is fed every batch, so a summary needs no table.

Precision follows the config: a float64 config runs inside
`jax.enable_x64(True)` (a scoped setting), never a global flip.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from vpop.engine import course as engine_mod
from vpop.engine import saved_program, sharding
from vpop.errors import UserError
from vpop.policy import rules as policy_mod
from vpop.population import patient_table as patient_table_mod
from vpop.population.sampler import PopulationSampler, patient_keys
from vpop.run import tables
from vpop.run.endpoints import Summary, summary_endpoints, trial_scales


def precision(dtype: str):
    """The JAX precision a config asks for, as a context (float64 is scoped, not global)."""
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


def jnp_dtype(dtype: str):
    return jnp.float64 if dtype == "float64" else jnp.float32


# Patients per table slice handed to the sink (the observation table of 1,024 patients is ~115k rows).
TABLE_PATIENTS = 1024
# Table slices handed to the sink's thread and not yet written: bounds the memory the overlap costs.
SINK_QUEUE = 2

# --- compiled pieces, cached per process -------------------------------------------------------

EXECUTABLES: dict = {}


def executable(jitted, settings, *args):
    """Compiled engine for these settings and argument shapes (compiled once per process)."""
    leaves, tree = jax.tree_util.tree_flatten(args)
    placed = getattr(leaves[0], "sharding", None)  # one executable per device of a several-device run
    key = (jitted, settings, tree, tuple((x.shape, str(x.dtype)) for x in leaves), jax.config.jax_enable_x64, placed)
    if key not in EXECUTABLES:
        # From the program saved by an earlier process where one fits (skips tracing), else traced.
        EXECUTABLES[key] = saved_program.compile(jitted, settings, *args)
    return EXECUTABLES[key]


# The CAR-T dose is an argument of the compiled sampler, not a constant in it: a dose sweep's cells
# share one compiled sampler (compiling it takes seconds; sampling 10,000 patients, milliseconds).
_DOSE_FIELDS = ("dose_per_kg", "flat_dose")


def _sampler_key(sampler: PopulationSampler) -> str:
    """What determines a sampler's draws, the dose apart: its specification and typical values."""
    spec = replace(sampler.spec, **{f: None if getattr(sampler.spec, f) is None else "dose" for f in _DOSE_FIELDS})
    return repr((spec, sorted(sampler.typical.items())))


_SAMPLERS: dict = {}


def compiled_sampler(sampler: PopulationSampler, dtype):
    """`jit(vmap(sampler.individual))` as a function of the keys, compiled once per (sampler specification
    without its dose, dtype): equal samplers share it, and so do samplers that differ in dose only.

    A sweep builds a new sampler for every cell; cells with the same population
    and parameters, at whatever dose, reuse the compiled sampler instead of compiling it again.
    """
    key = (_sampler_key(sampler), jnp.dtype(dtype).name)
    if key not in _SAMPLERS:
        if len(_SAMPLERS) >= 64:  # bounded: drop the oldest
            _SAMPLERS.pop(next(iter(_SAMPLERS)))
        template = sampler

        def sample(keys, doses):
            dosed = copy.copy(template)  # the same sampler, its dose fields traced
            dosed.spec = replace(template.spec, **doses)
            cov, p = jax.vmap(dosed.individual)(keys)
            return cov, jax.tree_util.tree_map(lambda x: x.astype(dtype), p)

        _SAMPLERS[key] = jax.jit(sample)
    doses = {f: np.float32(getattr(sampler.spec, f)) for f in _DOSE_FIELDS if getattr(sampler.spec, f) is not None}
    return functools.partial(_SAMPLERS[key], doses=doses)


_SHARED: dict = {}


def shared_parameters(sampler: PopulationSampler) -> tuple[str, ...]:
    """`sampler.shared_parameters()`, traced once per sampler specification (a sweep's cells share it)."""
    key = _sampler_key(sampler)
    if key not in _SHARED:
        _SHARED[key] = sampler.shared_parameters()
    return _SHARED[key]


@functools.lru_cache(maxsize=16)
def _scalars_jit(names: tuple):
    """`(cov, p) -> (cov, shared_as_scalars(p, names))`, compiled: one dispatch, not one per parameter."""
    return jax.jit(lambda cov, p: (cov, shared_as_scalars(p, names)))


def shared_as_scalars(p: dict, names) -> dict:
    """The parameters named in `names` (equal for every patient) as 0-d arrays, the rest as they are.

    The engine's one-patient physics broadcasts a scalar parameter over the batch, so each step reads
    it once instead of streaming a (batch,) array of copies through every fusion: 162 of the default
    population's 180 parameters. On a 2-core CPU this and one engine per core (`vpop.engine.sharding`)
    run the engine about 1.6x faster (docs/performance.md).
    """
    names = set(names)
    return {k: (v[0] if k in names and jnp.ndim(v) == 1 else v) for k, v in p.items()}


@jax.jit
def split_keys(keys):
    both = jax.vmap(lambda k: jax.random.split(k, 2))(keys)
    return both[:, 0], both[:, 1]


def padded_ids(start: int, stop: int, batch: int) -> np.ndarray:
    ids = np.arange(start, start + batch)
    return np.minimum(ids, stop - 1)  # padding repeats the last patient; trimmed after


# --- the plan of a run -------------------------------------------------------------------------


@dataclass
class Plan:
    """Everything fixed before the first patient: sizes, settings, the compiled pieces."""

    config: object
    n: int
    seed: int
    record_rows: bool
    settings: object  # EngineSettings with record_rows
    batch: int  # patients per engine call (all local devices)
    table: object | None  # a patient table (population.patients_file), or None to sample
    endpoints: list = field(default_factory=list)

    @property
    def ids(self) -> np.ndarray | None:
        return None if self.table is None else self.table.ids


def plan(config, n: int | None = None, seed: int | None = None, record_rows: bool = True,
         balanced: bool = True) -> Plan:
    """Check and size a run (UserError for an impossible one); nothing is compiled or written.

    `balanced`: the run is one stretch of ids, so its batches may split n evenly (`sharding.global_batch`);
    a stream of fixed-size chunks passes False to keep batches that tile each chunk."""
    table = patient_table_mod.table_of(config)
    n = (config.n if n is None else int(n)) if table is None else table.cohort_size(n)
    seed = config.seed if seed is None else int(seed)
    if n < 1:
        raise UserError(f"n: got {n}; allowed: an integer >= 1")
    if seed < 0:
        raise UserError(f"seed: got {seed}; allowed: an integer >= 0")
    policy_mod.check_scales(config.policy, config.engine.crs_scales, config.engine.neuro_scales,
                            f"policy {config.policy.name!r}")
    endpoints = summary_endpoints()
    trial = trial_scales(config)
    if trial is not None:
        endpoints += summary_endpoints(trial[1], trial[2], drugs=False)
    batch = sharding.global_batch(config.batch_size, n, balance=balanced)  # batch_size per device
    return Plan(config, n, seed, record_rows, replace(config.engine, record_rows=record_rows), batch, table,
                endpoints)


# --- sinks -------------------------------------------------------------------------------------


class Sink(Protocol):
    def batch(self, chunk: int, patients: pd.DataFrame, observations: pd.DataFrame | None) -> None: ...

    def chunk_done(self, chunk: int) -> None: ...


class MemorySink:
    """Keeps every batch's tables: `patients()` and `observations()` concatenate them."""

    def __init__(self):
        self.patient_parts: list[pd.DataFrame] = []
        self.observation_parts: list[pd.DataFrame] = []

    def batch(self, chunk, patients, observations):
        self.patient_parts.append(patients)
        if observations is not None:
            self.observation_parts.append(observations)

    def chunk_done(self, chunk):
        pass

    def patients(self) -> pd.DataFrame:
        return _concat(self.patient_parts)

    def observations(self) -> pd.DataFrame | None:
        return _concat(self.observation_parts) if self.observation_parts else None


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    return parts[0].reset_index(drop=True) if len(parts) == 1 else pd.concat(parts, ignore_index=True)


# --- the batch loop ----------------------------------------------------------------------------


def sample_by_device_share(sample, devices: int, *batch):
    """`sample(*batch)` (arrays or dicts of arrays, patients on axis 0) run on each device's share of the batch.

    The sampler draws in float32 whatever the run's precision (a patient is the same patient in both), and
    float32 code vectorised over a batch rounds differently in its SIMD lanes and its remainder loop on
    some CPUs (AVX2: 1 ulp). Sampling each device's share at its own shape keeps a several-device run equal,
    bit for bit, to one device running batches of that share (tests/test_sharding.py)."""
    if devices == 1:
        return sample(*batch)
    size = jax.tree.leaves(batch)[0].shape[0] // devices
    parts = [sample(*jax.tree.map(lambda x, i=i: x[i * size:(i + 1) * size], batch)) for i in range(devices)]
    # a 0-d leaf (a parameter shared by every patient) is the same in every part
    return jax.tree.map(lambda *xs: jnp.concatenate(xs) if jnp.ndim(xs[0]) else xs[0], *parts)


@dataclass
class RunStats:
    compile_seconds: float
    run_seconds: float
    summary: Summary
    batches: int


def run(plan: Plan, chunks: Sequence[tuple[int, int, int]], sink: Sink,
        progress: Callable[[int, int], None] | None = None, stage: Callable[[str], None] | None = None,
        done_before: int = 0, total: int | None = None, after_chunk: Callable[[int], None] | None = None) -> RunStats:
    """Simulate `chunks` ((index, first id, stop id), in order) batch by batch into `sink`.

    `progress(done, total)` after every batch (patients, counting `done_before`);
    `stage("compiling")` before the engine compiles and `stage("simulating")`
    after. Returns timings and the summary of the patients simulated here.
    """
    config = plan.config
    total = sum(hi - lo for _, lo, hi in chunks) + done_before if total is None else total
    summary = Summary(plan.endpoints)
    B = plan.batch
    with precision(config.dtype):
        dtype = jnp_dtype(config.dtype)
        sampler = PopulationSampler(config.population, config.parameters)
        policy = config.policy.to_arrays(dtype)
        if plan.table is None:
            sample = compiled_sampler(sampler, dtype)
            shared = shared_parameters(sampler)
            prepare = lambda keys: _scalars_jit(shared)(*sample(keys))  # noqa: E731
        else:
            prepare = patient_table_mod.given_sampler(sampler, dtype)
        devs = sharding.local_devices()
        per_device = len(devs) > 1 and sharding.default_mode() == "per_device"
        engine = engine_mod.compiled_batch(plan.settings) if len(devs) == 1 or per_device \
            else sharding.batch_function(plan.settings)
        policies = [jax.device_put(policy, dev) for dev in devs] if per_device else None
        compiled: dict = {}  # device index -> executable
        compile_seconds = 0.0
        done, batches = done_before, 0
        t_start = time.perf_counter()
        # Every batch of every chunk, in order; `last` marks a chunk's final batch.
        jobs = []
        for index, lo, hi in chunks:
            starts = list(range((lo // B) * B, hi, B))  # batches aligned on patient ids
            jobs += [(index, lo, hi, start, start == starts[-1]) for start in starts]
            if not starts:
                jobs.append((index, lo, hi, None, True))

        def dispatch(start):
            """Sample a batch and start the engine on it; JAX runs it asynchronously.

            With several devices (per-device mode) each device samples its own share of the batch and
            runs the one-device engine on it: nothing is joined before the outputs are read, and each
            device's program is the one-device program (results bit for bit those of one device)."""
            nonlocal compile_seconds
            ids = padded_ids(start, plan.n, B)
            first = not compiled
            if first:  # the first batch compiles the sampler and the engine
                if stage is not None:
                    stage("compiling")
                t0 = time.perf_counter()
            if plan.table is None:
                pop_keys, event_keys = split_keys(patient_keys(plan.seed, ids))
                inputs = (pop_keys,)
            else:
                keys, given, eta = patient_table_mod.batch_rows(plan.table, ids, plan.seed)
                pop_keys, event_keys = split_keys(keys)
                inputs = (pop_keys, given, eta)
            if not per_device:
                cov, p = sample_by_device_share(prepare, len(devs), *inputs)
                if first:
                    compiled[0] = executable(engine, plan.settings, p, event_keys, policy)
                out = compiled[0](p, event_keys, policy)
            else:
                size = B // len(devs)
                covs, outs = [], []
                for i, dev in enumerate(devs):
                    share = functools.partial(sharding.device_share, i=i, size=size, device=dev)
                    cov_i, p_i = prepare(*jax.tree_util.tree_map(share, inputs))
                    keys_i, policy_i = share(event_keys), policies[i]
                    if i not in compiled:
                        compiled[i] = executable(engine, plan.settings, p_i, keys_i, policy_i)
                    outs.append(compiled[i](p_i, keys_i, policy_i))
                    covs.append(cov_i)
                cov = jax.tree_util.tree_map(lambda *xs: sharding.Gathered(xs), *covs)
                out = jax.tree_util.tree_map(lambda *xs: sharding.Gathered(xs), *outs)
            if first:
                compile_seconds = time.perf_counter() - t0
                if stage is not None:
                    stage("simulating")
            return cov, out

        # The sink writes on its own thread (Parquet encoding releases the GIL), in order, at most
        # SINK_QUEUE slices behind: writing overlaps building the next tables and the engine.
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vpop-sink")
        queued: deque = deque()

        def write(fn, *args):
            queued.append(writer.submit(fn, *args))
            while len(queued) > SINK_QUEUE:
                queued.popleft().result()  # re-raises the sink's error here

        def drain():
            while queued:
                queued.popleft().result()

        try:
            # The next batch is dispatched before this one's tables are built, so the engine
            # runs while Python builds tables and writes them (about half of a plain run's time).
            pending = dispatch(jobs[0][3]) if jobs and jobs[0][3] is not None else None
            for j, (index, lo, hi, start, last) in enumerate(jobs):
                if start is not None:
                    cov, (rows, summ) = pending
                    following = jobs[j + 1][3] if j + 1 < len(jobs) else None
                    pending = dispatch(following) if following is not None else None
                    cov = {k: np.asarray(v) for k, v in cov.items()}
                    rows = {k: np.asarray(v) for k, v in rows.items()}
                    summ = {k: np.asarray(v) for k, v in summ.items()}
                    first, stop = max(lo, start), min(hi, start + B)  # this chunk's part of the batch
                    # Tables a slice at a time: pandas and Arrow copies of a whole batch's rows would dominate memory.
                    for a in range(first, stop, TABLE_PATIENTS):
                        b = min(a + TABLE_PATIENTS, stop)
                        part = slice(a - start, b - start)
                        pid = np.arange(a, b) if plan.table is None else plan.table.ids[a:b]
                        r = {k: v[part] for k, v in rows.items()}
                        obs = tables.observation_table(pid, r, plan.settings) if plan.record_rows else None
                        patients = tables.patient_table(pid, {k: v[part] for k, v in cov.items()}, r,
                                                        {k: v[part] for k, v in summ.items()}, plan.settings)
                        summary.add(patients[summary.columns])
                        write(sink.batch, index, patients, obs)
                        del patients, obs, r
                        done += b - a
                        if progress is not None:
                            progress(done, total)
                    del rows, summ, cov
                    batches += 1
                if last:
                    write(sink.chunk_done, index)
                    drain()  # the chunk is complete on disk before anyone is told so
                    if after_chunk is not None:
                        after_chunk(index)
            drain()
        finally:
            writer.shutdown(wait=True)
    elapsed = time.perf_counter() - t_start
    return RunStats(compile_seconds, elapsed - compile_seconds, summary, batches)

"""`vpop simulate [CONFIG] [--n N] [--seed S] [--out DIR]`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vpop.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="simulate a virtual cohort and print graded CRS/ICANS rates",
        description="Simulate a virtual cohort from a config (default: the shipped default.yaml, "
        "1,000 patients given a CD19/CD28 product for large B-cell lymphoma).",
    )
    parser.add_argument("config", nargs="?", default=None, help="config YAML (default: configs/default.yaml)")
    parser.add_argument("--n", type=int, default=None, help="number of patients (overrides cohort.n)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (overrides cohort.seed)")
    parser.add_argument("--out", default=None, help="output folder (default: vpop-out/<config name>)")
    parser.add_argument("--no-observations", action="store_true", help="do not write observations.parquet")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    # Large cohorts (vpop.run.streaming, docs/scaling.md).
    parser.add_argument("--stream", action="store_true",
                        help="write a partitioned dataset OUT/patients/part-*.parquet chunk by chunk (bounded memory)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="with --stream: patients per part (default: 4 batches)")
    parser.add_argument("--resume", action="store_true",
                        help="with --stream: continue an interrupted run in OUT (refused if OUT is another run)")
    parser.add_argument("--distributed", action="store_true",
                        help="with --stream: jax.distributed.initialize() first; processes share the chunks")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vpop.run.config import load_config

    if args.n is not None and args.n < 1:
        raise UserError(f"--n: got {args.n}; allowed: an integer >= 1")
    if args.seed is not None and args.seed < 0:
        raise UserError(f"--seed: got {args.seed}; allowed: an integer >= 0")
    config = load_config(args.config)
    out = Path(args.out) if args.out else Path("vpop-out") / config.name
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a folder")

    from vpop import __version__
    from vpop.population.patient_table import cohort_size

    n = cohort_size(config, args.n)  # cohort.n, --n, or a patient table's rows (at most --n)
    seed = config.seed if args.seed is None else args.seed
    resolved = config.resolved_dict()
    resolved["cohort"]["n"] = n
    resolved["cohort"]["seed"] = seed
    resolved["vpop_version"] = __version__
    if args.stream or args.resume or args.distributed or args.chunk_size is not None:
        return _run_stream(args, config, n, seed, out, resolved)
    from vpop.engine import compile_cache
    from vpop.run.files import simulate_to_folder

    with Feedback(n, args.quiet) as feedback:
        compile_cache.enable()  # persistent JAX compilation cache (VPOP_NO_CACHE=1 turns it off)
        result = simulate_to_folder(config, out, n, seed, not args.no_observations, progress=feedback.progress,
                                    stage=feedback.stage, write_config=resolved, on_estimate=feedback.estimate)
    _print_summary(result, out)
    return 0


PROGRESS_SECONDS = 10.0  # a plain progress line at most this often when stderr is not a terminal


class Feedback:
    """Progress on stderr: a bar with the stage ("compiling", "simulating") on a terminal, else plain lines.

    Plain lines (output redirected to a file or a pipe) come at the start of
    each stage and then at most every PROGRESS_SECONDS, with the count, the
    elapsed time and an estimate of the time left. `--quiet`: nothing.
    """

    def __init__(self, total: int, quiet: bool = False, stream=None):
        self.total, self.quiet = total, quiet
        self.stream = sys.stderr if stream is None else stream
        self.bar = self.task = None
        self.t0 = time.monotonic()
        self.last = float("-inf")
        self.sim_start = None
        self.sim_done0 = 0
        self.done = 0

    def __enter__(self):
        if not self.quiet and self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} patients"),
                TimeElapsedColumn(), TimeRemainingColumn(), transient=True, console=Console(file=self.stream),
            )
            self.bar.__enter__()
            self.task = self.bar.add_task("starting", total=self.total)
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def _line(self, text: str) -> None:
        print(f"vpop simulate: {text}", file=self.stream, flush=True)

    def estimate(self, est) -> None:
        from vpop.run.budget import LONG_RUN_SECONDS

        if est.seconds >= LONG_RUN_SECONDS and not self.quiet:
            text = f"estimate: {est.describe()} for {self.total:,} patients"
            if self.bar is not None:
                self.bar.console.print(text)
            else:
                self._line(text)

    def stage(self, name: str) -> None:
        if name == "simulating":
            self.sim_start, self.sim_done0 = time.monotonic(), self.done
        if self.quiet:
            return
        words = {"compiling": "compiling the engine (once per settings; the cache makes later runs start fast)",
                 "simulating": "simulating"}.get(name, name)
        if self.bar is not None:
            self.bar.update(self.task, description=name)
        else:
            self._line(words)

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total)
            return
        now = time.monotonic()
        if now - self.last < PROGRESS_SECONDS and done < total:
            return
        self.last = now
        left = ""
        if self.sim_start is not None and done > self.sim_done0 and done < total:
            rate = (done - self.sim_done0) / max(now - self.sim_start, 1e-9)
            left = f", about {(total - done) / rate:,.0f} s left"
        self._line(f"{done:,}/{total:,} patients ({100 * done / max(total, 1):.0f}%), "
                   f"{now - self.t0:,.0f} s elapsed{left}")


def _rate_rows(table, summary) -> None:
    for row in summary.itertuples():
        if row.unit == "fraction":
            value, ci = f"{100 * row.value:.1f}%", f"{100 * row.ci_low:.1f}–{100 * row.ci_high:.1f}%"
        else:
            value, ci = f"day {row.value:.2f}", f"{row.ci_low:.2f}–{row.ci_high:.2f}"
        table.add_row(row.endpoint, value, ci, f"{row.count}/{row.n}")


def _print_summary(result, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"vpop: {result.config.name} — {result.n:,} patients (ASTCT grading)")
    for col in ("endpoint", "value", "95% CI / IQR", "count"):
        table.add_column(col, justify="left" if col == "endpoint" else "right")
    _rate_rows(table, result.summary_table())
    console.print(table)
    trial = result.extra.get("trial_summary")
    if trial is not None:
        from vpop.run.endpoints import trial_scales

        name, crs, neuro = trial_scales(result.config)
        t2 = Table(title=f"the same patients graded as {name} reported: CRS {SCALE_NAMES.get(crs, crs)}, "
                         f"neurotoxicity {SCALE_NAMES.get(neuro, neuro)}")
        for col in ("endpoint", "value", "95% CI / IQR", "count"):
            t2.add_column(col, justify="left" if col == "endpoint" else "right")
        _rate_rows(t2, trial)
        console.print(t2)
    console.print(
        f"failed solves: {result.n_failed} (the solve broke down or a read-out left its physical range; left out "
        f"of every rate; solver_status names which); "
        f"{result.n_inaccurate} patients with less accurate solves (the solver's error estimate passed its "
        f"tolerance at some step; kept in the rates; see docs/outputs.md, solver_status); "
        f"compile {result.compile_seconds:.2f} s, simulate {result.run_seconds:.2f} s; wrote {out}/"
    )


SCALE_NAMES = {"lee2014": "Lee 2014", "penn": "Penn", "astct": "ASTCT", "ctcae": "CTCAE-style",
               "cartox": "CARTOX", "mskcc": "MSKCC", "ctcae5": "CTCAE v5"}


def _run_stream(args, config, n: int, seed: int, out: Path, resolved: dict) -> int:
    """`vpop simulate --stream`: the chunked run, then the summary from the dataset."""
    from vpop.engine import compile_cache, sharding
    from vpop.run.streaming import simulate_stream

    if not args.stream:
        flag = "--resume" if args.resume else "--distributed" if args.distributed else "--chunk-size"
        raise UserError(f"{flag} needs --stream")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise UserError(f"--chunk-size: got {args.chunk_size}; allowed: an integer >= 1")
    if args.distributed:
        sharding.initialize_distributed()
    compile_cache.enable()
    with Feedback(n, args.quiet) as feedback:
        result = simulate_stream(config, out, n=n, seed=seed, record_rows=not args.no_observations,
                                 progress=feedback.progress, chunk_size=args.chunk_size, resume=args.resume,
                                 write_config=resolved, stage=feedback.stage, on_estimate=feedback.estimate)
    _print_stream(result)
    return 0


def _print_stream(result) -> None:
    import jax
    from rich.console import Console

    from vpop.run.streaming import PATIENTS

    console = Console()
    timing = (f"compile {result.compile_seconds:.2f} s, simulate {result.run_seconds:.2f} s "
              f"({result.chunks_run} chunks this run)")
    if not result.complete:
        console.print(f"process {jax.process_index()}: its chunks are done; {result.chunks_done}/"
                      f"{result.chunks_total} chunks in {result.out}/ so far; {timing}. When every process "
                      f"has finished, `vpop simulate ... --stream --resume` prints the summary.")
        return
    _print_summary(result, result.out)
    console.print(f"streamed: {result.chunks_total} parts of {result.chunk_size:,} patients in "
                  f"{result.out}/{PATIENTS}/; {timing}")

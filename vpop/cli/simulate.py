"""`vpop simulate [CONFIG] [--n N] [--seed S] [--out DIR]`."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import yaml

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
    from vpop.engine import compile_cache
    compile_cache.enable()  # persistent JAX compilation cache (VPOP_NO_CACHE=1 turns it off)
    config = load_config(args.config)
    out = Path(args.out) if args.out else Path("vpop-out") / config.name
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a folder")

    from vpop import __version__
    from vpop.run.cohort import simulate

    from vpop.population.patient_table import cohort_size

    n = cohort_size(config, args.n)  # cohort.n, --n, or a patient table's rows (at most --n)
    seed = config.seed if args.seed is None else args.seed
    if args.stream or args.resume or args.distributed or args.chunk_size is not None:
        return _run_stream(args, config, n, seed, out, _run_with_progress)
    result = _run_with_progress(simulate, config, n, seed, not args.no_observations, quiet=args.quiet)

    resolved = config.resolved_dict()
    resolved["cohort"]["n"] = n
    resolved["cohort"]["seed"] = seed
    resolved["vpop_version"] = __version__
    _write_outputs(out, result, resolved)
    _print_summary(result, out)
    return 0


def _run_with_progress(simulate, config, n, seed, record, quiet):
    if quiet or not sys.stderr.isatty():
        return simulate(config, n=n, seed=seed, record_rows=record)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        TextColumn("simulating"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} patients"),
        TimeElapsedColumn(), TimeRemainingColumn(), transient=True,
    ) as bar:
        task = bar.add_task("sim", total=n)
        return simulate(config, n=n, seed=seed, record_rows=record,
                        progress=lambda done, total: bar.update(task, completed=done, total=total))


def _write_outputs(out: Path, result, resolved: dict) -> None:
    """Write into a temporary folder beside `out`, then move the files in."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        result.patients.to_parquet(tmp / "patients.parquet", index=False)
        if result.observations is not None:
            result.observations.to_parquet(tmp / "observations.parquet", index=False)
        (tmp / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        out.mkdir(exist_ok=True)
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
        if result.observations is None and (out / "observations.parquet").exists():
            (out / "observations.parquet").unlink()  # stale file from an earlier run
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _print_summary(result, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"vpop: {result.config.name} — {len(result.patients):,} patients (ASTCT grading)")
    for col in ("endpoint", "value", "95% CI / IQR", "count"):
        table.add_column(col, justify="left" if col == "endpoint" else "right")
    for row in result.summary_table().itertuples():
        if row.unit == "fraction":
            value, ci = f"{100 * row.value:.1f}%", f"{100 * row.ci_low:.1f}–{100 * row.ci_high:.1f}%"
        else:
            value, ci = f"day {row.value:.2f}", f"{row.ci_low:.2f}–{row.ci_high:.2f}"
        table.add_row(row.endpoint, value, ci, f"{row.count}/{row.n}")
    console = Console()
    console.print(table)
    console.print(
        f"failed solves: {result.n_failed} (excluded); step error above tolerance: {result.n_inaccurate}; "
        f"compile {result.compile_seconds:.1f} s, simulate {result.run_seconds:.1f} s; wrote {out}/"
    )


def _run_stream(args, config, n: int, seed: int, out: Path, run_with_progress) -> int:
    """`vpop simulate --stream`: the chunked run, then the summary from the dataset."""
    from functools import partial

    from vpop import __version__
    from vpop.engine import sharding
    from vpop.run.streaming import simulate_stream

    if not args.stream:
        flag = "--resume" if args.resume else "--distributed" if args.distributed else "--chunk-size"
        raise UserError(f"{flag} needs --stream")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise UserError(f"--chunk-size: got {args.chunk_size}; allowed: an integer >= 1")
    resolved = config.resolved_dict()
    resolved["cohort"]["n"] = n
    resolved["cohort"]["seed"] = seed
    resolved["vpop_version"] = __version__
    if args.distributed:
        sharding.initialize_distributed()
    fn = partial(simulate_stream, out=out, chunk_size=args.chunk_size, resume=args.resume, write_config=resolved)
    result = run_with_progress(fn, config, n, seed, not args.no_observations, quiet=args.quiet)
    _print_stream(result)
    return 0


def _print_stream(result) -> None:
    import jax
    from rich.console import Console

    from vpop.run.streaming import PATIENTS

    console = Console()
    timing = (f"compile {result.compile_seconds:.1f} s, simulate {result.run_seconds:.1f} s "
              f"({result.chunks_run} chunks this run)")
    if not result.complete:
        console.print(f"process {jax.process_index()}: its chunks are done; {result.chunks_done}/"
                      f"{result.chunks_total} chunks in {result.out}/ so far; {timing}. When every process "
                      f"has finished, `vpop simulate ... --stream --resume` prints the summary.")
        return
    _print_summary(result, result.out)
    console.print(f"streamed: {result.chunks_total} parts of {result.chunk_size:,} patients in "
                  f"{result.out}/{PATIENTS}/; {timing}")

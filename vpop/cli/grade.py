"""`vpop grade`: grade an observation table and summarise patients."""

from __future__ import annotations

import argparse
import os
import tempfile

from vpop.errors import UserError
from vpop.grading.table import (
    allowed_scales,
    grade_observations,
    read_observations,
    resolve_scales,
    summarise_patients,
    table_format,
    write_table,
)


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `grade` sub-command to the `vpop` parser."""
    parser = subparsers.add_parser(
        "grade",
        help="grade CRS and ICANS in an observation table",
        description=(
            "Grade CRS and ICANS for every row of an observation table (CSV or Parquet; "
            "see docs/grading.md) and optionally write a per-patient summary. ASTCT is "
            "always graded; --scale adds legacy scales."
        ),
    )
    parser.add_argument("observations", help="observation table (.csv or .parquet)")
    parser.add_argument("--out", required=True, help="graded table to write (.csv or .parquet)")
    parser.add_argument(
        "--scale",
        default="astct",
        help=f"comma-separated scales (default astct); allowed: {', '.join(allowed_scales())}",
    )
    parser.add_argument(
        "--patients", metavar="SUMMARY_FILE", help="also write a per-patient summary (.csv or .parquet)"
    )
    parser.set_defaults(func=run)
    return parser


def _check_output(path: str) -> None:
    table_format(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"{path}: output folder {folder} does not exist")


def _write_atomically(outputs) -> None:
    """Write every (DataFrame, path) to a temporary file beside it, then rename all."""
    temps = []
    try:
        for df, path in outputs:
            folder = os.path.dirname(os.path.abspath(path))
            ext = os.path.splitext(path)[1]
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=ext)
            os.close(fd)
            temps.append((tmp, path))
            write_table(df, tmp)
        for tmp, path in temps:
            os.replace(tmp, path)
    except OSError as err:
        raise UserError(f"cannot write output: {err}") from None
    finally:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.remove(tmp)


def run(args: argparse.Namespace) -> int:
    """Run `vpop grade`; returns the exit status (0)."""
    crs_scales, neuro_scales = resolve_scales(args.scale)
    _check_output(args.out)
    if args.patients:
        _check_output(args.patients)
    df = read_observations(args.observations)
    if len(df) == 0:
        raise UserError(f"{args.observations}: no rows (only a header); allowed: at least one assessment row "
                        "(docs/observations.md)")
    graded = grade_observations(df, args.scale, source_name=args.observations)
    outputs = [(graded, args.out)]
    summary = None
    if args.patients:
        summary = summarise_patients(graded, args.scale)
        outputs.append((summary, args.patients))
    _write_atomically(outputs)
    n_pat = graded["patient_id"].nunique()
    crs = graded.groupby("patient_id", sort=False)["crs_grade_astct"].max()
    icans = graded.groupby("patient_id", sort=False)["icans_grade_astct"].max()
    print(
        f"vpop grade: {len(graded)} rows, {n_pat} patients graded "
        f"(CRS: {', '.join(crs_scales)}; neuro: {', '.join(neuro_scales)}); "
        f"ASTCT CRS any grade {int((crs >= 1).sum())}, grade >=3 {int((crs >= 3).sum())}; "
        f"ICANS any grade {int((icans >= 1).sum())}, grade >=3 {int((icans >= 3).sum())} "
        f"-> {args.out}" + (f", {args.patients}" if args.patients else "")
    )
    return 0

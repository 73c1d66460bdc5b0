"""`vpop report DIR [--out FILE] [--sample N] [--seed S]`: one self-contained HTML page."""

from __future__ import annotations

import argparse
import shlex


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="write a self-contained HTML report (plots embedded) of a simulation, sweep, comparison, "
                       "escalation or fit",
        description="Read the outputs of vpop simulate, sweep, compare, escalate or fit in DIR (and its immediate "
                    "subfolders) and write one HTML file with every plot embedded: it opens offline, without a "
                    "server. docs/trial-design.md, 'The report', describes each section.")
    parser.add_argument("dir", help="a folder written by a vpop command (its --out), or a folder of such folders")
    parser.add_argument("--out", default=None, help="HTML file to write (default: DIR/report.html)")
    parser.add_argument("--sample", type=int, default=30, help="patients in the swimmer plot (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the swimmer plot's sample (default 0)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vpop.report.build import build_report

    parts = ["vpop", "report", args.dir] + (["--out", args.out] if args.out else [])
    command = " ".join(shlex.quote(str(a)) for a in parts + ["--sample", args.sample, "--seed", args.seed])
    report = build_report(args.dir, args.out, sample=args.sample, seed=args.seed, command=command)
    kinds = ", ".join(f"{s.kind} ({s.label})" for s in report.sources)
    print(f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB, {report.n_figures} figures): {kinds}")
    return 0

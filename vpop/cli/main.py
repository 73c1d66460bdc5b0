"""The `vpop` command line: one sub-command per task.

Each sub-command lives next to the code it drives and exposes
`register(subparsers)`, which adds its parser and sets `func`. This module
only dispatches and turns a `UserError` into a message and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from vpop.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from vpop import __version__
    from vpop.cli import grade as grade_cli
    from vpop.cli import simulate as simulate_cli
    from vpop.cli import fit as fit_cli
    from vpop.cli import trials as trial_cli
    from vpop.cli import population as population_cli
    from vpop.cli import report as report_cli
    from vpop.cli import presets as presets_cli
    parser = argparse.ArgumentParser(
        prog="vpop",
        description="Virtual patient cohorts for CAR T-cell toxicities (CRS, ICANS).",
    )
    parser.add_argument("--version", action="version", version=f"vpop {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    simulate_cli.register(subparsers)
    grade_cli.register(subparsers)
    fit_cli.register(subparsers)
    trial_cli.register(subparsers)
    population_cli.register(subparsers)
    report_cli.register(subparsers)
    presets_cli.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"vpop {args.command}: error: {err}", file=sys.stderr)
        return err.exit_status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

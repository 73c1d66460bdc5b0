"""The `vpop` command line: one sub-command per task.

Each sub-command lives next to the code it drives and exposes
`register(subparsers)`, which adds its parser and sets `func`. This module
only dispatches and turns a `UserError` into a message and exit status 2.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys

from vpop.errors import UserError


class _Formatter(argparse.HelpFormatter):
    """Help that shows every flag's default (unless the help text already says it)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (action.option_strings and default is not None and default is not False and default != argparse.SUPPRESS
                and "default" not in text and "%(default)" not in text):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """Every `vpop` parser and sub-parser: defaults shown in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def _subcommand_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (innermost) sub-command parser that `args` were parsed by."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001
        if not subs or getattr(args, subs[0].dest, None) is None:
            return parser
        parser = subs[0].choices[getattr(args, subs[0].dest)]


def build_parser() -> argparse.ArgumentParser:
    from vpop import __version__
    from vpop.cli import grade as grade_cli
    from vpop.cli import simulate as simulate_cli
    from vpop.cli import fit as fit_cli
    from vpop.cli import trials as trial_cli
    from vpop.cli import population as population_cli
    from vpop.cli import report as report_cli
    from vpop.cli import presets as presets_cli
    from vpop.cli import validate as validate_cli
    parser = _Parser(
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
    validate_cli.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # name the sub-command and show its usage, not the top-level one
        _subcommand_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"vpop {args.command}: error: {err}", file=sys.stderr)
        return err.exit_status


def entry() -> None:
    """The `vpop` console script and `python -m vpop`: `main()`, then exit without the interpreter's teardown.

    Tearing down JAX's runtime and every imported module takes about 0.3-0.4 s after
    a command has finished (a tenth of a 10,000-patient `vpop simulate`, issue 14
    target 2). Once a command has returned, its files are closed and its threads
    joined, so the exit runs the `atexit` handlers (JAX's own, a distributed run's
    shutdown, logging's flush), flushes the standard streams and leaves with
    `os._exit`. An exception (a bug's traceback) takes the ordinary exit.
    """
    code = main()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()

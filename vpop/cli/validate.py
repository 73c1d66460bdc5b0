"""`vpop validate`: the validation scorecard (vpop.trials.validation) written to docs/validation.md.

Every row of the shipped published-cohort table is simulated under its trial's own product preset,
management and grading scale, and every fact of issue 12 is checked on paired virtual patients.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from vpop.errors import UserError

QUICK_N = 24  # patients per arm of --quick: a small deterministic run, for tests and a first look


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "validate", help="score every published cohort row and every counterfactual fact (docs/validation.md)",
        description="Simulate every row of the published-cohort table (python -m vpop.data) under its trial's "
                    "preset, management and grading scale, and every fact of issue 12 on paired virtual "
                    "patients; write the scorecard as Markdown.")
    parser.add_argument("--n", type=int, default=2000, help="virtual patients per arm")
    parser.add_argument("--seed", type=int, default=1, help="seed of the virtual patients (the same in every arm)")
    parser.add_argument("--out", default="docs/validation.md", help="the Markdown scorecard to write")
    parser.add_argument("--quick", action="store_true",
                        help=f"a small deterministic run ({QUICK_N} patients per arm; overrides --n)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vpop.trials import validation

    n = QUICK_N if args.quick else args.n
    if n < 2:
        raise UserError(f"--n: got {n}; allowed: a whole number of patients per arm >= 2")
    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise UserError(f"--out: {out} is a folder; give a file name (e.g. docs/validation.md)")
    if not out.parent.is_dir():
        raise UserError(f"--out: the folder {out.parent} does not exist")
    say = None if args.quiet else (lambda what: print(f"  simulating {what}", file=sys.stderr, flush=True))
    card = validation.validate(n=n, seed=args.seed, progress=say)
    command = "vpop validate " + " ".join(shlex.quote(a) for a in (
        ["--quick"] if args.quick else ["--n", str(n)]) + ["--seed", str(args.seed)])
    out.write_text(validation.markdown(card, command))
    print(card.summary())
    print(f"wrote {out}")
    return 0

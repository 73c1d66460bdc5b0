"""Trial-design sub-commands: `vpop sweep`, `vpop compare`, `vpop escalate`.

    vpop sweep SWEEP.yaml --out DIR
    vpop compare CONFIG --policies asco2021,prophylactic_dex,early_toci --n 2000 --out DIR
    vpop escalate CONFIG --design boin --doses 0.5e6,1e6,2e6,4e6 --trials 2000 --out DIR
    vpop escalate --p-true 0.05,0.12,0.3,0.5 --design crm --out DIR   (no simulation)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from vpop.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="run a scenario sweep (resumable) into a tidy table",
                              description="Run every cell of a sweep file; cells already written are skipped.")
    p.add_argument("sweep", help="sweep YAML (see docs/trial-design.md)")
    p.add_argument("--out", required=True, help="output folder (cells/, sweep.csv)")
    p.add_argument("--n", type=int, default=None, help="patients per cell (overrides the sweep's cohort.n)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run_sweep_cmd)

    p = subparsers.add_parser("compare", help="paired comparison of management policies on the same patients",
                              description="Simulate the same virtual patients under each policy; rate differences "
                              "against the first policy with paired 95%% intervals and the NNT.")
    p.add_argument("config", nargs="?", default=None, help="config YAML (default: the shipped default.yaml)")
    p.add_argument("--policies", required=True,
                   help="comma-separated preset names, or a YAML file of policies (a list of preset names or "
                        "mappings: {name, preset, field: value}); the first is the reference")
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", default=None, help="output folder (rates.csv, differences.csv)")
    p.set_defaults(func=run_compare_cmd)

    p = subparsers.add_parser("escalate", help="simulate dose-escalation trials (3+3, BOIN, CRM) on virtual patients",
                              description="Operating characteristics of a dose-finding design; DLTs come from "
                              "virtual patients simulated at each dose (or from --p-true).")
    p.add_argument("config", nargs="?", default=None, help="config YAML (default: the shipped default.yaml)")
    p.add_argument("--design", default="boin", help="boin, 3+3 or crm (default boin)")
    p.add_argument("--doses", default=None, help="comma-separated doses in the config's units (cells/kg or cells)")
    p.add_argument("--p-true", default=None, help="comma-separated true DLT rates instead of simulating")
    p.add_argument("--target", type=float, default=0.3, help="target DLT rate (BOIN, CRM; default 0.3)")
    p.add_argument("--trials", type=int, default=2000)
    p.add_argument("--cohorts", type=int, default=10, help="maximum number of cohorts (BOIN, CRM)")
    p.add_argument("--cohort-size", type=int, default=3)
    p.add_argument("--pool", type=int, default=1000, help="virtual patients simulated per dose (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the trial simulation")
    p.add_argument("--dlt-crs-grade", type=int, default=3, help="CRS grade that is a DLT (0: CRS is not a DLT)")
    p.add_argument("--dlt-icans-grade", type=int, default=3, help="ICANS grade that is a DLT (0: not a DLT)")
    p.add_argument("--scale", default="astct", help="grading scale of the DLT definition (default astct)")
    p.add_argument("--window", type=float, default=28.0, help="DLT window in days (default 28)")
    p.add_argument("--out", default=None, help="output folder (operating_characteristics.csv, summary.json)")
    p.set_defaults(func=run_escalate_cmd)


def _floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag}: got {text!r}; allowed: comma-separated numbers") from None
    if not values:
        raise UserError(f"{flag}: give at least one number")
    return values


def _positive(value, flag):
    if value is not None and value < 1:
        raise UserError(f"{flag}: got {value}; allowed: an integer >= 1")


def run_sweep_cmd(args: argparse.Namespace) -> int:
    from vpop.trials.sweep import run_sweep

    _positive(args.n, "--n")
    say = None if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    res = run_sweep(args.sweep, args.out, n=args.n, progress=say)
    print(f"sweep: {res.ran} cells run, {res.skipped} skipped (already done); {len(res.table)} rows in "
          f"{res.out / 'sweep.csv'}")
    return 0


def run_compare_cmd(args: argparse.Namespace) -> int:
    from vpop.trials.compare import compare_policies, load_policies_file
    from vpop.run.config import load_config

    _positive(args.n, "--n")
    config = load_config(args.config)
    if args.policies.endswith((".yaml", ".yml")):
        policies = load_policies_file(args.policies)
    else:
        policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    cmp = compare_policies(config, policies, n=args.n, seed=args.seed)
    cols = ["policy", "endpoint", "rate_reference", "rate_policy", "difference", "ci_low", "ci_high", "nnt"]
    with _pd_options():
        print(f"paired comparison, {cmp.n} patients, reference {cmp.reference}")
        print(cmp.differences[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        _csv(cmp.rates, out / "rates.csv")
        _csv(cmp.differences, out / "differences.csv")
        record = {"config": config.source, "n": cmp.n, "seed": config.seed if args.seed is None else args.seed,
                  "reference": cmp.reference,
                  "policies": {name: _policy_record(p) for name, p in cmp.policies.items()}}
        (out / "comparison.yaml").write_text(yaml.safe_dump(record, sort_keys=False))
    return 0


def _policy_record(p) -> dict:
    from dataclasses import asdict

    d = asdict(p)
    d["prophylactic_dex_days"] = list(d["prophylactic_dex_days"])
    return d


def run_escalate_cmd(args: argparse.Namespace) -> int:
    from vpop.trials import designs
    _positive(args.trials, "--trials")
    _positive(args.cohorts, "--cohorts")
    _positive(args.cohort_size, "--cohort-size")
    _positive(args.pool, "--pool")
    if not 0 < args.target < 1:
        raise UserError(f"--target: got {args.target}; allowed: a number between 0 and 1")
    if (args.doses is None) == (args.p_true is None):
        raise UserError("give exactly one of --doses (simulate virtual patients) or --p-true (given DLT rates)")
    if args.p_true is not None:
        p = _floats(args.p_true, "--p-true")
        if not all(0 <= x <= 1 for x in p):
            raise UserError(f"--p-true: got {args.p_true!r}; allowed: rates between 0 and 1")
        pool = designs.PatientPool.from_probabilities(p, n_pool=100_000, seed=args.seed)
    else:
        from vpop.run.config import load_config

        config = load_config(args.config)
        doses = _floats(args.doses, "--doses")
        definition = designs.DLTDefinition(
            crs_grade=args.dlt_crs_grade or None, icans_grade=args.dlt_icans_grade or None,
            crs_scale=args.scale, icans_scale=args.scale, window_days=args.window)
        pool = designs.dose_pools(config, doses, definition, n=args.pool,
                                  progress=lambda m: print(m, file=sys.stderr))
    res = designs.run_design(args.design, pool, target=args.target, n_trials=args.trials, seed=args.seed,
                             n_cohorts=args.cohorts, cohort_size=args.cohort_size)
    oc = res.operating_characteristics()
    summary = res.summary()
    summary["dlt"] = pool.dlt_description or "given rates (--p-true)"
    with _pd_options():
        print(f"{res.design}: {res.n_trials} simulated trials; DLT = {summary['dlt']}")
        print(oc.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print(f"no MTD (stopped early): {summary['p_no_mtd']:.3f}; mean patients {summary['mean_patients']:.1f}; "
              f"mean DLTs {summary['mean_dlts']:.2f}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        _csv(oc, out / "operating_characteristics.csv")
        tmp = out / f".summary.json.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, out / "summary.json")
    return 0


def _csv(df, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


class _pd_options:
    def __enter__(self):
        import pandas as pd

        self._ctx = pd.option_context("display.width", 160, "display.max_columns", 20)
        self._ctx.__enter__()

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

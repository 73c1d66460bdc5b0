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
    p.add_argument("--n", type=int, default=None, help="patients per cell (default: the sweep's cohort.n)")
    p.add_argument("--quiet", action="store_true", help="no progress lines (default: one line per cell)")
    p.set_defaults(func=run_sweep_cmd)

    p = subparsers.add_parser("compare", help="paired comparison of management policies on the same patients",
                              description="Simulate the same virtual patients under each policy; rate differences "
                              "against the first policy with paired 95% intervals (Newcombe) and, where the "
                              "interval excludes no difference, the number needed to treat or harm.")
    p.add_argument("config", nargs="?", default=None,
                   help="config YAML or shipped preset name (default: the shipped default.yaml)")
    p.add_argument("--policies", required=True,
                   help="comma-separated preset names, or a YAML file of policies (a list of preset names or "
                        "mappings: {name, preset, field: value}); the first is the reference")
    p.add_argument("--n", type=int, default=None, help="patients (default: the config's cohort.n)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the config's cohort.seed)")
    p.add_argument("--out", default=None,
                   help="output folder for rates.csv, differences.csv, comparison.yaml (default: print only)")
    p.add_argument("--posterior", default=None,
                   help="carry parameter uncertainty: `calibration` (the shipped joint calibration of the config's "
                        "trial) or a `vpop fit --out` directory / posterior.nc")
    p.add_argument("--draws", type=int, default=20, help="posterior draws (with --posterior)")
    p.add_argument("--draws-n", type=int, default=500, help="fresh patients per posterior draw (with --posterior)")
    p.set_defaults(func=run_compare_cmd)

    p = subparsers.add_parser("escalate", help="simulate dose-escalation trials (3+3, BOIN, CRM) on virtual patients",
                              description="Operating characteristics of a dose-finding design; DLTs come from "
                              "virtual patients simulated at each dose (or from --p-true).")
    p.add_argument("config", nargs="?", default=None,
                   help="config YAML or shipped preset name, with --doses (default: the shipped default.yaml)")
    p.add_argument("--design", default="boin", help="boin, 3+3 or crm")
    p.add_argument("--doses", default=None,
                   help="comma-separated doses in the config's units: CAR-T cells/kg (product.dose_per_kg) or "
                        "cells (product.flat_dose), e.g. 5e5,1e6,2e6 (default: none; give this or --p-true)")
    p.add_argument("--p-true", default=None,
                   help="comma-separated true DLT rates (0-1) instead of simulating, e.g. 0.05,0.12,0.3 "
                        "(default: none; give this or --doses)")
    p.add_argument("--target", type=float, default=0.3, help="target DLT rate (BOIN, CRM)")
    p.add_argument("--trials", type=int, default=2000, help="simulated trials")
    p.add_argument("--cohorts", type=int, default=10, help="maximum number of cohorts (BOIN, CRM)")
    p.add_argument("--cohort-size", type=int, default=3, help="patients per cohort (BOIN, CRM; 3+3 uses 3)")
    p.add_argument("--pool", type=int, default=1000, help="virtual patients simulated per dose")
    p.add_argument("--seed", type=int, default=0, help="seed of the trial simulation")
    p.add_argument("--dlt-crs-grade", type=int, default=3, help="CRS grade that is a DLT (0: CRS is not a DLT)")
    p.add_argument("--dlt-icans-grade", type=int, default=3, help="ICANS grade that is a DLT (0: not a DLT)")
    p.add_argument("--scale", default="astct", help="grading scale of the DLT definition")
    p.add_argument("--window", type=float, default=28.0, help="DLT window in days")
    p.add_argument("--out", default=None,
                   help="output folder for operating_characteristics.csv, summary.json (default: print only)")
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
    from vpop.engine import compile_cache
    from vpop.trials.sweep import run_sweep

    _positive(args.n, "--n")
    compile_cache.enable()  # as vpop simulate: a second sweep loads the engine instead of compiling it
    say = None if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    res = run_sweep(args.sweep, args.out, n=args.n, progress=say)
    print(f"sweep: {res.ran} cells run, {res.skipped} skipped (already done); {len(res.table)} rows in "
          f"{res.out / 'sweep.csv'}")
    return 0


def run_compare_cmd(args: argparse.Namespace) -> int:
    from vpop.engine import compile_cache
    from vpop.trials.compare import compare_policies, load_policies_file
    from vpop.run.config import load_config

    _positive(args.n, "--n")
    compile_cache.enable()
    config = load_config(args.config)
    if args.policies.endswith((".yaml", ".yml")):
        policies = load_policies_file(args.policies)
    else:
        policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a folder")
    posterior = None
    if args.posterior is not None:
        for name in ("draws", "draws_n"):
            if getattr(args, name) < 2:
                raise UserError(f"--{name.replace('_', '-')}: got {getattr(args, name)}; allowed: an integer >= 2")
        if args.posterior == "calibration":
            from vpop.trials.joint_calibration import calibration_draws

            draws = calibration_draws(config)
        else:
            from vpop.fitting.posterior import load_theta_draws

            draws = load_theta_draws(args.posterior)
        posterior = {"draws": draws, "k": args.draws, "n": args.draws_n}
    cmp = compare_policies(config, policies, n=args.n, seed=args.seed, posterior=posterior)
    with _pd_options():
        print(f"paired comparison, {cmp.n:,} patients, reference {cmp.reference}; rates in percent, differences in "
              "percentage points (policy - reference) with paired 95% intervals"
              + (f"; the last column adds the uncertainty of {cmp.posterior_draws} posterior draws of the parameters "
                 f"({args.draws_n} fresh patients each)" if cmp.posterior_draws else ""))
        print(differences_table(cmp.differences).to_string(index=False))
        print("NNT: patients managed with the policy instead of the reference to prevent one event (NNH: to cause "
              "one); shown only when the 95% interval of the difference excludes 0.")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _csv(cmp.rates, out / "rates.csv")
        _csv(cmp.differences, out / "differences.csv")
        record = {"config": config.source, "n": cmp.n, "seed": config.seed if args.seed is None else args.seed,
                  "reference": cmp.reference,
                  "policies": {name: policy_record(p) for name, p in cmp.policies.items()}}
        if posterior is not None:
            record["posterior"] = {"source": args.posterior, "draws": cmp.posterior_draws, "n": args.draws_n}
        head = ("# Written by `vpop compare`. A null trigger is off (no patient reaches it); a null day or\n"
                "# dose limit is not set.\n")
        (out / "comparison.yaml").write_text(head + yaml.safe_dump(record, sort_keys=False))
    return 0


def differences_table(diff):
    """The differences as printed: percentages, percentage points, NNT only where it means something."""
    import pandas as pd

    from vpop.cli.format import pct, pct_points

    rows = []
    for r in diff.itertuples(index=False):
        rows.append({
            "policy": r.policy, "endpoint": r.endpoint,
            "reference": pct(r.rate_reference), "policy rate": pct(r.rate_policy),
            "difference (95% CI)": f"{pct_points(r.difference)} ({pct_points(r.ci_low)} to {pct_points(r.ci_high)})",
            "NNT or NNH (95% CI)": _nnt(r),
        })
        if hasattr(r, "post_difference"):  # with --posterior: the interval that carries parameter uncertainty
            rows[-1]["with parameter uncertainty (95%)"] = (
                f"{pct_points(r.post_difference)} ({pct_points(r.post_low)} to {pct_points(r.post_high)})")
    return pd.DataFrame(rows)


def _nnt(r) -> str:
    """'NNT 12 (8 to 25)' when the interval excludes 0 (rounded up, as NNTs are); '' otherwise."""
    import math

    if not (r.ci_low > 0 or r.ci_high < 0) or not math.isfinite(r.nnt):
        return ""
    kind = "NNT" if r.nnt > 0 else "NNH"
    lo, hi = sorted((abs(r.nnt_low), abs(r.nnt_high)))
    return f"{kind} {math.ceil(abs(r.nnt))} ({math.ceil(lo)} to {math.ceil(hi)})"


def policy_record(p) -> dict:
    """A policy's fields for comparison.yaml: null, not the internal sentinels, where a rule is off."""
    from dataclasses import asdict

    from vpop.policy.settings import NEVER, OFF
    from vpop.policy.settings import OTHER_TRIGGERS_OFF

    d = asdict(p)
    d["prophylactic_dex_days"] = list(d["prophylactic_dex_days"])
    for key, v in d.items():
        if isinstance(v, float) and (v >= 1e9 or (key.endswith(("grade", "_doses")) and v >= NEVER) or v >= OFF
                                     or OTHER_TRIGGERS_OFF.get(key) == v):
            d[key] = None  # NEVER (99) grades and dose counts, OFF (1e30) biomarker levels, 1e9 "no limit"
        elif key == "anakinra_prophylaxis_until_day" and v < 0:
            d[key] = None  # -1: no prophylaxis
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
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a folder")
    given = None
    if args.p_true is not None:
        given = _floats(args.p_true, "--p-true")
        if not all(0 <= x <= 1 for x in given):
            raise UserError(f"--p-true: got {args.p_true}; allowed: rates between 0 and 1")
        pool = designs.PatientPool.from_probabilities(given, n_pool=100_000, seed=args.seed)
        unit = ""
    else:
        from vpop.cli.format import cells
        from vpop.run.config import load_config

        config = load_config(args.config)
        doses = _floats(args.doses, "--doses")
        unit = "cells/kg" if config.population.dose_per_kg is not None else "cells"
        definition = designs.DLTDefinition(
            crs_grade=args.dlt_crs_grade or None, icans_grade=args.dlt_icans_grade or None,
            crs_scale=args.scale, icans_scale=args.scale, window_days=args.window)
        pool = designs.dose_pools(config, doses, definition, n=args.pool, labels=[cells(d) for d in doses],
                                  progress=lambda m: print(m, file=sys.stderr))
    res = designs.run_design(args.design, pool, target=args.target, n_trials=args.trials, seed=args.seed,
                             n_cohorts=args.cohorts, cohort_size=args.cohort_size)
    oc = res.operating_characteristics()
    summary = res.summary()
    summary["dlt"] = pool.dlt_description or "given rates (--p-true)"
    if given is not None:  # the rates as given, not the pool's sampled column means
        oc["true_dlt_rate"] = given
        oc["true_ci_low"] = oc["true_ci_high"] = float("nan")
        summary["p_true"] = given
    else:
        summary["dose_unit"] = unit
    with _pd_options():
        print(f"{res.design}: {res.n_trials:,} simulated trials; DLT = {summary['dlt']}")
        if given is not None:
            from vpop.cli.format import plain

            print(f"true DLT rates given (--p-true): {', '.join(plain(x) for x in given)}")
        print(escalation_table(oc, unit, given is not None).to_string(index=False))
        print(f"no MTD (stopped early): {100 * summary['p_no_mtd']:.1f}%; mean patients {summary['mean_patients']:.1f}; "
              f"mean DLTs {summary['mean_dlts']:.2f}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _csv(oc, out / "operating_characteristics.csv")
        tmp = out / f".summary.json.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, out / "summary.json")
    return 0


def escalation_table(oc, unit: str, given: bool):
    """Operating characteristics as printed: doses with their unit, rates in percent."""
    import pandas as pd

    from vpop.cli.format import pct, plain

    dose_col = f"dose ({unit})" if unit else "dose level"
    rows = []
    for r in oc.itertuples(index=False):
        true = (plain(r.true_dlt_rate) if given
                else f"{pct(r.true_dlt_rate)} ({pct(r.true_ci_low)} to {pct(r.true_ci_high)})")
        rows.append({dose_col: r.dose if unit else r.level, "level": r.level,
                     "true DLT rate" + ("" if given else " (95% CI)"): true,
                     "selected as MTD": pct(r.p_select), "mean patients": f"{r.mean_patients:.1f}",
                     "share of patients": pct(r.pct_patients), "mean DLTs": f"{r.mean_dlts:.2f}"})
    df = pd.DataFrame(rows)
    return df.drop(columns="level") if not unit else df


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

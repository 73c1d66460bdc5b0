"""`vpop population select CONFIG --targets TARGETS.yaml --n-plausible N --out DIR`.

Simulates N plausible patients from CONFIG, selects a virtual population
matching the targets (Allen, Rieger & Musante 2016; `vpop.trials.selection`) and
writes into DIR:

* `selected_patients.csv`: the selected patients as a patient table
  (patient_id, covariates, sex, dose, eta_* random effects, param_* for
  information), usable as `population.patients_file` (same seed: same patients);
* `selected_outputs.csv`: the selected patients' simulated outputs;
* `prevalence_weights.csv`: patient_id, inclusion ratio p and weight of every
  plausible patient (the weighting alternative);
* `selection_report.yaml`: KS per target (selected, mean over draws, plausible
  unselected, weighted), yield, scale factor, effective sample size.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from vpop.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "population",
        help="virtual populations: select plausible patients to match target distributions",
        description="Virtual-population tools.",
    )
    sub = parser.add_subparsers(dest="population_command", required=True)
    sel = sub.add_parser(
        "select",
        help="select a virtual population matching target distributions (Allen, Rieger & Musante 2016)",
        description="Simulate plausible patients from CONFIG and select those matching TARGETS "
        "(docs/populations.md describes the targets file).",
    )
    sel.add_argument("config", help="config YAML (the plausible-patient population)")
    sel.add_argument("--targets", required=True, help="targets YAML")
    sel.add_argument("--n-plausible", type=int, default=10000, help="plausible patients to simulate (default 10000)")
    sel.add_argument("--seed", type=int, default=None, help="random seed (overrides cohort.seed)")
    sel.add_argument("--out", required=True, help="output folder")
    sel.add_argument("--quiet", action="store_true", help="print nothing but errors")
    sel.set_defaults(func=run_select)


def run_select(args: argparse.Namespace) -> int:
    from vpop.run.config import load_config
    from vpop.trials.selection import load_targets, patient_outputs, select_population

    if args.n_plausible < 2:
        raise UserError(f"--n-plausible: got {args.n_plausible}; allowed: an integer >= 2")
    if args.seed is not None and args.seed < 0:
        raise UserError(f"--seed: got {args.seed}; allowed: an integer >= 0")
    config = load_config(args.config)
    targets = load_targets(args.targets, allowed_outputs=patient_outputs(config))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a folder")
    result = select_population(config, targets, args.n_plausible, args.seed)

    out.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(out / "selected_patients.csv", index=False)
    ok = result.plausible_ok
    plausible = result.plausible[ok].reset_index(drop=True)
    plausible[result.selection.selected].to_csv(out / "selected_outputs.csv", index=False)
    weights = plausible[["patient_id"]].copy()
    weights["inclusion_ratio"] = result.selection.p
    weights["weight"] = result.weighting.weights
    weights["selected"] = result.selection.selected
    weights.to_csv(out / "prevalence_weights.csv", index=False)
    report = result.report()
    report["config"] = str(args.config)
    report["targets"] = {t.output: t.describe() for t in targets.targets}
    report["options"] = dict(vars(targets.options))
    (out / "selection_report.yaml").write_text(yaml.safe_dump(report, sort_keys=False))
    if not args.quiet:
        _print(report, out)
    return 0


def _print(report: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    s, w = report["selection"], report["prevalence_weighting"]
    table = Table(title=f"vpop population select — {s['n_selected']:,} of {s['n_plausible']:,} plausible patients "
                        f"(yield {100 * s['yield']:.1f}%)")
    for col in ("target", "distribution", "KS selected", "KS plausible", "KS weighted"):
        table.add_column(col, justify="left" if col in ("target", "distribution") else "right")
    for name, desc in report["targets"].items():
        table.add_row(name, desc, f"{s['ks_selected'][name]:.3f}", f"{s['ks_plausible_unselected'][name]:.3f}",
                      f"{w['ks_weighted'][name]:.3f}")
    console = Console()
    console.print(table)
    console.print(f"scale factor {s['scale_factor']:.3g} (max {s['scale_factor_max']:.3g}); "
                  f"prevalence weighting ESS {w['effective_sample_size']:.1f}; wrote {out}/")

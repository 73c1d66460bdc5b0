"""`vpop presets`: the shipped product presets and management policies, one line each.

A product preset is a config shipped with vpop (`vpop simulate axicel`,
`vpop.load_config("axicel")` from any folder); the trial it is modelled on and
the grading scales that trial reported with come from its `trial:` key and the
published-cohort table. A management policy is a `policy.preset` name.
"""

from __future__ import annotations

import argparse

from vpop.cli.format import cells

SCALE_NAMES = {"astct": "ASTCT", "lee2014": "Lee 2014", "penn": "Penn", "mskcc": "MSKCC", "cartox": "CARTOX",
               "ctcae5": "CTCAE v5", "ctcae_neuro": "CTCAE", "cartox_neuro": "CARTOX", "astct_neuro": "ASTCT"}

# What each management preset (vpop.policy.rules.PRESETS) does, in a clinician's words.
POLICY_LINES = {
    "asco2021": "ASCO 2021 guideline (Santomasso 2021), the default: tocilizumab at CRS grade >= 2, "
                "dexamethasone at CRS >= 3 or ICANS >= 2, methylprednisolone at grade 4 (ASTCT grades)",
    "none": "no tocilizumab and no corticosteroids (supportive care only): the untreated course",
    "prophylactic_dex": "asco2021 plus oral dexamethasone 10 mg on days 0, 1 and 2 (ZUMA-1 cohort 6)",
    "early_toci": "asco2021 with tocilizumab from CRS grade 1",
    "anakinra_prophylaxis": "asco2021 plus anakinra 100 mg every 12 h from day 0 to day 5",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "presets", help="list the shipped product presets and management policies",
        description="List the product presets (`vpop simulate NAME`) with the trial each is modelled on and "
                    "that trial's grading scales, and the management policies (`policy: NAME` in a config, "
                    "`vpop compare --policies`).")
    parser.set_defaults(func=run)


def product_lines() -> list[str]:
    from vpop.data import trial_scales
    from vpop.run.config import load_config, preset_names

    lines = []
    for name in preset_names():
        config = load_config(name)
        p = config.product
        dose = (f"{cells(p['dose_per_kg'])} cells/kg" if p.get("dose_per_kg") is not None
                else f"{cells(p['flat_dose'])} cells")
        what = f"{p.get('target', '?')}/{p.get('costimulation', '?')} {p.get('name', '')}, {config.disease}, {dose}"
        if name == "default":
            what = f"the default run of `vpop simulate`: {what}"
        if config.trial:
            s = trial_scales(config.trial)
            scales = ", ".join(f"{label} {SCALE_NAMES.get(s[k], s[k])}"
                               for k, label in (("crs", "CRS"), ("neuro", "neurotoxicity")) if k in s)
            trial = f"trial {config.trial} (graded {scales})" if scales else f"trial {config.trial}"
        else:
            trial = "no trial"
        lines.append((name, what, trial))
    width = max(len(n) for n, _, _ in lines)
    return [f"  {n:<{width}}  {w}; {t}" for n, w, t in lines]


def policy_lines() -> list[str]:
    from vpop.policy.settings import PRESETS

    width = max(len(n) for n in PRESETS)
    from vpop.policy.settings import DESCRIPTIONS

    return [f"  {n:<{width}}  {POLICY_LINES.get(n, DESCRIPTIONS.get(n, 'management preset ' + n))}" for n in PRESETS]


def run(args: argparse.Namespace) -> int:
    products, policies = product_lines(), policy_lines()
    print("Product presets (vpop simulate NAME; vpop.load_config(\"NAME\")):")
    print("\n".join(products))
    print("Management policies (policy: NAME in a config; vpop compare --policies NAME,NAME):")
    print("\n".join(policies))
    return 0

"""Derivative-free search of the default preset's calibrated constants.

A (1+1) evolution strategy over a handful of model constants (log scale, kept
inside their plausible ranges), scoring simulated cohort rates against the
axi-cel targets of ../shared/data/published_cohorts.csv (ZUMA-1: CRS under
Lee 2014, neurologic events under CTCAE) and treatment use. It prints every
accepted step; the best set was written into vpop/parameters.py and
configs/axicel.yaml by hand. The NumPyro calibration of the fitting issue
(scripts/calibrate.py) supersedes it where available.

    python scripts/search_calibration.py --evals 60 --n 600
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from vpop.run.cohort import simulate
from vpop.run.config import _read_yaml, config_from_dict, shipped_config
from vpop.model.parameters import TABLE

# name: (kind, low, high) where kind is "param" or "omega"
KNOBS = {
    "leak_rate": ("param", 0.3, 1.0),
    "fio2_per_leak": ("param", 1.0, 2.5),
    "leak_hypoxia_threshold": ("param", 0.1, 0.3),
    "map_per_leak": ("param", 50.0, 100.0),
    "neuro_injury_rate": ("param", 0.4, 1.5),
    "glia_activation_rate": ("param", 0.2, 0.8),
    "ice_first_loss": ("param", 0.25, 0.5),
    "ice_per_point": ("param", 0.04, 0.09),
    "tremor_threshold": ("param", 0.15, 0.45),
    "headache_csf_il6": ("param", 10.0, 80.0),
    "il6_per_myeloid": ("param", 40000.0, 200000.0),
    "endothelial_sensitivity": ("omega", 0.3, 0.9),
    "cns_sensitivity": ("omega", 0.3, 0.9),
    "cytokine_sensitivity": ("omega", 0.3, 0.9),
}

# endpoint: (target, tolerance)
TARGETS = {
    "crs_lee_any": (0.93, 0.03),
    "crs_lee_3": (0.13, 0.03),
    "neuro_ctcae_any": (0.64, 0.05),
    "neuro_ctcae_3": (0.28, 0.04),
    "crs_onset": (2.0, 0.5),
    "neuro_onset": (5.0, 1.0),
    "toci": (0.50, 0.10),
    "steroids": (0.40, 0.10),
}


def endpoints(pt):
    return {
        "crs_lee_any": (pt.crs_max_grade_lee2014 >= 1).mean(),
        "crs_lee_3": (pt.crs_max_grade_lee2014 >= 3).mean(),
        "neuro_ctcae_any": (pt.icans_max_grade_ctcae >= 1).mean(),
        "neuro_ctcae_3": (pt.icans_max_grade_ctcae >= 3).mean(),
        "crs_onset": pt.crs_onset_day_lee2014.median(),
        "neuro_onset": pt.icans_onset_day_ctcae.median(),
        "toci": (pt.tocilizumab_doses > 0).mean(),
        "steroids": pt.steroids_given.mean(),
    }


def evaluate(values, n, seed):
    data = _read_yaml(shipped_config("default.yaml"))
    params = data.setdefault("parameters", {})
    omega = data["population"]["variability"]
    for name, v in values.items():
        (params if KNOBS[name][0] == "param" else omega)[name] = float(v)
    cfg = config_from_dict(data, "search")
    pt = simulate(cfg, n=n, seed=seed, record_rows=False).patients
    e = endpoints(pt)
    loss = sum(((e[k] - t) / tol) ** 2 for k, (t, tol) in TARGETS.items() if not math.isnan(e[k]))
    return loss, e


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evals", type=int, default=60)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    data = _read_yaml(shipped_config("default.yaml"))
    current = {}
    for name, (kind, lo, hi) in KNOBS.items():
        if kind == "param":
            v = data.get("parameters", {}).get(name, TABLE[name].value)
        else:
            v = data["population"]["variability"].get(name, 0.4)
        current[name] = float(np.clip(v, lo, hi))
    best, ends = evaluate(current, args.n, args.seed)
    print(f"start loss {best:.2f} {json.dumps({k: round(v, 3) for k, v in ends.items()})}", flush=True)
    step = 0.25
    for i in range(args.evals):
        trial = dict(current)
        for name in rng.choice(list(KNOBS), size=4, replace=False):
            _, lo, hi = KNOBS[name]
            trial[name] = float(np.clip(trial[name] * math.exp(step * rng.standard_normal()), lo, hi))
        loss, e = evaluate(trial, args.n, args.seed)
        if loss < best:
            best, current, ends = loss, trial, e
            step = min(step * 1.3, 0.6)
            print(f"eval {i}: loss {best:.2f} {json.dumps({k: round(v, 3) for k, v in e.items()})}", flush=True)
            print("  values " + json.dumps({k: round(v, 4) for k, v in current.items()}), flush=True)
        else:
            step = max(step * 0.9, 0.05)
    print("best values " + json.dumps({k: round(v, 4) for k, v in current.items()}))


if __name__ == "__main__":
    main()

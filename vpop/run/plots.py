"""Quick figures of an in-memory cohort (`CohortResult.plot_grades`, `plot_biomarkers`), for notebooks.

Each returns a `matplotlib.figure.Figure` built without pyplot's global state
(a notebook shows it when it is the cell's value; `fig.savefig(...)` writes it).
The full report (`vpop report`) has more figures.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from vpop.run.endpoints import grade_column

UNITS = {"il6_pg_ml": "IL-6 (pg/mL)", "crp_mg_l": "CRP (mg/L)", "ferritin_ng_ml": "ferritin (ng/mL)",
         "temp_c": "temperature (°C)", "ifng_pg_ml": "IFN-γ (pg/mL)", "map_mmhg": "mean arterial pressure (mmHg)",
         "car_t_cells_per_ul": "CAR-T cells (/µL)", "ice_score": "ICE score (0-10)"}
LOG_SCALE = {"il6_pg_ml", "crp_mg_l", "ferritin_ng_ml", "ifng_pg_ml", "car_t_cells_per_ul"}


def grade_bars(patients: pd.DataFrame, scale: str, title: str):
    """Share of patients by worst grade (0-5), CRS and ICANS side by side."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.add_subplot()
    grades = np.arange(6)
    width = 0.4
    for i, kind in enumerate(("crs", "icans")):
        col = grade_column(kind, scale)
        share = np.bincount(patients[col].to_numpy(np.int64), minlength=6)[:6] / max(len(patients), 1)
        ax.bar(grades + (i - 0.5) * width, 100 * share, width, label=kind.upper())
    ax.set_xticks(grades, [str(g) for g in grades])
    ax.set_xlabel(f"worst grade ({scale})")
    ax.set_ylabel("patients (%)")
    ax.set_title(f"{title}: {len(patients):,} patients")
    ax.legend(frameon=False)
    return fig


def biomarker_bands(observations: pd.DataFrame, names: Sequence[str], title: str):
    """Median and interquartile band over time, one panel per column."""
    from matplotlib.figure import Figure

    from vpop.errors import UserError

    missing = [n for n in names if n not in observations.columns]
    if missing:
        raise UserError(f"plot_biomarkers: no column {', '.join(missing)} in the observation table; "
                        f"allowed: {', '.join(sorted(UNITS))} or any numeric observation column")
    fig = Figure(figsize=(4 * len(names), 3.2), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    g = observations.groupby("time_day")
    for ax, name in zip(axes, names):
        q = g[name].quantile([0.25, 0.5, 0.75]).unstack()
        t = q.index.to_numpy(float)
        ax.fill_between(t, q[0.25], q[0.75], alpha=0.3, label="interquartile range")
        ax.plot(t, q[0.5], label="median")
        if name in LOG_SCALE:
            ax.set_yscale("log")
        ax.set_xlabel("day after infusion")
        ax.set_ylabel(UNITS.get(name, name))
    axes[0].legend(frameon=False, loc="upper right")
    fig.suptitle(title)
    return fig

"""Plots of a fit (matplotlib, Agg backend): observed vs predicted, published vs simulated rates."""

from __future__ import annotations

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def observed_vs_predicted(pred, path) -> None:
    """One panel per analyte: observed (BLQ as open triangles at the LLOQ) against predicted, with 90 % bands."""
    plt = _plt()
    analytes = list(dict.fromkeys(pred["analyte"]))
    fig, axes = plt.subplots(1, len(analytes), figsize=(4 * len(analytes), 4), squeeze=False)
    for ax, a in zip(axes[0], analytes):
        d = pred[pred["analyte"] == a]
        q = ~d["censored"]
        ax.errorbar(d.loc[q, "pred_median"], d.loc[q, "DV"],
                    xerr=[d.loc[q, "pred_median"] - d.loc[q, "pred_q05"], d.loc[q, "pred_q95"] - d.loc[q, "pred_median"]],
                    fmt="o", ms=3, alpha=0.5, elinewidth=0.5)
        ax.plot(d.loc[~q, "pred_median"], d.loc[~q, "DV"], "v", mfc="none", ms=5, label="below LLOQ (at LLOQ)")
        lo = max(1e-3, float(np.nanmin(d[["DV", "pred_q05"]].to_numpy())))
        hi = float(np.nanmax(d[["DV", "pred_q95"]].to_numpy()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xscale("log"), ax.set_yscale("log")
        ax.set_xlabel("predicted (posterior median, 90% band)"), ax.set_ylabel("observed"), ax.set_title(a)
        if (~q).any():
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def published_vs_simulated(rates, path) -> None:
    plt = _plt()
    d = rates[rates["unit"] == "fraction"]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.errorbar(d["published"], d["simulated_median"], yerr=[d["simulated_median"] - d["low"], d["high"] - d["simulated_median"]],
                fmt="o")
    for _, r in d.iterrows():
        ax.annotate(f"{r['endpoint']} ({r['scale']})", (r["published"], r["simulated_median"]), fontsize=6)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("published rate"), ax.set_ylabel("simulated rate (posterior predictive, 90%)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

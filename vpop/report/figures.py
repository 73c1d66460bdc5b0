"""Figures of the report: matplotlib `Figure`s built from DataFrames.

Pure functions: each takes tables and returns a `matplotlib.figure.Figure`
(object-oriented API, no pyplot state, rendered by the Agg canvas when the
page encodes it). Nothing here reads or writes files.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

WIDTH = 9.0  # inches; at DPI 90 an 810-pixel image, readable in a ~1000-pixel column
GRADE_COLORS = ("#e6e6e6", "#fee08b", "#fdae61", "#f46d43", "#d73027", "#67001f")  # grade 0..5
GROUP_COLORS = ("#4575b4", "#e08214", "#d73027")  # max grade 0-1, 2, >=3
GROUPS = ("0–1", "2", "≥3")
SCALE_STYLES = ("-", "--", ":", "-.")
SERIES_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
                 "#1f78b4", "#b2df8a")

SCALE_NAMES = {"astct": "ASTCT", "lee2014": "Lee 2014", "penn": "Penn", "mskcc": "MSKCC", "cartox": "CARTOX",
               "ctcae5": "CTCAE v5", "ctcae": "CTCAE", "ctcae_neuro": "CTCAE"}


def scale_name(scale: str) -> str:
    return SCALE_NAMES.get(scale, scale)


@dataclass(frozen=True)
class Biomarker:
    label: str
    column: str  # observation-table column
    unit: str
    log: bool
    by: str  # "crs" or "icans": grouped by this toxicity's maximum grade


BIOMARKERS = (
    Biomarker("IL-6", "il6_pg_ml", "pg/mL", True, "crs"),
    Biomarker("CRP", "crp_mg_l", "mg/L", True, "crs"),
    Biomarker("Ferritin", "ferritin_ng_ml", "ng/mL", True, "crs"),
    Biomarker("Fibrinogen", "fibrinogen_g_l", "g/L", False, "crs"),
    Biomarker("D-dimer", "ddimer_mg_l", "mg/L", True, "crs"),
    Biomarker("Ang-2", "ang2_ng_ml", "ng/mL", True, "icans"),
    Biomarker("CSF/serum albumin ratio", "csf_serum_albumin_ratio", "", True, "icans"),
    Biomarker("NfL", "nfl_pg_ml", "pg/mL", True, "icans"),
)

COVARIATE_LABELS = {
    "age_years": "age (years)", "weight_kg": "weight (kg)", "tumor_burden": "tumour burden (1 = LBCL median)",
    "ldh": "LDH (U/L)", "platelets0": "platelets (10⁹/L)", "crp0": "CRP (mg/L)", "ferritin0": "ferritin (ng/mL)",
    "creatinine": "creatinine (mg/dL)", "ang2_0": "Ang-2 (ng/mL)", "nfl0": "NfL (pg/mL)", "easix": "EASIX",
    "m_easix": "m-EASIX", "car_dose_per_kg": "CAR-T dose (cells/kg)",
    "ld_intensity": "lymphodepletion intensity (1 = Flu 30/Cy 500 mg/m² × 3 days)",
}
# Covariates drawn in millions on figures (their plain values are six-digit or more).
COVARIATE_MILLIONS = {"car_dose_per_kg": "CAR-T dose (million cells/kg)"}


def _fig(height: float, width: float = WIDTH) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _plain(v, _pos=None) -> str:
    """A tick label a reader can say: 0.5, 300, 10,000, 2 million (never 1e+06 or 500000)."""
    return readable(v)


def readable(v) -> str:
    v = float(v)
    if not np.isfinite(v):
        return "–"
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:.3g} billion"
    if a >= 1e6:
        return f"{v / 1e6:.3g} million"
    if a >= 1e4:
        return f"{v:,.0f}"
    return f"{v:g}"


# Sweep factors and dose columns, in words with units. Values of a factor whose
# unit is a count of cells are shown in millions (axis label says so).
FACTOR_LABELS = {
    "dose": ("CAR-T dose (million cells/kg)", 1e6),
    "dose_per_kg": ("CAR-T dose (million cells/kg)", 1e6),
    "flat_dose": ("CAR-T dose (million cells)", 1e6),
    "dose_multiplier": ("dose (multiple of the config's dose)", 1.0),
    "policy": ("management policy", 1.0),
    "config": ("config", 1.0),
}
FIELD_WORDS = {"center": "typical value", "spread": "spread", "low": "lower bound", "high": "upper bound"}


def factor_label(name: str, values=None) -> tuple[str, float]:
    """(axis label in words with units, divisor for the values) of a sweep factor or table column."""
    if name in FACTOR_LABELS:
        label, div = FACTOR_LABELS[name]
        if div != 1.0 and values is not None and np.nanmax(np.abs(np.asarray(values, dtype=float))) < 1e4:
            return label.replace("million ", ""), 1.0  # already small numbers (e.g. in millions already)
        return label, div
    for suffix, word in FIELD_WORDS.items():
        if name.endswith("_" + suffix):
            base = name[: -len(suffix) - 1]
            return f"{COVARIATE_LABELS.get(base, base.replace('_', ' '))}: {word}", 1.0
    return COVARIATE_LABELS.get(name, name.replace("_", " ")), 1.0


def log_ticks(ax, axis: str = "y") -> None:
    """Plain-number labels on a log axis: 1-3-10 steps, or 1-2-5 within a narrow range (no 10^x labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    decades = np.log10(hi / lo) if lo > 0 and hi > lo else 1.0
    subs = (1.0,) if decades > 4 else (1.0, 3.0) if decades > 1.5 else (1.0, 2.0, 5.0)
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10, subs=subs))
    target.set_major_formatter(FuncFormatter(_plain))
    target.set_minor_formatter(NullFormatter())


def grade_group(grade) -> np.ndarray:
    """0 for grade 0-1, 1 for grade 2, 2 for grade >= 3."""
    g = np.asarray(grade)
    return np.where(g >= 3, 2, np.where(g >= 2, 1, 0))


# --- cohort --------------------------------------------------------------------------------------


def covariate_histograms(patients: pd.DataFrame, columns: list[str]) -> Figure:
    """One histogram per covariate (log axis for wide positive ones)."""
    cols = 4
    rows = -(-len(columns) // cols)
    fig = _fig(1.9 * rows + 0.3)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, name in zip(axes.flat, columns):
        v = patients[name].to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        title = COVARIATE_LABELS.get(name, name)
        if name in COVARIATE_MILLIONS:
            v, title = v / 1e6, COVARIATE_MILLIONS[name]
        wide = len(v) and v.min() > 0 and v.max() / v.min() > 20
        bins = np.geomspace(v.min(), v.max(), 25) if wide else 25
        ax.hist(v, bins=bins, color="#6a8caf", edgecolor="white", linewidth=0.4)
        if wide:
            ax.set_xscale("log")
            log_ticks(ax, "x")
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.xaxis.get_major_formatter().set_useOffset(False) if not wide else None
        ax.set_yticks([])
    for ax in list(axes.flat)[len(columns):]:
        ax.set_visible(False)
    return fig


# --- grades ---------------------------------------------------------------------------------------


def grade_distribution(counts: pd.DataFrame) -> Figure:
    """Stacked bars of the share of patients at each maximum grade; one bar per scale.

    `counts`: rows (toxicity, scale), columns grade 0..5 (patient counts).
    """
    kinds = [k for k in ("CRS", "ICANS") if k in counts.index.get_level_values(0)]
    n_bars = max(len(counts.loc[k]) for k in kinds)
    fig = _fig(0.9 + 0.42 * n_bars)
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    for ax, kind in zip(axes, kinds):
        sub = counts.loc[kind]
        share = sub.div(sub.sum(axis=1), axis=0) * 100
        labels = [scale_name(s) for s in sub.index]
        y = np.arange(len(sub))[::-1]
        left = np.zeros(len(sub))
        for g in range(6):
            w = share[g].to_numpy()
            ax.barh(y, w, left=left, color=GRADE_COLORS[g], edgecolor="white", linewidth=0.5,
                    label=f"grade {g}")
            for yi, li, wi in zip(y, left, w):
                if wi >= 6:
                    ax.text(li + wi / 2, yi, f"{wi:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if g >= 4 else "black")
            left += w
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of patients (maximum grade)", fontsize=8)
        ax.set_title(kind, fontsize=10)
        ax.tick_params(labelsize=7)
    fig.legend(handles=[Patch(color=GRADE_COLORS[g], label=f"grade {g}") for g in range(6)], loc="outside lower center",
               ncols=6, fontsize=8, frameon=False)
    return fig


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def merge_identical(curves: list[tuple[str, str, np.ndarray, np.ndarray]]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Curves (scale, what, times, %) that coincide exactly become one labelled line naming every scale.

    Six scales often give the same onset curve (onset is the first fever
    under all of them); drawn apart, they would hide one another.
    """
    groups: dict[tuple, list] = {}
    for scale, what, t, y in curves:
        key = (what, np.asarray(t, float).tobytes(), np.asarray(y, float).tobytes())
        groups.setdefault(key, [what, [], t, y])[1].append(scale)
    out = []
    for what, scales, t, y in groups.values():
        names = ", ".join(scales)
        same = " (identical)" if len(scales) > 1 else ""
        out.append((f"{names}{same}: {what}", t, y))
    return out


def cumulative_incidence(curves: dict[str, list[tuple[str, str, np.ndarray, np.ndarray]]], days: float) -> Figure:
    """Cumulative incidence (% of patients) of onset over time, one panel per toxicity.

    `curves`: {"CRS": [(scale, what, times, cumulative %), ...], "ICANS": [...]}.
    Identical curves are merged into one line (`merge_identical`); every line
    left has its own colour, line style and marker, and the legend (outside
    the data, right of each panel) gives each line's final value.
    """
    kinds = [k for k in ("CRS", "ICANS") if curves.get(k)]
    fig = _fig(2.7 * len(kinds) + 0.5)
    axes = fig.subplots(len(kinds), 1, squeeze=False, sharex=True)[:, 0]
    for ax, kind in zip(axes, kinds):
        for i, (label, t, y) in enumerate(merge_identical(curves[kind])):
            final = y[-1] if len(y) else 0.0
            xs, ys = np.r_[0.0, t, days], np.r_[0.0, y, final]
            ax.step(xs, ys, where="post", color=SERIES_COLORS[i % len(SERIES_COLORS)],
                    ls=SCALE_STYLES[i % len(SCALE_STYLES)], lw=1.6, marker=MARKERS[i % len(MARKERS)], ms=4.5,
                    markevery=max(1, len(xs) // 7),
                    label=textwrap.fill(f"{label} — {final:.1f}% by day {days:g}", 44, subsequent_indent="  "))
        ax.set_xlim(0, days)
        ax.set_ylim(0, 100)
        ax.set_title(f"{kind} onset", fontsize=10, loc="left")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.tick_params(labelsize=7)
        ax.set_ylabel("% of patients with onset by day", fontsize=8)
    axes[-1].set_xlabel("day after infusion", fontsize=8)
    return fig


def swimmer(obs: pd.DataFrame, order: list, crs_col: str, icans_col: str, days: float) -> Figure:
    """Per-patient grade over time in two panels, CRS (left) and ICANS (right), one lane per patient.

    The grade of an assessment colours the interval since the previous one
    (the worst signs over that interval). Markers: first tocilizumab (▼, CRS
    panel), first corticosteroid (◆, both), death (✕, both).
    """
    from matplotlib.lines import Line2D

    n = len(order)
    fig = _fig(1.2 + 0.22 * n)
    ax_crs, ax_icans = fig.subplots(1, 2, sharey=True)
    lanes = {pid: n - 1 - i for i, pid in enumerate(order)}
    by_patient = dict(tuple(obs.groupby("patient_id", sort=False)))
    for ax, col, title, drugs in ((ax_crs, crs_col, "CRS (ASTCT grade)", ("tocilizumab_given", "steroids_given")),
                                  (ax_icans, icans_col, "ICANS (ASTCT grade)", ("steroids_given",))):
        for pid in order:
            d = by_patient.get(pid)
            if d is None or d.empty:
                continue
            y = lanes[pid]
            t = d["time_day"].to_numpy(dtype=float)
            start = np.r_[t[0], t[:-1]]
            g = d[col].to_numpy(dtype=int)
            for grade in range(6):
                m = (g == grade) & (t > start)
                if m.any():
                    ax.broken_barh(list(zip(start[m], (t - start)[m])), (y - 0.32, 0.64),
                                   facecolors=GRADE_COLORS[grade], linewidth=0)
            for drug in drugs:
                marker, color = ("v", "#2166ac") if drug == "tocilizumab_given" else ("D", "#762a83")
                if drug in d.columns:
                    first = np.flatnonzero(d[drug].to_numpy(dtype=bool))
                    if len(first):
                        ax.plot(t[first[0]], y + 0.3, marker=marker, color=color, ms=4.5, ls="none", clip_on=False)
            if "death_cause" in d.columns and str(d["death_cause"].iloc[-1]) != "none":
                ax.plot(t[-1], y, marker="X", color="black", ms=7, ls="none")
        for y in range(n - 1):
            ax.axhline(y + 0.5, color="#bbbbbb", lw=0.4)
        ax.set_xlim(0, days)
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_xlabel("day after infusion", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    ax_crs.set_yticks(list(lanes.values()), [str(p) for p in lanes], fontsize=7)
    ax_crs.set_ylim(-0.6, n - 0.4)
    ax_crs.set_ylabel("patient (patient_id)", fontsize=8)
    handles = [Patch(color=GRADE_COLORS[g], label=f"grade {g}") for g in range(6)]
    handles += [Line2D([], [], marker="v", color="#2166ac", ls="none", label="first tocilizumab"),
                Line2D([], [], marker="D", color="#762a83", ls="none", ms=4, label="first corticosteroid"),
                Line2D([], [], marker="X", color="black", ls="none", label="death")]
    fig.legend(handles=handles, loc="outside lower center", ncols=5, fontsize=7, frameon=False)
    return fig


def percentile_bands(obs: pd.DataFrame, value: str, group: np.ndarray) -> dict[int, pd.DataFrame]:
    """Per grade group: time, patients, 10/25/50/75/90th percentiles of `value` at each assessment time."""
    out = {}
    frame = pd.DataFrame({"time_day": obs["time_day"].to_numpy(), "v": obs[value].to_numpy(dtype=float),
                          "group": group})
    frame = frame[np.isfinite(frame["v"])]
    for k, d in frame.groupby("group"):
        q = d.groupby("time_day")["v"].quantile([0.1, 0.25, 0.5, 0.75, 0.9]).unstack()
        q.columns = ["p10", "p25", "p50", "p75", "p90"]
        q["n"] = d.groupby("time_day")["v"].size()
        out[int(k)] = q.reset_index()
    return out


def biomarker_bands(bands: dict[str, dict[int, pd.DataFrame]], markers: list[Biomarker],
                    group_sizes: dict[str, dict[int, int]]) -> Figure:
    """One panel per biomarker: median (line), 25-75% (dark) and 10-90% (light) bands per grade group."""
    cols = 2
    rows = -(-len(markers) // cols)
    fig = _fig(2.55 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    for ax, b in zip(axes.flat, markers):
        for k, q in sorted(bands[b.column].items()):
            c = GROUP_COLORS[k]
            ax.fill_between(q["time_day"], q["p10"], q["p90"], color=c, alpha=0.13, lw=0)
            ax.fill_between(q["time_day"], q["p25"], q["p75"], color=c, alpha=0.28, lw=0)
            ax.plot(q["time_day"], q["p50"], color=c, lw=1.5)
        if b.log:
            ax.set_yscale("log")
            log_ticks(ax, "y")
        ax.set_title(f"{b.label}{' (' + b.unit + ')' if b.unit else ''} by max {b.by.upper()} grade", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="major")
    for ax in axes[-1]:
        ax.set_xlabel("day after infusion", fontsize=8)
    for ax in list(axes.flat)[len(markers):]:
        ax.set_visible(False)
    # one legend per grouping, below the panels (the colours mean the same grade groups in every panel)
    from matplotlib.lines import Line2D

    kinds = list(dict.fromkeys(b.by for b in markers))
    for kind, loc in zip(kinds, ("outside lower left", "outside lower right")):
        handles = [Line2D([], [], color=GROUP_COLORS[k], lw=2,
                          label=f"{GROUPS[k]} (n={group_sizes[kind].get(k, 0)})") for k in range(3)]
        fig.legend(handles=handles, loc=loc, ncols=3, fontsize=7, frameon=False,
                   title=f"maximum {kind.upper()} grade (panels grouped by {kind.upper()})", title_fontsize=7)
    return fig


# --- sweep ---------------------------------------------------------------------------------------------


def dose_toxicity(panels: list[tuple[str, pd.DataFrame]], x_label: str, log_x: bool, categories: list | None,
                  series: list[str]) -> Figure:
    """Rate against the x factor with 95% intervals; one panel per endpoint, one line per series.

    Each panel table has columns x, series, value, ci_low, ci_high and
    optionally post_value/post_low/post_high (posterior-predictive band).
    With `categories` the x axis is categorical (points at 0..K-1).
    """
    cols = 2
    rows = -(-len(panels) // cols)
    fig = _fig(2.9 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    width = 0.6 / max(1, len(series))
    for ax, (title, d) in zip(axes.flat, panels):
        for i, name in enumerate(series):
            s = d[d["series"] == name].sort_values("x")
            if s.empty:
                continue
            c = SERIES_COLORS[i % len(SERIES_COLORS)]
            if categories is not None:
                x = np.array([categories.index(v) for v in s["x"]], dtype=float) + (i - (len(series) - 1) / 2) * width
            else:
                x = s["x"].to_numpy(dtype=float)
            v = s["value"].to_numpy(dtype=float) * 100
            lo = s["ci_low"].to_numpy(dtype=float) * 100
            hi = s["ci_high"].to_numpy(dtype=float) * 100
            if "post_value" in s.columns and s["post_value"].notna().any():
                ax.fill_between(x, s["post_low"] * 100, s["post_high"] * 100, color=c, alpha=0.15, lw=0)
            ax.errorbar(x, v, yerr=[v - lo, hi - v], color=c, marker="o", ms=4, capsize=3, lw=1.3,
                        ls="-" if categories is None else "none", label=name)
        if categories is None:
            xs = np.unique(d["x"].to_numpy(dtype=float))
            if log_x:
                ax.set_xscale("log")
                from matplotlib.ticker import NullFormatter, NullLocator

                ax.xaxis.set_minor_locator(NullLocator())
                ax.xaxis.set_minor_formatter(NullFormatter())
            if len(xs) <= 8:
                ax.set_xticks(xs, [_plain(v) for v in xs])
            ax.margins(x=0.08)
        if categories is not None:
            ax.set_xticks(range(len(categories)), [str(c) for c in categories], fontsize=7)
            ax.set_xlim(-0.5, len(categories) - 0.5)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.set_ylabel("% of patients", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel(x_label, fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if len(series) > 1 or series[0]:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(series)), fontsize=7, frameon=False)
    return fig


# --- comparison -------------------------------------------------------------------------------------------


def policy_forest(diff: pd.DataFrame) -> Figure:
    """Paired differences (policy − reference, percentage points) with 95% intervals, one row per endpoint.

    Two panels with their own x axes: toxicity endpoints (graded CRS/ICANS, death) and treatment/support
    endpoints (drugs, vasopressors, ventilation), whose differences are often much larger.
    """
    endpoints = list(dict.fromkeys(diff["endpoint"]))
    tox = [e for e in endpoints if e.startswith(("CRS", "ICANS", "died"))]
    care = [e for e in endpoints if e not in tox]
    groups = [(title, eps) for title, eps in (("toxicity", tox), ("treatment and support", care)) if eps]
    policies = list(dict.fromkeys(diff["policy"]))
    per_row = 0.24 * max(1.0, 0.7 * len(policies))
    fig = _fig(1.3 + per_row * len(endpoints) + 0.35 * len(groups))
    axes = fig.subplots(len(groups), 1, squeeze=False, height_ratios=[len(e) for _, e in groups])[:, 0]
    step = 0.7 / max(1, len(policies))
    for ax, (title, eps) in zip(axes, groups):
        for i, pol in enumerate(policies):
            d = diff[diff["policy"] == pol].set_index("endpoint").reindex(eps)
            y = np.arange(len(eps))[::-1] + (len(policies) - 1) / 2 * step - i * step
            v = d["difference"].to_numpy(dtype=float) * 100
            lo = d["ci_low"].to_numpy(dtype=float) * 100
            hi = d["ci_high"].to_numpy(dtype=float) * 100
            ref = diff.loc[diff["policy"] == pol, "reference"].iloc[0]
            ax.errorbar(v, y, xerr=[v - lo, hi - v], fmt="o", ms=4, capsize=2.5, lw=1.2,
                        color=SERIES_COLORS[i % len(SERIES_COLORS)], label=f"{pol} − {ref}")
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(np.arange(len(eps))[::-1], eps, fontsize=7.5)
        ax.set_ylim(-0.6, len(eps) - 0.4)
        ax.set_title(title, fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=7)
    axes[-1].set_xlabel("difference in rate, percentage points (paired 95% interval); < 0: fewer events than the "
                        "reference", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(policies)), fontsize=7.5, frameon=False)
    return fig


# --- escalation -----------------------------------------------------------------------------------------------


def escalation(oc: pd.DataFrame, p_no_mtd: float | None, target: float | None) -> Figure:
    """P(select as MTD), patients treated per dose, and the true DLT rate with its 95% interval."""
    fig = _fig(3.2)
    a1, a2, a3 = fig.subplots(1, 3)
    labels = [f"{lv}\n{readable(d) if isinstance(d, (int, float, np.number)) else d}"
              for lv, d in zip(oc["level"], oc["dose"])]
    x = np.arange(len(oc))
    sel = oc["p_select"].to_numpy(dtype=float) * 100
    bars_x, bars_v, bars_l = list(x), list(sel), list(labels)
    if p_no_mtd is not None:
        bars_x.append(len(oc))
        bars_v.append(p_no_mtd * 100)
        bars_l.append("no\nMTD")
    colors = ["#4575b4"] * len(oc) + (["#999999"] if p_no_mtd is not None else [])
    a1.bar(bars_x, bars_v, color=colors)
    a1.set_xticks(bars_x, bars_l, fontsize=7)
    a1.set_ylabel("% of trials", fontsize=8)
    a1.set_title("selected as MTD", fontsize=9)
    a2.bar(x, oc["mean_patients"], color="#6a8caf", label="patients")
    a2.bar(x, oc["mean_dlts"], color="#d73027", width=0.5, label="DLTs")
    a2.set_xticks(x, labels, fontsize=7)
    a2.set_title("mean per trial", fontsize=9)
    v = oc["true_dlt_rate"].to_numpy(dtype=float) * 100
    lo = oc["true_ci_low"].to_numpy(dtype=float) * 100
    hi = oc["true_ci_high"].to_numpy(dtype=float) * 100
    a3.errorbar(x, v, yerr=[v - lo, hi - v], fmt="o-", color="#d73027", capsize=3, ms=4)
    if target is not None:
        a3.axhline(target * 100, color="black", ls="--", lw=0.8, label=f"target DLT rate {target * 100:.0f}%")
    a3.set_xticks(x, labels, fontsize=7)
    a3.set_ylim(bottom=0)
    a3.set_title("true DLT rate (95% interval)", fontsize=9)
    a2.set_ylabel("patients per trial", fontsize=8)
    a3.set_ylabel("% of patients with a DLT", fontsize=8)
    for ax in (a1, a2, a3):
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", alpha=0.3)
        ax.set_xlabel("dose level (dose)", fontsize=8)
    handles, labels_ = [], []
    for ax in (a2, a3):
        h, lab = ax.get_legend_handles_labels()
        handles, labels_ = handles + h, labels_ + lab
    fig.legend(handles, labels_, loc="outside lower center", ncols=3, fontsize=7, frameon=False)
    return fig


# --- fit -------------------------------------------------------------------------------------------------------


def observed_vs_predicted(pred: pd.DataFrame) -> Figure:
    """Observed against the posterior median prediction (90% band), one log-log panel per analyte."""
    analytes = list(dict.fromkeys(pred["analyte"]))
    cols = min(3, len(analytes))
    rows = -(-len(analytes) // cols)
    fig = _fig(3.0 * rows + 0.2)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, a in zip(axes.flat, analytes):
        d = pred[pred["analyte"] == a]
        cens = d["censored"].astype(bool).to_numpy() if "censored" in d.columns else np.zeros(len(d), bool)
        q = ~cens
        m = d["pred_median"].to_numpy(dtype=float)
        ax.errorbar(m[q], d["DV"].to_numpy(dtype=float)[q],
                    xerr=[(m - d["pred_q05"].to_numpy(dtype=float))[q], (d["pred_q95"].to_numpy(dtype=float) - m)[q]],
                    fmt="o", ms=3, alpha=0.5, elinewidth=0.5, color="#4575b4")
        if cens.any():
            ax.plot(m[cens], d["DV"].to_numpy(dtype=float)[cens], "v", mfc="none", ms=5, color="#d73027",
                    label="below LLOQ (at LLOQ)")
        vals = d[["DV", "pred_q05", "pred_q95"]].to_numpy(dtype=float)
        vals = vals[np.isfinite(vals) & (vals > 0)]
        if len(vals):
            lo, hi = vals.min(), vals.max()
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            log_ticks(ax, "x")
            log_ticks(ax, "y")
        ax.set_title(str(a), fontsize=9)
        ax.set_xlabel("predicted value (posterior median, 90% band)", fontsize=8)
        ax.set_ylabel("observed value", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(analytes):]:
        ax.set_visible(False)
    handles = {lab: h for ax in axes.flat for h, lab in zip(*ax.get_legend_handles_labels())}
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", fontsize=7, frameon=False)
    return fig


def published_vs_simulated(rates: pd.DataFrame) -> Figure:
    """Published rates against the posterior-predictive simulated rates (90% interval)."""
    d = rates[rates["unit"] == "fraction"] if "unit" in rates.columns else rates
    fig = _fig(4.2, width=5.5)
    ax = fig.subplots()
    m = d["simulated_median"].to_numpy(dtype=float) * 100
    ax.errorbar(d["published"].to_numpy(dtype=float) * 100, m,
                yerr=[m - d["low"].to_numpy(dtype=float) * 100, d["high"].to_numpy(dtype=float) * 100 - m],
                fmt="o", color="#4575b4", capsize=3)
    for _, r in d.iterrows():
        scale = f" ({r['scale']})" if "scale" in d.columns and str(r["scale"]) not in ("", "-", "nan") else ""
        ax.annotate(f"{r['endpoint']}{scale}", (r["published"] * 100, r["simulated_median"] * 100), fontsize=6.5,
                    xytext=(3, 3), textcoords="offset points")
    ax.plot([0, 100], [0, 100], "k--", lw=0.8)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("published rate (%)", fontsize=8)
    ax.set_ylabel("simulated rate (%), posterior predictive 90%", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    return fig


def loss_trace(trace: pd.DataFrame) -> Figure:
    """The optimiser's loss (SVI negative ELBO, or the MAP search's negative log posterior) per iteration,
    as its excess over the final value on a log axis (so the last decades of convergence are visible)."""
    fig = _fig(2.6, width=5.5)
    ax = fig.subplots()
    loss = trace["loss"].to_numpy(dtype=float)
    ok = np.isfinite(loss)
    excess = loss[ok] - loss[ok].min() + 1e-3
    ax.plot(trace["iteration"].to_numpy()[ok], excess, lw=0.8, color="#4575b4")
    ax.set_yscale("log")
    ax.set_xlabel("iteration", fontsize=8)
    ax.set_ylabel("loss above its minimum (+0.001)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    return fig


def npde_panels(pred: pd.DataFrame) -> Figure:
    """NPDE: histogram against the standard normal, and against time and the population prediction."""
    from scipy.stats import norm

    d = pred[np.isfinite(pred["npde"].to_numpy(dtype=float))]
    fig = _fig(2.8)
    a1, a2, a3 = fig.subplots(1, 3)
    v = d["npde"].to_numpy(dtype=float)
    a1.hist(v, bins=20, density=True, color="#91bfdb", edgecolor="white")
    x = np.linspace(-3.5, 3.5, 200)
    a1.plot(x, norm.pdf(x), "k--", lw=0.8)
    a1.set_xlabel("NPDE (dashed: N(0, 1))", fontsize=8)
    for ax, col, lab, log in ((a2, "TIME", "day", False), (a3, "pop_pred", "population prediction", True)):
        if col not in d.columns:
            ax.set_visible(False)
            continue
        for name, g in d.groupby("analyte", sort=False):
            ax.plot(g[col].to_numpy(dtype=float), g["npde"].to_numpy(dtype=float), "o", ms=2.5, alpha=0.6, label=str(name))
        for yv in (-1.645, 0.0, 1.645):
            ax.axhline(yv, color="k", lw=0.6, ls="--" if yv else "-")
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(lab, fontsize=8)
        ax.set_ylabel("NPDE", fontsize=8)
    for ax in (a1, a2, a3):
        ax.tick_params(labelsize=7)
    handles = {lab: h for h, lab in zip(*a2.get_legend_handles_labels())}
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=min(6, len(handles)),
                   fontsize=7, frameon=False)
    return fig


def individual_fits(pred: pd.DataFrame, max_patients: int = 12) -> Figure:
    """Each patient's data (points; open triangles at the LLOQ when censored) with the individual prediction
    (posterior median, line, 90% band) and the population prediction (dashed), one panel per patient."""
    ids = list(dict.fromkeys(pred["ID"]))[:max_patients]
    cols = min(4, len(ids))
    rows = -(-len(ids) // cols)
    fig = _fig(2.2 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    colours = dict(zip(dict.fromkeys(pred["analyte"]), ("#4575b4", "#d73027", "#1a9850", "#762a83", "#e08214", "#555555")))
    for ax, pid in zip(axes.flat, ids):
        d = pred[pred["ID"] == pid]
        for name, g in d.groupby("analyte", sort=False):
            g = g.sort_values("TIME")
            c = colours.get(name, "k")
            t = g["TIME"].to_numpy(dtype=float)
            cens = g["censored"].astype(bool).to_numpy() if "censored" in g.columns else np.zeros(len(g), bool)
            ax.fill_between(t, g["pred_q05"].to_numpy(dtype=float), g["pred_q95"].to_numpy(dtype=float), color=c, alpha=0.15, lw=0)
            ax.plot(t, g["pred_median"].to_numpy(dtype=float), "-", color=c, lw=0.9, label=str(name))
            if "pop_pred" in g.columns:
                ax.plot(t, g["pop_pred"].to_numpy(dtype=float), "--", color=c, lw=0.6)
            dv = g["DV"].to_numpy(dtype=float)
            ax.plot(t[~cens], dv[~cens], "o", color=c, ms=3)
            ax.plot(t[cens], dv[cens], "v", mfc="none", color=c, ms=4)
        ax.set_yscale("log")
        ax.set_title(f"ID {pid}", fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(ids):]:
        ax.set_visible(False)
    handles = {lab: h for ax in axes.flat for h, lab in zip(*ax.get_legend_handles_labels())}
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=min(6, len(handles)),
                   fontsize=7, frameon=False)
    return fig


def vpc_panels(vpc: pd.DataFrame) -> Figure:
    """Visual predictive check by analyte: observed 5th/50th/95th percentiles (lines and points) over the
    5-95% ranges of the same percentiles in data sets simulated from the fit (bands)."""
    analytes = list(dict.fromkeys(vpc["analyte"]))
    cols = min(3, len(analytes))
    rows = -(-len(analytes) // cols)
    fig = _fig(2.8 * rows + 0.3)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, name in zip(axes.flat, analytes):
        d = vpc[vpc["analyte"] == name].sort_values("time")
        t = d["time"].to_numpy(dtype=float)
        for q, c in (("q05", "#4575b4"), ("q50", "#d73027"), ("q95", "#4575b4")):
            ax.fill_between(t, d[f"sim_{q}_lo"].to_numpy(dtype=float), d[f"sim_{q}_hi"].to_numpy(dtype=float),
                            color=c, alpha=0.2, lw=0)
            ax.plot(t, d[f"obs_{q}"].to_numpy(dtype=float), "o-", color=c, ms=3, lw=0.9)
        ax.set_yscale("log")
        ax.set_title(str(name), fontsize=9)
        ax.set_xlabel("day", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(analytes):]:
        ax.set_visible(False)
    return fig

"""The report: from the outputs found in a folder to one HTML page.

    from vpop.report import build_report
    path = build_report("runs/axicel")            # runs/axicel/report.html

Sections, each present only when its data is (docs/trial-design.md, "The
report", says how to read them):

* per simulation: the cohort and its covariates; grade distributions by
  scale; cumulative incidence of CRS and ICANS onset; a swimmer plot of a
  sample of patients; biomarker trajectories with percentile bands by
  maximum grade;
* per sweep: dose–toxicity curves with 95% intervals and the cell table;
* per comparison: paired differences (forest plot), rates and NNTs;
* per escalation: the operating characteristics;
* per fit: diagnostics, posterior summary, observed vs predicted, published
  vs simulated rates;
* the configs and versions that produced them.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from vpop.errors import UserError
from vpop.report import figures as F
from vpop.report.page import Page
from vpop.report.sources import (
    ComparisonSource, EscalationSource, FitSource, SimulationSource, Source, SweepSource, find_sources,
)

KIND_TITLES = {"simulation": "Simulation", "sweep": "Sweep", "comparison": "Policy comparison",
               "escalation": "Dose escalation", "fit": "Fit"}
COVARIATE_ORDER = ("age_years", "weight_kg", "tumor_burden", "ldh", "platelets0", "crp0", "ferritin0", "creatinine",
                   "ang2_0", "nfl0", "easix", "m_easix", "car_dose_per_kg", "ld_intensity")
SWEEP_PANELS = ("CRS any grade", "CRS grade >= 3", "ICANS any grade", "ICANS grade >= 3")
SWEEP_TABLE_RATES = ("tocilizumab given", "corticosteroids given", "ICU-level support", "died of CRS or ICANS")
_MAX_COL = re.compile(r"^(crs|icans)_max_grade(?:_(\w+))?$")


@dataclass
class Report:
    path: Path
    n_figures: int
    sources: list[Source]
    size_bytes: int


# --- formatting ------------------------------------------------------------------------------


def pct(v, digits: int = 1) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{100 * v:.{digits}f}%"


def pct_ci(v, lo, hi) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{100 * v:.1f}% (no interval)"  # e.g. a rate given by escalate --p-true
    return f"{100 * v:.1f}% ({100 * lo:.1f}–{100 * hi:.1f})"


def num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–" if v is None or np.isnan(v) else ("∞" if v > 0 else "−∞")
    if isinstance(v, (int, np.integer)):
        return f"{v:,}"
    if 1000 <= abs(v) < 1e6:
        return f"{v:,.0f}"
    if abs(v) >= 1e6:
        return F.readable(float(f"{v:.{digits}g}"))  # 2 million, not 2e+06
    return f"{v:.{digits}g}"


def days_of(v) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.2f}"


# --- building -------------------------------------------------------------------------------------


def build_report(directory: str | Path, out: str | Path | None = None, sample: int = 30, seed: int = 0,
                 command: str | None = None) -> Report:
    """Find the outputs in `directory`, render the page and write it atomically to `out`."""
    if sample < 1:
        raise UserError(f"--sample: got {sample}; allowed: an integer >= 1")
    if seed < 0:
        raise UserError(f"--seed: got {seed}; allowed: an integer >= 0")
    directory = Path(directory)
    out = Path(out) if out is not None else directory / "report.html"
    if out.is_dir():
        raise UserError(f"--out: {out} is a folder; give a file name such as {out / 'report.html'}")
    sources = find_sources(directory, seed=seed)
    page = render(sources, directory, sample=sample, seed=seed, command=command)
    text = page.render()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return Report(out, page.n_figures, sources, len(text.encode("utf-8")))


def render(sources: list[Source], directory: Path, sample: int = 30, seed: int = 0,
           command: str | None = None) -> Page:
    from vpop import __version__

    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = Page(f"vpop report: {directory.resolve().name}",
                meta=f"Created {created} by vpop {__version__} from {directory}. "
                     f"{len(sources)} output(s) found.")
    # the answer first: each simulation's headline rates and management, above the contents
    for src in sources:
        if isinstance(src, SimulationSource):
            headline_section(page, src)
    page.toc_here()
    page.heading("Outputs found", 2)
    page.table(pd.DataFrame({
        "output": [KIND_TITLES[s.kind] for s in sources],
        "folder": [s.label for s in sources],
        "files": [", ".join(p.name + ("/" if p.is_dir() else "") for p in s.files) for s in sources],
    }), "Each output has its own section below; the configs and versions that produced them are at the end.",
        wrap=("files",))
    for src in sources:
        if isinstance(src, SimulationSource):
            simulation_section(page, src, sample, seed)
        elif isinstance(src, SweepSource):
            sweep_section(page, src)
        elif isinstance(src, ComparisonSource):
            comparison_section(page, src)
        elif isinstance(src, EscalationSource):
            escalation_section(page, src)
        elif isinstance(src, FitSource):
            fit_section(page, src)
    provenance_section(page, sources, created, command)
    return page


# --- simulation -------------------------------------------------------------------------------------


def _scales(patients: pd.DataFrame) -> dict[str, list[str]]:
    """{"crs": [scales], "icans": [scales]} from the max-grade columns, ASTCT first."""
    out = {"crs": [], "icans": []}
    for c in patients.columns:
        m = _MAX_COL.match(c)
        if m:
            out[m.group(1)].append(m.group(2) or "astct")
    for k in out:
        out[k].sort(key=lambda s: (s != "astct", s))
    return out


def _col(kind: str, what: str, scale: str) -> str:
    return f"{kind}_{what}" if scale == "astct" else f"{kind}_{what}_{scale}"


def _days(src: SimulationSource) -> float:
    sched = src.config.get("schedule") if isinstance(src.config, dict) else None
    if isinstance(sched, dict) and isinstance(sched.get("days"), (int, float)):
        return float(sched["days"])
    if src.observations is not None and len(src.observations):
        return float(src.observations["time_day"].max())
    onset = src.patients[["crs_onset_day", "icans_onset_day"]].to_numpy(dtype=float)
    return float(np.nanmax(onset)) + 1 if np.isfinite(onset).any() else 28.0


def _rate(mask) -> tuple[float, float, float, int, int]:
    from vpop.stats import wilson_interval

    mask = np.asarray(mask, dtype=bool)
    k, n = int(mask.sum()), len(mask)
    lo, hi = wilson_interval(k, n)
    return (k / n if n else float("nan")), lo, hi, k, n


def _rate_text(mask) -> str:
    v, lo, hi, k, n = _rate(mask)
    return f"{pct_ci(v, lo, hi)} — {k:,}/{n:,}"


def trial_scales_of(cfg: dict, scales: dict[str, list[str]]) -> tuple[str, str, str] | None:
    """(trial, CRS scale, ICANS scale) the config's trial reported with, where the run graded them."""
    trial = cfg.get("trial") if isinstance(cfg, dict) else None
    if not trial:
        return None
    from vpop.data import trial_scales

    reported = trial_scales(str(trial))
    crs = reported.get("crs", "astct")
    icans = reported.get("neuro", "astct").removesuffix("_neuro")
    if crs not in scales["crs"] or icans not in scales["icans"]:
        return None
    return str(trial), crs, icans


_NEVER = 50.0  # a trigger grade above 5 (or a day/limit of 1e9) means "never" in a policy


def management_words(pol: dict) -> str:
    """The management policy of a config.yaml in one line of words."""
    if not pol:
        return "not recorded"
    parts = []

    def grade(key):
        v = pol.get(key)
        return v if isinstance(v, (int, float)) and v <= 5 else None

    scale = lambda key: F.scale_name(str(pol.get(key, "astct")))  # noqa: E731
    toci = grade("toci_trigger_grade")
    if toci is not None:
        dose = pol.get("toci_mg_per_kg")
        cap = pol.get("toci_max_dose_mg")
        parts.append(f"tocilizumab {dose:g} mg/kg" + (f" (at most {cap:g} mg)" if isinstance(cap, (int, float)) else "")
                     + f" from CRS grade ≥ {toci:g} ({scale('crs_trigger_scale')})")
    dex_c, dex_i = grade("dex_crs_trigger_grade"), grade("dex_icans_trigger_grade")
    if dex_c is not None or dex_i is not None:
        when = " or ".join(x for x in (f"CRS grade ≥ {dex_c:g}" if dex_c is not None else "",
                                       f"ICANS grade ≥ {dex_i:g}" if dex_i is not None else "") if x)
        parts.append(f"dexamethasone {pol.get('dex_dose_mg', 10):g} mg every {pol.get('dex_interval_hours', 6):g} h "
                     f"from {when}")
    mp_c, mp_i = grade("mp_crs_trigger_grade"), grade("mp_icans_trigger_grade")
    if mp_c is not None or mp_i is not None:
        when = " or ".join(x for x in (f"CRS grade ≥ {mp_c:g}" if mp_c is not None else "",
                                       f"ICANS grade ≥ {mp_i:g}" if mp_i is not None else "") if x)
        parts.append(f"methylprednisolone {pol.get('mp_dose_mg', 1000):g} mg from {when}")
    ana_c, ana_i = grade("anakinra_crs_trigger_grade"), grade("anakinra_icans_trigger_grade")
    if ana_c is not None or ana_i is not None:
        parts.append(f"anakinra {pol.get('anakinra_dose_mg', 100):g} mg")
    if pol.get("prophylactic_dex_days"):
        parts.append(f"prophylactic dexamethasone {pol.get('prophylactic_dex_mg', 10):g} mg on day(s) "
                     + ", ".join(f"{d:g}" for d in pol["prophylactic_dex_days"]))
    if pol.get("antipyretics"):
        parts.append("antipyretics for fever")
    name = str(pol.get("name", "policy"))
    return f"{name}: " + ("; ".join(parts) if parts else "no anti-cytokine treatment")


def headline_section(page: Page, src: SimulationSource) -> None:
    """The answer first: rates with 95% intervals under ASTCT and under the trial's scale, and the management given."""
    pts = src.patients
    ok = pts[pts["solver_status"] != "nonfinite"]
    page.heading(f"Headline: {src.label}", 2)
    if len(ok) == 0:
        page.note("Every patient's solve failed (solver_status nonfinite): nothing to summarise.", warning=True)
        return
    cfg = src.config if isinstance(src.config, dict) else {}
    scales = _scales(pts)
    trial = trial_scales_of(cfg, scales)
    failed = len(pts) - len(ok)
    page.paragraph(f"{len(ok):,} virtual patients" + (f" ({failed:,} failed solves left out)" if failed else "")
                   + (f" — {cfg['description']}" if cfg.get("description") else "") + ".")
    rows = []
    for kind, label in (("crs", "CRS"), ("icans", "ICANS")):
        for g, words in ((1, "any grade"), (3, "grade ≥ 3")):
            row = {"endpoint": f"{label} {words}",
                   "ASTCT: % (95% CI) — patients": _rate_text(ok[_col(kind, "max_grade", "astct")] >= g)}
            if trial is not None:
                s = trial[1] if kind == "crs" else trial[2]
                row[f"{trial[0]}'s scale: % (95% CI) — patients"] = (
                    f"{_rate_text(ok[_col(kind, 'max_grade', s)] >= g)} ({F.scale_name(s)})")
            rows.append(row)
    if trial is not None:
        note = (f"{trial[0]}, the trial this config is modelled on, reported CRS under {F.scale_name(trial[1])} and "
                f"neurotoxicity under {F.scale_name(trial[2])}: compare its published rates with that column.")
    elif cfg.get("trial"):
        note = f"The run did not grade the scales {cfg['trial']} reported with, so only ASTCT is shown."
    else:
        note = "The config names no trial (trial:), so only ASTCT is shown."
    page.table(pd.DataFrame(rows), "Maximum grade over the course: share of patients with 95% Wilson intervals. " + note)
    pol = cfg.get("policy") if isinstance(cfg.get("policy"), dict) else {}
    pairs = [("management given", management_words(pol))]
    for col, label, test in (("tocilizumab_doses", "tocilizumab given", lambda v: v > 0),
                             ("steroids_given", "corticosteroids given", lambda v: v.astype(bool)),
                             ("anakinra_mg", "anakinra given", lambda v: v > 0)):
        if col in ok.columns and (col != "anakinra_mg" or (ok[col] > 0).any()):
            pairs.append((label, _rate_text(test(ok[col]))))
    if "death_cause" in ok.columns:
        pairs.append(("died of CRS or ICANS", _rate_text(ok["death_cause"].isin(["crs", "icans"]))))
    page.key_values(pairs)


def simulation_section(page: Page, src: SimulationSource, sample: int, seed: int) -> None:
    pts = src.patients
    ok = pts[pts["solver_status"] != "nonfinite"]
    cfg = src.config
    page.heading(f"Simulation: {src.label}", 2)
    if cfg.get("description"):
        page.paragraph(str(cfg["description"]))
    if len(ok) == 0:
        page.note("Every patient's solve failed (solver_status nonfinite): nothing to summarise.", warning=True)
        return
    scales = _scales(pts)
    days = _days(src)
    cohort_subsection(page, src, ok, days)
    grades_subsection(page, ok, scales)
    onset_subsection(page, src, ok, scales, days)
    if src.observations is None:
        page.note(src.observations_note)
        return
    if src.observations_note:
        page.note(src.observations_note)
    swimmer_subsection(page, src, sample, seed, days)
    biomarker_subsection(page, src, ok)


def cohort_subsection(page: Page, src: SimulationSource, ok: pd.DataFrame, days: float) -> None:
    pts = src.patients
    cfg = src.config
    page.heading("Cohort and covariates", 3)
    status = pts["solver_status"].value_counts()
    pairs = [("patients", f"{len(pts):,}"),
             ("solver", ", ".join(f"{k}: {v:,}" for k, v in status.items())
              + ("; failed solves (nonfinite) are left out of every summary" if "nonfinite" in status else "")),
             ("days simulated", f"{days:g}")]
    product = cfg.get("product") if isinstance(cfg.get("product"), dict) else {}
    if product:
        dose = product.get("dose_per_kg")
        dose_text = f"{F.readable(dose)} cells/kg" if isinstance(dose, (int, float)) else (
            f"{F.readable(product['flat_dose'])} cells" if isinstance(product.get("flat_dose"), (int, float)) else "")
        pairs.append(("product", ", ".join(str(x) for x in (product.get("name"), product.get("target"),
                                                           product.get("costimulation"), dose_text) if x)))
    pop = cfg.get("population") if isinstance(cfg.get("population"), dict) else {}
    if pop.get("disease"):
        pairs.append(("disease", str(pop["disease"])))
    pol = cfg.get("policy") if isinstance(cfg.get("policy"), dict) else {}
    if pol.get("name"):
        pairs.append(("management policy", str(pol["name"])))
    cohort = cfg.get("cohort") if isinstance(cfg.get("cohort"), dict) else {}
    if "seed" in cohort:
        pairs.append(("seed", str(cohort["seed"])))
    page.key_values(pairs)

    cols = [c for c in COVARIATE_ORDER if c in ok.columns and pd.api.types.is_numeric_dtype(ok[c])]
    rows = []
    for c in cols:
        v = ok[c].to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        if not len(v):
            continue
        q = np.quantile(v, [0.05, 0.25, 0.5, 0.75, 0.95])
        rows.append({"covariate": F.COVARIATE_LABELS.get(c, c), "median": num(q[2]),
                     "IQR": f"{num(q[1])}–{num(q[3])}", "5–95%": f"{num(q[0])}–{num(q[4])}",
                     "range": f"{num(v.min())}–{num(v.max())}"})
    if "sex" in ok.columns:
        female = float((ok["sex"] == "F").mean())
        rows.append({"covariate": "female", "median": pct(female), "IQR": "", "5–95%": "", "range": ""})
    if rows:
        page.table(pd.DataFrame(rows), f"Baseline covariates of the {len(ok):,} patients solved (median, "
                   "interquartile range, central 90% and range).")
    varying = [c for c in cols if np.nanstd(ok[c].to_numpy(dtype=float)) > 0]
    if varying:
        page.figure(F.covariate_histograms(ok, varying),
                    "Distribution of each baseline covariate that varies across the cohort (log axis for those "
                    "spanning more than a 20-fold range). Covariates with one value for everyone are in the table only.",
                    alt="covariate histograms")


def grades_subsection(page: Page, ok: pd.DataFrame, scales: dict[str, list[str]]) -> None:
    page.heading("Grade distributions by scale", 3)
    records, index = [], []
    for kind in ("crs", "icans"):
        for s in scales[kind]:
            g = ok[_col(kind, "max_grade", s)].to_numpy(dtype=int)
            records.append([int((g == k).sum()) for k in range(6)])
            index.append((kind.upper(), s))
    counts = pd.DataFrame(records, index=pd.MultiIndex.from_tuples(index), columns=range(6))
    n = len(ok)
    table = pd.DataFrame({
        "toxicity": [k for k, _ in index], "scale": [F.scale_name(s) for _, s in index],
        **{f"grade {g}": [f"{c:,} ({100 * c / n:.0f}%)" for c in counts[g]] for g in range(6)},
        "any grade": [pct(r[1:].sum() / n) for r in counts.to_numpy()],
        "grade ≥ 3": [pct(r[3:].sum() / n) for r in counts.to_numpy()],
    })
    page.table(table, f"Maximum grade over the whole simulated course, {n:,} patients, under each scale the run graded.")
    page.figure(F.grade_distribution(counts),
                "Share of patients by maximum grade, one bar per grading scale (numbers: % of patients). The same "
                "patients are graded under every scale, so differences between bars are differences between scales.",
                alt="grade distribution by scale")


def _cumulative(values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    v = np.sort(values[np.isfinite(values)])
    t, counts = np.unique(v, return_counts=True)
    return t, 100.0 * np.cumsum(counts) / n


def onset_subsection(page: Page, src: SimulationSource, ok: pd.DataFrame, scales: dict[str, list[str]],
                     days: float) -> None:
    page.heading("Cumulative incidence of CRS and ICANS onset", 3)
    n = len(ok)
    curves: dict[str, list] = {"CRS": [], "ICANS": []}
    rows = []

    def row(kind, scale, what, w, denominator, who):
        rows.append({"toxicity": kind, "scale": scale, "episode": what, "patients": who,
                     "patients with onset": f"{len(w):,}", "% of patients": pct(len(w) / denominator),
                     "median onset day (IQR)": (f"{np.median(w):.2f} ({np.quantile(w, 0.25):.2f}–"
                                                f"{np.quantile(w, 0.75):.2f})") if len(w) else "–",
                     "by day 3": pct((w <= 3).sum() / denominator), "by day 7": pct((w <= 7).sum() / denominator)})

    for kind in ("crs", "icans"):
        for s in scales[kind]:
            col = _col(kind, "onset_day", s)
            if col not in ok.columns:
                continue
            v = ok[col].to_numpy(dtype=float)
            t, y = _cumulative(v, n)
            curves[kind.upper()].append((F.scale_name(s), "any grade", t, y))
            row(kind.upper(), F.scale_name(s), "any grade", v[np.isfinite(v)], n, f"all {n:,}")
    severe_note = ""
    obs = src.observations
    if obs is not None:
        # the same patients as the rest of the section: solved ones, so a curve ends at the table's rate
        sample = obs[obs["patient_id"].isin(ok["patient_id"])]
        m = sample["patient_id"].nunique()
        who = f"all {m:,}" if m == n else f"sample of {m:,}"
        for kind in ("crs", "icans"):
            col = f"{kind}_grade_astct"
            if col in sample.columns and m:
                first = sample.loc[sample[col] >= 3].groupby("patient_id")["time_day"].min().to_numpy(dtype=float)
                t, y = _cumulative(first, m)
                what = "grade ≥ 3" + ("" if m == n else f" (sample of {m:,})")
                curves[kind.upper()].append(("ASTCT", what, t, y))
                row(kind.upper(), "ASTCT", "grade ≥ 3", first, m, who)
        if m < n:
            severe_note = (f" Grade ≥ 3 curves come from the {m:,} patients whose trajectories were read, so they can "
                           f"differ from the grade ≥ 3 rates of all {n:,} patients in the tables above.")
    page.figure(F.cumulative_incidence(curves, days),
                "Percentage of patients whose first episode began by each day after infusion: grade ≥ 1 under each "
                "scale, and, where observations were written, the first ASTCT grade ≥ 3. Scales whose curves coincide "
                "exactly are drawn once and named together. Patients who died before an onset count as never having "
                "one (a competing risk, no censoring: everyone is followed to the end of the simulation or death). "
                f"The legend gives each curve's final value, the '% of patients' of the table below.{severe_note}",
                alt="cumulative incidence of onset")
    page.table(pd.DataFrame(rows), "Onset of the first episode of each curve in the figure above, per scale.")


def swimmer_subsection(page: Page, src: SimulationSource, sample: int, seed: int, days: float) -> None:
    obs = src.observations
    crs_col, icans_col = "crs_grade_astct", "icans_grade_astct"
    if crs_col not in obs.columns or icans_col not in obs.columns:
        page.note(f"The observation table has no per-assessment ASTCT grades ({crs_col}, {icans_col}): no swimmer "
                  "plot.")
        return
    page.heading("Grades over time: a sample of patients", 3)
    ids = obs["patient_id"].unique()
    rng = np.random.default_rng(seed)
    chosen = rng.choice(ids, size=min(sample, len(ids)), replace=False)
    sub = obs[obs["patient_id"].isin(chosen)]
    worst = sub.groupby("patient_id")[[crs_col, icans_col]].max()
    worst["both"] = worst.max(axis=1)
    worst = worst.reset_index().sort_values(["both", crs_col, icans_col, "patient_id"],
                                            ascending=[False, False, False, True])
    order = worst["patient_id"].tolist()
    page.figure(F.swimmer(sub, order, crs_col, icans_col, days),
                f"ASTCT grade at every assessment for {len(order)} patients drawn at random (seed {seed}) from "
                f"{len(ids):,}, the most severe at the top. CRS on the left, ICANS on the right; each lane is one "
                "patient (labelled by patient_id), in the same order in both panels; an assessment's grade colours "
                "the interval since the previous assessment. ▼ first tocilizumab, ◆ first corticosteroid, ✕ death "
                "(the lane ends there).",
                alt="swimmer plot of grades over time")


def biomarker_subsection(page: Page, src: SimulationSource, ok: pd.DataFrame) -> None:
    obs = src.observations
    present = [b for b in F.BIOMARKERS if b.column in obs.columns]
    absent = [b for b in F.BIOMARKERS if b.column not in obs.columns]
    page.heading("Biomarker trajectories by maximum grade", 3)
    if absent:
        page.note("Not in the observation table, so not shown: "
                  + ", ".join(f"{b.label} ({b.column})" for b in absent) + ".")
    if not present:
        return
    max_grade = ok.set_index("patient_id")[["crs_max_grade", "icans_max_grade"]]
    in_obs = max_grade.loc[max_grade.index.isin(obs["patient_id"].unique())]
    sizes = {k: {g: int((F.grade_group(in_obs[f"{k}_max_grade"]) == g).sum()) for g in range(3)}
             for k in ("crs", "icans")}
    rows_group = {k: F.grade_group(max_grade[f"{k}_max_grade"].reindex(obs["patient_id"]).to_numpy())
                  for k in ("crs", "icans")}
    bands = {b.column: F.percentile_bands(obs, b.column, rows_group[b.by]) for b in present}
    page.figure(F.biomarker_bands(bands, present, sizes),
                "Each biomarker over time in patients grouped by their maximum ASTCT grade over the whole course "
                "(blue 0–1, orange 2, red ≥ 3): the line is the median at each assessment, the dark band the "
                "25th–75th and the light band the 10th–90th percentile. Systemic markers (IL-6, CRP, ferritin, "
                "fibrinogen, D-dimer) are grouped by CRS grade; endothelial, blood–brain barrier and neuronal-injury "
                "markers (Ang-2, CSF/serum albumin ratio, NfL) by ICANS grade. Rows after a death are not written, so "
                "late percentiles describe survivors. A group of few patients (n in the legend) gives noisy bands.",
                alt="biomarker percentile bands by maximum grade")


# --- sweep ----------------------------------------------------------------------------------------------


def _x_factor(table: pd.DataFrame, varying: list[str]) -> tuple[str | None, bool]:
    """(column, numeric) of the x axis of the dose-toxicity plot."""
    for c in ("dose", "dose_multiplier"):
        if c in varying:
            return c, True
    for c in varying:
        if c.endswith(("_center", "_spread", "_low", "_high")) and pd.api.types.is_numeric_dtype(table[c]):
            return c, True
    for c in ("policy", "config"):
        if c in varying:
            return c, False
    return (varying[0], pd.api.types.is_numeric_dtype(table[varying[0]])) if varying else (None, False)


def sweep_section(page: Page, src: SweepSource) -> None:
    t = src.table
    page.heading(f"Sweep: {src.label}", 2)
    factors = [f for f in src.factors if f != "cell"]
    varying = [f for f in factors if t[f].nunique(dropna=False) > 1]
    cells = t["cell"].nunique() if "cell" in t.columns else len(t.drop_duplicates(factors))
    n = t["n"].max() if len(t) else 0
    page.key_values([("cells", f"{cells}"), ("patients per cell", f"{n:,}"),
                     ("factors", ", ".join(f"{f} ({t[f].nunique()})" for f in varying) or "none varies"),
                     ("scales", ", ".join(F.scale_name(s) for s in dict.fromkeys(t["scale"]) if s))])
    rates = t[t["kind"] == "rate"]
    x, numeric = _x_factor(t, varying)
    x_label, x_div = F.factor_label(x, t[x] if numeric else None) if x else ("cell", 1.0)
    others = [f for f in varying if f != x]
    page.heading("Dose–toxicity curves", 3)
    has_post = "post_value" in t.columns and t["post_value"].notna().any()
    scales = [s for s in dict.fromkeys(rates["scale"]) if s]
    for s in scales:
        panels = []
        for ep in SWEEP_PANELS:
            d = rates[(rates["endpoint"] == ep) & (rates["scale"] == s)]
            if d.empty:
                continue
            d = d.assign(x=(d[x] / x_div if numeric else d[x]) if x else "all",
                         series=d[others].astype(str).agg(", ".join, axis=1) if len(others) == 1 else
                         d[others].apply(lambda r: ", ".join(f"{k}={v}" for k, v in r.items()), axis=1) if others
                         else "")
            panels.append((f"{ep} ({F.scale_name(s)})", d))
        if not panels:
            continue
        series = list(dict.fromkeys(panels[0][1]["series"]))
        xs = sorted(dict.fromkeys(panels[0][1]["x"])) if numeric else list(dict.fromkeys(panels[0][1]["x"]))
        log_x = bool(numeric and min(xs) > 0 and max(xs) / min(xs) >= 4)
        fig = F.dose_toxicity(panels, x_label, log_x, None if numeric else xs, series)
        page.figure(fig, f"Rates under the {F.scale_name(s)} scale against {x_label if x else 'the cell'}"
                    + (f", one line per {' × '.join(others)}" if others else "")
                    + ": points are the simulated rates, bars their Wilson 95% intervals (sampling only)"
                    + ("; the shaded band is the posterior-predictive 95% interval, which also carries the fitted "
                       "parameters' uncertainty" if has_post else "")
                    + ". The cells share their patients (same seed and ids), so differences between cells are paired.",
                    alt=f"dose-toxicity curves {s}")
    # the cell tables
    primary = scales[0] if scales else ""
    keys = ["cell"] if "cell" in t.columns else factors
    graded, care = [], []
    for _, d in t.groupby(keys, sort=True):
        base = {}
        for f in (["cell"] if "cell" in t.columns else []) + varying:
            label, div = F.factor_label(f, t[f]) if f != "cell" and pd.api.types.is_numeric_dtype(t[f]) else (
                (F.factor_label(f)[0] if f != "cell" else "cell"), 1.0)
            v = d[f].iloc[0]
            base[label] = F.readable(v / div) if isinstance(v, (int, float, np.number)) and f != "cell" else v
        row_g, row_c = dict(base), dict(base)
        for ep in SWEEP_PANELS:
            r = d[(d["endpoint"] == ep) & (d["scale"] == primary) & (d["kind"] == "rate")]
            if len(r):
                row_g[ep] = pct_ci(r["value"].iloc[0], r["ci_low"].iloc[0], r["ci_high"].iloc[0])
        for kind in ("CRS", "ICANS"):
            r = d[(d["endpoint"] == f"{kind} onset day (median)") & (d["scale"] == primary)]
            if len(r):
                row_c[f"{kind} onset day"] = (f"{days_of(r['value'].iloc[0])} ({days_of(r['ci_low'].iloc[0])}–"
                                              f"{days_of(r['ci_high'].iloc[0])})")
        for ep in SWEEP_TABLE_RATES:
            r = d[(d["endpoint"] == ep) & (d["kind"] == "rate")]
            if len(r):
                row_c[ep] = pct_ci(r["value"].iloc[0], r["ci_low"].iloc[0], r["ci_high"].iloc[0])
        graded.append(row_g)
        care.append(row_c)
    page.heading("Sweep tables", 3)
    page.table(pd.DataFrame(graded), f"Toxicity per cell ({F.scale_name(primary)}): rates with Wilson 95% intervals.")
    if any(len(row) > len(base) for row in care):
        page.table(pd.DataFrame(care), "Onset, treatment and support per cell: the median onset day among patients "
                   f"with an onset ({F.scale_name(primary)}) with its distribution-free 95% interval, and rates with "
                   "Wilson 95% intervals. Every endpoint and scale is in sweep.csv.")


# --- comparison ---------------------------------------------------------------------------------------------


def _nnt(r) -> str:
    v = r["nnt"]
    if not np.isfinite(v):
        return "– (no difference)"
    lo, hi = r.get("nnt_low", np.nan), r.get("nnt_high", np.nan)
    interval = f" ({lo:.1f} to {hi:.1f})" if np.isfinite(lo) and np.isfinite(hi) else " (interval includes 0)"
    return f"{v:.1f}{interval}"


def comparison_section(page: Page, src: ComparisonSource) -> None:
    diff, rates = src.differences, src.rates
    page.heading(f"Policy comparison: {src.label}", 2)
    ref = str(diff["reference"].iloc[0]) if len(diff) else str(rates["policy"].iloc[0])
    page.key_values([("reference policy", ref),
                     ("other policies", ", ".join(dict.fromkeys(diff["policy"].astype(str)))),
                     ("patients (paired)", f"{int(rates['n'].max()):,}")])
    if len(diff):
        page.figure(F.policy_forest(diff),
                    f"Difference in each endpoint's rate, policy minus the reference ({ref}), on the same virtual "
                    "patients, with Newcombe's paired 95% interval. Left of the line: fewer patients with the event "
                    "than under the reference; an interval that does not cross the line is a difference the cohort "
                    "size resolves.", alt="policy comparison forest plot")
    pivot = rates.assign(text=[pct_ci(v, lo, hi) for v, lo, hi in zip(rates["rate"], rates["ci_low"],
                                                                        rates["ci_high"])])
    wide = pivot.pivot(index="endpoint", columns="policy", values="text")
    wide = wide.reindex(index=list(dict.fromkeys(rates["endpoint"])), columns=list(dict.fromkeys(rates["policy"])))
    page.table(wide.reset_index(), "Rates under each policy with Wilson 95% intervals.")
    for pol, d in diff.groupby("policy", sort=False):
        table = pd.DataFrame({
            "endpoint": d["endpoint"],
            "reference": [pct(v) for v in d["rate_reference"]], "policy": [pct(v) for v in d["rate_policy"]],
            "difference, pp (95% CI)": [f"{100 * x:+.1f} ({100 * lo:+.1f} to {100 * hi:+.1f})"
                                        for x, lo, hi in zip(d["difference"], d["ci_low"], d["ci_high"])],
        })
        if {"only_policy", "only_reference"} <= set(d.columns):
            table["discordant pairs"] = [f"{a} / {b}" for a, b in zip(d["only_policy"], d["only_reference"])]
        table["NNT (95% CI)"] = [_nnt(r) for _, r in d.iterrows()]
        page.paragraph(f"{pol} against {d['reference'].iloc[0]}:")
        page.table(table, "Difference = policy − reference in percentage points (Newcombe's paired interval). "
                   "Discordant pairs: patients with the event under the policy only / under the reference only. "
                   "NNT = 1 / (reference rate − policy rate): patients managed with the policy instead of the "
                   "reference to prevent one event; negative: number needed to harm; its interval is given only when "
                   "the difference's interval excludes 0.")


# --- escalation -------------------------------------------------------------------------------------------------


def escalation_section(page: Page, src: EscalationSource) -> None:
    oc, s = src.oc, src.summary
    page.heading(f"Dose escalation: {src.label}", 2)
    pairs = [(k, str(s[k])) for k in ("design", "dlt") if k in s]
    for key, label in (("trials", "simulated trials"), ("target", "target DLT rate"), ("p_no_mtd", "no MTD (early stop)"),
                       ("mean_patients", "mean patients per trial"), ("mean_dlts", "mean DLTs per trial")):
        v = s.get(key)
        if isinstance(v, (int, float)):
            pairs.append((label, pct(v) if key in ("target", "p_no_mtd") else num(v, 4)))
    if pairs:
        page.key_values(pairs)
    page.heading("Operating characteristics", 3)
    p_no = s.get("p_no_mtd") if isinstance(s.get("p_no_mtd"), (int, float)) else None
    target = s.get("target") if isinstance(s.get("target"), (int, float)) else None
    page.figure(F.escalation(oc, p_no, target),
                "Left: how often the design selects each dose as the MTD (grey: trials that stopped without one). "
                "Middle: mean patients treated and DLTs seen at each dose per trial. Right: the true DLT rate of the "
                "virtual-patient pool at each dose with its Wilson 95% interval, and the target. A good design selects "
                "the dose whose true rate is nearest the target most often and treats few patients above it.",
                alt="escalation operating characteristics")
    page.table(pd.DataFrame({
        "level": oc["level"], "dose": oc["dose"],
        "true DLT rate (95% CI)": [pct_ci(v, lo, hi) for v, lo, hi in zip(oc["true_dlt_rate"], oc["true_ci_low"],
                                                                         oc["true_ci_high"])],
        "P(select)": [pct(v) for v in oc["p_select"]],
        "mean patients": [f"{v:.2f}" for v in oc["mean_patients"]],
        "mean DLTs": [f"{v:.2f}" for v in oc["mean_dlts"]],
    }), "Operating characteristics per dose level (operating_characteristics.csv).")


# --- fit ---------------------------------------------------------------------------------------------------------


def fit_section(page: Page, src: FitSource) -> None:
    page.heading(f"Fit: {src.label}", 2)
    diag = src.diagnostics
    if diag:
        pairs = [(k, num(v, 4) if isinstance(v, float) else str(v)) for k, v in diag.items()
                 if isinstance(v, (int, float, str, bool)) and k != "warnings"]
        page.key_values(pairs)
        for w in diag.get("warnings", []) or []:
            page.note(f"Warning: {w}", warning=True)
        if isinstance(diag.get("table"), list) and diag["table"] and all(isinstance(r, dict) for r in diag["table"]):
            t = pd.DataFrame(diag["table"])
            page.table(t.map(lambda v: num(v, 4) if isinstance(v, float) else v),
                       "Per-variable convergence diagnostics (ArviZ).")
    else:
        page.note("No diagnostics.json in this folder.")
    if diag and isinstance(diag.get("se_log_hessian"), dict):
        laplace_uncertainty(page, diag)
    if src.summary is not None:
        page.heading("Posterior summary", 3)
        page.table(src.summary.map(lambda v: num(v, 4) if isinstance(v, float) else v),
                   "Posterior median and interval of each free typical value (summary.csv); fitted.yaml (in Config and "
                   "versions) carries the medians as a config for vpop simulate.")
    if src.predictions is not None and len(src.predictions):
        page.figure(F.observed_vs_predicted(src.predictions),
                    "Observed values against the posterior median of the individual predictions, with the 90% band "
                    "(log-log; the dashed line is identity). Open triangles: below the lower limit of quantification.",
                    alt="observed vs predicted")
    fit_diagnostics(page, src)
    if src.rates is not None and len(src.rates):
        page.figure(F.published_vs_simulated(src.rates),
                    "Published cohort rates against rates simulated from posterior draws (median and 90% interval, "
                    "parameter uncertainty and cohort sampling noise). Points on the dashed line agree.",
                    alt="published vs simulated rates")


def laplace_uncertainty(page: Page, diag: dict) -> None:
    """The Laplace fit's standard errors under both covariances, and the strongly correlated pairs."""
    se_h = diag["se_log_hessian"]
    se_s = diag.get("se_log_sandwich") or {}
    mode = diag.get("map") or {}
    ratio = {k: se_s[k] / h for k, h in se_h.items() if se_s.get(k) and h}
    rows = []
    for k, h in se_h.items():
        row = {"parameter": k, "MAP": mode.get(k, float("nan")), "SE (log), Hessian": h}
        if se_s:
            row["SE (log), sandwich"] = se_s.get(k, float("nan"))
            row["sandwich / Hessian"] = ratio.get(k, float("nan"))
        rows.append(row)
    page.heading("Standard errors (Laplace)", 3)
    chosen = diag.get("covariance", "hessian")
    page.table(pd.DataFrame(rows).map(lambda v: num(v, 4) if isinstance(v, float) else v),
               f"Standard errors of the log typical values (diagnostics.json); the intervals and draws use the "
               f"{chosen} covariance. The sandwich (R^-1 S R^-1 from the patients' scores) is robust to a "
               "misspecified residual or random-effect model: a ratio far from 1 says the model's own "
               "uncertainty is not to be trusted (docs/fitting.md).")
    off = [k for k, r in ratio.items() if not 0.5 <= r <= 2.0]
    if off:
        page.note("Warning: the sandwich and Hessian standard errors differ more than twofold for "
                  + ", ".join(off) + ": the statistical model is likely misspecified.", warning=True)
    corr = diag.get("correlation") or {}
    pairs = sorted({tuple(sorted((a, b))) for a in corr for b in corr[a]
                    if a != b and abs(corr[a][b]) > 0.95})
    if pairs:
        page.note("Warning: estimates correlated beyond |r| = 0.95: "
                  + "; ".join(f"{a} and {b} (r = {corr[a][b]:+.3f})" for a, b in pairs)
                  + ". The data hardly separate them.", warning=True)


def fit_diagnostics(page: Page, src: FitSource) -> None:
    """The diagnostics files of a fit (`vpop.fitting.diagnostics`): each shown when the fit wrote it."""
    if src.loss_trace is not None and len(src.loss_trace):
        page.heading("Optimiser loss", 3)
        page.figure(F.loss_trace(src.loss_trace),
                    "Loss per iteration (loss_trace.csv): SVI negative ELBO, or the MAP search's negative log posterior "
                    "(Laplace). A trace still falling at the end has not converged.", alt="loss trace")
    if src.sampler_stats is not None and len(src.sampler_stats):
        page.heading("Sampler (NUTS)", 3)
        ss = src.sampler_stats
        per = ss.groupby("chain").agg(draws=("draw", "size"), divergences=("diverging", "sum"),
                                      mean_leapfrog_steps=("n_steps", "mean"))
        if "tree_depth" in ss.columns:
            per["max_tree_depth"] = ss.groupby("chain")["tree_depth"].max()
            per["mean_tree_depth"] = ss.groupby("chain")["tree_depth"].mean()
        if "acceptance_rate" in ss.columns:
            per["mean_acceptance"] = ss.groupby("chain")["acceptance_rate"].mean()
        if src.ebfmi is not None:
            per["E-BFMI"] = src.ebfmi.set_index("chain")["ebfmi"]
        page.table(per.reset_index().map(lambda v: num(v, 3) if isinstance(v, float) else v),
                   "Per chain (sampler_stats.csv, ebfmi.csv): any divergence, a tree depth at its maximum or an "
                   "E-BFMI below 0.3 means the posterior was not explored well.")
        n_div = int(ss["diverging"].astype(bool).sum())
        if n_div:
            page.note(f"Warning: {n_div} divergent transitions.", warning=True)
        if src.ebfmi is not None and (src.ebfmi["ebfmi"] < 0.3).any():
            page.note("Warning: E-BFMI below 0.3 in some chain.", warning=True)
    if src.convergence is not None and len(src.convergence):
        page.heading("Convergence", 3)
        conv = src.convergence
        page.table(conv.map(lambda v: num(v, 4) if isinstance(v, float) else v),
                   "Per population quantity (convergence.csv, ArviZ): R-hat should be at most 1.01 and bulk ESS at "
                   "least 100 per chain (NaN for one chain or a Laplace/SVI sample, where they do not apply).")
        if "r_hat" in conv.columns:
            bad = conv[pd.to_numeric(conv["r_hat"], errors="coerce") > 1.01]
            if len(bad):
                page.note("Warning: R-hat above 1.01 for " + ", ".join(map(str, bad["variable"])) + ".", warning=True)
    if src.shrinkage is not None and len(src.shrinkage):
        page.heading("Eta shrinkage", 3)
        page.table(src.shrinkage.map(lambda v: num(v, 3) if isinstance(v, float) else v),
                   "1 - SD(posterior mean eta_i) / omega (shrinkage.csv). Above 0.3 the individual estimates are "
                   "pulled to the typical value and individual-based diagnostics (IWRES, individual fits) mislead.")
    if src.loo is not None:
        page.heading("Information criterion (PSIS-LOO)", 3)
        page.key_values([(k, num(v, 4) if isinstance(v, float) else str(v)) for k, v in src.loo.items()])
        page.paragraph("Compare two models fitted to the same data by elpd_loo (larger is better; a difference "
                       "below about twice its standard error is not meaningful). Pareto k above 0.7 marks "
                       "observations whose leave-one-out estimate is unreliable.")
    pred = src.predictions
    if pred is not None and len(pred) and "npde" in pred.columns:
        page.heading("Residuals (NPDE)", 3)
        page.figure(F.npde_panels(pred),
                    "Normalised prediction distribution errors (predictions.csv): standard normal when the model "
                    "describes the data; trends against time or the population prediction show misfit.",
                    alt="NPDE")
    if pred is not None and len(pred) and {"ID", "TIME", "pop_pred"} <= set(pred.columns):  # written since vpop fit has pop_pred
        page.heading("Individual fits", 3)
        page.figure(F.individual_fits(pred),
                    "Each patient's observations with the individual prediction (posterior median, 90% band) and "
                    "the population prediction (dashed), first 12 patients. Open triangles: censored at the LLOQ.",
                    alt="individual fits")
    if src.vpc is not None and len(src.vpc):
        page.heading("Visual predictive check", 3)
        page.figure(F.vpc_panels(src.vpc),
                    "Observed 5th, 50th (red) and 95th percentiles per observation time (points) against the 5-95% "
                    "range of the same percentiles in data sets simulated from the fit (bands; vpc.csv).",
                    alt="visual predictive check")


# --- provenance ----------------------------------------------------------------------------------------------------


def _versions() -> list[tuple[str, str]]:
    import jax
    import matplotlib

    from vpop import __version__

    return [("vpop", __version__), ("JAX", jax.__version__), ("NumPy", np.__version__), ("pandas", pd.__version__),
            ("matplotlib", matplotlib.__version__), ("Python", sys.version.split()[0]),
            ("platform", platform.platform())]


def provenance_section(page: Page, sources: list[Source], created: str, command: str | None) -> None:
    page.heading("Config and versions", 2)
    page.key_values([("report created", created)] + ([("command", command)] if command else []) + _versions())
    for src in sources:
        page.heading(f"{KIND_TITLES[src.kind]}: {src.label} — files and config", 3, toc=False)
        files = []
        for p in src.files:
            try:
                st = p.stat()
                size = sum(f.stat().st_size for f in p.glob("*.parquet")) if p.is_dir() else st.st_size
                when = datetime.fromtimestamp(st.st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
                files.append(f"{p} ({size / 1e6:.2f} MB, modified {when})")
            except OSError:
                files.append(str(p))
        page.bullets(files)
        if isinstance(src, SimulationSource) and src.config.get("vpop_version"):
            page.paragraph(f"Simulated with vpop {src.config['vpop_version']}.")
        if src.config_text is not None:
            page.preformatted(src.config_text, f"{src.config_name} (as written by the run)")
        elif src.kind == "comparison":
            page.paragraph("vpop compare writes no config file; the config and policies are those of its command line.")
        else:
            page.paragraph("No config file beside this output.")

"""`vpop report DIR`: one self-contained HTML page, checked as text and in a real (headless) browser."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vpop.cli import main

# n=200, 10 days, ASTCT only: the compiled engines of tests/test_sweep.py and tests/test_compare.py
from test_sweep import SMALL_CONFIG  # noqa: E402
SWEEP = """\
name: dose sweep
config: small.yaml
cohort: {n: 200, seed: 1}
factors:
  dose_multiplier: [0.5, 2]
  policy: [none]
scales: [astct]
"""
SIMULATION_HEADINGS = ("Cohort and covariates", "Grade distributions by scale",
                       "Cumulative incidence of CRS and ICANS onset", "Grades over time: a sample of patients",
                       "Biomarker trajectories by maximum grade")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A folder with the outputs of vpop simulate, sweep, compare, escalate and (the files of) a fit."""
    root = tmp_path_factory.mktemp("report") / "runs"
    root.mkdir()
    work = root.parent
    (work / "small.yaml").write_text(SMALL_CONFIG)
    (work / "sweep.yaml").write_text(SWEEP)
    assert main(["simulate", str(work / "small.yaml"), "--out", str(root / "sim"), "--quiet"]) == 0
    assert main(["sweep", str(work / "sweep.yaml"), "--out", str(root / "sweep"), "--quiet"]) == 0
    assert main(["compare", str(work / "small.yaml"), "--policies", "none,prophylactic_dex", "--n", "200",
                 "--out", str(root / "cmp")]) == 0
    assert main(["escalate", "--p-true", "0.05,0.15,0.3,0.5", "--design", "boin", "--trials", "200",
                 "--out", str(root / "esc")]) == 0
    write_fit_folder(root / "fit")
    return root


def write_fit_folder(folder: Path) -> None:
    """The files `vpop fit --out` writes (vpop/fitting/cli.py), with small made-up contents."""
    folder.mkdir()
    (folder / "diagnostics.json").write_text(json.dumps({
        "method": "svi", "guide": "normal", "steps": 300, "final_loss": 1234.5, "finite": True,
        "warnings": ["SVI loss still falling over the last 10% of steps: increase --steps"], "seconds": 12.3}))
    pd.DataFrame({"parameter": ["car_prolif_max", "il6_per_myeloid"], "median": [1.1, 0.8],
                  "q0.05": [0.9, 0.6], "q0.95": [1.3, 1.0]}).to_csv(folder / "summary.csv", index=False)
    (folder / "fitted.yaml").write_text("# Written by `vpop fit`.\nextends: default.yaml\nname: default-fitted\n"
                                        "parameters:\n  car_prolif_max: 1.1\n  il6_per_myeloid: 0.8\n")
    rng = np.random.default_rng(0)
    pred = rng.lognormal(3, 1, 40)
    pd.DataFrame({"ID": np.repeat([1, 2], 20), "TIME": np.tile(np.arange(20) * 0.5, 2),
                  "analyte": np.tile(["IL6", "CRP"], 20), "DV": pred * rng.lognormal(0, 0.3, 40),
                  "censored": [False] * 38 + [True] * 2, "pred_median": pred, "pred_q05": pred / 2,
                  "pred_q95": pred * 2}).to_csv(folder / "predictions.csv", index=False)
    pd.DataFrame({"cohort": "ZUMA-1", "endpoint": ["CRS any grade", "CRS grade >= 3"], "scale": "lee2014",
                  "published": [0.93, 0.13], "unit": "fraction", "simulated_median": [0.9, 0.15],
                  "low": [0.85, 0.08], "high": [0.95, 0.22]}).to_csv(folder / "rates.csv", index=False)


class _Doc(HTMLParser):
    """Headings, ids, images and every src/href of a page."""

    def __init__(self):
        super().__init__()
        self.headings: list[tuple[str, str]] = []
        self.ids: set[str] = set()
        self.imgs: list[dict] = []
        self.refs: list[str] = []
        self.tags: set[str] = set()
        self._in: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a)
        for key in ("src", "href", "srcset", "data", "poster", "action"):
            if key in a:
                self.refs.append(a[key])
        if tag in ("h2", "h3"):
            self._in, self._text = tag, []

    def handle_data(self, data):
        if self._in:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == self._in:
            self.headings.append((tag, "".join(self._text)))
            self._in = None


def parse(text: str) -> _Doc:
    doc = _Doc()
    doc.feed(text)
    return doc


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def check_self_contained(text: str, doc: _Doc) -> None:
    """Every image a decodable PNG data URI; every reference in-page; no scripts or external resources."""
    for img in doc.imgs:
        src = img["src"]
        assert src.startswith("data:image/png;base64,")
        w, h = png_size(base64.b64decode(src.split(",", 1)[1], validate=True))
        assert 300 <= w <= 1000 and 100 <= h <= 2000, (w, h)
        assert img.get("alt")
    for ref in doc.refs:
        assert ref.startswith("data:image/png;base64,") or (ref.startswith("#") and ref[1:] in doc.ids), ref[:60]
    assert "script" not in doc.tags and "link" not in doc.tags and "iframe" not in doc.tags
    assert not re.search(r"url\(|@import|https?://|file:", re.sub(r'src="data:image/png;base64,[^"]*"', "", text))


def test_report_of_every_output(runs, capsys):
    assert main(["report", str(runs), "--sample", "12", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    path = runs / "report.html"
    assert f"wrote {path}" in out and "10 figures" in out
    assert not list(runs.glob(".report.html.tmp*"))
    text = path.read_text(encoding="utf-8")
    doc = parse(text)
    headings = [h for _, h in doc.headings]
    for h in ("Outputs found", "Simulation: runs/sim", *SIMULATION_HEADINGS, "Sweep: runs/sweep",
              "Dose–toxicity curves", "Sweep tables", "Policy comparison: runs/cmp", "Dose escalation: runs/esc",
              "Operating characteristics", "Fit: runs/fit", "Posterior summary", "Config and versions"):
        assert h in headings, h
    # the answer first, then sections in the order simulation, sweep, comparison, escalation, fit, provenance
    top = [h for tag, h in doc.headings if tag == "h2"]
    assert top == ["Headline: runs/sim", "Outputs found", "Simulation: runs/sim", "Sweep: runs/sweep", "Policy comparison: runs/cmp",
                   "Dose escalation: runs/esc", "Fit: runs/fit", "Config and versions"]
    # 5 simulation figures, 1 sweep, 1 comparison, 1 escalation, 2 fit
    assert len(doc.imgs) == 10
    check_self_contained(text, doc)
    assert len(text.encode()) < 3_000_000

    # the numbers on the page are those of the outputs
    pts = pd.read_parquet(runs / "sim" / "patients.parquet")
    crs_any = (pts["crs_max_grade"] >= 1).mean()
    icans3 = (pts["icans_max_grade"] >= 3).mean()
    assert f"{100 * crs_any:.1f}%" in text and f"{100 * icans3:.1f}%" in text
    for g in range(6):  # the grade table counts every patient once per scale
        k = int((pts["crs_max_grade"] == g).sum())
        assert f"{k} ({100 * k / len(pts):.0f}%)" in text
    assert "12 patients drawn at random (seed 3) from 200" in text
    assert "Not in the observation table" not in text  # every listed biomarker is simulated
    sweep = pd.read_csv(runs / "sweep" / "sweep.csv", keep_default_na=False)
    r = sweep[(sweep["endpoint"] == "CRS grade >= 3") & (sweep["dose_multiplier"] == 2.0)].iloc[0]
    v, lo, hi = (float(r[c]) for c in ("value", "ci_low", "ci_high"))  # text columns where another row is empty
    assert f"{100 * v:.1f}% ({100 * lo:.1f}–{100 * hi:.1f})" in text
    diff = pd.read_csv(runs / "cmp" / "differences.csv")
    d = diff[diff["endpoint"] == "ICANS grade >= 3 (astct)"].iloc[0]
    assert f"{100 * d['difference']:+.1f} ({100 * d['ci_low']:+.1f} to {100 * d['ci_high']:+.1f})" in text
    assert "prophylactic_dex against none" in text
    assert "BOIN" in text and "target DLT rate" in text
    assert "SVI loss still falling" in text and "car_prolif_max" in text
    # config and versions
    import jax

    from vpop import __version__

    assert f"<dd>{jax.__version__}</dd>" in text and f"<dd>{__version__}</dd>" in text
    assert "name: small" in text and "vpop_version" in text  # the simulation's config.yaml, as written
    assert "dose_multiplier: [0.5, 2]" in text  # sweep.yaml
    assert "default-fitted" in text  # fitted.yaml
    assert "vpop report" in text and "--sample 12 --seed 3" in text


def test_sections_follow_the_data(runs, tmp_path):
    from vpop.report import build_report

    # a simulation alone, two biomarkers missing from its observation table
    sim = tmp_path / "sim"
    shutil.copytree(runs / "sim", sim)
    obs = pd.read_parquet(sim / "observations.parquet").drop(columns=["nfl_pg_ml", "ang2_ng_ml"])
    obs.to_parquet(sim / "observations.parquet", index=False)
    out = tmp_path / "pages" / "one.html"
    rep = build_report(sim, out, sample=5)
    assert rep.path == out and out.is_file() and not (sim / "report.html").exists()
    text = out.read_text()
    doc = parse(text)
    headings = [h for _, h in doc.headings]
    assert all(h in headings for h in SIMULATION_HEADINGS)
    assert not any(h.startswith(("Sweep", "Policy comparison", "Dose escalation", "Fit")) for h in headings)
    assert "Not in the observation table, so not shown: Ang-2 (ang2_ng_ml), NfL (nfl_pg_ml)." in text
    assert len(doc.imgs) == 5
    check_self_contained(text, doc)

    # a large cohort: trajectories come from a random subset of patients, read from Parquet by id
    from vpop.report import sources

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sources, "MAX_TRAJECTORY_PATIENTS", 50)
        src = sources.load_simulation(sim, "sim", seed=4)
    assert src.observations["patient_id"].nunique() == 50 and len(src.patients) == 200
    assert "a random 50 of the 200 patients (seed 4)" in src.observations_note
    full = pd.read_parquet(sim / "observations.parquet")
    one = src.observations["patient_id"].iloc[0]
    assert len(src.observations[src.observations["patient_id"] == one]) == (full["patient_id"] == one).sum()

    # without observations: no swimmer plot, no trajectories, and the page says why
    (sim / "observations.parquet").unlink()
    rep = build_report(sim, out)
    text = out.read_text()
    headings = [h for _, h in parse(text).headings]
    assert "Grades over time: a sample of patients" not in headings
    assert "Biomarker trajectories by maximum grade" not in headings
    assert "Cumulative incidence of CRS and ICANS onset" in headings
    assert "observations.parquet is not in" in text and rep.n_figures == 3

    # an escalation alone
    rep = build_report(runs / "esc", tmp_path / "esc.html")
    headings = [h for _, h in parse((tmp_path / "esc.html").read_text()).headings]
    assert headings[:3] == ["Outputs found", "Dose escalation: esc", "Operating characteristics"]  # no headline
    assert rep.n_figures == 1


def test_sweep_with_posterior_intervals_gets_a_band(runs, tmp_path):
    from matplotlib.collections import PolyCollection

    from vpop.report import figures
    from vpop.report.build import build_report

    folder = tmp_path / "sweep"
    folder.mkdir()
    t = pd.read_csv(runs / "sweep" / "sweep.csv", keep_default_na=False)
    t["value"] = pd.to_numeric(t["value"], errors="coerce")  # a timing cell without events is written empty
    rate = t["kind"] == "rate"
    t["post_value"] = np.where(rate, t["value"], np.nan)
    t["post_low"] = np.where(rate, np.clip(t["value"] - 0.05, 0, 1), np.nan)
    t["post_high"] = np.where(rate, np.clip(t["value"] + 0.05, 0, 1), np.nan)
    t.to_csv(folder / "sweep.csv", index=False)
    build_report(folder)
    assert "posterior-predictive 95% interval" in (folder / "report.html").read_text()
    panel = t[rate & (t["endpoint"] == "CRS grade >= 3")].assign(x=lambda d: d["dose_multiplier"], series="")
    fig = figures.dose_toxicity([("CRS grade >= 3", panel)], "dose (multiple of the config's dose)", True, None, [""])
    assert any(isinstance(c, PolyCollection) for c in fig.axes[0].collections)


# --- what the page says, checked mechanically --------------------------------------------------------------


def _capture_figures(monkeypatch):
    """Every figure the page builder draws, with its caption, in order."""
    from vpop.report.page import Page

    seen = []
    original = Page.figure

    def figure(self, fig, caption, alt=None):
        seen.append((fig, caption))
        return original(self, fig, caption, alt)

    monkeypatch.setattr(Page, "figure", figure)
    return seen


def _with_trial_scales(runs, tmp_path) -> Path:
    """The small simulation as if graded under ZUMA-1's scales too: Lee 2014 CRS equal to ASTCT (so their onset
    curves coincide), Penn CRS half a day later, CTCAE neurotoxicity one grade higher than ASTCT ICANS."""
    sim = tmp_path / "sim"
    shutil.copytree(runs / "sim", sim)
    pts = pd.read_parquet(sim / "patients.parquet")
    for what in ("max_grade", "onset_day"):
        pts[f"crs_{what}_lee2014"] = pts[f"crs_{what}"]
    pts["crs_max_grade_penn"] = pts["crs_max_grade"]
    pts["crs_onset_day_penn"] = pts["crs_onset_day"] + 0.5
    pts["icans_max_grade_ctcae"] = np.where(pts["icans_max_grade"] > 0, np.minimum(pts["icans_max_grade"] + 1, 5), 0)
    pts["icans_onset_day_ctcae"] = pts["icans_onset_day"]
    pts.to_parquet(sim / "patients.parquet", index=False)
    cfg = re.sub(r"(?m)^trial:.*\n", "", (sim / "config.yaml").read_text())
    (sim / "config.yaml").write_text("trial: ZUMA-1\n" + cfg)
    return sim


def _section(text: str, start: str, end: str) -> str:
    i = text.index(start)
    return text[i:text.index(end, i)]


def test_headline_leads_with_both_scales_and_the_management(runs, tmp_path):
    from vpop.report import build_report

    sim = _with_trial_scales(runs, tmp_path)
    build_report(sim, tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    doc = parse(text)
    assert [h for tag, h in doc.headings if tag == "h2"][0] == "Headline: sim"
    # before the contents and before the covariates
    assert text.index("Headline: sim") < text.index('<nav class="toc">') < text.index("Cohort and covariates")
    head = _section(text, "Headline: sim", '<nav class="toc">')
    pts = pd.read_parquet(sim / "patients.parquet")
    from vpop.stats import wilson_interval

    for col in ("crs_max_grade", "crs_max_grade_lee2014", "icans_max_grade", "icans_max_grade_ctcae"):
        k = int((pts[col] >= 3).sum())
        lo, hi = wilson_interval(k, len(pts))
        assert f"{100 * k / len(pts):.1f}% ({100 * lo:.1f}–{100 * hi:.1f}) — {k}/{len(pts)}" in head, col
    assert "ZUMA-1&#x27;s scale" in head and "(Lee 2014)" in head and "(CTCAE)" in head
    assert "management given" in head and "asco2021: tocilizumab 8 mg/kg" in head and "tocilizumab given" in head

    # the trial's scales not graded (the small config grades ASTCT only), or no trial: ASTCT only, and why
    build_report(runs / "sim", tmp_path / "astct.html")
    head = _section((tmp_path / "astct.html").read_text(), "Headline: sim", '<nav class="toc">')
    assert "did not grade the scales ZUMA-1 reported with" in head and "scale: %" not in head
    plain = tmp_path / "plain"
    shutil.copytree(runs / "sim", plain)
    cfg = (plain / "config.yaml").read_text()
    (plain / "config.yaml").write_text(re.sub(r"(?m)^trial:.*\n", "", cfg))
    build_report(plain, tmp_path / "plain.html")
    head = _section((tmp_path / "plain.html").read_text(), "Headline: plain", '<nav class="toc">')
    assert "names no trial" in head and "scale: %" not in head


def test_coinciding_onset_curves_stay_distinguishable_and_match_the_table(runs, tmp_path, monkeypatch):
    from vpop.report import build_report

    sim = _with_trial_scales(runs, tmp_path)
    figs = _capture_figures(monkeypatch)
    build_report(sim, tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    fig = next(f for f, cap in figs if cap.startswith("Percentage of patients whose first episode"))
    crs_ax = next(ax for ax in fig.axes if ax.get_title(loc="left") == "CRS onset")
    lines = crs_ax.get_lines()
    labels = [" ".join(ln.get_label().split()) for ln in lines]  # legend labels are wrapped
    # ASTCT and Lee 2014 coincide: one line naming both; Penn differs: its own line; plus ASTCT grade >= 3
    assert len(lines) == 3, labels
    assert labels[0].startswith("ASTCT, Lee 2014 (identical): any grade")
    styles = {(ln.get_color(), ln.get_linestyle(), ln.get_marker()) for ln in lines}
    assert len(styles) == len(lines)  # every line drawn differently
    assert len({ln.get_linestyle() for ln in lines}) == len(lines) and len({ln.get_marker() for ln in lines}) == len(lines)
    # each curve's final value is the table's number, and grade >= 3 matches the grade table (same patients)
    onset_table = _section(text, "Cumulative incidence of CRS and ICANS onset", "Onset of the first episode")
    pts = pd.read_parquet(sim / "patients.parquet")
    for ax in fig.axes:
        for label in (" ".join(ln.get_label().split()) for ln in ax.get_lines()):
            final = re.search(r"— ([\d.]+%) by day", label).group(1)
            assert f"<td class=\"num\">{final}</td>" in onset_table, (label, final)
    icans3 = next(" ".join(ln.get_label().split()) for ax in fig.axes for ln in ax.get_lines()
                  if ax.get_title(loc="left") == "ICANS onset" and "grade ≥ 3" in ln.get_label())
    assert f"— {100 * (pts['icans_max_grade'] >= 3).mean():.1f}% by day" in icans3


def test_swimmer_lanes_legends_and_axis_labels(runs, tmp_path, monkeypatch):
    """CRS and ICANS in separate panels; no legend over any axes' data; axis labels in words, ticks readable."""
    from vpop.report import build_report

    figs = _capture_figures(monkeypatch)
    build_report(runs, tmp_path / "all.html", sample=8)  # every page type
    assert len(figs) == 10
    swim = next(f for f, cap in figs if "CRS on the left, ICANS on the right" in cap)
    titles = [ax.get_title(loc="left") for ax in swim.axes]
    assert titles == ["CRS (ASTCT grade)", "ICANS (ASTCT grade)"]
    identifier = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)+$")  # dose_multiplier, car_dose_per_kg
    raw_number = re.compile(r"^[−-]?\d{6,}$|e[+−-]\d")  # 500000, 1e+06
    for fig, caption in figs:
        fig.canvas.draw() if fig.canvas is not None else None
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw(renderer)
        boxes = [ax.get_window_extent(renderer) for ax in fig.axes if ax.get_visible()]
        legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        for leg in legends:
            lb = leg.get_window_extent(renderer)
            for box in boxes:
                overlap_w = min(lb.x1, box.x1) - max(lb.x0, box.x0)
                overlap_h = min(lb.y1, box.y1) - max(lb.y0, box.y0)
                assert overlap_w <= 1 or overlap_h <= 1, f"legend over the data: {caption[:60]}"
        for ax in fig.axes:
            if not ax.get_visible():
                continue
            for label in (ax.get_xlabel(), ax.get_ylabel()):
                assert not identifier.match(label), (label, caption[:60])
            for tick in ax.get_xticklabels() + ax.get_yticklabels():
                assert not raw_number.search(tick.get_text()), (tick.get_text(), caption[:60])


def test_readable_numbers_and_factor_labels():
    from vpop.report import figures

    assert figures.readable(500000) == "500,000" and figures.readable(2e6) == "2 million"
    assert figures.readable(0.5) == "0.5" and figures.readable(1.5e9) == "1.5 billion"
    assert figures.factor_label("dose", [5e5, 2e6]) == ("CAR-T dose (million cells/kg)", 1e6)
    assert figures.factor_label("dose_multiplier")[0] == "dose (multiple of the config's dose)"
    assert figures.factor_label("tumor_burden_center")[0] == "tumour burden (1 = LBCL median): typical value"


def test_percentile_bands_and_groups():
    from vpop.report import figures

    obs = pd.DataFrame({"time_day": [0, 0, 0, 1, 1, 1], "v": [1.0, 2.0, 3.0, 10.0, 20.0, np.nan]})
    group = figures.grade_group(np.array([0, 1, 3, 0, 2, 5]))
    assert group.tolist() == [0, 0, 2, 0, 1, 2]
    bands = figures.percentile_bands(obs, "v", np.zeros(6, dtype=int))
    q = bands[0].set_index("time_day")
    assert q.loc[0, "p50"] == 2.0 and q.loc[0, "p10"] == pytest.approx(np.quantile([1, 2, 3], 0.1))
    assert q.loc[1, "n"] == 2 and q.loc[1, "p90"] == pytest.approx(np.quantile([10, 20], 0.9))


def test_errors_name_the_folder_and_write_nothing(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"vpop report: error: {empty}: nothing to report" in err
    assert "patients.parquet" in err and "sweep.csv" in err and "Traceback" not in err
    assert list(empty.iterdir()) == []

    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err

    bad = tmp_path / "bad"
    bad.mkdir()
    pd.DataFrame({"endpoint": ["CRS any grade"], "value": [0.5]}).to_csv(bad / "sweep.csv", index=False)
    assert main(["report", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad / 'sweep.csv'}: column(s) scale, kind, ci_low, ci_high, count, n missing" in err
    assert not (bad / "report.html").exists()

    assert main(["report", str(bad), "--sample", "0"]) == 2
    assert "--sample: got 0" in capsys.readouterr().err


# --- in a real browser ------------------------------------------------------------------------------

PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var b = document.body;
  b.setAttribute('data-images', String(imgs.length));
  b.setAttribute('data-decoded', String(ok));
  b.setAttribute('data-resources', String(performance.getEntriesByType('resource').length));
  b.setAttribute('data-probe', 'done');
});
</script>"""


LAYOUT_PROBE = """<script>
window.addEventListener('load', function () {
  var vw = document.documentElement.clientWidth, bad = [];
  var main = document.querySelector('main').getBoundingClientRect();
  function name(e) { return e.tagName + (e.className ? '.' + e.className : '') + ':' +
                     (e.textContent || e.alt || '').trim().slice(0, 40); }
  Array.prototype.forEach.call(document.querySelectorAll('main *'), function (e) {
    var r = e.getBoundingClientRect();
    if (r.width && (r.right > main.right + 1 || r.left < main.left - 1)) bad.push('outside ' + name(e));
    if (e.scrollWidth > e.clientWidth + 1 && e.clientWidth > 0 && getComputedStyle(e).overflowX !== 'visible')
      bad.push('scrolls ' + name(e));
  });
  var head = document.querySelector('h2');
  var table = head ? head.parentNode.querySelector('h2 ~ .tablewrap') : null;
  var b = document.body;
  b.setAttribute('data-docwidth', String(document.documentElement.scrollWidth));
  b.setAttribute('data-viewport', String(vw));
  b.setAttribute('data-bad', bad.slice(0, 8).join(' | ').replace(/"/g, "'"));
  b.setAttribute('data-nbad', String(bad.length));
  b.setAttribute('data-headline', head ? head.textContent : '');
  b.setAttribute('data-headline-bottom', String(table ? Math.round(table.getBoundingClientRect().bottom) : -1));
  b.setAttribute('data-probe', 'done');
});
</script>"""


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _run_browser(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_report_opens_in_a_headless_browser(runs, tmp_path):
    browser = _browser()
    if browser is None:
        if os.environ.get("VPOP_REQUIRE_BROWSER") == "1":
            pytest.fail("VPOP_REQUIRE_BROWSER=1 but no chromium, chromium-browser or google-chrome on PATH")
        pytest.skip("no headless browser (chromium, chromium-browser, google-chrome) on PATH")
    page = runs / "browser.html"
    assert main(["report", str(runs), "--out", str(page), "--sample", "20"]) == 0
    text = page.read_text(encoding="utf-8")
    n_images = len(parse(text).imgs)

    # the page as it is: loads and renders (screenshot at a laptop's size)
    shot = tmp_path / "shot.png"
    res = _run_browser(browser, tmp_path / "profile1", f"--screenshot={shot}", "--window-size=1366,900",
                       page.resolve().as_uri())
    assert shot.is_file(), res.stderr[-2000:]
    assert shot.stat().st_size > 30_000
    import matplotlib.image as mpimg

    pixels = mpimg.imread(str(shot))
    assert pixels.shape[:2] == (900, 1366)
    assert pixels[..., :3].std() > 0.05  # not a blank page
    keep = os.environ.get("VPOP_REPORT_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)

    # a test-only copy with a probe script: every image decoded, nothing fetched
    probe = runs / "browser-probe.html"
    probe.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    res = _run_browser(browser, tmp_path / "profile2", "--dump-dom", probe.resolve().as_uri())
    dom = res.stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, (res.returncode, res.stderr[-2000:])
    attrs = dict(re.findall(r'(data-[a-z]+)="([^"]*)"', body.group(1)))
    assert attrs.get("data-probe") == "done", attrs
    assert int(attrs["data-images"]) == n_images == 10
    assert int(attrs["data-decoded"]) == n_images  # every image decoded (none broken)
    assert attrs["data-resources"] == "0"  # no file or network fetch: everything is inline
    assert "<title>vpop report: runs</title>" in dom
    for heading in ("Simulation: runs/sim", "Biomarker trajectories by maximum grade", "Config and versions"):
        assert heading in dom


@pytest.mark.parametrize("width,print_rules", [(1400, False), (718, True)], ids=["1400px", "print-width"])
def test_every_page_type_fits_the_width_in_a_browser(runs, tmp_path, width, print_rules):
    """At a wide screen and at A4 print width (718 CSS px, print rules applied): no element wider than the page,
    no table or block that must scroll or clips, and the headline table on the first screen."""
    browser = _browser()
    if browser is None:
        if os.environ.get("VPOP_REQUIRE_BROWSER") == "1":
            pytest.fail("VPOP_REQUIRE_BROWSER=1 but no chromium, chromium-browser or google-chrome on PATH")
        pytest.skip("no headless browser (chromium, chromium-browser, google-chrome) on PATH")
    page = tmp_path / "page.html"
    assert main(["report", str(runs), "--out", str(page), "--sample", "20"]) == 0
    text = page.read_text(encoding="utf-8")
    if print_rules:  # what the printer lays out: the print rules, on a page as wide as A4's printable width
        text = text.replace("@media print {", "@media all {")
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", LAYOUT_PROBE + "</body>"), encoding="utf-8")
    res = _run_browser(browser, tmp_path / "profile", f"--window-size={width},900", "--dump-dom",
                       probe.resolve().as_uri())
    body = re.search(r"<body([^>]*)>", res.stdout)
    assert body, (res.returncode, res.stderr[-2000:])
    attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', body.group(1)))
    assert attrs.get("data-probe") == "done", attrs
    assert int(attrs["data-docwidth"]) <= int(attrs["data-viewport"]), attrs
    assert attrs["data-nbad"] == "0", attrs["data-bad"]
    assert attrs["data-headline"] == "Headline: runs/sim"
    assert 0 < int(attrs["data-headline-bottom"]) <= 900, attrs  # the answer is on the first screen
    shots = os.environ.get("VPOP_REPORT_SCREENSHOT_DIR")
    if shots:
        for tall in (900, 6000):
            out = Path(shots) / f"report-{width}-{tall}.png"
            _run_browser(browser, tmp_path / f"profile-shot-{tall}", f"--screenshot={out}",
                         f"--window-size={width},{tall}", probe.resolve().as_uri())

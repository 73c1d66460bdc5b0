"""The fit's diagnostics in `vpop report` and the VPC table: oracles that need no fit."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from vpop.cli import main
from vpop.fitting import diagnostics

DIAGNOSTIC_HEADINGS = ("Optimiser loss", "Sampler (NUTS)", "Convergence", "Eta shrinkage",
                       "Information criterion (PSIS-LOO)", "Residuals (NPDE)", "Individual fits",
                       "Visual predictive check")


def _fit_folder(folder: Path, divergences: int, r_hat: float) -> None:
    """The files `vpop fit --method nuts --out` writes, made up with known values."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    (folder / "diagnostics.json").write_text(json.dumps({"method": "nuts", "seconds": 12.0, "warnings": []}))
    pd.DataFrame({"parameter": ["crp_max"], "median": [250.0], "q0.05": [200.0], "q0.95": [300.0]}).to_csv(
        folder / "summary.csv", index=False)
    pd.DataFrame({"iteration": np.arange(50), "loss": 100 + np.exp(-np.arange(50) / 5)}).to_csv(
        folder / "loss_trace.csv", index=False)
    div = np.zeros(200, bool)
    div[:divergences] = True
    pd.DataFrame({"chain": np.repeat([0, 1], 100), "draw": np.tile(np.arange(100), 2), "diverging": div,
                  "n_steps": 15, "tree_depth": 4, "acceptance_rate": 0.85, "energy": rng.normal(size=200)}).to_csv(
        folder / "sampler_stats.csv", index=False)
    pd.DataFrame({"chain": [0, 1], "ebfmi": [0.9, 1.1]}).to_csv(folder / "ebfmi.csv", index=False)
    pd.DataFrame({"variable": ["log_theta[crp_max]", "omega[crp_max]"], "mean": [5.5, 0.2], "sd": [0.1, 0.05],
                  "r_hat": [1.0, r_hat], "ess_bulk": [400.0, 300.0]}).to_csv(folder / "convergence.csv", index=False)
    pd.DataFrame({"parameter": ["crp_max"], "omega": [0.2], "sd_eta": [0.18], "shrinkage": [0.1]}).to_csv(
        folder / "shrinkage.csv", index=False)
    (folder / "loo.json").write_text(json.dumps({"elpd_loo": -123.4, "se": 5.6, "p_loo": 7.8, "pareto_k_above_0.7": 0}))
    n = 24
    pop = rng.lognormal(3, 0.5, n)
    pd.DataFrame({"ID": np.repeat([1, 2, 3], 8), "TIME": np.tile(np.arange(8.0), 3), "analyte": "crp_mg_l",
                  "DV": pop * rng.lognormal(0, 0.2, n), "censored": False, "pred_median": pop, "pred_q05": pop / 1.5,
                  "pred_q95": pop * 1.5, "ipred": pop, "pop_pred": pop, "npde": rng.normal(size=n),
                  "iwres": rng.normal(size=n)}).to_csv(folder / "predictions.csv", index=False)
    pd.DataFrame({"analyte": "crp_mg_l", "time": np.arange(8.0), "n": 3, "obs_q05": 10.0, "obs_q50": 20.0,
                  "obs_q95": 40.0, "sim_q05_lo": 8.0, "sim_q05_hi": 12.0, "sim_q50_lo": 17.0, "sim_q50_hi": 23.0,
                  "sim_q95_lo": 35.0, "sim_q95_hi": 45.0, "obs_blq": 0.0, "sim_blq_lo": 0.0,
                  "sim_blq_hi": 0.0}).to_csv(folder / "vpc.csv", index=False)


class _Headings(HTMLParser):
    def __init__(self):
        super().__init__()
        self.headings, self._in, self.imgs = [], None, 0

    def handle_starttag(self, tag, attrs):
        if tag in ("h2", "h3"):
            self._in = ""
        if tag == "img":
            self.imgs += 1

    def handle_data(self, data):
        if self._in is not None:
            self._in += data

    def handle_endtag(self, tag):
        if tag in ("h2", "h3") and self._in is not None:
            self.headings.append(self._in.strip())
            self._in = None


def _report(folder: Path, capsys) -> tuple[str, _Headings]:
    assert main(["report", str(folder)]) == 0
    capsys.readouterr()
    text = (folder / "report.html").read_text(encoding="utf-8")
    doc = _Headings()
    doc.feed(text)
    return text, doc


def test_report_shows_every_fit_diagnostic_and_warns_on_bad_sampling(tmp_path, capsys):
    """Each diagnostics file becomes its section; divergences and R-hat above 1.01 are flagged by name, a clean
    run has no such warning (a report that always or never warned would fail one of the two)."""
    bad = tmp_path / "bad" / "fit"
    _fit_folder(bad, divergences=3, r_hat=1.05)
    text, doc = _report(bad.parent, capsys)
    for h in DIAGNOSTIC_HEADINGS:
        assert h in doc.headings, h
    assert doc.imgs == 5  # observed vs predicted, loss trace, NPDE, individual fits, VPC
    assert "3 divergent transitions" in text and "R-hat above 1.01 for omega[crp_max]" in text
    assert "-123.4" in text  # the LOO number itself
    good = tmp_path / "good" / "fit"
    _fit_folder(good, divergences=0, r_hat=1.002)
    text, doc = _report(good.parent, capsys)
    assert "divergent transitions" not in text and "R-hat above" not in text


def _design(n, times, analytes=1):
    T = len(times) * analytes
    return SimpleNamespace(analytes=tuple(f"a{j}" for j in range(analytes)), settings=SimpleNamespace(dt=0.25),
                           obs_k=np.tile(np.repeat(np.asarray(times) / 0.25, analytes).astype(int), (n, 1)),
                           obs_w=np.zeros((n, T)), obs_analyte=np.tile(np.tile(np.arange(analytes), len(times)), (n, 1)),
                           obs_mask=np.ones((n, T), bool), obs_cens=np.zeros((n, T), bool), obs_logv=np.zeros((n, T)))


def test_vpc_observed_percentiles_fall_in_the_simulated_ranges_only_when_the_model_is_right():
    rng = np.random.default_rng(3)
    prob = _design(200, [1.0, 2.0, 4.0, 7.0])
    mean = np.tile(np.log([10.0, 50.0, 80.0, 30.0]), (200, 1))
    sims = mean[None] + 0.5 * rng.standard_normal((200, *mean.shape))
    prob.obs_logv = mean + 0.5 * rng.standard_normal(mean.shape)
    v = diagnostics.vpc_table(prob, sims)
    assert list(v["time"]) == [1.0, 2.0, 4.0, 7.0] and (v["n"] == 200).all()
    for q in ("q05", "q50", "q95"):
        inside = (v[f"obs_{q}"] >= v[f"sim_{q}_lo"]) & (v[f"obs_{q}"] <= v[f"sim_{q}_hi"])
        assert inside.sum() >= 3, q
    np.testing.assert_allclose(v["obs_q50"], [10, 50, 80, 30], rtol=0.15)
    prob.obs_logv = prob.obs_logv + 0.4  # data 50 % above what the fit simulates
    v = diagnostics.vpc_table(prob, sims)
    assert (v["obs_q50"] > v["sim_q50_hi"]).all()


def test_vpc_counts_censored_values_at_the_lloq_in_data_and_simulations():
    rng = np.random.default_rng(4)
    prob = _design(300, [1.0])
    y = np.log(20.0) + rng.standard_normal((300, 1))
    lloq = np.log(20.0)
    prob.obs_cens = y < lloq
    prob.obs_logv = np.maximum(y, lloq)
    sims = np.log(20.0) + rng.standard_normal((100, 300, 1))
    v = diagnostics.vpc_table(prob, sims).iloc[0]
    assert 0.4 < v["obs_blq"] < 0.6 and v["sim_blq_lo"] < 0.5 < v["sim_blq_hi"]
    np.testing.assert_allclose([v["obs_q05"], v["sim_q05_lo"], v["sim_q05_hi"]], 20.0, rtol=1e-12)


def test_laplace_fit_reports_both_standard_errors_and_flags_misspecification_and_confounding(tmp_path, capsys):
    """A Laplace fit's SEs appear under both covariances with their ratio; a sandwich/Hessian ratio beyond 2
    and a correlation beyond 0.95 are warned about by name, and a consistent fit gets neither warning."""
    def laplace_folder(name, ratio, r):
        folder = tmp_path / name / "fit"
        _fit_folder(folder, divergences=0, r_hat=1.0)
        diag = {"method": "laplace", "covariance": "hessian", "warnings": [],
                "map": {"crp_max": 250.0, "il6_signal_ec50": 40.0},
                "se_log_hessian": {"crp_max": 0.1, "il6_signal_ec50": 0.2},
                "se_log_sandwich": {"crp_max": 0.1 * ratio, "il6_signal_ec50": 0.21},
                "correlation": {"crp_max": {"crp_max": 1.0, "il6_signal_ec50": r},
                                "il6_signal_ec50": {"crp_max": r, "il6_signal_ec50": 1.0}}}
        (folder / "diagnostics.json").write_text(json.dumps(diag))
        return folder.parent

    text, doc = _report(laplace_folder("bad", 3.1, 0.98), capsys)
    assert "Standard errors (Laplace)" in doc.headings
    assert "0.31" in text and "3.1" in text  # the sandwich SE and its ratio to the Hessian's
    assert "differ more than twofold for crp_max" in text
    assert "crp_max and il6_signal_ec50 (r = +0.980)" in text
    text, doc = _report(laplace_folder("good", 1.05, 0.4), capsys)
    assert "Standard errors (Laplace)" in doc.headings
    assert "twofold" not in text and "correlated beyond" not in text

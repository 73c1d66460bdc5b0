"""The validation scorecard: every row of the published-cohort table and every fact of issue 12, simulated.

    from vpop.trials.validation import validate, write_markdown
    card = validate(n=2000, seed=1)
    card.rows      # one row per table row: published value and 95% Wilson interval, simulated value and interval, IN/OUT
    card.facts     # one row per fact and endpoint: paired effect, its 95% interval, HOLDS/FAILS

Rows. Each cohort runs its product preset (`vpop/configs/`) under the management
of its own trial (`vpop.policy.settings.PRESETS`) and is graded under the scale
the trial reported with (`COHORTS`). A rate row is IN when the simulated rate lies
inside the published 95% Wilson interval (k = round(rate x n) of n), nothing
looser; a timing median (or CAR-T peak / Tmax median) is IN when it lies inside
the IQR, quartiles or range that the row's note gives. Rows with no interval to
score against (n not reported, no spread published, units the simulator does
not produce) are listed with the reason and counted apart.

Facts. Each fact compares two arms run on the same virtual patients (the same
seed and patient indices: patient i is fold_in(PRNGKey(seed), i) whatever the
policy or dose), so the comparison is paired. Effects and 95% intervals:

* difference of paired proportions, d = (b - c) / n, with the normal
  approximation of its paired variance, se = sqrt(b + c - (b - c)^2 / n) / n
  (b, c: the discordant pairs); an arm compared with itself gives 0 with zero width;
* geometric-mean ratio of a paired continuous read-out (peak serum IL-6):
  exp(mean(log x - log r) +/- z sd / sqrt(n));
* risk ratio between two groups of different patients (top vs bottom tumour-burden
  quartile): the Katz log interval, 0.5 added to every cell when a count is 0;
* a single proportion (ICANS >= 3 preceded by CRS; oxygen or vasopressors preceded by
  CRS; no CRS below one cell): Wilson.

A fact HOLDS when its interval lies on the stated side: "lower" needs the upper
bound below 0, "higher" the lower bound above 0 (above 1 for a ratio), "not
lower" an upper bound >= 0, "no more" a lower bound <= 0, "between a and b" the
whole interval inside [a, b], "at least p" the Wilson lower bound >= p, "none"
zero events. A fact with several endpoints holds when every one does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import pandas as pd

from vpop.fitting.cohort_tables import Target, engine_indicator, engine_median, read_cohort_table
from vpop.policy.settings import DESCRIPTIONS, PRESETS, with_overrides
from vpop.stats import wilson_interval

Z95 = 1.959963984540054
NAN = float("nan")


# --- statistics ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Effect:
    kind: str  # difference | ratio | proportion | count | drift
    value: float
    low: float
    high: float
    n: int


def paired_proportion_difference(arm: np.ndarray, reference: np.ndarray, z: float = Z95) -> Effect:
    """rate(arm) - rate(reference) of paired yes/no outcomes, normal approximation of the paired variance."""
    x, r = np.asarray(arm, bool), np.asarray(reference, bool)
    if x.shape != r.shape or x.ndim != 1:
        raise ValueError("paired outcomes must be two 1-D arrays of equal length")
    n = len(x)
    if n == 0:
        return Effect("difference", NAN, NAN, NAN, 0)
    b, c = int(np.sum(x & ~r)), int(np.sum(~x & r))
    d = (b - c) / n
    se = math.sqrt(max(0.0, b + c - (b - c) ** 2 / n)) / n
    return Effect("difference", d, d - z * se, d + z * se, n)


def paired_ratio(arm: np.ndarray, reference: np.ndarray, z: float = Z95) -> Effect:
    """Geometric-mean ratio arm / reference of a positive paired read-out, with a normal interval on the log scale."""
    x, r = np.asarray(arm, float), np.asarray(reference, float)
    if x.shape != r.shape or x.ndim != 1:
        raise ValueError("paired read-outs must be two 1-D arrays of equal length")
    if len(x) < 2:
        return Effect("ratio", NAN, NAN, NAN, len(x))
    diff = np.log(x) - np.log(r)
    m, se = float(np.mean(diff)), float(np.std(diff, ddof=1) / math.sqrt(len(diff)))
    return Effect("ratio", math.exp(m), math.exp(m - z * se), math.exp(m + z * se), len(diff))


def risk_ratio(k1: int, n1: int, k0: int, n0: int, z: float = Z95) -> Effect:
    """(k1/n1) / (k0/n0) of two independent groups, Katz log interval (0.5 added to each cell if a count is 0)."""
    if n1 == 0 or n0 == 0:
        return Effect("ratio", NAN, NAN, NAN, n1 + n0)
    if min(k1, k0, n1 - k1, n0 - k0) == 0:
        k1, n1, k0, n0 = k1 + 0.5, n1 + 1.0, k0 + 0.5, n0 + 1.0
    rr = (k1 / n1) / (k0 / n0)
    se = math.sqrt(1 / k1 - 1 / n1 + 1 / k0 - 1 / n0)
    return Effect("ratio", rr, rr * math.exp(-z * se), rr * math.exp(z * se), int(n1 + n0))


def proportion(k: int, n: int) -> Effect:
    lo, hi = wilson_interval(k, n)
    return Effect("proportion", k / n if n else float("nan"), lo, hi, n)


def median_interval(values: np.ndarray, z: float = Z95) -> tuple[float, float, float]:
    """Median and its distribution-free 95% interval (order statistics n/2 -/+ z sqrt(n)/2)."""
    v = np.sort(np.asarray(values, float)[np.isfinite(values)])
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    half = z * math.sqrt(n) / 2.0
    lo, hi = max(0, int(math.floor(n / 2 - half))), min(n - 1, int(math.ceil(n / 2 + half)) - 1)
    return float(np.median(v)), float(v[lo]), float(v[hi])


def holds(effect: Effect, rule: str) -> bool:
    """Whether the effect's interval is on the side `rule` states (see the module docstring); never for NaN."""
    if not (np.isfinite(effect.low) and np.isfinite(effect.high)):
        return False
    if rule == "lower":
        return effect.high < 0.0
    if rule == "higher":
        return effect.low > (1.0 if effect.kind == "ratio" else 0.0)
    if rule == "not lower":
        return effect.high >= (1.0 if effect.kind == "ratio" else 0.0)
    if rule == "no more":
        return effect.low <= 0.0
    if rule == "none":
        return effect.value == 0.0
    m = re.fullmatch(r"between ([0-9.]+) and ([0-9.]+)", rule)
    if m:
        return float(m.group(1)) <= effect.low and effect.high <= float(m.group(2))
    m = re.fullmatch(r"at least ([0-9.]+)", rule)
    if m:
        return effect.low >= float(m.group(1))
    m = re.fullmatch(r"at most ([0-9.e-]+)", rule)
    if m:
        return effect.value <= float(m.group(1))
    raise ValueError(f"unknown rule {rule!r}")


def in_published_interval(simulated: float, target: Target) -> tuple[bool, float, float]:
    """IN when the simulated rate lies inside the published 95% Wilson interval of round(rate x n) of n."""
    lo, hi = wilson_interval(int(round(target.value * target.n)), target.n)
    return bool(lo <= simulated <= hi), lo, hi


def published_spread(note: str) -> tuple[float, float, str] | None:
    """The IQR, quartiles or range a note gives ("IQR 5-8", "range 1-12", "Q1 8.2, Q3 57.9"), or None."""
    m = re.search(r"\b(IQR|range)\s+([0-9.]+)\s*-\s*([0-9.]+)", note)
    if m:
        return float(m.group(2)), float(m.group(3)), m.group(1)
    m = re.search(r"Q1\s+([0-9.]+),\s*Q3\s+([0-9.]+)", note)
    if m:
        return float(m.group(1)), float(m.group(2)), "IQR"
    return None


# --- the cohorts: product preset, the trial's policy, the patients scored ------------------------------


@dataclass(frozen=True)
class Cohort:
    product: str  # product preset (vpop/configs)
    policy: str  # the trial's management (PRESETS)
    subset: str = "all"  # all | high_burden | high_burden_early_fever
    note: str = ""


_CHOP = "CHOP-CTL019-high-burden"
COHORTS: dict[str, Cohort] = {
    "ZUMA-1": Cohort("axicel", "zuma1_c12"),
    "JULIET": Cohort("tisacel_dlbcl", "penn_chop"),
    "TRANSCEND-NHL-001": Cohort("lisocel", "transcend"),
    "KarMMa": Cohort("idecel", "karmma"),
    "CARTITUDE-1": Cohort("ciltacel", "cartitude1"),
    "ELIANA": Cohort("tisacel_ball", "penn_chop"),
    "Hay-2017": Cohort("lisocel", "fred_hutch_2016", note="JCAR014 (the defined-composition precursor of liso-cel); "
                                                          "LBCL population for a mixed ALL/CLL/NHL cohort"),
    "Gust-2017": Cohort("lisocel", "fred_hutch_2016", note="as Hay-2017"),
    f"{_CHOP}(>=40% blasts)-standard-CRS-mgmt": Cohort("tisacel_ball", "penn_chop", "high_burden"),
    f"{_CHOP}-early-fever(<=d4)-standard": Cohort("tisacel_ball", "penn_chop", "high_burden_early_fever"),
    f"{_CHOP}-preemptive-toci-at-persistent-fever": Cohort("tisacel_ball", "chop_preemptive_toci", "high_burden"),
    f"{_CHOP}-early-fever(<=d4)-preemptive-toci": Cohort("tisacel_ball", "chop_preemptive_toci",
                                                         "high_burden_early_fever"),
    "ZUMA-1-cohort4-early-steroids/toci": Cohort("axicel", "zuma1_c4"),
    "ZUMA-1-cohort3-prophylactic-toci-d2+levetiracetam": Cohort("axicel", "zuma1_c3"),
    "MDACC-prophylactic-anakinra-d0-7": Cohort("axicel", "mdacc_anakinra"),
    "MDACC-TMTV-matched-historical-no-anakinra": Cohort("axicel", "asco2021", note="MDACC standard of care taken as "
                                                                                     "ASCO 2021"),
    "ZUMA-7-axi-cel-arm": Cohort("axicel", "asco2021", note="2018-2020 label-era management taken as ASCO 2021"),
    "CARTITUDE-1-PK": Cohort("ciltacel", "cartitude1"),
}
SUBSETS = {
    "all": "every virtual patient",
    "high_burden": "tumour burden at or above the preset's median (the trial: >= 40% marrow blasts)",
    "high_burden_early_fever": "high burden and fever (ASTCT CRS onset) by day 4",
}


def subset_mask(patients: pd.DataFrame, subset: str) -> np.ndarray:
    high = (patients["tumor_burden"] >= patients["tumor_burden"].median()).to_numpy()
    if subset == "all":
        return np.ones(len(patients), bool)
    if subset == "high_burden":
        return high
    if subset == "high_burden_early_fever":
        return high & (patients["crs_onset_day"] <= 4.0).to_numpy()
    raise ValueError(subset)


# --- simulation, cached by arm -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Arm:
    product: str
    policy: str  # a PRESETS name, or a name in EXTRA_POLICIES
    dose_per_kg: float | None = None  # overrides the product's dose (cells/kg)
    flat_dose: float | None = None  # overrides the product's dose (cells)
    rows: bool = False  # keep the observation table (serum analyte peak times)


# Arms of the facts that are not a trial's management: the drug alone, on top of no management.
EXTRA_POLICIES = {
    "toci_only": lambda: with_overrides(PRESETS["none"], {"toci_trigger_grade": 2.0}, "toci_only"),
    "steroids_only": lambda: with_overrides(PRESETS["asco2021"], {"toci_trigger_grade": None}, "steroids_only"),
}


class Runner:
    """Simulates each arm once (n patients, one seed) and keeps its tables."""

    def __init__(self, n: int, seed: int, progress: Callable[[str], None] | None = None,
                 adjust: Callable | None = None):
        self.n, self.seed, self.progress = n, seed, progress
        self.adjust = adjust  # (product, config) -> config: e.g. a calibration candidate's parameters
        self._cache: dict[Arm, tuple[pd.DataFrame, pd.DataFrame | None]] = {}

    def config(self, arm: Arm):
        from vpop.run.config import load_config

        cfg = load_config(arm.product)
        if self.adjust is not None:
            cfg = self.adjust(arm.product, cfg)
        policy = EXTRA_POLICIES[arm.policy]() if arm.policy in EXTRA_POLICIES else PRESETS[arm.policy]
        pop = cfg.population
        if arm.dose_per_kg is not None:
            pop = replace(pop, dose_per_kg=arm.dose_per_kg, flat_dose=None)
        if arm.flat_dose is not None:
            pop = replace(pop, dose_per_kg=None, flat_dose=arm.flat_dose)
        return replace(cfg, policy=policy, population=pop)

    def __call__(self, arm: Arm) -> pd.DataFrame:
        return self.run(arm)[0]

    def run(self, arm: Arm) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        if arm not in self._cache:
            rows_arm = replace(arm, rows=True)
            if not arm.rows and rows_arm in self._cache:
                return self._cache[rows_arm]
            from vpop.run.cohort import simulate

            if self.progress is not None:
                self.progress(f"{arm.product} / {arm.policy}" + (f" / dose {arm.dose_per_kg or arm.flat_dose:g}"
                                                                 if arm.dose_per_kg is not None or arm.flat_dose is not None
                                                                 else ""))
            res = simulate(self.config(arm), n=self.n, seed=self.seed, record_rows=arm.rows)
            from vpop.run.endpoints import failed

            ok = ~np.asarray(failed(res.patients))  # solver failures (and out-of-range read-outs) are left out
            self._cache[arm] = (res.patients.assign(_ok=ok), res.observations)
        return self._cache[arm]


# --- rows --------------------------------------------------------------------------------------------------


def _fever_onset(patients: pd.DataFrame, t: Target) -> np.ndarray:
    return patients["crs_onset_day"].to_numpy(float)  # ASTCT CRS starts with the first fever >= 38 C


def _car_peak(patients, t):
    return patients["peak_car_t_cells_per_ul"].to_numpy(float)


def _car_tmax(patients, t):
    return patients["peak_car_t_day"].to_numpy(float)


def _car_auc(patients, t):
    # The presets run 28 days, so the course's AUC is the trials' AUC0-28.
    return patients["auc_car_t_cells_per_ul_day"].to_numpy(float)


def _timing_values(patients: pd.DataFrame, t: Target) -> np.ndarray:
    """Per-patient days of a crs/neuro onset or duration median row (NaN for patients without the event)."""
    from vpop.fitting.cohort_tables import SCALE_COLUMNS

    kind, what = t.endpoint.split("_")[:2]
    col = SCALE_COLUMNS[t.scale][1]
    prefix = "crs" if kind == "crs" else "icans"
    suffix = col.replace(f"{prefix}_max_grade", "")
    return patients[f"{prefix}_{'onset_day' if what == 'onset' else 'duration_days'}{suffix}"].to_numpy(float)


MEDIAN_VALUES: dict[str, Callable] = {"fever_onset_median": _fever_onset, "car_peak_median": _car_peak,
                                      "car_tmax_median": _car_tmax, "car_auc0_28_median": _car_auc}
NOT_SIMULATED = {
    "car_cmax_mean": "copies/ug gDNA (qPCR): the simulator gives cells/uL",
    "car_auc0_28_mean": "copies/ug gDNA (qPCR): the simulator gives cells/uL",
    "car_thalf_mean": "terminal half-life needs follow-up past the 28-day course",
    "car_time_to_BLQ_median": "time to below the limit of quantification needs follow-up past 28 days",
}


def median_values(t: Target, patients: pd.DataFrame) -> np.ndarray | None:
    """Per-patient values whose median a median row reports (days or cells/uL; NaN without the event), or
    None when the simulator has no counterpart."""
    if t.endpoint in MEDIAN_VALUES:
        return MEDIAN_VALUES[t.endpoint](patients, t)
    return _timing_values(patients, t) if t.scale else None


def analyte_peak_days(observations: pd.DataFrame, column: str = "il6_pg_ml") -> np.ndarray:
    """Per-patient day of the serum analyte's peak (first assessment at the maximum)."""
    obs = observations[["patient_id", "time_day", column]]
    idx = obs.groupby("patient_id", observed=True)[column].idxmax()
    return obs.loc[idx, "time_day"].to_numpy(float)


def cohort_patients(t: Target, runner: Runner) -> pd.DataFrame | None:
    """The virtual patients scored for a row: its cohort's arm, solver failures and the subset left out."""
    spec = COHORTS.get(t.cohort)
    if spec is None:
        return None
    patients, _ = runner.run(Arm(spec.product, spec.policy))
    return patients[patients["_ok"].to_numpy() & subset_mask(patients, spec.subset)]


def rate_count(t: Target, pts: pd.DataFrame) -> tuple[int, int]:
    """(events, patients) of a rate row among the scored virtual patients."""
    if t.endpoint == "organ_support_preceded_by_crs":  # a constraint of the joint calibration, not a table row
        return crs_first(pts, "organ_support_onset_day")
    if t.endpoint == "neuro_grade3plus_preceded_by_crs":
        from vpop.fitting.cohort_tables import SCALE_COLUMNS

        col = SCALE_COLUMNS[t.scale][1]
        severe = pts[pts[col] >= 3]
        onset = severe[col.replace("max_grade", "onset_day")]
        first = (severe["crs_onset_day"] <= onset).to_numpy()
        return int(first.sum()), len(first)
    ind = engine_indicator(pts, t)
    return int(ind.sum()), len(ind)


def score_row(t: Target, note: str, runner: Runner) -> dict:
    spec = COHORTS.get(t.cohort)
    row = {"cohort": t.cohort, "endpoint": t.endpoint, "scale": t.scale, "n": t.n, "published": t.value,
           "unit": t.unit, "pub_low": float("nan"), "pub_high": float("nan"), "simulated": float("nan"),
           "sim_low": float("nan"), "sim_high": float("nan"), "verdict": "", "reason": "",
           "preset": "", "policy": "", "subset": ""}
    if spec is None:
        return {**row, "verdict": "not scored", "reason": "no product preset for this cohort"}
    row.update(preset=spec.product, policy=spec.policy, subset=spec.subset)
    if t.endpoint in NOT_SIMULATED:
        return {**row, "verdict": "not scored", "reason": NOT_SIMULATED[t.endpoint]}
    wants_rows = t.endpoint == "serum_analyte_peak_time_median_upper"
    patients, observations = runner.run(Arm(spec.product, spec.policy, rows=wants_rows))
    keep = patients["_ok"].to_numpy() & subset_mask(patients, spec.subset)
    pts = patients[keep]
    if t.is_rate:
        k, m = rate_count(t, pts)
        sim = k / m if m else float("nan")
        slo, shi = wilson_interval(k, m)
        row.update(simulated=sim, sim_low=slo, sim_high=shi)
        if t.n == 0:
            return {**row, "verdict": "not scored", "reason": "n not reported: no published interval"}
        inside, lo, hi = in_published_interval(sim, t)  # the published interval stands either way
        row.update(pub_low=lo, pub_high=hi)
        if m == 0:
            return {**row, "verdict": "OUT", "reason": "no simulated patient in the scored group"}
        return {**row, "verdict": "IN" if inside else "OUT"}
    if wants_rows:
        days = analyte_peak_days(observations[observations["patient_id"].isin(pts["patient_id"])])
        med, mlo, mhi = median_interval(days)
        row.update(simulated=med, sim_low=mlo, sim_high=mhi, pub_low=0.0, pub_high=t.value)
        return {**row, "verdict": "IN" if med <= t.value else "OUT",
                "reason": "serum IL-6 peak day; published: median peak <= 7 days"}
    values = median_values(t, pts)
    if values is None:
        return {**row, "verdict": "not scored", "reason": "no simulated counterpart"}
    med, mlo, mhi = median_interval(values)
    row.update(simulated=med, sim_low=mlo, sim_high=mhi)
    spread = published_spread(note)
    if spread is None:
        return {**row, "verdict": "not scored", "reason": "no IQR or range published"}
    lo, hi, what = spread
    return {**row, "pub_low": lo, "pub_high": hi, "verdict": "IN" if lo <= med <= hi else "OUT",
            "reason": f"median inside the published {what}"}


def score_rows(runner: Runner, table=None) -> pd.DataFrame:
    from vpop.data import published_cohorts_path

    path = published_cohorts_path() if table is None else table
    targets = read_cohort_table(path)
    notes = pd.read_csv(path, dtype=str, keep_default_na=False)["note"].tolist()
    return pd.DataFrame([score_row(t, notes[t.row - 1], runner) for t in targets])


# --- facts -------------------------------------------------------------------------------------------------


def _flag(pts: pd.DataFrame, kind: str, grade: int, scale: str = "astct") -> np.ndarray:
    col = f"{kind}_max_grade" + ("" if scale == "astct" else f"_{scale}")
    return (pts[col] >= grade).to_numpy()


def crs_first(patients: pd.DataFrame, event_day: str) -> tuple[int, int]:
    """(k, m): of the m solved patients with a day in column `event_day`, the k whose ASTCT CRS began at or
    before it (a patient who never had CRS counts among the m, not the k)."""
    p = patients[patients["_ok"] & patients[event_day].notna()]
    return int((p["crs_onset_day"] <= p[event_day]).sum()), len(p)


def _pair(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    ok = a["_ok"].to_numpy() & b["_ok"].to_numpy()
    assert (a["patient_id"].to_numpy() == b["patient_id"].to_numpy()).all()  # same patients, paired
    return a[ok], b[ok]


def _fact(fact: str, endpoint: str, arms: str, rule: str, effect: Effect, source: str = "") -> dict:
    return {"fact": fact, "endpoint": endpoint, "arms": arms, "rule": rule, "kind": effect.kind,
            "effect": effect.value, "low": effect.low, "high": effect.high, "n": effect.n,
            "holds": holds(effect, rule), "source": source}


def paired_fact(fact, arms_text, arm, ref, endpoints, source="") -> list[dict]:
    """Paired rows of one fact: `endpoints` = [(label, function(patients) -> values, rule, 'diff'|'ratio')]."""
    a, r = _pair(arm, ref)
    out = []
    for label, f, rule, kind in endpoints:
        eff = paired_proportion_difference(f(a), f(r)) if kind == "diff" else paired_ratio(f(a), f(r))
        out.append(_fact(fact, label, arms_text, rule, eff, source))
    return out


def no_car_t_drift(n: int, seed: int) -> tuple[Effect, dict]:
    """Largest relative drift of every state read-out over 28 days with no CAR-T cells (float64 course).

    The untreated tumour (grows as a0 exp(r t)) and platelets (dip after lymphodepletion) move without
    CAR-T; they are checked against their closed forms in tests/test_model_oracles.py and left out here.
    """
    from vpop.run.config import load_config
    from vpop.run.cohort import simulate

    cfg = load_config("axicel")
    cfg = replace(cfg, dtype="float64", population=replace(cfg.population, dose_per_kg=0.0, flat_dose=None),
                  policy=PRESETS["zuma1_c12"])
    res = simulate(cfg, n=n, seed=seed, record_rows=True)  # the driver scopes float64 to the run
    obs, pts = res.observations, res.patients
    states = ["car_t_cells_per_ul", "ifng_pg_ml", "tnf_pg_ml", "gmcsf_pg_ml", "il6_pg_ml", "il1b_pg_ml",
              "il1ra_pg_ml", "il10_pg_ml", "crp_mg_l", "ferritin_ng_ml", "fibrinogen_g_l", "ddimer_mg_l",
              "ang2_ng_ml", "vwf_iu_dl", "csf_il6_pg_ml", "nfl_pg_ml", "map_mmhg"]
    first = obs.groupby("patient_id", observed=True)[states].transform("first")
    scale = np.maximum(np.abs(first.to_numpy(float)), 1e-3)
    drift = float(np.max(np.abs(obs[states].to_numpy(float) - first.to_numpy(float)) / scale))
    graded = [c for c in pts.columns if c.startswith(("crs_max_grade", "icans_max_grade"))]
    events = int((pts[graded].to_numpy() > 0).sum())
    drugs = int((pts[["tocilizumab_mg", "dexamethasone_mg", "methylprednisolone_mg", "anakinra_mg"]]
                 .to_numpy() > 0).sum())
    return Effect("drift", drift, drift, drift, len(pts)), {"graded events": events, "drug doses": drugs}


def score_facts(runner: Runner) -> pd.DataFrame:
    out: list[dict] = []
    crs3 = lambda scale: (lambda p: _flag(p, "crs", 3, scale))  # noqa: E731
    icans = lambda g, scale="astct": (lambda p: _flag(p, "icans", g, scale))  # noqa: E731
    vaso = lambda p: (p["max_vasopressors"] >= 1).to_numpy()  # noqa: E731
    il6 = lambda p: np.maximum(p["peak_il6_pg_ml"].to_numpy(float), 1e-6)  # noqa: E731

    # 1. prophylactic dexamethasone 10 mg days 0-2 on top of standard management (ASCO 2021), axi-cel
    std, dex = runner(Arm("axicel", "asco2021")), runner(Arm("axicel", "prophylactic_dex"))
    out += paired_fact("prophylactic dexamethasone 10 mg days 0-2 vs standard (axi-cel, ASCO 2021)",
                       "prophylactic_dex vs asco2021", dex, std,
                       [("CRS >= 3 (ASTCT)", crs3("astct"), "lower", "diff"),
                        ("CRS >= 3 (Lee 2014)", crs3("lee2014"), "lower", "diff"),
                        ("vasopressor use", vaso, "no more", "diff")], "ZUMA-1 cohort 6 (Oluwole 2021)")
    # 2. ZUMA-1 cohort 4 vs cohorts 1-2 management
    c12, c4 = runner(Arm("axicel", "zuma1_c12")), runner(Arm("axicel", "zuma1_c4"))
    out += paired_fact("earlier steroids and tocilizumab (ZUMA-1 cohort 4) vs cohorts 1-2 policy",
                       "zuma1_c4 vs zuma1_c12", c4, c12,
                       [("CRS >= 3 (Lee 2014)", crs3("lee2014"), "lower", "diff"),
                        ("neurologic events >= 3 (CTCAE)", icans(3, "ctcae"), "lower", "diff")],
                       "Topp, Br J Haematol 2021: 2% vs 13%, 17% vs 28%")
    # 3. prophylactic tocilizumab on day 2 (ZUMA-1 cohort 3) vs cohorts 1-2
    c3 = runner(Arm("axicel", "zuma1_c3"))
    out += paired_fact("prophylactic tocilizumab on day 2 (ZUMA-1 cohort 3) vs cohorts 1-2 policy",
                       "zuma1_c3 vs zuma1_c12", c3, c12,
                       [("CRS >= 3 (Lee 2014)", crs3("lee2014"), "lower", "diff"),
                        ("peak serum IL-6 (ratio)", il6, "higher", "ratio"),
                        ("neurologic events >= 3 (CTCAE)", icans(3, "ctcae"), "not lower", "diff")],
                       "Locke ASH 2017; Blood 2023;141:2430")
    # 4. prophylactic anakinra days 0-7 (MDACC) vs the same management without it
    ana = runner(Arm("axicel", "mdacc_anakinra"))
    out += paired_fact("prophylactic anakinra days 0-7 (axi-cel)", "mdacc_anakinra vs asco2021", ana, std,
                       [("CRS >= 2 (ASTCT)", lambda p: _flag(p, "crs", 2), "lower", "diff"),
                        ("ICANS >= 3 (ASTCT)", icans(3), "lower", "diff")], "Strati (MDACC): 40% vs 70%, 20% vs 50%")
    # 5. pre-emptive tocilizumab at persistent fever, high-burden B-ALL, Penn grade 4
    pen, pre = runner(Arm("tisacel_ball", "penn_chop")), runner(Arm("tisacel_ball", "chop_preemptive_toci"))
    high = subset_mask(pen, "high_burden")
    out += paired_fact("pre-emptive tocilizumab at persistent fever (high-burden B-ALL)",
                       "chop_preemptive_toci vs penn_chop, burden >= median", pre[high], pen[high],
                       [("CRS grade 4 (Penn)", lambda p: (p["crs_max_grade_penn"] >= 4).to_numpy(), "lower", "diff")],
                       "Kadauke ASH 2020: 27% vs 50%")
    # 6. dose within the studied range: top vs bottom dose on the same patients
    for product, policy, low, high_, what, kind in (("idecel", "karmma", 150e6, 450e6, "ide-cel 150 vs 450 x 10^6 "
                                                     "cells (KarMMa target doses)", "flat"),
                                                    ("tisacel_ball", "penn_chop", 0.2e6, 5.0e6, "tisa-cel B-ALL 0.2 vs "
                                                     "5.0 x 10^6 cells/kg (ELIANA range)", "per_kg")):
        arm = lambda d: Arm(product, policy, flat_dose=d) if kind == "flat" else Arm(product, policy, dose_per_kg=d)  # noqa: E731
        top, bottom = runner(arm(high_)), runner(arm(low))
        out += paired_fact("CAR-T dose within the studied range: CRS >= 3 and ICANS >= 3 rise", what, top, bottom,
                           [("CRS >= 3 (ASTCT)", crs3("astct"), "higher", "diff"),
                            ("ICANS >= 3 (ASTCT)", icans(3), "higher", "diff")], "issue 12")
    # 7. fewer than one CAR-T cell per patient: no CRS, no ICANS under any scale
    tiny = runner(Arm("axicel", "zuma1_c12", dose_per_kg=1e-3))
    tiny = tiny[tiny["_ok"]]
    for kind in ("crs", "icans"):
        cols = [c for c in tiny.columns if c.startswith(f"{kind}_max_grade")]
        k = int((tiny[cols].to_numpy() > 0).any(axis=1).sum())
        eff = proportion(k, len(tiny))
        out.append(_fact("fewer than one CAR-T cell per patient (axi-cel, 10^-3 cells/kg)",
                         f"any {kind.upper()} (every scale)", "one arm", "none", eff, "issue 12"))
    # 8. tumour burden, top vs bottom quartile (ZUMA-1 under its own management), severe CRS ratio
    z = c12[c12["_ok"]]
    q1, q3 = z["tumor_burden"].quantile([0.25, 0.75])
    for scale, label in (("lee2014", "Lee 2014"), ("astct", "ASTCT")):
        top, bottom = crs3(scale)(z[z["tumor_burden"] >= q3]), crs3(scale)(z[z["tumor_burden"] <= q1])
        eff = risk_ratio(int(top.sum()), len(top), int(bottom.sum()), len(bottom))
        out.append(_fact("tumour burden, top vs bottom quartile (axi-cel, ZUMA-1 management)",
                         f"CRS >= 3 ({label}), ratio", "top vs bottom quartile", "between 1.5 and 5", eff,
                         "Hay 2017; Awasthi 2020; issue 12: about 2-4x"))
    # 9. tocilizumab for CRS raises serum IL-6 and does not reduce ICANS; steroids reduce ICANS
    none, toci, ster = (runner(Arm("axicel", p)) for p in ("none", "toci_only", "steroids_only"))
    out += paired_fact("tocilizumab for CRS (at ASTCT CRS >= 2, no steroids) vs no management",
                       "toci_only vs none", toci, none,
                       [("peak serum IL-6 (ratio)", il6, "higher", "ratio"),
                        ("ICANS >= 1 (ASTCT)", icans(1), "not lower", "diff"),
                        ("ICANS >= 3 (ASTCT)", icans(3), "not lower", "diff")], "Nishimoto 2008; Norelli 2018")
    out += paired_fact("steroids (ASCO 2021 triggers, no tocilizumab) vs no management", "steroids_only vs none",
                       ster, none, [("ICANS >= 3 (ASTCT)", icans(3), "lower", "diff")], "ASCO 2021")
    # 10. ICANS >= 3 preceded by CRS, pooled over every trial's own run
    k = m = 0
    for spec in sorted({(c.product, c.policy) for c in COHORTS.values()}):
        p = runner(Arm(*spec))
        dk, dm = crs_first(p[p["icans_max_grade"] >= 3], "icans_onset_day")
        k, m = k + dk, m + dm
    out.append(_fact("every patient with ICANS >= 3: CRS first", "CRS onset at or before ICANS onset (ASTCT)",
                     "every trial's own run, pooled", "at least 0.97", proportion(k, m), "Gust 2017: 28/28"))
    # 10b. oxygen and vasopressors come with or after CRS's fever, pooled the same way: capillary leak and
    # vasoplegia after CAR-T are CRS's, which starts with fever (ASTCT 2019), so a patient supported before any
    # fever is physiology that no trial's grades would have counted
    k = m = 0
    for spec in sorted({(c.product, c.policy) for c in COHORTS.values()}):
        dk, dm = crs_first(runner(Arm(*spec)), "organ_support_onset_day")
        k, m = k + dk, m + dm
    out.append(_fact("every patient on oxygen or vasopressors: CRS first",
                     "CRS onset at or before the first oxygen or vasopressor (ASTCT)", "every trial's own run, pooled",
                     "at least 0.97", proportion(k, m), "ASTCT 2019 (Lee 2019): CRS includes fever at onset"))
    # 11. no CAR-T cells: every state at its baseline for 28 days
    eff, extra = no_car_t_drift(min(runner.n, 64), runner.seed)
    row = _fact("no CAR-T cells: every state at baseline for 28 days", "largest relative drift of a state read-out",
                "axi-cel population, dose 0", "at most 1e-6", eff, "model oracle")
    row["holds"] = row["holds"] and extra["graded events"] == 0 and extra["drug doses"] == 0
    row["endpoint"] += f" (graded events {extra['graded events']}, drug doses {extra['drug doses']})"
    out.append(row)
    return pd.DataFrame(out)


# --- the scorecard -----------------------------------------------------------------------------------------


@dataclass
class Scorecard:
    rows: pd.DataFrame
    facts: pd.DataFrame
    n: int
    seed: int

    def summary(self) -> str:
        scored = self.rows[self.rows["verdict"].isin(["IN", "OUT"])]
        rates = scored[scored["unit"].isin(["percent", "fraction"])]
        timing = scored[~scored["unit"].isin(["percent", "fraction"])]
        by_fact = self.facts.groupby("fact", sort=False)["holds"].all()
        return (f"{int((scored['verdict'] == 'IN').sum())} of {len(scored)} scored rows IN "
                f"({int((rates['verdict'] == 'IN').sum())}/{len(rates)} rates, "
                f"{int((timing['verdict'] == 'IN').sum())}/{len(timing)} medians; "
                f"{len(self.rows) - len(scored)} rows not scored); "
                f"{int(by_fact.sum())} of {len(by_fact)} facts hold")


def validate(n: int = 2000, seed: int = 1, progress: Callable[[str], None] | None = None, table=None) -> Scorecard:
    runner = Runner(n, seed, progress)
    rows = score_rows(runner, table)
    facts = score_facts(runner)
    return Scorecard(rows, facts, n, seed)


def _pct(v: float, unit: str) -> str:
    if not np.isfinite(v):
        return "–"
    return f"{100 * v:.1f}%" if unit in ("percent", "fraction") else f"{v:.3g}"


def _interval(lo: float, hi: float, unit: str) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "–"
    return f"{_pct(lo, unit)}–{_pct(hi, unit)}"


def _effect(v: float, kind: str) -> str:
    if not np.isfinite(v):
        return "–"
    if kind == "difference":
        return f"{100 * v:+.1f} pts"
    if kind == "proportion":
        return f"{100 * v:.1f}%"
    if kind == "drift":
        return f"{v:.1e}"
    return f"{v:.2f}×"


def markdown(card: Scorecard, command: str) -> str:
    lines = ["# Validation scorecard", "",
             f"Generated by `{command}` (n = {card.n} virtual patients per arm, seed {card.seed}); "
             "the module is `vpop/trials/validation.py`, whose docstring defines every interval and rule.", "",
             f"**{card.summary()}.**", "",
             "Each cohort runs its product preset under its own trial's management (`vpop presets`), graded under "
             "the scale the trial reported with. A rate is IN when the simulated rate lies inside the published "
             "95% Wilson interval; a median is IN when it lies inside the published IQR or range. Simulated "
             "intervals: Wilson for rates, the distribution-free order-statistic interval for medians.", "",
             "## Published cohorts", "",
             "| cohort | endpoint | scale | n | published | 95% interval | preset / policy | simulated | 95% interval "
             "| verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in card.rows.itertuples():
        where = f"{r.preset} / {r.policy}" + (f" ({r.subset})" if r.subset not in ("", "all") else "")
        verdict = f"**{r.verdict}**" if r.verdict in ("IN", "OUT") else f"{r.verdict}: {r.reason}"
        lines.append(f"| {r.cohort} | {r.endpoint} | {r.scale or '–'} | {r.n or '–'} | {_pct(r.published, r.unit)}"
                     f"{'' if r.unit in ('percent', 'fraction') else ' ' + r.unit} | {_interval(r.pub_low, r.pub_high, r.unit)} "
                     f"| {where or '–'} | {_pct(r.simulated, r.unit)} | {_interval(r.sim_low, r.sim_high, r.unit)} "
                     f"| {verdict} |")
    lines += ["", "Cohort notes: " + "; ".join(f"{k}: {c.note}" for k, c in COHORTS.items() if c.note) + ". "
              "Subsets: " + "; ".join(f"`{k}` = {v}" for k, v in SUBSETS.items()) + ".", "",
              "## Facts (paired virtual patients)", "",
              "| fact | endpoint | arms | effect | 95% interval | must be | verdict |", "|---|---|---|---|---|---|---|"]
    for f in card.facts.itertuples():
        lines.append(f"| {f.fact} | {f.endpoint} | {f.arms} | {_effect(f.effect, f.kind)} | "
                     f"{_effect(f.low, f.kind)} to {_effect(f.high, f.kind)} | {f.rule} | "
                     f"{'HOLDS' if f.holds else '**FAILS**'} |")
    lines += ["", "Policies: " + "; ".join(f"`{k}`: {DESCRIPTIONS[k]}" for k in sorted(
        {r for r in card.rows["policy"] if r and r in DESCRIPTIONS})) + ".", ""]
    return "\n".join(lines)

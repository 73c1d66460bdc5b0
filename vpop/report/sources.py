"""What a folder holds: the outputs of `vpop simulate`, `sweep`, `compare`, `escalate` and `fit`.

`find_sources(DIR)` looks in DIR and in each of its immediate subfolders
(so `vpop report runs/` finds `runs/sim/`, `runs/sweep/`, ...) and returns one
source per recognised output, loaded and checked:

| output | recognised by | loaded |
|---|---|---|
| simulation | `patients.parquet`, or `patients/part-*.parquet` (`--stream`) | patients (all, without the peak/nadir columns), observations of at most `MAX_TRAJECTORY_PATIENTS` patients, `config.yaml` |
| sweep | `sweep.csv` | the tidy table, `sweep.yaml` |
| comparison | `rates.csv` with `differences.csv` | both tables |
| escalation | `operating_characteristics.csv` | the table, `summary.json` |
| fit | `diagnostics.json`, `summary.csv` with `fitted.yaml`, or `posterior.nc` | diagnostics, summary, `fitted.yaml`, `predictions.csv`, `rates.csv` |

A file that is there but cannot be read, or lacks a column the report needs,
raises `UserError` naming the file and the column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from vpop.errors import UserError

MAX_TRAJECTORY_PATIENTS = 1000  # observation rows read for bands and the swimmer plot

EXPECTED = (
    "a simulation (patients.parquet, or patients/part-*.parquet from --stream; observations and config.yaml "
    "beside it), a sweep (sweep.csv), a policy comparison (rates.csv and differences.csv), an escalation "
    "(operating_characteristics.csv, summary.json) or a fit (diagnostics.json, summary.csv, fitted.yaml, "
    "posterior.nc)"
)

# Columns whose absence makes an output unusable for the report.
SIM_PATIENT_COLUMNS = ("patient_id", "crs_max_grade", "icans_max_grade", "crs_onset_day", "icans_onset_day",
                       "solver_status")
SWEEP_COLUMNS = ("endpoint", "scale", "kind", "value", "ci_low", "ci_high", "count", "n")
SWEEP_NON_FACTORS = set(SWEEP_COLUMNS) | {"post_value", "post_low", "post_high", "post_draws"}
RATES_COLUMNS = ("policy", "endpoint", "rate", "ci_low", "ci_high", "count", "n")
DIFF_COLUMNS = ("policy", "reference", "endpoint", "rate_reference", "rate_policy", "difference", "ci_low",
                "ci_high", "nnt")
OC_COLUMNS = ("dose", "level", "true_dlt_rate", "true_ci_low", "true_ci_high", "p_select", "mean_patients",
              "mean_dlts")
FIT_RATES_COLUMNS = ("endpoint", "published", "simulated_median", "low", "high")
PREDICTION_COLUMNS = ("analyte", "DV", "pred_median", "pred_q05", "pred_q95")
# (FitSource attribute, file, required columns) of the fit diagnostics (`vpop.fitting.diagnostics`)
FIT_DIAGNOSTIC_FILES = (
    ("loss_trace", "loss_trace.csv", ("iteration", "loss")),
    ("sampler_stats", "sampler_stats.csv", ("chain", "draw", "diverging", "n_steps")),
    ("ebfmi", "ebfmi.csv", ("chain", "ebfmi")),
    ("convergence", "convergence.csv", ("variable",)),
    ("shrinkage", "shrinkage.csv", ("parameter", "shrinkage")),
    ("vpc", "vpc.csv", ("analyte", "time", "obs_q50", "sim_q50_lo", "sim_q50_hi")),
)
SKIP_SUBFOLDERS = {"cells", "patients", "observations"}


@dataclass
class Source:
    kind: str  # "simulation" | "sweep" | "comparison" | "escalation" | "fit"
    folder: Path
    label: str  # the folder relative to the report's DIR
    files: list[Path] = field(default_factory=list)
    config_text: str | None = None  # the config or spec that produced it, as written
    config_name: str | None = None  # its file name


@dataclass
class SimulationSource(Source):
    patients: pd.DataFrame | None = None
    observations: pd.DataFrame | None = None  # at most MAX_TRAJECTORY_PATIENTS patients
    observation_columns: list[str] = field(default_factory=list)  # every column of the table on disk
    observations_note: str = ""
    config: dict = field(default_factory=dict)
    streamed: bool = False


@dataclass
class SweepSource(Source):
    table: pd.DataFrame | None = None
    factors: list[str] = field(default_factory=list)


@dataclass
class ComparisonSource(Source):
    rates: pd.DataFrame | None = None
    differences: pd.DataFrame | None = None


@dataclass
class EscalationSource(Source):
    oc: pd.DataFrame | None = None
    summary: dict = field(default_factory=dict)


@dataclass
class FitSource(Source):
    diagnostics: dict = field(default_factory=dict)
    summary: pd.DataFrame | None = None
    predictions: pd.DataFrame | None = None
    rates: pd.DataFrame | None = None
    # the diagnostics files of `vpop.fitting.diagnostics` (each None when the method does not write it)
    loss_trace: pd.DataFrame | None = None
    sampler_stats: pd.DataFrame | None = None
    ebfmi: pd.DataFrame | None = None
    convergence: pd.DataFrame | None = None
    shrinkage: pd.DataFrame | None = None
    loo: dict | None = None
    vpc: pd.DataFrame | None = None


# --- reading helpers -------------------------------------------------------------------


def _read_csv(path: Path, required=(), dtype=None) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=dtype)
    except Exception as err:
        raise UserError(f"{path}: cannot be read as CSV: {err}") from None
    _require(path, df.columns, required)
    return df


def _require(path: Path, columns, required) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise UserError(f"{path}: column(s) {', '.join(missing)} missing; the report needs the columns "
                        f"{', '.join(required)}")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except Exception as err:
        raise UserError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot be read as text: {err}") from None


def _parquet_schema(path: Path) -> list[str]:
    import pyarrow.dataset as ds

    try:
        return list(ds.dataset(str(path), format="parquet").schema.names)
    except Exception as err:
        raise UserError(f"{path}: cannot be read as Parquet: {err}") from None


def _read_parquet(path: Path, columns: list[str], ids=None) -> pd.DataFrame:
    import pyarrow.dataset as ds

    try:
        dataset = ds.dataset(str(path), format="parquet")
        flt = None if ids is None else ds.field("patient_id").isin(list(ids))
        return dataset.to_table(columns=columns, filter=flt).to_pandas()
    except Exception as err:
        raise UserError(f"{path}: cannot be read as Parquet: {err}") from None


# --- loaders ------------------------------------------------------------------------------------


def load_simulation(folder: Path, label: str, seed: int = 0) -> SimulationSource:
    streamed = (folder / "patients").is_dir()
    patients_path = folder / "patients" if streamed else folder / "patients.parquet"
    obs_path = folder / "observations" if streamed else folder / "observations.parquet"
    src = SimulationSource("simulation", folder, label, streamed=streamed)
    src.files.append(patients_path)
    if streamed and (folder / "manifest.json").is_file():
        src.files.append(folder / "manifest.json")

    names = _parquet_schema(patients_path)
    _require(patients_path, names, SIM_PATIENT_COLUMNS)
    keep = [c for c in names if not c.startswith(("peak_", "nadir_"))]
    patients = _read_parquet(patients_path, keep)
    if len(patients) == 0:
        raise UserError(f"{patients_path}: no patients")
    src.patients = patients.sort_values("patient_id", kind="stable").reset_index(drop=True)

    if _attach_config(src, folder / "config.yaml"):
        try:
            import yaml

            parsed = yaml.safe_load(src.config_text)
            src.config = parsed if isinstance(parsed, dict) else {}
        except Exception:
            src.config = {}  # shown as written; the report does not depend on it

    if not obs_path.exists():
        src.observations_note = (f"{obs_path.name} is not in {folder} (simulated with --no-observations?): "
                                 "no grades over time and no biomarker trajectories.")
        return src
    src.files.append(obs_path)
    obs_names = _parquet_schema(obs_path)
    _require(obs_path, obs_names, ("patient_id", "time_day"))
    src.observation_columns = obs_names
    from vpop.report.figures import BIOMARKERS

    wanted = ["patient_id", "time_day", "tocilizumab_given", "steroids_given", "death_cause"]
    wanted += [c for c in obs_names if c.startswith(("crs_grade_", "icans_grade_"))]
    wanted += [b.column for b in BIOMARKERS]
    wanted = [c for c in dict.fromkeys(wanted) if c in obs_names]
    ok = src.patients.loc[src.patients["solver_status"] != "nonfinite", "patient_id"].to_numpy()
    ids = None
    if len(ok) > MAX_TRAJECTORY_PATIENTS:
        rng = np.random.default_rng(seed)
        ids = np.sort(rng.choice(ok, size=MAX_TRAJECTORY_PATIENTS, replace=False)).tolist()
        src.observations_note = (f"Trajectories and grade ≥ 3 onsets come from a random {MAX_TRAJECTORY_PATIENTS:,} "
                                 f"of the {len(ok):,} patients (seed {seed}).")
    obs = _read_parquet(obs_path, wanted, ids)
    obs = obs[obs["patient_id"].isin(ok)]
    src.observations = obs.sort_values(["patient_id", "time_day"], kind="stable").reset_index(drop=True)
    return src


def _attach_config(src: Source, path: Path) -> bool:
    """Show the file that produced an output (config, sweep or comparison record) when it is there."""
    src.config_text = _text(path)
    if src.config_text is None:
        return False
    src.files.append(path)
    src.config_name = path.name
    return True


def load_sweep(folder: Path, label: str) -> SweepSource:
    path = folder / "sweep.csv"
    table = _read_csv(path, SWEEP_COLUMNS)
    table["scale"] = table["scale"].fillna("").astype(str)
    src = SweepSource("sweep", folder, label, files=[path], table=table)
    src.factors = [c for c in table.columns if c not in SWEEP_NON_FACTORS]
    _attach_config(src, folder / "sweep.yaml")
    return src


def load_comparison(folder: Path, label: str) -> ComparisonSource:
    rates = _read_csv(folder / "rates.csv", RATES_COLUMNS)
    diff = _read_csv(folder / "differences.csv", DIFF_COLUMNS)
    src = ComparisonSource("comparison", folder, label, files=[folder / "rates.csv", folder / "differences.csv"],
                           rates=rates, differences=diff)
    _attach_config(src, folder / "comparison.yaml")  # config, cohort and every policy's fields (`vpop compare`)
    return src


def load_escalation(folder: Path, label: str) -> EscalationSource:
    path = folder / "operating_characteristics.csv"
    oc = _read_csv(path, OC_COLUMNS, dtype={"dose": str})
    src = EscalationSource("escalation", folder, label, files=[path], oc=oc)
    summary = folder / "summary.json"
    if summary.is_file():
        src.summary = _read_json(summary)
        src.files.append(summary)
        src.config_text = json.dumps(src.summary, indent=2)
        src.config_name = "summary.json"
    return src


def load_fit(folder: Path, label: str) -> FitSource:
    src = FitSource("fit", folder, label)
    for name in ("posterior.nc", "diagnostics.json", "summary.csv", "fitted.yaml", "predictions.csv", "rates.csv"):
        if (folder / name).is_file():
            src.files.append(folder / name)
    if (folder / "diagnostics.json").is_file():
        src.diagnostics = _read_json(folder / "diagnostics.json")
    if (folder / "summary.csv").is_file():
        src.summary = _read_csv(folder / "summary.csv", ("parameter", "median"))
    if (folder / "predictions.csv").is_file():
        src.predictions = _read_csv(folder / "predictions.csv", PREDICTION_COLUMNS)
    if (folder / "rates.csv").is_file():
        src.rates = _read_csv(folder / "rates.csv", FIT_RATES_COLUMNS)
    for attr, name, cols in FIT_DIAGNOSTIC_FILES:
        if (folder / name).is_file():
            src.files.append(folder / name)
            setattr(src, attr, _read_csv(folder / name, cols))
    if (folder / "loo.json").is_file():
        src.files.append(folder / "loo.json")
        src.loo = _read_json(folder / "loo.json")
    src.config_text = _text(folder / "fitted.yaml")
    if src.config_text is not None:
        src.config_name = "fitted.yaml"
    return src


# --- detection --------------------------------------------------------------------------------------


def kinds_in(folder: Path) -> list[str]:
    """The kinds of output in one folder (not its subfolders)."""
    has = lambda name: (folder / name).is_file()  # noqa: E731
    kinds = []
    if has("patients.parquet") or ((folder / "patients").is_dir() and any((folder / "patients").glob("part-*.parquet"))):
        kinds.append("simulation")
    if has("sweep.csv"):
        kinds.append("sweep")
    if has("rates.csv") and has("differences.csv"):
        kinds.append("comparison")
    if has("operating_characteristics.csv"):
        kinds.append("escalation")
    if has("diagnostics.json") or has("posterior.nc") or (has("summary.csv") and has("fitted.yaml")):
        kinds.append("fit")
    return kinds


KIND_ORDER = ("simulation", "sweep", "comparison", "escalation", "fit")


LOADERS = {"simulation": load_simulation, "sweep": load_sweep, "comparison": load_comparison,
           "escalation": load_escalation, "fit": load_fit}


def find_sources(directory: str | Path, seed: int = 0) -> list[Source]:
    """Every recognised output in `directory` and its immediate subfolders, loaded."""
    root = Path(directory)
    if not root.exists():
        raise UserError(f"{root}: no such folder")
    if not root.is_dir():
        raise UserError(f"{root}: not a folder; give the folder a vpop command wrote (its --out)")
    folders = [root] + sorted(p for p in root.iterdir()
                              if p.is_dir() and not p.name.startswith(".") and p.name not in SKIP_SUBFOLDERS)
    sources = []
    for folder in folders:
        label = root.name if folder == root else f"{root.name}/{folder.name}"
        for kind in kinds_in(folder):
            if kind == "simulation":
                sources.append(load_simulation(folder, label, seed))
            else:
                sources.append(LOADERS[kind](folder, label))
    sources.sort(key=lambda s: KIND_ORDER.index(s.kind))  # stable: folder order within a kind
    if not sources:
        raise UserError(f"{root}: nothing to report: found none of the outputs of vpop simulate, sweep, compare, "
                        f"escalate or fit in the folder or its subfolders; expected {EXPECTED}")
    return sources

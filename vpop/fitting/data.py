"""Patient time courses in: a NONMEM-style long CSV.

One row per observation or dose event (software-anchors.md §2.2):

| column | meaning |
|---|---|
| `ID` | patient (a new patient starts when ID changes; rows of one ID must be contiguous) |
| `TIME` | days since CAR-T infusion, non-decreasing within a patient |
| `EVID` | optional; 0 observation (default), 1 dose, 2 other, 3 reset, 4 reset + dose (`vpop.fitting.nonmem`) |
| `ADDL`, `II`, `RATE`, `DUR`, `SS` | optional; additional doses, infusions, steady state (`vpop.fitting.nonmem`) |
| `DV` | observed value (observations); concentrations must be >= 0 |
| `DVID` or `CMT` | the analyte (observations) or drug (doses) by name, see `ANALYTES`, `DRUGS` |
| `AMT` | dose in mg (dose rows) |
| `MDV` | optional; 1 = missing DV (row ignored) |
| `LLOQ` | optional; lower limit of quantification of the row |
| `BLQ` or `CENS` | optional; 1 = below the LLOQ (DV then holds the LLOQ when no LLOQ column) |
| covariates | optional, constant within a patient: any of `vpop.population.sampler.COVARIATES`, `female` or `SEX` (F/M) |
| grades | optional, constant within a patient: `CRS_GRADE`, `ICANS_GRADE` (observed maximum grades 0-5) |

Column names are matched case-insensitively. An observation with DV below
its LLOQ, or flagged BLQ/CENS, is *censored*: it enters the likelihood as
P(y < LLOQ) (the M3 method), never as an observed value. A DV of 0 that is not
flagged is an error (a log-normal error model cannot observe 0), and so is a
flagged row whose DV is above its LLOQ (the flag and the value disagree). A
file with a header and no rows is refused.

Every error is a `DataError` naming the file, the row (1-based data row after
the header, as a spreadsheet shows it) and the column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from vpop.errors import DataError, show_value
from vpop.fitting import nonmem
from vpop.fitting.nonmem import DOSE_KINDS, DRUGS  # noqa: F401  (the drug names of a data file)
from vpop.population.sampler import COVARIATES

# Analyte name (as written in DVID/CMT, lower-case) -> vpop.observation.readouts.biomarkers key.
ANALYTES: dict[str, str] = {
    "il6": "il6_pg_ml",
    "il-6": "il6_pg_ml",
    "crp": "crp_mg_l",
    "ferritin": "ferritin_ng_ml",
    "car_t": "car_t_cells_per_ul",
    "cart": "car_t_cells_per_ul",
    "car-t": "car_t_cells_per_ul",
    "ifng": "ifng_pg_ml",
    "ifn-g": "ifng_pg_ml",
    "tnf": "tnf_pg_ml",
    "gmcsf": "gmcsf_pg_ml",
    "gm-csf": "gmcsf_pg_ml",
    "il1b": "il1b_pg_ml",
    "il1ra": "il1ra_pg_ml",
    "il10": "il10_pg_ml",
    "fibrinogen": "fibrinogen_g_l",
    "ddimer": "ddimer_mg_l",
    "d-dimer": "ddimer_mg_l",
    "platelets": "platelets_1e9_l",
    "ang2": "ang2_ng_ml",
    "vwf": "vwf_iu_dl",
    "nfl": "nfl_pg_ml",
    "csf_il6": "csf_il6_pg_ml",
}
BIOMARKER_NAMES = sorted(set(ANALYTES.values()))
# Full biomarker column names are accepted too.
ANALYTES.update({name: name for name in BIOMARKER_NAMES})

GRADE_COLUMNS = {"crs_grade": "crs", "icans_grade": "icans"}


@dataclass
class PatientData:
    """Per-patient observations, doses, covariates and grades (numpy, ragged)."""

    source: str
    ids: list  # patient labels, in file order
    analytes: tuple[str, ...]  # biomarker keys present, in a fixed order
    # per patient: arrays of equal length
    obs_time: list[np.ndarray]
    obs_analyte: list[np.ndarray]  # index into `analytes`
    obs_value: list[np.ndarray]  # DV (for censored rows: the LLOQ)
    obs_censored: list[np.ndarray]  # bool
    dose_time: list[np.ndarray]
    dose_kind: list[np.ndarray]  # index into DOSE_KINDS
    dose_mg: list[np.ndarray]
    covariates: list[dict] = field(default_factory=list)  # given covariates per patient
    grades: dict[str, np.ndarray] = field(default_factory=dict)  # "crs"/"icans" -> int array, -1 missing
    # per course: the subject (the file's ID; a reset's course `<ID>/2` belongs to subject ID) and its occasion
    # (the OCC column, else the course's number within its subject); empty: every course its own subject
    subjects: list = field(default_factory=list)
    occasions: list = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.ids)

    def occasion_design(self) -> tuple[np.ndarray, np.ndarray]:
        """(subject index (n,), occasion index (n,)) of every course: subjects numbered in file order, occasions
        numbered over the distinct (subject, occasion) pairs (two courses with one OCC share an occasion)."""
        subj = self.subjects if len(self.subjects) == self.n else list(self.ids)
        occ = self.occasions if len(self.occasions) == self.n else [1] * self.n
        s_index, o_index = {}, {}
        si = np.array([s_index.setdefault(s, len(s_index)) for s in subj], dtype=np.int32)
        oi = np.array([o_index.setdefault((s, o), len(o_index)) for s, o in zip(subj, occ)], dtype=np.int32)
        return si, oi

    @property
    def t_max(self) -> float:
        times = [t.max() for t in self.obs_time if len(t)] + [t.max() for t in self.dose_time if len(t)]
        return float(max(times)) if times else 0.0

    def n_observations(self) -> int:
        return int(sum(len(t) for t in self.obs_time))

    def n_censored(self) -> int:
        return int(sum(c.sum() for c in self.obs_censored))

    def to_frame(self) -> pd.DataFrame:
        """Observations as one long table (ID, TIME, analyte, DV, censored)."""
        parts = []
        for i, pid in enumerate(self.ids):
            parts.append(pd.DataFrame({
                "ID": pid, "TIME": self.obs_time[i],
                "analyte": np.asarray(self.analytes, dtype=object)[self.obs_analyte[i]] if len(self.obs_time[i]) else [],
                "DV": self.obs_value[i], "censored": self.obs_censored[i],
            }))
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _fail(path, row, column, msg):
    where = f"{path}: row {row}" if row is not None else str(path)
    if column is not None:
        where += f", column {column}"
    raise DataError(f"{where}: {msg}")


def _numeric(df, col, path, allow_missing=False):
    values = pd.to_numeric(df[col], errors="coerce")
    bad = values.isna() & ~df[col].isna() if allow_missing else values.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        _fail(path, i + 1, col, f"got {show_value(df[col].iloc[i])}; allowed: a number")
    return values.to_numpy(dtype=float)


def _occasion(occ, a, b, course, path, pid):
    """The occasion of the course in rows [a, b): its OCC (constant within the course), else its number.

    The course has constant parameters, so an occasion cannot start inside one: occasions start at resets
    (EVID 3/4: a new CAR-T infusion is the dose event that opens an occasion)."""
    if occ is None:
        return course
    v = occ[a:b]
    fin = v[np.isfinite(v)]
    if not len(fin):
        _fail(path, a + 1, "OCC", f"no occasion given for course {show_value(pid)}; allowed: an integer on its rows")
    bad = np.flatnonzero(np.isfinite(v) & ((v != fin[0]) | (v != np.round(v))))
    if len(bad) or fin[0] != round(fin[0]):
        i = a + (int(bad[0]) if len(bad) else int(np.flatnonzero(np.isfinite(v))[0]))
        _fail(path, i + 1, "OCC", f"got {show_value(occ[i])} in course {show_value(pid)} whose occasion is "
              f"{show_value(fin[0])}; allowed: one integer per course (an occasion starts at a reset, EVID 3 or 4: "
              "the course's parameters are constant)")
    return int(fin[0])


def read_patient_data(path, covariates_path=None) -> PatientData:
    """Read a NONMEM-style long CSV (and optionally a per-patient covariate CSV with an ID column)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    try:
        raw = pd.read_csv(path)
    except Exception as err:  # pandas raises several types for malformed CSV
        raise DataError(f"{path}: not a readable CSV file: {err}") from None
    cols = {c.strip().lower(): c for c in raw.columns}
    df = raw.rename(columns={orig: low for low, orig in cols.items()})
    for need in ("id", "time", "dv"):
        if need not in df.columns:
            _fail(path, None, need.upper(), f"missing required column; the columns are {list(raw.columns)}")
    name_col = "dvid" if "dvid" in df.columns else ("cmt" if "cmt" in df.columns else None)
    if name_col is None:
        _fail(path, None, "DVID", "missing: an analyte column DVID or CMT naming the analyte (e.g. il6, crp) is required")
    if len(df) == 0:
        _fail(path, None, None, "no data rows")
    NAME = name_col.upper()

    time = _numeric(df, "time", path)
    if not np.all(np.isfinite(time)) or (time < 0).any():
        i = int(np.flatnonzero(~np.isfinite(time) | (time < 0))[0])
        _fail(path, i + 1, "TIME", f"got {time[i]:g}; allowed: a finite time >= 0 (days since infusion)")
    evid = np.zeros(len(df)) if "evid" not in df.columns else _numeric(df, "evid", path)
    nonmem.check_evid(evid, path)  # EVID 0-4; resets start a new course, covariates carried forward
    df, time = nonmem.prepare(df, evid, time, path, (*COVARIATES, "car_dose_per_kg", "ld_intensity", "female"))
    mdv = np.zeros(len(df)) if "mdv" not in df.columns else np.nan_to_num(_numeric(df, "mdv", path, True))
    dv = pd.to_numeric(df["dv"], errors="coerce").to_numpy(dtype=float)
    lloq = None if "lloq" not in df.columns else _numeric(df, "lloq", path, allow_missing=True)
    flag_col = "blq" if "blq" in df.columns else ("cens" if "cens" in df.columns else None)
    flag = None if flag_col is None else np.nan_to_num(_numeric(df, flag_col, path, allow_missing=True))
    amt = None if "amt" not in df.columns else _numeric(df, "amt", path, allow_missing=True)

    ids_raw = df["id"].to_numpy()
    if pd.isna(df["id"]).any():
        i = int(np.flatnonzero(pd.isna(df["id"]).to_numpy())[0])
        _fail(path, i + 1, "ID", "missing patient ID")
    # contiguous IDs, sorted times within each
    seen, order = set(), []
    for i in range(len(df)):
        pid = ids_raw[i]
        if i == 0 or pid != ids_raw[i - 1]:
            if pid in seen:
                _fail(path, i + 1, "ID", f"patient {show_value(pid)} appears again after other patients; rows of one ID must be contiguous")
            seen.add(pid)
            order.append(pid)
        elif time[i] < time[i - 1]:
            _fail(path, i + 1, "TIME", f"times are not sorted within patient {show_value(pid)}: {time[i]:g} after {time[i - 1]:g}")

    names = df[name_col].astype(str).str.strip().str.lower().to_numpy()
    obs_rows = (evid == 0) & (mdv == 0)
    dose_rows = np.isin(evid, nonmem.DOSE_EVIDS)
    analytes_present = []
    for i in np.flatnonzero(obs_rows):
        if names[i] not in ANALYTES:
            _fail(path, i + 1, NAME, f"unknown analyte {show_value(df[name_col].iloc[i])}; allowed: {', '.join(sorted(ANALYTES))}")
        key = ANALYTES[names[i]]
        if key not in analytes_present:
            analytes_present.append(key)
    analytes = tuple(k for k in BIOMARKER_NAMES if k in analytes_present)
    for i in np.flatnonzero(dose_rows):
        if names[i] not in DRUGS:
            _fail(path, i + 1, NAME, f"unknown drug {show_value(df[name_col].iloc[i])} in a dose row; allowed: {', '.join(sorted(DRUGS))}")
        if amt is None:
            _fail(path, i + 1, "AMT", "dose row (EVID=1) but the file has no AMT column")
        if not np.isfinite(amt[i]) or amt[i] < 0:
            _fail(path, i + 1, "AMT", f"got {amt[i]:g}; allowed: a dose in mg >= 0")

    censored = np.zeros(len(df), dtype=bool)
    value = dv.copy()
    for i in np.flatnonzero(obs_rows):
        is_flag = flag is not None and flag[i] not in (0,)
        if flag is not None and flag[i] not in (0, 1):
            _fail(path, i + 1, flag_col.upper(), f"got {flag[i]:g}; allowed: 0 or 1")
        limit = lloq[i] if lloq is not None and np.isfinite(lloq[i]) else np.nan
        if np.isfinite(limit) and limit <= 0:
            _fail(path, i + 1, "LLOQ", f"got {limit:g}; allowed: a limit > 0")
        if is_flag:
            if not np.isfinite(limit):
                if not np.isfinite(dv[i]) or dv[i] <= 0:
                    _fail(path, i + 1, "DV", f"BLQ row without an LLOQ: DV must hold the LLOQ (> 0), got {show_value(df['dv'].iloc[i])}")
                limit = dv[i]
            if np.isfinite(dv[i]) and dv[i] > limit:
                # a flagged row whose value is quantified above the limit: the flag or the value is wrong,
                # and censoring it silently would throw the measurement away
                _fail(path, i + 1, flag_col.upper(), f"flagged below the limit of quantification but DV {dv[i]:g} "
                      f"is above its LLOQ {limit:g}; allowed: DV <= LLOQ (or empty) on a {flag_col.upper()}=1 row, "
                      f"or {flag_col.upper()}=0 for a quantified value")
            censored[i], value[i] = True, limit
            continue
        if not np.isfinite(dv[i]):
            _fail(path, i + 1, "DV", f"got {show_value(df['dv'].iloc[i])}; allowed: a number (or MDV=1 for a missing value)")
        if dv[i] < 0:
            _fail(path, i + 1, "DV", f"negative concentration {dv[i]:g}; allowed: a value >= 0")
        if np.isfinite(limit) and dv[i] < limit:
            censored[i], value[i] = True, limit
        elif dv[i] == 0:
            _fail(path, i + 1, "DV", "a value of 0 must be flagged below the limit of quantification (BLQ/CENS = 1 with an LLOQ)")

    # covariates and grades: constant within a patient
    cov_cols = [c for c in COVARIATES if c in df.columns] + [c for c in ("car_dose_per_kg", "ld_intensity", "female") if c in df.columns]
    per_patient = {}
    for c in cov_cols:
        per_patient[c] = _numeric(df, c, path, allow_missing=True)
    if "sex" in df.columns and "female" not in df.columns:
        sex = df["sex"].astype(str).str.strip().str.upper()
        ok = sex.isin(["F", "M", "NAN"])
        if not ok.all():
            i = int(np.flatnonzero(~ok.to_numpy())[0])
            _fail(path, i + 1, "SEX", f"got {show_value(df['sex'].iloc[i])}; allowed: F or M")
        per_patient["female"] = np.where(sex == "F", 1.0, np.where(sex == "M", 0.0, np.nan))
    grade_vals = {}
    for col, kind in GRADE_COLUMNS.items():
        if col in df.columns:
            g = _numeric(df, col, path, allow_missing=True)
            bad = np.isfinite(g) & ((g < 0) | (g > 5) | (g != np.round(g)))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                _fail(path, i + 1, col.upper(), f"got {g[i]:g}; allowed: an integer grade 0-5")
            grade_vals[kind] = g

    occ = None if "occ" not in df.columns else _numeric(df, "occ", path, allow_missing=True)
    data = PatientData(str(path), [], analytes, [], [], [], [], [], [], [], [], {})
    aidx = {k: j for j, k in enumerate(analytes)}
    grades = {kind: [] for kind in grade_vals}
    starts = [0] + [i for i in range(1, len(df)) if ids_raw[i] != ids_raw[i - 1]] + [len(df)]
    for a, b in zip(starts[:-1], starts[1:]):
        rows = np.arange(a, b)
        o = rows[obs_rows[a:b]]
        d = rows[dose_rows[a:b]]
        data.ids.append(ids_raw[a])
        data.subjects.append(df["subject"].iloc[a])
        data.occasions.append(_occasion(occ, a, b, int(df["course"].iloc[a]), path, ids_raw[a]))
        data.obs_time.append(time[o])
        data.obs_analyte.append(np.array([aidx[ANALYTES[names[i]]] for i in o], dtype=np.int32))
        data.obs_value.append(value[o])
        data.obs_censored.append(censored[o])
        data.dose_time.append(time[d])
        data.dose_kind.append(np.array([DOSE_KINDS.index(DRUGS[names[i]]) for i in d], dtype=np.int32))
        data.dose_mg.append(amt[d] if amt is not None else np.zeros(0))
        cov = {}
        for c, vals in per_patient.items():
            v = vals[a:b]
            fin = v[np.isfinite(v)]
            if len(fin) and np.any(fin != fin[0]):
                i = a + int(np.flatnonzero(np.isfinite(v) & (v != fin[0]))[0])
                _fail(path, i + 1, c.upper(), f"covariate changes within patient {show_value(ids_raw[a])}; time-varying covariates are not supported")
            if len(fin):
                if c in COVARIATES and c not in ("age_years",) and fin[0] <= 0:
                    _fail(path, a + 1, c.upper(), f"got {fin[0]:g}; allowed: a value > 0")
                cov[c] = float(fin[0])
        data.covariates.append(cov)
        for kind, vals in grade_vals.items():
            v = vals[a:b]
            fin = v[np.isfinite(v)]
            if len(fin) and np.any(fin != fin[0]):
                i = a + int(np.flatnonzero(np.isfinite(v) & (v != fin[0]))[0])
                _fail(path, i + 1, f"{kind.upper()}_GRADE", f"the maximum grade must be the same on every row of patient {show_value(ids_raw[a])}")
            grades[kind].append(int(fin[0]) if len(fin) else -1)
    data.grades = {k: np.asarray(v, dtype=np.int32) for k, v in grades.items()}
    nonmem.expand_doses(data, df, dose_rows, path)  # ADDL/II, RATE/DUR, SS
    if covariates_path is not None:
        _merge_covariates(data, Path(covariates_path))
    return data


def _merge_covariates(data: PatientData, path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: covariate file not found")
    raw = pd.read_csv(path)
    df = raw.rename(columns={c: c.strip().lower() for c in raw.columns})
    if "id" not in df.columns:
        _fail(path, None, "ID", "missing required column")
    index = {pid: i for i, pid in enumerate(data.ids)}
    known = [c for c in (*COVARIATES, "car_dose_per_kg", "ld_intensity", "female") if c in df.columns]
    grade_cols = [c for c in GRADE_COLUMNS if c in df.columns]
    for c in known + grade_cols:
        df[c] = _numeric(df, c, path, allow_missing=True)
    for r in range(len(df)):
        pid = df["id"].iloc[r]
        if pid not in index:
            _fail(path, r + 1, "ID", f"patient {show_value(pid)} is not in {data.source}")
        i = index[pid]
        for c in known:
            v = df[c].iloc[r]
            if np.isfinite(v):
                data.covariates[i][c] = float(v)
        for c in grade_cols:
            v = df[c].iloc[r]
            kind = GRADE_COLUMNS[c]
            if kind not in data.grades:
                data.grades[kind] = np.full(data.n, -1, dtype=np.int32)
            if np.isfinite(v):
                if v < 0 or v > 5 or v != round(v):
                    _fail(path, r + 1, c.upper(), f"got {v:g}; allowed: an integer grade 0-5")
                data.grades[kind][i] = int(v)


def write_patient_data(path, ids, times, analyte_names, values, lloq=None, doses=None, covariates=None, grades=None):
    """Write a long CSV in the format `read_patient_data` reads (used by tests and scripts).

    `values[i]` is an array (len(times), len(analyte_names)) for patient i;
    `lloq` a dict analyte -> limit (values below it are written as BLQ rows with
    DV = LLOQ); `doses[i]` a list of (time, drug, mg); `covariates[i]` and
    `grades[i]` dicts of per-patient columns.
    """
    rows = []
    for i, pid in enumerate(ids):
        extra = dict(covariates[i]) if covariates is not None else {}
        if grades is not None:
            extra.update({f"{k.upper()}_GRADE": v for k, v in grades[i].items()})
        events = []
        for j, t in enumerate(times):
            for a, name in enumerate(analyte_names):
                v = float(values[i][j, a])
                limit = (lloq or {}).get(name)
                blq = limit is not None and v < limit
                events.append((t, 1, dict(ID=pid, TIME=t, EVID=0, DVID=name, DV=limit if blq else v, AMT=0.0,
                                          MDV=0, LLOQ=limit if limit is not None else np.nan, BLQ=int(blq), **extra)))
        for (t, drug, mg) in (doses[i] if doses is not None else []):
            events.append((t, 0, dict(ID=pid, TIME=t, EVID=1, DVID=drug, DV=np.nan, AMT=mg, MDV=1, LLOQ=np.nan, BLQ=0, **extra)))
        events.sort(key=lambda e: (e[0], e[1]))
        rows.extend(e[2] for e in events)
    pd.DataFrame(rows).to_csv(path, index=False)

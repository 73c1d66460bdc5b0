"""Grading an observation table: read, validate, grade rows, summarise patients.

The observation table is specified in the shared contract (one row per
patient per assessment, grouped by `patient_id`, time-sorted). This module is
the pandas boundary: it checks every column, turns strings into the integer
codes of `vpop.observation.encoding`, runs the row-level `jax.numpy` grading
functions on whole columns at once, and computes per-patient episodes with
`vpop.grading.episodes`.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from functools import partial

import jax
import numpy as np
import pandas as pd

from vpop.errors import DataError, UserError
from vpop.observation import encoding as enc
from vpop.grading.astct import crs_fever_waiver, crs_grade_astct
from vpop.grading.episodes import GRADES, episode_summary
from vpop.grading.legacy import CRS_SCALES, NEURO_SCALES, SCALE_ALIASES


@dataclass(frozen=True)
class Column:
    """One column of the observation table, as vpop checks it."""

    name: str
    kind: str  # "id", "float", "int", "bool", "enum"
    required: bool = False
    default: object = None  # value for an absent column or an empty cell
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo is exclusive
    enum: tuple[str, ...] | None = None
    allowed: str = ""  # human description of what is allowed


_NAN = float("nan")

#: Every column vpop reads, in checking order: contract columns, then the
#: optional columns the legacy scales read (documented in docs/grading.md).
COLUMNS: tuple[Column, ...] = (
    Column("patient_id", "id", required=True, allowed="a non-empty patient identifier"),
    Column("time_day", "float", required=True, lo=0.0, allowed="a number ≥ 0 (days since infusion)"),
    Column("age_years", "float", default=_NAN, lo=0.0, lo_open=True,
           allowed="a number > 0, or empty (adult)"),
    Column("temp_c", "float", required=True, lo=25.0, hi=45.0,
           allowed="a temperature in °C between 25 and 45 (not °F)"),
    Column("hypotension", "bool", required=True, allowed="true/false, 1/0 or yes/no"),
    Column("vasopressors", "int", required=True, lo=0.0,
           allowed="a whole number ≥ 0 (vasopressors other than vasopressin)"),
    Column("vasopressin", "bool", default=False, allowed="true/false, 1/0 or yes/no, or empty"),
    Column("o2_device", "enum", required=True, enum=enc.O2_DEVICES),
    Column("o2_flow_lpm", "float", default=_NAN, lo=0.0, allowed="a number ≥ 0 (L/min), or empty"),
    Column("fio2", "float", default=_NAN, lo=0.21, hi=1.0,
           allowed="a fraction between 0.21 and 1.0, or empty"),
    Column("antipyretics_given", "bool", default=False, allowed="true/false, 1/0 or yes/no, or empty"),
    Column("tocilizumab_given", "bool", default=False, allowed="true/false, 1/0 or yes/no, or empty"),
    Column("steroids_given", "bool", default=False, allowed="true/false, 1/0 or yes/no, or empty"),
    Column("ice_score", "int", default=_NAN, lo=0.0, hi=10.0,
           allowed="a whole number 0–10, or empty (not assessed)"),
    Column("capd_score", "int", default=_NAN, lo=0.0, hi=32.0,
           allowed="a whole number 0–32, or empty (not assessed)"),
    Column("consciousness", "enum", required=True, enum=enc.CONSCIOUSNESS),
    Column("seizure", "enum", default=0, enum=enc.SEIZURE),
    Column("motor_weakness", "bool", default=False, allowed="true/false, 1/0 or yes/no, or empty"),
    Column("cerebral_edema", "enum", default=0, enum=enc.CEREBRAL_EDEMA),
    Column("raised_icp_signs", "bool", default=False, allowed="true/false, 1/0 or yes/no, or empty"),
    Column("death_cause", "enum", default=0, enum=enc.DEATH_CAUSE),
    # Optional columns read by the legacy scales.
    Column("vasopressor_dose_ne", "float", default=_NAN, lo=0.0,
           allowed="a number ≥ 0 (µg/min norepinephrine-equivalent), or empty"),
    Column("vasopressor_hours", "float", default=_NAN, lo=0.0,
           allowed="a number ≥ 0 (hours), or empty (derived from the rows)"),
    Column("creatinine_grade", "int", default=0, lo=0.0, hi=4.0, allowed="a CTCAE grade 0–4, or empty"),
    Column("transaminitis_grade", "int", default=0, lo=0.0, hi=4.0,
           allowed="a CTCAE grade 0–4, or empty"),
    Column("organ_toxicity_grade", "int", default=0, lo=0.0, hi=4.0,
           allowed="a CTCAE grade 0–4, or empty"),
    Column("iv_therapy", "bool", default=False, allowed="true/false, 1/0 or yes/no, or empty"),
    Column("coagulopathy_treated", "bool", default=False, allowed="true/false, 1/0 or yes/no, or empty"),
    Column("tremor_grade", "int", default=0, lo=0.0, hi=3.0, allowed="a CTCAE grade 0–3, or empty"),
    Column("headache_grade", "int", default=0, lo=0.0, hi=3.0, allowed="a CTCAE grade 0–3, or empty"),
)
COLUMNS_BY_NAME = {c.name: c for c in COLUMNS}
REQUIRED_COLUMNS = tuple(c.name for c in COLUMNS if c.required)

_TRUE = {"true", "t", "yes", "y", "1", "1.0"}
_FALSE = {"false", "f", "no", "n", "0", "0.0"}


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def table_format(path: str | os.PathLike) -> str:
    """"csv" or "parquet" from a file name; anything else raises `UserError`."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext == ".csv":
        return "csv"
    if ext in (".parquet", ".pq"):
        return "parquet"
    raise UserError(f"{os.fspath(path)}: unknown table format {ext or '(no extension)'!r}; "
                    "use a .csv or .parquet file")


def read_observations(path: str | os.PathLike) -> pd.DataFrame:
    """Read an observation table from CSV or Parquet (chosen by extension).

    `patient_id` is read as text from CSV so that identifiers such as `007`
    keep their leading zeros.

    **Raises:** `DataError` for an unknown extension, a missing file or a file
    that cannot be parsed.
    """
    name = os.fspath(path)
    try:
        fmt = table_format(name)
    except UserError as err:
        raise DataError(str(err)) from None
    if not os.path.exists(name):
        raise DataError(f"{name}: no such file")
    try:
        if fmt == "csv":
            return pd.read_csv(name, dtype={"patient_id": str}, skipinitialspace=True)
        return pd.read_parquet(name)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{name}: cannot read {fmt} table: {err}") from None
    except Exception as err:  # pyarrow raises its own error types
        raise DataError(f"{name}: cannot read {fmt} table: {err}") from None


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def _fail(source, df, bad, column, what, allowed):
    """Raise a DataError naming the first bad row."""
    rows = np.flatnonzero(bad)
    i = int(rows[0])
    pid = df["patient_id"].iloc[i] if "patient_id" in df.columns else None
    where = f"row {i + 1}" + (f" (patient_id {pid})" if pid is not None and pd.notna(pid) else "")
    more = f" [{rows.size - 1} more row(s) with the same problem]" if rows.size > 1 else ""
    value = df[column].iloc[i]
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    raise DataError(
        f"{source}: {where}, column '{column}': {what.format(value=value)}; "
        f"allowed: {allowed}{more}"
    )


def _parse_bool(series: pd.Series):
    """(values, bad, missing) for a column of booleans in any common spelling."""
    if pd.api.types.is_bool_dtype(series.dtype):
        values = series.to_numpy(dtype=bool, na_value=False)
        missing = series.isna().to_numpy()
        return values, np.zeros(len(series), bool), missing
    if pd.api.types.is_numeric_dtype(series.dtype):
        x = series.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.isnan(x)
        bad = ~missing & (x != 0) & (x != 1)
        return x == 1, bad, missing
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    truth = np.zeros(len(uniques) + 1, np.int8)  # 1 true, 0 false, -1 bad; last slot = NA
    for j, u in enumerate(uniques):
        s = str(u).strip().lower()
        truth[j] = 1 if s in _TRUE else 0 if s in _FALSE else (2 if s == "" else -1)
    truth[-1] = 2
    t = truth[codes]  # codes == -1 picks the NA slot
    return t == 1, t == -1, t == 2


def _parse_enum(series: pd.Series, enum: tuple[str, ...]):
    """(codes, bad, missing) for an enum column (case and spaces ignored)."""
    lookup = {name: i for i, name in enumerate(enum)}
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    table = np.full(len(uniques) + 1, -1, np.int16)
    for j, u in enumerate(uniques):
        s = str(u).strip().lower()
        table[j] = lookup.get(s, -2 if s == "" else -1)
    table[-1] = -2
    t = table[codes]
    return t.astype(np.int8), t == -1, t == -2


def _parse_number(series: pd.Series):
    """(float values, bad = not a number, missing)."""
    if pd.api.types.is_bool_dtype(series.dtype):
        x = series.to_numpy(dtype=np.float64, na_value=np.nan)
        return x, np.zeros(len(x), bool), np.isnan(x)
    if pd.api.types.is_numeric_dtype(series.dtype):
        x = series.to_numpy(dtype=np.float64, na_value=np.nan)
        return x, np.zeros(len(x), bool), np.isnan(x)
    raw_missing = series.isna().to_numpy().copy()
    if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
        stripped = series.astype("str").str.strip()
        raw_missing |= (stripped == "").to_numpy(dtype=bool, na_value=True)
        x = pd.to_numeric(stripped.where(~raw_missing), errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan
        )
    else:
        x = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isnan(x) & ~raw_missing
    return x, bad, raw_missing


def validate_observations(df: pd.DataFrame, source_name: str = "observations") -> dict[str, np.ndarray]:
    """Check an observation table and encode it as arrays for grading.

    Checks, in order: required columns present; every value of every column
    vpop reads (type, enum value, range, whole numbers); rows grouped by
    patient; `time_day` strictly increasing within a patient. Empty cells in
    optional columns, and absent optional columns, take their defaults
    (docs/grading.md).

    **Arguments:**

    - `df`: the table (extra columns are ignored).
    - `source_name`: the file name used in error messages.

    **Returns:** a dict of NumPy arrays, one per column in `COLUMNS` (enums as
    int8 codes, booleans as bool, counts and CTCAE grades as int32, scores and
    measurements as float64 with NaN for empty), plus `patient_code` (int64,
    0, 1, ... in order of appearance) and, where the column was absent,
    nothing for `fio2` / `vasopressor_dose_ne` (left to the scale defaults).

    **Raises:** `DataError` naming the file, the row (1 = first data row, with
    its `patient_id`), the column and what is allowed.
    """
    missing_cols = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing_cols:
        raise DataError(
            f"{source_name}: missing required column(s) {', '.join(repr(c) for c in missing_cols)}; "
            f"required: {', '.join(REQUIRED_COLUMNS)}"
        )
    n = len(df)
    out: dict[str, np.ndarray] = {}
    for col in COLUMNS:
        if col.kind == "id":
            continue
        if col.name not in df.columns:
            if col.name in ("fio2", "vasopressor_dose_ne"):
                continue  # scale functions derive their own default
            if col.kind == "enum":
                out[col.name] = np.full(n, col.default, np.int8)
            elif col.kind == "bool":
                out[col.name] = np.full(n, bool(col.default))
            elif col.kind == "int" and not np.isnan(float(col.default)):
                out[col.name] = np.full(n, int(col.default), np.int32)
            else:
                out[col.name] = np.full(n, float(col.default))
            continue
        series = df[col.name]
        if col.kind == "enum":
            allowed = ", ".join(col.enum) + ("" if col.required else ", or empty (none)")
            codes, bad, missing = _parse_enum(series, col.enum)
            if bad.any():
                _fail(source_name, df, bad, col.name, "unknown value '{value}'", allowed)
            if missing.any():
                if col.required:
                    _fail(source_name, df, missing, col.name, "empty value", allowed)
                codes = np.where(missing, col.default, codes).astype(np.int8)
            out[col.name] = codes
        elif col.kind == "bool":
            values, bad, missing = _parse_bool(series)
            if bad.any():
                _fail(source_name, df, bad, col.name, "'{value}' is not a boolean", col.allowed)
            if missing.any():
                if col.required:
                    _fail(source_name, df, missing, col.name, "empty value", col.allowed)
                values = np.where(missing, bool(col.default), values)
            out[col.name] = values
        else:
            x, bad, missing = _parse_number(series)
            if bad.any():
                _fail(source_name, df, bad, col.name, "'{value}' is not a number", col.allowed)
            if col.required and missing.any():
                _fail(source_name, df, missing, col.name, "empty value", col.allowed)
            with np.errstate(invalid="ignore"):
                if col.kind == "int":
                    frac = ~missing & (x != np.round(x))
                    if frac.any():
                        _fail(source_name, df, frac, col.name, "{value} is not a whole number",
                              col.allowed)
                low = (x <= col.lo) if col.lo_open else (x < col.lo) if col.lo is not None else None
                if low is not None and low.any():
                    _fail(source_name, df, low, col.name, "{value} is out of range", col.allowed)
                if col.hi is not None:
                    high = x > col.hi
                    if high.any():
                        _fail(source_name, df, high, col.name, "{value} is out of range", col.allowed)
            if col.kind == "int" and col.required:
                out[col.name] = x.astype(np.int32)
            elif col.kind == "int" and not np.isnan(float(col.default)):
                out[col.name] = np.where(missing, int(col.default), x).astype(np.int32)
            else:
                out[col.name] = x

    pid = df["patient_id"]
    pid_missing = pid.isna().to_numpy().copy()
    if pid.dtype == object or pd.api.types.is_string_dtype(pid.dtype):
        pid_missing |= (pid.astype("str").str.strip() == "").to_numpy(dtype=bool, na_value=True)
    if pid_missing.any():
        _fail(source_name, df, pid_missing, "patient_id", "empty value", "a non-empty patient identifier")
    codes, _ = pd.factorize(pid, use_na_sentinel=True)
    codes = codes.astype(np.int64)
    if n:
        is_start = np.ones(n, bool)
        is_start[1:] = codes[1:] != codes[:-1]
        seen_max = np.maximum.accumulate(codes)
        regrouped = is_start.copy()
        regrouped[0] = False
        regrouped[1:] &= codes[1:] <= seen_max[:-1]
        if regrouped.any():
            _fail(source_name, df, regrouped, "patient_id",
                  "patient {value} appears again after other patients' rows",
                  "the rows of each patient together in one block (sort by patient_id, then time_day)")
        t = out["time_day"]
        not_increasing = np.zeros(n, bool)
        not_increasing[1:] = ~is_start[1:] & (t[1:] <= t[:-1])
        if not_increasing.any():
            _fail(source_name, df, not_increasing, "time_day",
                  "{value} does not increase from the patient's previous row",
                  "times strictly increasing within a patient")
    out["patient_code"] = codes
    return out


# ---------------------------------------------------------------------------
# Grading
# ---------------------------------------------------------------------------


def resolve_scales(scales) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Scale names → (CRS scale keys, neurotoxicity scale keys), ASTCT first.

    A name selects every registry it is in (`cartox` → CRS and neuro CARTOX;
    `ctcae5` → CRS; `ctcae` → neuro); aliases `ctcae_neuro`, `cartox_neuro`
    and `cres` select the neuro scale only; `all` selects every scale. ASTCT
    is always included.

    **Raises:** `UserError` for an unknown name, listing the allowed names.
    """
    if isinstance(scales, str):
        scales = [s for s in scales.split(",")]
    crs, neuro = ["astct"], ["astct"]
    for raw in scales:
        name = raw.strip().lower()
        if not name:
            continue
        if name == "all":
            crs += list(CRS_SCALES)
            neuro += list(NEURO_SCALES)
            continue
        hit = False
        if name in CRS_SCALES:
            crs.append(name)
            hit = True
        if name in NEURO_SCALES:
            neuro.append(name)
            hit = True
        if name in SCALE_ALIASES:
            c, nn = SCALE_ALIASES[name]
            if c:
                crs.append(c)
            if nn:
                neuro.append(nn)
            hit = True
        if not hit:
            raise UserError(f"unknown grading scale {raw.strip()!r}; allowed: {', '.join(allowed_scales())}")
    return tuple(dict.fromkeys(crs)), tuple(dict.fromkeys(neuro))


def allowed_scales() -> list[str]:
    """Every name `resolve_scales` accepts."""
    return list(dict.fromkeys([*CRS_SCALES, *NEURO_SCALES, *SCALE_ALIASES, "all"]))


def _params(fn) -> tuple[str, ...]:
    fn = getattr(fn, "__wrapped__", fn)
    return tuple(inspect.signature(fn).parameters)


def vasopressor_hours_from_rows(patient_code, time_day, on_pressor) -> np.ndarray:
    """Hours on vasopressors continuously up to each row, from consecutive rows.

    A stretch of consecutive rows of one patient with a vasopressor running is
    counted from its first row (0 h at that row); rows off vasopressors are 0.
    """
    p = np.asarray(patient_code)
    t = np.asarray(time_day, dtype=np.float64)
    on = np.asarray(on_pressor, dtype=bool)
    n = p.size
    if n == 0:
        return np.zeros(0)
    prev_on = np.zeros(n, bool)
    prev_on[1:] = on[:-1] & (p[1:] == p[:-1])
    run_start = on & ~prev_on
    start_idx = np.maximum.accumulate(np.where(run_start, np.arange(n), 0))
    return np.where(on, (t - t[start_idx]) * 24.0, 0.0)


@partial(jax.jit, static_argnames=("crs_scales", "neuro_scales"))
def _grade_all(arrays, crs_scales, neuro_scales):
    crs_args = {k: arrays[k] for k in _params(crs_grade_astct) if k in arrays}
    crs_args["fever_waived"] = False
    g_req = crs_grade_astct(**crs_args)
    waived = crs_fever_waiver(
        g_req,
        arrays["antipyretics_given"],
        arrays["tocilizumab_given"],
        arrays["steroids_given"],
        arrays["patient_code"],
    )
    out = {}
    for name in crs_scales:
        fn = CRS_SCALES[name]
        args = {k: arrays[k] for k in _params(fn) if k in arrays}
        args["fever_waived"] = waived
        out[f"crs_grade_{name}"] = fn(**args)
    for name in neuro_scales:
        fn = NEURO_SCALES[name]
        args = {k: arrays[k] for k in _params(fn) if k in arrays}
        out[f"icans_grade_{name}"] = fn(**args)
    return out


def grade_arrays(arrays: dict[str, np.ndarray], scales=("astct",)) -> dict[str, np.ndarray]:
    """Grade validated arrays (from `validate_observations`); one jitted call.

    **Returns:** dict of int8 NumPy arrays named `crs_grade_<scale>` and
    `icans_grade_<scale>`.
    """
    crs_scales, neuro_scales = resolve_scales(scales)
    arrays = dict(arrays)
    if "mskcc" in crs_scales:
        derived = vasopressor_hours_from_rows(
            arrays["patient_code"],
            arrays["time_day"],
            (arrays["vasopressors"] >= 1) | arrays["vasopressin"],
        )
        hours = arrays.get("vasopressor_hours")
        arrays["vasopressor_hours"] = derived if hours is None else np.where(np.isnan(hours), derived, hours)
    else:
        arrays.pop("vasopressor_hours", None)
    arrays["patient_code"] = arrays["patient_code"].astype(np.int32)
    arrays.pop("time_day", None)
    if len(arrays["patient_code"]) == 0:
        return {**{f"crs_grade_{s}": np.zeros(0, np.int8) for s in crs_scales},
                **{f"icans_grade_{s}": np.zeros(0, np.int8) for s in neuro_scales}}
    grades = _grade_all(arrays, crs_scales, neuro_scales)
    names = [f"crs_grade_{s}" for s in crs_scales] + [f"icans_grade_{s}" for s in neuro_scales]
    return {k: np.asarray(grades[k]).astype(np.int8) for k in names}


def grade_observations(df: pd.DataFrame, scales=("astct",), source_name: str = "observations") -> pd.DataFrame:
    """Validate `df` and return a copy with the per-row grade columns added.

    Adds `crs_grade_astct` and `icans_grade_astct` and, for each other scale
    asked for, `crs_grade_<scale>` / `icans_grade_<scale>` (see
    `resolve_scales`). All existing columns are kept unchanged.

    **Raises:** `DataError` (bad table, see `validate_observations`) or
    `UserError` (unknown scale).
    """
    resolve_scales(scales)  # unknown scale names fail before any work
    arrays = validate_observations(df, source_name)
    grades = grade_arrays(arrays, scales)
    out = df.copy(deep=False)  # new columns only; the caller's frame is not modified
    for name, values in grades.items():
        out[name] = values
    return out


def _summary_block(prefix, suffix, stats, with_days):
    cols = {
        f"{prefix}_max_grade{suffix}": stats["max_grade"],
        f"{prefix}_onset_day{suffix}": stats["onset_day"],
        f"{prefix}_resolution_day{suffix}": stats["resolution_day"],
        f"{prefix}_duration_days{suffix}": stats["duration_days"],
        f"{prefix}_episodes{suffix}": stats["episodes"],
    }
    if with_days:
        for j, g in enumerate(GRADES):
            cols[f"{prefix}_days_grade{g}{suffix}"] = stats["days_grade"][:, j]
    return cols


def summarise_patients(graded_df: pd.DataFrame, scales=("astct",)) -> pd.DataFrame:
    """One row per patient: maxima, onset, resolution, duration, episodes.

    Reads `patient_id`, `time_day` and the grade columns of a graded table
    (`grade_observations`), whose rows are grouped by patient and time-sorted.
    Columns: `patient_id`; for ASTCT `crs_max_grade`, `icans_max_grade`,
    `crs_onset_day`, `icans_onset_day`, `crs_resolution_day`,
    `icans_resolution_day`, `crs_duration_days`, `icans_duration_days`,
    `crs_episodes`, `icans_episodes`, `crs_days_grade1..5`,
    `icans_days_grade1..5`; for each other scale the same max / onset /
    resolution / duration / episodes columns with a `_<scale>` suffix.
    Definitions: `vpop.grading.episodes`.
    """
    crs_scales, neuro_scales = resolve_scales(scales)
    codes, _ = pd.factorize(graded_df["patient_id"], use_na_sentinel=True)
    t = graded_df["time_day"].to_numpy(dtype=np.float64)
    first = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if len(codes) else np.zeros(0, int)
    cols: dict[str, object] = {"patient_id": graded_df["patient_id"].iloc[first].to_numpy()}
    blocks = {}
    for prefix, names in (("crs", crs_scales), ("icans", neuro_scales)):
        for name in names:
            column = f"{prefix}_grade_{name}"
            if column not in graded_df.columns:
                raise UserError(f"graded table has no column {column!r}; grade it with scale {name!r}")
            stats = episode_summary(codes, t, graded_df[column].to_numpy())
            suffix = "" if name == "astct" else f"_{name}"
            blocks[(prefix, name)] = _summary_block(prefix, suffix, stats, name == "astct")
    # ASTCT columns interleaved crs/icans as in the contract, then the other scales.
    crs_a, icans_a = blocks[("crs", "astct")], blocks[("icans", "astct")]
    for key_c, key_i in zip(crs_a, icans_a):
        if "_days_grade" not in key_c:
            cols[key_c] = crs_a[key_c]
            cols[key_i] = icans_a[key_i]
    cols.update({k: v for k, v in crs_a.items() if "_days_grade" in k})
    cols.update({k: v for k, v in icans_a.items() if "_days_grade" in k})
    for (prefix, name), block in blocks.items():
        if name != "astct":
            cols.update(block)
    return pd.DataFrame(cols)


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write CSV or Parquet (by extension) to exactly `path` (no temp file)."""
    if table_format(path) == "csv":
        try:  # pyarrow's CSV writer is ~10x faster than pandas' for large tables
            import pyarrow as pa
            import pyarrow.csv as pacsv

            table = pa.Table.from_pandas(df, preserve_index=False)
            pacsv.write_csv(table, path, pacsv.WriteOptions(quoting_style="needed"))
        except (ImportError, pa.ArrowException, TypeError, ValueError):
            df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)

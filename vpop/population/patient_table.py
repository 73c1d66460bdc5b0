"""User-supplied patient tables: covariates taken as given instead of sampled.

A config may name a table with `population.patients_file: patients.csv` (or
`.parquet`; a relative path is read from the config file's folder). Each row
is one patient:

* required: every covariate in `vpop.population.sampler.COVARIATES` (age_years,
  weight_kg, tumor_burden, ldh, platelets0, crp0, ferritin0, creatinine,
  ang2_0, nfl0), finite and inside the hard ranges of `HARD_RANGES`;
* optional: `patient_id` (non-negative integers, unique: the patient's random
  key is then fold_in(PRNGKey(seed), patient_id), so a patient written by
  `vpop population select` is simulated again exactly; other ids are kept as
  labels and the key comes from the row number), `sex` (F/M) or `female`
  (0/1) (missing: drawn with the configured female fraction),
  `car_dose_per_kg` (cells/kg; missing: the product's dose), `ld_intensity`
  (missing: from the product's lymphodepletion), and random effects
  `eta_<name>` for a parameter or sensitivity (missing: drawn from the
  patient's key with the configured Omega, as for a sampled patient);
* any other column is ignored (selection writes `param_*` and output columns
  for information).

EASIX and m-EASIX are derived from the row. Errors are `DataError` naming the
file, the row (1-based data row, as a spreadsheet shows it after the header)
and the column, and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from vpop.errors import DataError, show_value
from vpop.model.parameters import TABLE
from vpop.population.sampler import COVARIATES, SENSITIVITIES, PopulationSampler, patient_keys

# Physiologically possible values; a value outside is an error (the config's
# sampling bounds do not apply to given patients).
HARD_RANGES: dict[str, tuple[float, float]] = {
    "age_years": (0.0, 120.0),
    "weight_kg": (2.0, 350.0),
    "tumor_burden": (0.0, 1000.0),
    "ldh": (10.0, 50000.0),
    "platelets0": (0.1, 3000.0),
    "crp0": (0.0, 1000.0),
    "ferritin0": (1.0, 500000.0),
    "creatinine": (0.05, 20.0),
    "ang2_0": (0.01, 500.0),
    "nfl0": (0.1, 10000.0),
    "car_dose_per_kg": (1.0e3, 1.0e9),
    "ld_intensity": (0.0, 5.0),
}
# Quantities that divide or are logged: strictly positive.
_POSITIVE = {"weight_kg", "tumor_burden", "ldh", "platelets0", "crp0", "ferritin0", "creatinine", "ang2_0", "nfl0"}
OPTIONAL_NUMERIC = ("car_dose_per_kg", "ld_intensity")
ETA_PREFIX = "eta_"


@dataclass
class PatientTable:
    """A validated patient table."""

    source: str
    ids: np.ndarray  # the patient_id column as written (or 0..n-1)
    key_ids: np.ndarray  # uint32 ids the random keys are folded from
    covariates: dict[str, np.ndarray]  # float64 columns: COVARIATES, optional female/dose/ld
    eta: dict[str, np.ndarray]  # random effects by parameter name

    def __len__(self) -> int:
        return len(self.key_ids)

    def cohort_size(self, n: int | None) -> int:
        """Rows to simulate: all of them, or the first n when n is smaller."""
        return len(self) if n is None else min(int(n), len(self))


def _fail(source, msg):
    raise DataError(f"{source}: {msg}")


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        _fail(path, "patient table not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad file
        _fail(path, f"cannot be read as {suffix[1:]}: {err}")
    _fail(path, f"unknown file type {suffix!r}; allowed: .csv, .parquet")


def validate_table(df: pd.DataFrame, source: str) -> PatientTable:
    """Check a patient table and return its columns (DataError naming row and column)."""
    if len(df) == 0:
        _fail(source, "the table has no rows; allowed: one row per patient")
    cols = [str(c) for c in df.columns]
    missing = [c for c in COVARIATES if c not in cols]
    if missing:
        _fail(source, f"missing column(s) {', '.join(missing)}; required: {', '.join(COVARIATES)}")

    def numeric(name, low, high, positive=False):
        raw = df[name]
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        lo_txt = f"> {low}" if positive and low <= 0 else f">= {low}"
        bad = ~np.isfinite(values) | (values < low) | (values > high) | (positive & (values <= 0))
        if bad.any():
            i = int(np.argmax(bad))
            _fail(source, f"row {i + 1}, column {name}: got {show_value(raw.iloc[i])}; allowed: a finite number {lo_txt} and <= {high}")
        return values

    covariates = {}
    for name in COVARIATES:
        low, high = HARD_RANGES[name]
        covariates[name] = numeric(name, low, high, name in _POSITIVE)
    for name in OPTIONAL_NUMERIC:
        if name in cols:
            low, high = HARD_RANGES[name]
            covariates[name] = numeric(name, low, high)

    if "sex" in cols and "female" in cols:
        _fail(source, "columns sex and female both given; allowed: one of them")
    if "sex" in cols:
        sex = df["sex"].astype(str).str.strip().str.upper()
        ok = sex.isin(["F", "M", "FEMALE", "MALE"]).to_numpy()
        if not ok.all():
            i = int(np.argmax(~ok))
            _fail(source, f"row {i + 1}, column sex: got {show_value(df['sex'].iloc[i])}; allowed: F or M")
        covariates["female"] = sex.str.startswith("F").to_numpy(dtype=np.float64)
    elif "female" in cols:
        raw = df["female"]
        values = pd.to_numeric(raw.astype("object").replace({True: 1, False: 0}), errors="coerce").to_numpy(dtype=np.float64)
        ok = np.isin(values, [0.0, 1.0])
        if not ok.all():
            i = int(np.argmax(~ok))
            _fail(source, f"row {i + 1}, column female: got {show_value(raw.iloc[i])}; allowed: 0 or 1 (or true/false)")
        covariates["female"] = values

    eta = {}
    for col in cols:
        if not col.startswith(ETA_PREFIX):
            continue
        name = col[len(ETA_PREFIX):]
        if name not in TABLE and name not in SENSITIVITIES:
            _fail(source, f"column {col}: {name!r} is not a model parameter nor one of {', '.join(SENSITIVITIES)}; "
                          f"allowed: eta_<parameter name>")
        eta[name] = numeric(col, -10.0, 10.0)

    n = len(df)
    if "patient_id" in cols:
        raw = df["patient_id"]
        ids = raw.to_numpy()
        as_num = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        integer = np.isfinite(as_num).all() and (as_num == np.round(as_num)).all() and (as_num >= 0).all() \
            and (as_num < 2**32).all()
        dup = raw.duplicated().to_numpy()
        if dup.any():
            i = int(np.argmax(dup))
            _fail(source, f"row {i + 1}, column patient_id: {raw.iloc[i]!r} repeats an earlier row; allowed: unique ids")
        if raw.isna().any():
            i = int(np.argmax(raw.isna().to_numpy()))
            _fail(source, f"row {i + 1}, column patient_id: empty; allowed: an id (integer or text)")
        if integer:
            ids = as_num.astype(np.int64)
            key_ids = ids.astype(np.uint32)
        else:
            ids = raw.astype(str).to_numpy(dtype=object)
            key_ids = np.arange(n, dtype=np.uint32)
    else:
        ids = np.arange(n)
        key_ids = np.arange(n, dtype=np.uint32)
    return PatientTable(str(source), ids, key_ids, covariates, eta)


def load_patient_table(path: str | Path) -> PatientTable:
    return validate_table(read_table(path), str(path))


def patients_file_of(config) -> Path | None:
    """The config's `population.patients_file`, resolved against the config's folder."""
    name = (config.raw.get("population") or {}).get("patients_file")
    if name is None:
        return None
    path = Path(name)
    if not path.is_absolute():
        path = Path(config.source).parent / path
    return path


def table_of(config) -> PatientTable | None:
    """The config's patient table, validated, or None when it samples patients."""
    path = patients_file_of(config)
    if path is None:
        return None
    return load_patient_table(path)


def cohort_size(config, n: int | None) -> int:
    """`vpop simulate`'s N: the table's rows (at most n) or n (default cohort.n)."""
    table = table_of(config)
    if table is None:
        return config.n if n is None else int(n)
    return table.cohort_size(n)


def given_sampler(sampler: PopulationSampler, dtype):
    """jit(vmap) of `individual_from_covariates` over (population key, row covariates, row eta)."""
    def one(key, cov, eta):
        cov = {k: v.astype(jnp.float32) for k, v in cov.items()}
        eta = {k: v.astype(jnp.float32) for k, v in eta.items()}
        return sampler.individual_from_covariates(key, cov, eta)

    def sample(keys, cov, eta):
        c, p = jax.vmap(one)(keys, cov, eta)
        return c, jax.tree_util.tree_map(lambda x: x.astype(dtype), p)

    return jax.jit(sample)


def batch_rows(table: PatientTable, rows: np.ndarray, seed: int):
    """(patient keys, covariates, eta) of table rows `rows` (row indices)."""
    keys = patient_keys(seed, table.key_ids[rows])
    cov = {k: jnp.asarray(v[rows]) for k, v in table.covariates.items()}
    eta = {k: jnp.asarray(v[rows]) for k, v in table.eta.items()}
    return keys, cov, eta

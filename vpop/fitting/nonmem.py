"""NONMEM data conventions beyond plain observations and bolus doses (called by `vpop.fitting.data`).

* EVID: 0 observation, 1 dose, 2 other event (no dose, no observation: kept for its
  covariates, which are carried forward), 3 reset, 4 reset and dose.
  A reset returns the patient to the state before CAR-T infusion. vpop's course
  starts at the infusion (TIME 0), so the records from a reset on are a new course
  of the same patient: ID `<ID>/2` (then `/3`, ...), with TIME counted from the
  reset (the reset is that course's infusion). Its random effects are its own.
* ADDL / II: a dose row with ADDL = k and II = tau stands for k + 1 doses, at
  TIME, TIME + tau, ..., TIME + k tau (NONMEM's additional doses).
* RATE / DUR: an infusion of AMT over DUR days (or AMT / RATE days when RATE > 0;
  RATE = -2 takes DUR from the DUR column; RATE = -1, a modelled rate, is refused).
  The course applies doses as boluses at its 6-hourly assessment grid
  (`ASSESSMENT_DAYS`), so an infusion becomes boluses at the grid points: grid
  point g receives what runs in during [g - h/2, g + h/2) (h the grid spacing),
  which conserves the total amount exactly and places it where the course would
  place each part.
* SS = 1 (steady state, with II): only for a drug the model eliminates by one
  linear compartment (anakinra). The amount in the body right after an SS dose
  is D / (1 - exp(-k II)) (the sum of all earlier doses D exp(-j k II)), given as
  one bolus of that size at TIME; k = clearance / volume at the parameter table's
  typical values. Other drugs (tocilizumab has saturable elimination,
  dexamethasone two compartments) are refused with SS = 1.
* Covariates are carried forward within a patient (a blank takes the last
  recorded value; blanks before the first value take the first value), as
  NONMEM does. A covariate may change at a reset (it is then another course);
  within one course `vpop.fitting.data` still requires it constant (the model's
  covariate effects act on the course's baseline).

Every error names the file, the row (1-based data row) and the column.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from vpop.errors import DataError

EVIDS = {0: "observation", 1: "dose", 2: "other event", 3: "reset", 4: "reset and dose"}
DOSE_EVIDS = (1, 4)
ASSESSMENT_DAYS = 0.25  # the course's assessment grid (6 h): where boluses are applied
# Drugs with one linear compartment: (clearance, volume) parameter names, for SS.
LINEAR_ONE_COMPARTMENT = {"anakinra": ("anakinra_clearance", "anakinra_volume")}


# Drug names a data file may use (CMT/DVID of a dose row) and the course dose kind each is.
DRUGS: dict[str, str] = {
    "toci": "toci",
    "tocilizumab": "toci",
    "dex": "dex_iv",
    "dexamethasone": "dex_iv",
    "dex_iv": "dex_iv",
    "dex_po": "dex_oral",
    "dex_oral": "dex_oral",
    "mp": "mp",
    "methylprednisolone": "mp",
    "anakinra": "anakinra",
}
DOSE_KINDS = ("toci", "dex_iv", "dex_oral", "mp", "anakinra")


def _fail(path, row, column, msg):
    where = f"{path}: row {row}" if row is not None else str(path)
    if column is not None:
        where += f", column {column}"
    raise DataError(f"{where}: {msg}")


def _col(df, name, path):
    if name not in df.columns:
        return None
    v = pd.to_numeric(df[name], errors="coerce")
    bad = v.isna() & ~df[name].isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        _fail(path, i + 1, name.upper(), f"got {df[name].iloc[i]!r}; allowed: a number")
    return v.to_numpy(dtype=float)


def check_evid(evid, path) -> None:
    for i, e in enumerate(evid):
        if e not in EVIDS:
            _fail(path, i + 1, "EVID", f"got {e:g}; allowed: " + ", ".join(f"{k} ({v})" for k, v in EVIDS.items()))


def prepare(df: pd.DataFrame, evid, time, path, covariate_columns=()):
    """Resets become new courses (ID and TIME rewritten), covariates are carried forward.

    Returns (df, time): the same rows in the same order (error messages keep their row
    numbers); `df["id"]` and `time` rewritten for rows after a reset; `df["subject"]` the
    original ID and `df["course"]` the course's number within it (1, 2, ...).
    """
    df = df.copy()
    df["subject"] = df["id"]  # the file's ID: the subject whose occasions the courses are
    ids = df["id"].to_numpy(dtype=object).copy()
    courses = np.ones(len(df), dtype=int)
    time = np.asarray(time, dtype=float).copy()
    starts = [0] + [i for i in range(1, len(df)) if df["id"].iloc[i] != df["id"].iloc[i - 1]] + [len(df)]
    for a, b in zip(starts[:-1], starts[1:]):
        course, origin = 1, 0.0
        for i in range(a, b):
            if evid[i] in (3, 4) and i > a:  # a reset on the first row of a patient changes nothing
                course, origin = course + 1, time[i]
            elif evid[i] in (3, 4):
                origin = time[i]
            courses[i] = course
            if course > 1:
                ids[i] = f"{ids[i]}/{course}"
            time[i] = time[i] - origin
        for c in covariate_columns:
            if c in df.columns:
                v = pd.to_numeric(df[c].iloc[a:b], errors="coerce")
                df.loc[df.index[a:b], c] = v.ffill().bfill().to_numpy()
    df["id"] = ids
    df["course"] = courses
    return df, time


def expand_doses(data, df: pd.DataFrame, dose_rows, path, parameters=None):
    """ADDL/II, RATE/DUR and SS of the dose rows, applied to `data` (PatientData) in place; returns it."""
    addl, ii, rate, dur, ss = (_col(df, c, path) for c in ("addl", "ii", "rate", "dur", "ss"))
    if all(v is None for v in (addl, rate, dur, ss)):
        return data
    if parameters is None:
        from vpop.model.parameters import TABLE

        parameters = {k: TABLE[k].value for k in ("anakinra_clearance", "anakinra_volume")}
    names = df["dvid" if "dvid" in df.columns else "cmt"].astype(str).str.strip().str.lower().to_numpy()
    ids = df["id"].to_numpy()
    starts = [0] + [i for i in range(1, len(df)) if ids[i] != ids[i - 1]] + [len(df)]
    for p, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        rows = [i for i in range(a, b) if dose_rows[i]]
        times, kinds, mgs = [], [], []
        for j, i in enumerate(rows):
            t0, kind, mg = float(data.dose_time[p][j]), int(data.dose_kind[p][j]), float(data.dose_mg[p][j])
            n_add = 0 if addl is None or not np.isfinite(addl[i]) else addl[i]
            tau = np.nan if ii is None else ii[i]
            if n_add < 0 or n_add != int(n_add):
                _fail(path, i + 1, "ADDL", f"got {n_add:g}; allowed: an integer >= 0")
            steady = 0 if ss is None or not np.isfinite(ss[i]) else ss[i]
            if steady not in (0, 1):
                _fail(path, i + 1, "SS", f"got {steady:g}; allowed: 0 or 1 (SS=2, superposition, is not supported)")
            if (n_add > 0 or steady == 1) and not (np.isfinite(tau) and tau > 0):
                _fail(path, i + 1, "II", f"got {tau!r}; allowed: an interdose interval > 0 (days) with ADDL > 0 or SS = 1")
            length = _duration(rate, dur, i, mg, path)
            starts_k = [t0] + [t0 + k * tau for k in range(1, int(n_add) + 1)]
            first = mg
            if steady == 1:
                drug = DOSE_KINDS[kind]
                if drug not in LINEAR_ONE_COMPARTMENT:
                    _fail(path, i + 1, "SS", f"steady state of {names[i]!r}: only drugs with one linear compartment "
                          f"({', '.join(LINEAR_ONE_COMPARTMENT)}) have a closed-form steady state in the model")
                if length > 0:
                    _fail(path, i + 1, "SS", "steady state of an infusion is not supported (give SS with a bolus)")
                first = steady_state_bolus(mg, tau, *(parameters[k] for k in LINEAR_ONE_COMPARTMENT[drug]))
            for k, s in enumerate(starts_k):
                amount = first if k == 0 else mg
                for tt, aa in (infusion_boluses(s, amount, length) if length > 0 else [(s, amount)]):
                    times.append(tt), kinds.append(kind), mgs.append(aa)
        order = np.argsort(np.asarray(times), kind="stable")
        data.dose_time[p] = np.asarray(times, float)[order]
        data.dose_kind[p] = np.asarray(kinds, np.int32)[order]
        data.dose_mg[p] = np.asarray(mgs, float)[order]
    _ = DRUGS  # the drug names the kinds index (documentation of the link)
    return data


def _duration(rate, dur, i, mg, path) -> float:
    r = np.nan if rate is None else rate[i]
    d = np.nan if dur is None else dur[i]
    if np.isfinite(r) and r != 0:
        if r == -1:
            _fail(path, i + 1, "RATE", "RATE = -1 (a rate estimated by the model) is not supported; give RATE > 0 or DUR")
        if r == -2:
            if not (np.isfinite(d) and d > 0):
                _fail(path, i + 1, "DUR", f"RATE = -2 needs a duration DUR > 0 (days), got {d!r}")
            return float(d)
        if r < 0:
            _fail(path, i + 1, "RATE", f"got {r:g}; allowed: > 0 (mg per day), -2 (duration in DUR) or 0 (bolus)")
        return mg / r
    if np.isfinite(d) and d != 0:
        if d < 0:
            _fail(path, i + 1, "DUR", f"got {d:g}; allowed: a duration >= 0 (days)")
        return float(d)
    return 0.0


def infusion_boluses(start: float, amount: float, duration: float, h: float = ASSESSMENT_DAYS):
    """[(grid time, mg)] of an infusion of `amount` over [start, start + duration): grid point g gets
    the part running in during [g - h/2, g + h/2). The amounts sum to `amount`."""
    end = start + duration
    g0 = math.floor((start + h / 2) / h)
    out = []
    g = g0
    while g * h - h / 2 < end:
        lo, hi = max(start, g * h - h / 2), min(end, g * h + h / 2)
        if hi > lo:
            out.append((g * h, amount * (hi - lo) / duration))
        g += 1
    return out


def steady_state_bolus(dose: float, tau: float, clearance: float, volume: float) -> float:
    """Amount in one linear compartment right after a dose at steady state: D / (1 - exp(-k tau)), k = CL / V."""
    return dose / (1.0 - math.exp(-clearance / volume * tau))

"""How the command line writes numbers: percentages, cell doses, plain values.

One place so that every command prints rates as percentages, doses with
their unit and without 500000 / 1e+06, and values as the user typed them
(0.12, never 0.120 or np.float64(0.12)).
"""

from __future__ import annotations

import math

_SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


def plain(v) -> str:
    """A number as a person writes it: 0.12, 2, 1500 (shortest form that reads back to the same float)."""
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def pct(v, digits: int = 1) -> str:
    """A fraction as a percentage: 0.1234 -> '12.3%'; NaN -> '—'."""
    v = float(v)
    return "—" if math.isnan(v) else f"{100 * v:.{digits}f}%"


def pct_points(v, digits: int = 1) -> str:
    """A difference of fractions in percentage points, signed: -0.031 -> '-3.1 pp'."""
    v = float(v)
    return "—" if math.isnan(v) else f"{100 * v:+.{digits}f} pp"


def cells(v) -> str:
    """A cell count readable at a glance: 500000 -> '5 × 10⁵', 2500000 -> '2.5 × 10⁶', 40 -> '40'."""
    v = float(v)
    if v == 0 or not math.isfinite(v) or abs(v) < 1000:
        return plain(v)
    exp = int(math.floor(math.log10(abs(v))))
    mant = round(v / 10 ** exp, 3)
    if abs(mant) >= 10:  # rounding carried into the next power
        mant, exp = mant / 10, exp + 1
    return f"{plain(mant)} × 10{str(exp).translate(_SUPERSCRIPT)}"

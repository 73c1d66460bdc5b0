"""NONMEM data conventions (vpop.fitting.nonmem): each against explicit records or a closed form."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from vpop.errors import DataError
from vpop.fitting import nonmem
from vpop.fitting.data import DOSE_KINDS, read_patient_data
from vpop.model.parameters import TABLE

EX = Path(__file__).resolve().parents[1] / "examples" / "nonmem"


def _same(a, b):
    assert [str(i) for i in a.ids] == [str(i) for i in b.ids]
    assert a.analytes == b.analytes
    for name in ("obs_time", "obs_analyte", "obs_value", "obs_censored", "dose_time", "dose_kind", "dose_mg"):
        for x, y in zip(getattr(a, name), getattr(b, name)):
            np.testing.assert_allclose(np.asarray(x, float), np.asarray(y, float), rtol=0, atol=1e-12, err_msg=name)
    assert a.covariates == b.covariates


def test_addl_equals_the_explicit_records():
    """ADDL=3, II=0.25 on one dose row reads exactly as four explicit dose rows."""
    _same(read_patient_data(EX / "addl.csv"), read_patient_data(EX / "addl_explicit.csv"))


def test_reset_starts_a_new_course_with_carried_forward_covariates():
    """EVID 3 and 4 split the patient into courses re-timed from the reset; EVID 4 doses at the reset;
    covariates are carried forward (70 kg, then 64 kg from the reset on): as the explicit file."""
    d = read_patient_data(EX / "reset.csv")
    _same(d, read_patient_data(EX / "reset_explicit.csv"))
    assert [str(i) for i in d.ids] == ["1", "1/2", "1/3"]
    assert d.covariates[0]["weight_kg"] == 70 and d.covariates[1]["weight_kg"] == 64


def test_infusion_becomes_grid_boluses_that_conserve_the_amount():
    """100 mg anakinra at 200 mg/d from day 1.1 (0.5 d): grid points 1.0, 1.25, 1.5 get the parts running
    in during their +-3 h cells (5, 50, 45 mg); a 0.04-d tocilizumab infusion across the cell edge at 1.125 splits 350 / 210 mg;
    a 1-day infusion (DUR) is spread over 5 grid points and sums to its amount."""
    d = read_patient_data(EX / "infusion.csv")
    ana, toci = DOSE_KINDS.index("anakinra"), DOSE_KINDS.index("toci")
    t, k, mg = d.dose_time[0], d.dose_kind[0], d.dose_mg[0]
    np.testing.assert_allclose(t[k == ana], [1.0, 1.25, 1.5])
    np.testing.assert_allclose(mg[k == ana], [5.0, 50.0, 45.0], rtol=1e-12)
    np.testing.assert_allclose(t[k == toci], [1.0, 1.25])  # 1.1-1.14 straddles the cell edge at 1.125
    np.testing.assert_allclose(mg[k == toci], [350.0, 210.0], rtol=1e-12)
    t2, mg2 = d.dose_time[1], d.dose_mg[1]
    np.testing.assert_allclose(t2, [1.0, 1.25, 1.5, 1.75, 2.0])
    np.testing.assert_allclose(mg2, [37.5, 75, 75, 75, 37.5])
    assert mg2.sum() == pytest.approx(300.0, rel=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(50):  # conservation for arbitrary starts and durations
        s, dur, amt = rng.uniform(0, 5), rng.uniform(0.01, 3), rng.uniform(1, 100)
        parts = nonmem.infusion_boluses(s, amt, dur)
        assert sum(a for _, a in parts) == pytest.approx(amt, rel=1e-12)
        assert all(abs(g / 0.25 - round(g / 0.25)) < 1e-12 for g, _ in parts)
        assert min(g for g, _ in parts) >= s - 0.125 - 1e-12 and max(g for g, _ in parts) <= s + dur + 0.125 + 1e-12


def test_steady_state_bolus_is_the_sum_of_all_earlier_doses():
    """SS=1 anakinra (one linear compartment): the amount after the dose equals sum_j D exp(-j k II)
    (k = CL / V), summed explicitly; EVID 2 rows add nothing; the covariate on the dose row is carried."""
    cl, v = TABLE["anakinra_clearance"].value, TABLE["anakinra_volume"].value
    series = sum(100.0 * math.exp(-j * cl / v * 0.25) for j in range(2000))
    d = read_patient_data(EX / "steady_state.csv")
    assert d.dose_mg[0] == pytest.approx([series], rel=1e-12)
    assert d.dose_mg[0][0] > 100.0 and list(d.dose_time[0]) == [1.0]
    assert d.n_observations() == 2 and d.covariates[0]["weight_kg"] == 72


@pytest.mark.parametrize("row,column,text", [
    ("1,1.0,1,anakinra,,100,1,-1,,,,", "RATE", "RATE = -1"),
    ("1,1.0,1,toci,,560,1,,,1,0.5,", "SS", "one linear compartment"),
    ("1,1.0,1,dex,,10,1,,,,,3", "II", "interdose interval"),
    ("1,1.0,5,dex,,10,1,,,,,", "EVID", "4 (reset and dose)"),
    ("1,1.0,1,dex,,10,1,,-1,,,", "DUR", "duration >= 0"),
])
def test_bad_conventions_name_row_and_column(tmp_path, row, column, text):
    p = tmp_path / "bad.csv"
    p.write_text("ID,TIME,EVID,DVID,DV,AMT,MDV,RATE,DUR,SS,II,ADDL\n1,0.5,0,il6,100,0,0,,,,,\n" + row + "\n")
    with pytest.raises(DataError) as err:
        read_patient_data(p)
    assert f"row 2, column {column}" in str(err.value) and text in str(err.value)

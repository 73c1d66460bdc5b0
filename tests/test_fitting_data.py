"""Fitting data in: NONMEM-style long CSV and cohort tables; bad inputs name file, row and column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vpop.errors import DataError
from vpop.fitting.cohort_tables import read_cohort_table
from vpop.fitting.data import read_patient_data

from vpop.data import published_cohorts_path

COHORTS = str(published_cohorts_path())  # shipped with the package

GOOD = """ID,TIME,EVID,DVID,DV,AMT,MDV,LLOQ,BLQ,CRS_GRADE,tumor_burden
1,0.5,0,IL6,12.0,0,0,2.0,0,2,1.5
1,1.0,0,crp,40,0,0,,0,2,1.5
1,1.0,1,toci,,560,1,,0,2,1.5
1,2.0,0,il6,2.0,0,0,2.0,1,2,1.5
1,3.0,0,ferritin,900,0,0,,0,2,1.5
1,4.0,0,car_t,,0,1,,0,2,1.5
2,0.5,0,il6,1.5,0,0,2.0,0,0,
2,1.0,0,CAR_T,3.2,0,0,,0,0,
"""


def _write(tmp_path, text, name="d.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_reads_observations_doses_censoring_covariates(tmp_path):
    d = read_patient_data(_write(tmp_path, GOOD))
    assert d.ids == [1, 2]
    assert d.analytes == ("car_t_cells_per_ul", "crp_mg_l", "ferritin_ng_ml", "il6_pg_ml")
    assert len(d.obs_time[0]) == 4  # the MDV=1 row is skipped
    # BLQ flag row and DV < LLOQ row are both censored at the LLOQ
    assert d.obs_censored[0].tolist() == [False, False, True, False]
    assert d.obs_censored[1].tolist() == [True, False]
    assert d.obs_value[1][0] == 2.0
    assert d.dose_mg[0].tolist() == [560.0] and d.dose_time[0].tolist() == [1.0]
    assert d.covariates[0] == {"tumor_burden": 1.5} and d.covariates[1] == {}
    assert d.grades["crs"].tolist() == [2, 0]


@pytest.mark.parametrize("edit, row, column", [
    (lambda t: t.replace("1,1.0,0,crp,40", "1,0.2,0,crp,40"), 2, "TIME"),  # unsorted
    (lambda t: t.replace("1,3.0,0,ferritin,900", "1,3.0,0,ferritin,-9"), 5, "DV"),  # negative
    (lambda t: t.replace("1,3.0,0,ferritin,900", "1,3.0,0,ferritn,900"), 5, "DVID"),  # unknown analyte
    (lambda t: t.replace("1,1.0,1,toci,,560", "1,1.0,1,aspirin,,560"), 3, "DVID"),  # unknown drug
    (lambda t: t.replace(",2,1.5\n1,1.0,0,crp", ",7,1.5\n1,1.0,0,crp"), 1, "CRS_GRADE"),
    (lambda t: t.replace("2,1.0,0,CAR_T,3.2,0,0,,0,0,", "2,1.0,0,CAR_T,0,0,0,,0,0,"), 8, "DV"),  # unflagged zero
])
def test_bad_patient_data_names_file_row_column(tmp_path, edit, row, column):
    p = _write(tmp_path, edit(GOOD))
    with pytest.raises(DataError) as err:
        read_patient_data(p)
    msg = str(err.value)
    assert str(p) in msg and f"row {row}" in msg and f"column {column}" in msg, msg


def test_missing_columns(tmp_path):
    p = _write(tmp_path, GOOD.replace("DVID", "ANALYTE"))
    with pytest.raises(DataError, match="column DVID"):
        read_patient_data(p)
    p = _write(tmp_path, GOOD.replace("DV,", "VALUE,", 1))
    with pytest.raises(DataError, match="column DV"):
        read_patient_data(p)


def test_cohort_table_reads_published_file():
    t = read_cohort_table(COHORTS, "ZUMA-1")
    by = {(x.endpoint, x.scale): x for x in t}
    assert by[("crs_any", "lee2014")].value == pytest.approx(0.93)
    assert by[("crs_any", "lee2014")].count == 94
    assert by[("neuro_grade3plus", "ctcae_neuro")].n == 101
    assert by[("crs_onset_median", "lee2014")].unit == "day"
    assert {x.cohort for x in read_cohort_table(COHORTS)} >= {"ZUMA-1", "JULIET", "KarMMa"}


def test_cohort_table_errors(tmp_path):
    df = pd.read_csv(COHORTS, dtype=str, keep_default_na=False)
    bad = df.copy()
    bad.loc[3, "scale"] = "lee2015"
    p = tmp_path / "c.csv"
    bad.to_csv(p, index=False)
    with pytest.raises(DataError, match=r"row 4, column scale: unknown scale 'lee2015'"):
        read_cohort_table(p)
    bad = df.copy()
    bad.loc[0, "scale"] = "ctcae_neuro"  # a neuro scale on a CRS endpoint
    bad.to_csv(p, index=False)
    with pytest.raises(DataError, match="row 1, column scale"):
        read_cohort_table(p)
    df.drop(columns=["n"]).to_csv(p, index=False)
    with pytest.raises(DataError, match="column n: missing"):
        read_cohort_table(p)
    with pytest.raises(DataError, match="no rows for cohort"):
        read_cohort_table(COHORTS, "NOPE")


def test_cli_bad_data_exit_2(tmp_path, capsys):
    from vpop.cli import main

    p = _write(tmp_path, GOOD.replace("1,3.0,0,ferritin,900", "1,3.0,0,ferritin,-9"))
    assert main(["fit", str(p), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "row 5, column DV" in err and not (tmp_path / "o").exists()


# --- checks that used to pass silently -----------------------------------------------------


def test_blq_flag_with_dv_above_its_lloq_is_refused_naming_the_row(tmp_path, capsys):
    from vpop.cli import main

    # row 2 says "below the limit" but DV 50 is far above LLOQ 10: it used to be censored silently at 10
    path = _write(tmp_path, "ID,TIME,DVID,DV,LLOQ,BLQ\n1,0.5,il6,12,10,0\n1,1.0,il6,50,10,1\n")
    with pytest.raises(DataError) as err:
        read_patient_data(path)
    msg = str(err.value)
    assert "row 2, column BLQ" in msg and "DV 50 is above its LLOQ 10" in msg
    # a flagged row at (or without a value above) its limit is still censored
    ok = read_patient_data(_write(tmp_path, "ID,TIME,DVID,DV,LLOQ,CENS\n1,1.0,il6,10,10,1\n1,2,il6,,10,1\n", "ok.csv"))
    assert ok.obs_censored[0].tolist() == [True, True] and ok.obs_value[0].tolist() == [10.0, 10.0]
    out = tmp_path / "fit"
    assert main(["fit", str(path), "--out", str(out), "--quiet"]) == 2
    err_text = capsys.readouterr().err
    assert "row 2, column BLQ" in err_text and "Traceback" not in err_text and not out.exists()


def test_header_only_file_is_refused(tmp_path):
    with pytest.raises(DataError, match="no data rows"):
        read_patient_data(_write(tmp_path, "ID,TIME,DVID,DV,LLOQ,BLQ\n"))


@pytest.mark.parametrize("text, needle", [
    ("ID,TIME,DVID,DV\n1,-1,il6,5\n", "row 1, column TIME: got -1;"),
    ("ID,TIME,DVID,DV,EVID,AMT\n1,0,il6,5,0,0\n1,1,toci,,1,-2.5\n", "row 2, column AMT: got -2.5;"),
    ("ID,TIME,DVID,DV\n1,0,il6,5\n2,0,il6,5\n1,1,il6,5\n", "patient 1 appears again"),
    ("ID,TIME,DVID,DV\n7,0,il6,5\n7,1,il6,-3\n", "negative concentration -3"),
    ("ID,TIME,DVID,DV,tumor_burden\n3,0,il6,5,1\n3,1,il6,5,2\n", "within patient 3;"),
])
def test_messages_print_plain_numbers_not_numpy_reprs(tmp_path, needle, text):
    with pytest.raises(DataError) as err:
        read_patient_data(_write(tmp_path, text))
    assert needle in str(err.value)
    assert "np." not in str(err.value) and "float64" not in str(err.value) and "int64" not in str(err.value)

"""`vpop grade` end to end: good files, bad files (exit 2, no output), formats."""

from __future__ import annotations

import os

import pandas as pd
import pytest


def vpop(*argv):
    from vpop.cli import main

    return main([str(a) for a in argv])


GOOD = """patient_id,time_day,age_years,temp_c,hypotension,vasopressors,vasopressin,o2_device,o2_flow_lpm,tocilizumab_given,ice_score,capd_score,consciousness,seizure,death_cause
007,0.0,55,37.0,false,0,no,none,,0,10,,alert,none,none
007,0.5,55,38.4,true,0,no,low_flow,2,0,8,,alert,none,none
007,1.0,55,37.2,yes,1,no,low_flow,7,1,5,,awakens_to_voice,,
007,3.0,55,36.9,0,0,no,none,,1,10,,alert,none,none
P2,0.0,8,38.1,false,0,false,none,,0,,10,alert,none,none
P2,1.0,8,37.0,false,0,false,none,,0,,2,alert,none,
"""


def write(tmp_path, text, name="obs.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_csv_writes_graded_table_and_summary(tmp_path, capsys):
    obs = write(tmp_path, GOOD)
    out, pat = tmp_path / "graded.csv", tmp_path / "patients.csv"
    assert vpop("grade", obs, "--out", out, "--patients", pat, "--scale", "astct,lee2014,ctcae_neuro") == 0
    assert "6 rows, 2 patients" in capsys.readouterr().out
    graded = pd.read_csv(out, dtype={"patient_id": str})
    for col in ("crs_grade_astct", "icans_grade_astct", "crs_grade_lee2014", "icans_grade_ctcae"):
        assert col in graded.columns
    assert graded["patient_id"].tolist()[0] == "007"  # identifiers kept as text
    # Row 3: no fever but tocilizumab after CRS, 1 pressor + 7 L/min cannula -> 3.
    assert graded["crs_grade_astct"].tolist() == [0, 2, 3, 0, 1, 0]
    assert graded["icans_grade_astct"].tolist() == [0, 1, 2, 0, 3, 0]
    summary = pd.read_csv(pat, dtype={"patient_id": str})
    assert summary["patient_id"].tolist() == ["007", "P2"]
    assert summary["crs_max_grade"].tolist() == [3, 1]
    assert summary["crs_onset_day"].tolist() == [0.5, 0.0]
    assert summary["crs_resolution_day"].tolist() == [3.0, 1.0]
    assert "crs_max_grade_lee2014" in summary and "icans_max_grade_ctcae" in summary
    assert sorted(os.listdir(tmp_path)) == ["graded.csv", "obs.csv", "patients.csv"]


def test_parquet_in_and_out(tmp_path):
    df = pd.read_csv(write(tmp_path, GOOD), dtype={"patient_id": str})
    src = tmp_path / "obs.parquet"
    df.to_parquet(src)
    out = tmp_path / "graded.parquet"
    assert vpop("grade", src, "--out", out, "--scale", "all") == 0
    graded = pd.read_parquet(out)
    assert graded["crs_grade_astct"].tolist() == [0, 2, 3, 0, 1, 0]
    for col in ("crs_grade_penn", "crs_grade_mskcc", "crs_grade_cartox", "crs_grade_ctcae5",
                "icans_grade_cartox", "icans_grade_ctcae"):
        assert col in graded.columns


def _replace_cell(text, row, column, value):
    lines = text.splitlines()
    header = lines[0].split(",")
    cells = lines[row].split(",")
    cells[header.index(column)] = value
    lines[row] = ",".join(cells)
    return "\n".join(lines) + "\n"


def _drop_column(text, column):
    lines = [line.split(",") for line in text.splitlines()]
    j = lines[0].index(column)
    return "\n".join(",".join(c[:j] + c[j + 1:]) for c in lines) + "\n"


BAD = [
    ("missing column", _drop_column(GOOD, "consciousness"), ["consciousness", "missing required column"]),
    ("unknown enum", _replace_cell(GOOD, 2, "o2_device", "nasal_prongs"),
     ["row 2", "patient_id 007", "'o2_device'", "nasal_prongs", "high_flow"]),
    ("ICE 11", _replace_cell(GOOD, 3, "ice_score", "11"), ["row 3", "'ice_score'", "0–10"]),
    ("ICE not whole", _replace_cell(GOOD, 3, "ice_score", "7.5"), ["row 3", "'ice_score'", "whole number"]),
    ("CAPD 33", _replace_cell(GOOD, 5, "capd_score", "33"), ["row 5", "patient_id P2", "'capd_score'"]),
    ("time not increasing", _replace_cell(GOOD, 4, "time_day", "1.0"), ["row 4", "'time_day'", "increas"]),
    ("negative time", _replace_cell(GOOD, 1, "time_day", "-1"), ["row 1", "'time_day'"]),
    ("negative pressors", _replace_cell(GOOD, 2, "vasopressors", "-1"), ["row 2", "'vasopressors'"]),
    ("negative flow", _replace_cell(GOOD, 2, "o2_flow_lpm", "-2"), ["row 2", "'o2_flow_lpm'"]),
    ("bad boolean", _replace_cell(GOOD, 6, "hypotension", "maybe"), ["row 6", "'hypotension'", "maybe"]),
    ("fahrenheit", _replace_cell(GOOD, 2, "temp_c", "101.2"), ["row 2", "'temp_c'", "°F"]),
    ("not a number", _replace_cell(GOOD, 2, "temp_c", "hot"), ["row 2", "'temp_c'", "not a number"]),
    ("not grouped", GOOD + "007,4.0,55,37.0,false,0,no,none,,1,10,,alert,none,none\n",
     ["row 7", "'patient_id'", "appears again"]),
]


@pytest.mark.parametrize("label, text, needles", BAD, ids=[b[0] for b in BAD])
def test_bad_file_exits_2_names_file_row_column_and_writes_nothing(tmp_path, capsys, label, text, needles):
    obs = write(tmp_path, text)
    out, pat = tmp_path / "graded.csv", tmp_path / "patients.csv"
    assert vpop("grade", obs, "--out", out, "--patients", pat) == 2
    err = capsys.readouterr().err
    assert str(obs) in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["obs.csv"]  # no output, no temporary file


def test_fio2_out_of_range(tmp_path, capsys):
    text = GOOD.replace("death_cause\n", "death_cause,fio2\n", 1)
    lines = text.splitlines()
    lines = [lines[0]] + [line + (",0.1" if i == 1 else ",") for i, line in enumerate(lines[1:], 1)]
    obs = write(tmp_path, "\n".join(lines) + "\n")
    assert vpop("grade", obs, "--out", tmp_path / "g.csv") == 2
    err = capsys.readouterr().err
    assert "row 1" in err and "'fio2'" in err and "0.21" in err
    assert not (tmp_path / "g.csv").exists()


def test_unknown_scale_lists_allowed(tmp_path, capsys):
    obs = write(tmp_path, GOOD)
    assert vpop("grade", obs, "--out", tmp_path / "g.csv", "--scale", "astct,asbmt") == 2
    err = capsys.readouterr().err
    assert "asbmt" in err and "lee2014" in err and "cartox_neuro" in err
    assert not (tmp_path / "g.csv").exists()


def test_bad_formats_and_missing_file(tmp_path, capsys):
    obs = write(tmp_path, GOOD)
    assert vpop("grade", obs, "--out", tmp_path / "g.xlsx") == 2
    assert vpop("grade", tmp_path / "nope.csv", "--out", tmp_path / "g.csv") == 2
    assert "no such file" in capsys.readouterr().err
    txt = write(tmp_path, GOOD, "obs.txt")
    assert vpop("grade", txt, "--out", tmp_path / "g.csv") == 2
    assert sorted(os.listdir(tmp_path)) == ["obs.csv", "obs.txt"]


def test_optional_columns_absent_use_defaults(tmp_path):
    minimal = "patient_id,time_day,temp_c,hypotension,vasopressors,o2_device,consciousness\n" \
              "1,0,38.5,1,0,cpap,alert\n1,1,37.0,0,0,none,unarousable\n"
    obs = write(tmp_path, minimal)
    out = tmp_path / "g.csv"
    assert vpop("grade", obs, "--out", out, "--scale", "all") == 0
    g = pd.read_csv(out)
    assert g["crs_grade_astct"].tolist() == [4, 0]
    assert g["crs_grade_lee2014"].tolist() == [3, 0]  # CPAP at default FiO2 0.5
    assert g["icans_grade_astct"].tolist() == [0, 4]


def test_header_only_table_is_refused_and_nothing_is_written(tmp_path, capsys):
    header = GOOD.splitlines()[0] + "\n"
    path = write(tmp_path, header)
    out = tmp_path / "graded.csv"
    assert vpop("grade", path, "--out", out) == 2
    err = capsys.readouterr().err
    assert "no rows" in err and "obs.csv" in err and "Traceback" not in err
    assert not out.exists()

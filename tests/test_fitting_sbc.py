"""The coverage study script at CI size (scripts/sbc.py): data from the population with all random effects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_sbc_script_runs_and_reports_coverage(tmp_path):
    out = tmp_path / "sbc.csv"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "sbc.py"), "--replicates", "1", "--patients", "4",
                        "--times", "1,3,7", "--methods", "laplace", "--out", str(out)],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_csv(out)
    assert set(df["parameter"]) == {"car_prolif_max", "crp_max"} and (df["method"] == "laplace").all()
    # intervals of a 4-patient fit are finite and informative (narrower than the prior's 90 % width)
    assert (df["width_log"] > 0).all() and (df["width_log"] < 2 * 1.645 * 0.6).all()
    assert "coverage" in r.stdout

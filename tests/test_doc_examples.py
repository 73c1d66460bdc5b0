"""The docs stand alone: no pointers to files users do not have, and the example commands they show run.

The example data ship with the package (`vpop/data/examples/`, found with
`python -m vpop.data NAME`), so the commands in docs/observations.md and
docs/fitting.md are run here exactly as written, in an empty folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def commands(doc: str, program: str) -> list[str]:
    """The `program ...` lines of a doc's ```bash blocks."""
    text = (DOCS / doc).read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        out += [line.strip() for line in block.splitlines() if line.strip().startswith(program + " ")]
    return out


def run_shell(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_docs_do_not_point_at_the_projects_shared_folder():
    bad = []
    for doc in sorted(DOCS.glob("*.md")):
        for i, line in enumerate(doc.read_text().splitlines(), 1):
            if re.search(r"(^|[\s(`'\"])(\.\./)?shared/(contracts|data|reference)/", line):
                bad.append(f"{doc.name}:{i}: {line.strip()}")
    assert not bad, bad


def test_observation_doc_documents_every_column_grading_reads():
    from vpop.grading.table import COLUMNS
    from vpop.observation import encoding as enc

    text = (DOCS / "observations.md").read_text()
    for col in COLUMNS[:21]:  # the observation contract's columns
        assert f"| `{col.name}` |" in text, col.name
    for values in (enc.O2_DEVICES, enc.CONSCIOUSNESS, enc.SEIZURE, enc.CEREBRAL_EDEMA, enc.DEATH_CAUSE):
        for v in values:
            assert f"`{v}`" in text, v


def test_shipped_data_files_are_found_from_any_folder(tmp_path):
    for name in ("published_cohorts.csv", "examples/observations.csv", "examples/timecourses.csv"):
        out = run_shell(f"python -m vpop.data {name}", tmp_path)
        assert out.returncode == 0, out.stderr
        assert Path(out.stdout.strip()).is_file()
    assert run_shell("python -m vpop.data nothing.csv", tmp_path).returncode != 0


def test_grade_example_in_the_docs_runs_and_grades_every_patient(tmp_path):
    cmds = commands("observations.md", "vpop grade")
    assert cmds, "docs/observations.md shows no vpop grade example"
    for cmd in cmds:
        out = run_shell(cmd, tmp_path)
        assert out.returncode == 0, out.stderr
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) == 4 and summary["crs_max_grade"].between(0, 5).all()
    assert (pd.read_csv(tmp_path / "graded.csv")["crs_grade_astct"] >= 0).all()


def test_fit_example_data_reads_with_blq_rows_doses_and_grades():
    from vpop.data import example_path
    from vpop.fitting.data import read_patient_data

    data = read_patient_data(example_path("timecourses.csv"))
    assert data.n == 4 and set(data.analytes) == {"il6_pg_ml", "crp_mg_l", "ferritin_ng_ml"}
    assert data.n_censored() > 0 and sum(len(d) for d in data.dose_time) > 0
    assert (data.grades["crs"] >= 0).all()


@pytest.mark.slow
def test_fit_examples_in_the_docs_run(tmp_path):
    cmds = commands("fitting.md", "vpop fit")
    cmds = [c for c in cmds if "python -m vpop.data" in c]
    assert len(cmds) == 2
    for cmd in cmds:
        out = run_shell(cmd.replace("--steps 300", "--steps 20") + " --virtual 20 --quiet", tmp_path)
        assert out.returncode == 0, out.stderr
    assert (tmp_path / "fit-example" / "fitted.yaml").is_file()
    assert (tmp_path / "fit-zuma1" / "rates.csv").is_file()


def test_readme_which_preset_table_names_every_preset_with_its_trial():
    from vpop.run.config import load_config, preset_names

    text = (REPO / "README.md").read_text()
    section = text.split("## Which preset?", 1)[1].split("\n## ", 1)[0]
    for name in preset_names():
        row = next((line for line in section.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, name
        assert load_config(name).trial in row, name


def test_the_variability_table_quotes_the_sds_the_base_preset_ships():
    """docs/populations.md §1.3 gives each η's SD; the joint calibration rewrites axicel.yaml's, so the page
    must follow (scripts/calibrate_joint.py writes both)."""
    from vpop.run.config import load_config

    text = (DOCS / "populations.md").read_text()
    omega = load_config("axicel").population.omega
    for name, sd in omega.items():
        cells = re.findall(rf"^\| {name} \| ([-+.\deE]+) \|", text, re.M)
        assert cells, f"docs/populations.md has no variability row for {name}"
        assert float(cells[0]) == pytest.approx(float(sd), rel=1e-3), name


def test_the_kinetics_table_quotes_each_presets_product_parameters():
    """docs/populations.md §2's kinetics table gives each preset's CAR-T constants; it must be what the preset
    loads (its own override, or the parameter table's value), so the page cannot drift from the files."""
    from vpop.model.parameters import TABLE
    from vpop.run.config import load_config

    text = (DOCS / "populations.md").read_text()
    header = re.search(r"^\| preset \| kinetics source \| (.+) \|$", text, re.M)
    assert header, "docs/populations.md has no kinetics table"
    names = [cell.split(" (")[0] for cell in header.group(1).split(" | ")]
    rows = 0
    for preset in ("axicel", "tisacel_dlbcl", "tisacel_ball", "lisocel", "idecel", "ciltacel"):
        row = re.search(rf"^\| {preset} \| [^|]+ \| (.+) \|$", text, re.M)
        assert row, f"docs/populations.md's kinetics table has no row for {preset}"
        cfg = load_config(preset)
        loaded = {**{k: TABLE[k].value for k in names}, **cfg.population.product_parameters, **cfg.parameters}
        for name, cell in zip(names, row.group(1).split(" | "), strict=True):
            assert float(cell) == pytest.approx(float(loaded[name]), rel=1e-6), (preset, name)
        rows += 1
    assert rows == 6

"""The console entry: a command's output, exit status and atexit handlers survive the fast exit, and the
engine's modules import without the table libraries."""

from __future__ import annotations

import subprocess
import sys
import textwrap

ENTRY = textwrap.dedent("""
    import atexit, sys
    atexit.register(lambda: print("atexit handler ran", flush=True))
    from vpop.cli.main import entry
    sys.argv = ["vpop", *sys.argv[1:]]
    entry()
""")


def _entry(*args):
    return subprocess.run([sys.executable, "-c", ENTRY, *args], capture_output=True, text=True, timeout=300)


def test_a_command_keeps_its_output_status_and_exit_handlers():
    done = _entry("presets")
    assert done.returncode == 0, done.stderr
    assert "axicel" in done.stdout
    assert done.stdout.rstrip().endswith("atexit handler ran")


def test_a_user_error_still_exits_2_with_its_message():
    done = _entry("simulate", "--n", "0")
    assert done.returncode == 2
    assert "--n: got 0" in done.stderr and "Traceback" not in done.stderr
    assert "atexit handler ran" in done.stdout


def test_the_engine_and_the_command_line_import_without_pandas():
    code = ("import sys, vpop, vpop.cli.main, vpop.engine.course, vpop.engine.saved_program, vpop.grading; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'pandas', 'pyarrow', 'scipy'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    # The public names still resolve on first use.
    code = "import vpop; print(vpop.simulate.__module__, vpop.load_config.__module__, vpop.grading.summarise_patients)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "vpop.run.cohort vpop.run.config" in done.stdout, done.stderr

"""The calibrated presets: generated blocks, what they load as, and the docs that report them."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def calibrate():
    spec = importlib.util.spec_from_file_location("calibrate", ROOT / "scripts" / "calibrate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def block_values(text: str, calibrate) -> dict:
    block = text.split(calibrate.BEGIN, 1)[1].split(calibrate.END, 1)[0]
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^  (\w+): ([-+.\deE]+)$", block, re.M)}


def test_block_is_replaced_not_stacked(calibrate):
    text = "name: x\nproduct:\n  parameters:\n    car_prolif_max: 1.0\n"
    once = calibrate.with_block(text, {"leak_rate": 0.5, "neuro_injury_rate": 1.25}, "TRIAL")
    twice = calibrate.with_block(once, {"leak_rate": 0.7, "neuro_injury_rate": 1.0}, "TRIAL")
    assert twice.count(calibrate.BEGIN) == 1 and twice.count("parameters:") == 2
    assert calibrate.strip_block(twice) == text
    assert block_values(twice, calibrate) == {"leak_rate": 0.7, "neuro_injury_rate": 1.0}


def test_every_preset_carries_its_calibration_and_loads_with_it(calibrate):
    from vpop.run.config import load_config
    from vpop.population.sampler import PopulationSampler

    for preset in calibrate.PRESET_COHORTS:
        text = (ROOT / "configs" / f"{preset}.yaml").read_text()
        assert calibrate.BEGIN in text, f"{preset}.yaml has no calibration block: run scripts/calibrate.py"
        values = block_values(text, calibrate)
        assert set(values) == set(calibrate.FREE)
        cfg = load_config(ROOT / "configs" / f"{preset}.yaml")
        typical = PopulationSampler(cfg.population, cfg.parameters).typical
        for name, v in values.items():
            assert typical[name] == pytest.approx(v), (preset, name)
    # the default run is the calibrated CD19/CD28 preset
    default = PopulationSampler(load_config(None).population, load_config(None).parameters).typical
    axicel = block_values((ROOT / "configs" / "axicel.yaml").read_text(), calibrate)
    for name, v in axicel.items():
        assert default[name] == pytest.approx(v)


def test_docs_report_the_values_the_presets_carry(calibrate):
    doc = (ROOT / "docs" / "calibration.md").read_text()
    assert calibrate.GENERATED in doc
    rows = re.findall(r"^\| (\w+) \| [^|]+ \| `(\w+)` \| [^|]+ \| ([-+.\deE]+) \|", doc, re.M)
    fitted = {(p, k): float(v) for p, k, v in rows}
    for preset in calibrate.PRESET_COHORTS:
        values = block_values((ROOT / "configs" / f"{preset}.yaml").read_text(), calibrate)
        for name, v in values.items():
            assert fitted[(preset, name)] == pytest.approx(v, rel=1e-3), (preset, name)

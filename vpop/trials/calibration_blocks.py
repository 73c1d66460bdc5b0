"""The generated calibration block at the end of a product preset's YAML.

The calibration scripts write each preset's fitted typical values between two
marker lines, replacing the block on every run (never stacking a second one).
"""

from __future__ import annotations

BEGIN = "# --- CALIBRATION: written by scripts/calibrate_joint.py; edit the script's inputs, not this block ---"
END = "# --- end of CALIBRATION ---"
_OLD_BEGIN = "# --- CALIBRATION: written by scripts/calibrate.py; edit the script's inputs, not this block ---"


def strip_block(text: str) -> str:
    """The preset YAML without its generated calibration block."""
    text = text.replace(_OLD_BEGIN, BEGIN)
    if BEGIN not in text:
        return text
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1] if END in rest else ""
    return head.rstrip("\n") + "\n" + tail.lstrip("\n")


def with_block(text: str, values: dict, provenance: str) -> str:
    """`text` with its block replaced by `values` (a `parameters:` mapping) and one provenance comment."""
    base = strip_block(text).rstrip("\n")
    lines = [BEGIN, f"# {provenance}", "parameters:"]
    lines += [f"  {k}: {v:.6g}" for k, v in values.items()]
    return base + "\n" + "\n".join(lines + [END]) + "\n"


def block_values(text: str) -> dict[str, float]:
    """The values in a preset's block ({} when it has none)."""
    text = text.replace(_OLD_BEGIN, BEGIN)
    if BEGIN not in text:
        return {}
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    out = {}
    for line in block.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and not line.startswith("parameters:") and ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = float(v)
    return out

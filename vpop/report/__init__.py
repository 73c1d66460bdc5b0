"""`vpop report DIR`: one self-contained HTML page of a simulation, sweep, comparison, escalation or fit.

Modules: `sources` (what a folder holds, loaded and checked), `figures`
(matplotlib figures from tables), `page` (HTML with embedded PNGs, no
scripts, no external references), `build` (the sections), `cli`.
"""


def build_report(directory, out=None, sample: int = 30, seed: int = 0, command: str | None = None):
    """Write the report of the outputs in `directory` (default file: directory/report.html); see `build`."""
    from vpop.report.build import build_report as build

    return build(directory, out, sample=sample, seed=seed, command=command)


__all__ = ["build_report"]

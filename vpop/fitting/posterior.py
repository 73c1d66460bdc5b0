"""A fitted posterior, read back for prediction: typical-value draws and rate intervals.

`vpop fit --out DIR` writes DIR/posterior.nc (ArviZ InferenceData). Anything
that predicts from it (sweeps, comparisons) needs two things:

* `load_theta_draws(path)`: the posterior draws of the fitted typical values,
  as {parameter name: array of draws}, from a fit directory or the .nc file;
* `predictive_rate_interval(counts, ns)`: the interval of a rate when each
  posterior draw d gave k_d events among n_d fresh virtual patients.

The interval is that of the mixture over draws of Beta(k_d + 1/2, n_d - k_d + 1/2)
(Jeffreys): the spread between draws carries the parameter uncertainty, the
width of each beta the finite cohort's sampling noise. With one draw it is the
Jeffreys interval of a plain binomial rate; with many draws and large n_d it
tends to the quantiles of the draws' rates.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from vpop.errors import DataError


def posterior_file(path) -> Path:
    """The posterior.nc of a fit directory, or the file itself."""
    path = Path(path)
    file = path / "posterior.nc" if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"{path}: no fitted posterior here; give a `vpop fit --out` directory or its posterior.nc")
    return file


def file_digest(path) -> str:
    """A short content hash (so results computed from an older posterior are never reused)."""
    h = hashlib.sha1()
    with open(posterior_file(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def load_theta_draws(path) -> dict[str, np.ndarray]:
    """{parameter: (chains * draws,) typical values} of a fitted posterior."""
    import xarray as xr

    file = posterior_file(path)
    try:
        ds = xr.open_dataset(file, group="posterior", engine="h5netcdf")
    except Exception as err:  # not NetCDF, or no posterior group
        raise DataError(f"{file}: not a vpop posterior (ArviZ NetCDF with a posterior group): {err}") from None
    with ds:
        if "theta" not in ds or "param" not in ds["theta"].dims:
            raise DataError(f"{file}: variable theta (dims chain, draw, param) missing; was it written by `vpop fit`?")
        theta = ds["theta"].transpose(..., "param")
        names = [str(v) for v in theta["param"].values]
        values = np.asarray(theta.values, dtype=np.float64).reshape(-1, len(names))
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise DataError(f"{file}: theta has non-finite or non-positive draws")
    return {name: values[:, j] for j, name in enumerate(names)}


def calibration_posterior(preset: str) -> dict[str, np.ndarray]:
    """The joint calibration's draws of a product preset's constants (scripts/calibrate_joint.py)."""
    from vpop.data import data_path

    file = data_path(f"calibration/{preset}.nc")
    if not file.is_file():
        raise DataError(f"{file}: no calibration posterior for preset {preset!r}; run scripts/calibrate_joint.py")
    return load_theta_draws(file)


def calibration_digest() -> str:
    """A content hash of every shipped calibration posterior."""
    from vpop.data import data_path

    h = hashlib.sha1()
    for file in sorted(data_path("calibration").glob("*.nc")):
        h.update(file.name.encode())
        h.update(file.read_bytes())
    return h.hexdigest()[:12]


def pick_draws(draws: dict[str, np.ndarray], k: int, seed: int = 0) -> list[dict[str, float]]:
    """k posterior draws (without replacement when there are enough) as parameter overrides."""
    n = len(next(iter(draws.values())))
    rng = np.random.default_rng(seed)
    idx = rng.choice(n, size=k, replace=k > n)
    return [{name: float(v[i]) for name, v in draws.items()} for i in idx]


def predictive_rate_interval(counts, ns, level: float = 0.95, samples: int = 4000,
                             seed: int = 0) -> tuple[float, float, float]:
    """(median, low, high) of a rate from per-draw counts k_d of n_d (Jeffreys-beta mixture)."""
    k = np.asarray(counts, dtype=np.float64)
    n = np.asarray(ns, dtype=np.float64)
    keep = n > 0
    k, n = k[keep], n[keep]
    if len(k) == 0:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    per = max(1, samples // len(k))
    x = rng.beta(np.repeat(k + 0.5, per), np.repeat(n - k + 0.5, per))
    a = (1.0 - level) / 2.0
    lo, med, hi = np.quantile(x, [a, 0.5, 1.0 - a])
    return float(med), float(lo), float(hi)

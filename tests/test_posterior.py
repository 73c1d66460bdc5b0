"""Reading a fitted posterior back, and rate intervals that carry its uncertainty."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from vpop.errors import DataError
from vpop.fitting import posterior


def write_posterior(path, theta: dict, chains: int = 2):
    """A posterior.nc shaped as `vpop fit` writes it (theta with dims chain, draw, param)."""
    import arviz as az

    names = list(theta)
    values = np.stack([np.asarray(theta[k], dtype=float) for k in names], axis=-1)  # (draws_total, F)
    values = values.reshape(chains, -1, len(names))
    idata = az.from_dict(posterior={"theta": values, "log_theta": np.log(values)}, coords={"param": names},
                         dims={"theta": ["param"], "log_theta": ["param"]})
    path.mkdir(parents=True, exist_ok=True)
    idata.to_netcdf(str(path / "posterior.nc"), engine="h5netcdf")
    return path


def test_theta_draws_round_trip_from_a_fit_directory(tmp_path):
    draws = {"car_prolif_max": np.linspace(1.0, 1.4, 40), "crp_max": np.linspace(200, 300, 40)}
    d = write_posterior(tmp_path / "fit", draws)
    back = posterior.load_theta_draws(d)
    assert set(back) == set(draws)
    np.testing.assert_allclose(back["car_prolif_max"], draws["car_prolif_max"])
    np.testing.assert_allclose(back["crp_max"], draws["crp_max"])
    np.testing.assert_allclose(posterior.load_theta_draws(d / "posterior.nc")["crp_max"], draws["crp_max"])
    picked = posterior.pick_draws(back, 5, seed=3)
    assert len(picked) == 5 and len({p["crp_max"] for p in picked}) == 5  # without replacement
    for p in picked:  # each pick is one joint draw, not parameters mixed across draws
        i = int(np.argmin(np.abs(draws["crp_max"] - p["crp_max"])))
        assert p["car_prolif_max"] == pytest.approx(draws["car_prolif_max"][i])


def test_missing_or_foreign_posterior_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no fitted posterior"):
        posterior.load_theta_draws(tmp_path)
    (tmp_path / "posterior.nc").write_text("not netcdf")
    with pytest.raises(DataError, match="not a vpop posterior"):
        posterior.load_theta_draws(tmp_path)


def test_one_draw_gives_the_jeffreys_interval():
    med, lo, hi = posterior.predictive_rate_interval([30], [100], samples=200_000)
    ref = stats.beta(30.5, 70.5)
    assert lo == pytest.approx(ref.ppf(0.025), abs=0.004)
    assert hi == pytest.approx(ref.ppf(0.975), abs=0.004)
    assert med == pytest.approx(ref.median(), abs=0.003)


def test_parameter_uncertainty_widens_the_interval():
    same = posterior.predictive_rate_interval([30] * 20, [100] * 20)
    spread = posterior.predictive_rate_interval(np.linspace(10, 50, 20).round(), [100] * 20)
    assert spread[2] - spread[1] > 1.8 * (same[2] - same[1])
    # huge cohorts per draw: the interval tends to the spread of the draws' rates
    big = posterior.predictive_rate_interval(np.linspace(0.1, 0.5, 41) * 1e6, [1e6] * 41, samples=41_000)
    assert big[1] == pytest.approx(0.11, abs=0.01) and big[2] == pytest.approx(0.49, abs=0.01)
    assert np.isnan(posterior.predictive_rate_interval([], [])[0])

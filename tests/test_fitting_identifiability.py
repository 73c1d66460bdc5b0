"""Identifiability check before a fit: rank, correlations, refusal of an exactly confounded set."""

from __future__ import annotations

import numpy as np
import pytest

from vpop.errors import UserError
from vpop.fitting import identifiability as idf
from vpop.fitting import model as fm
from vpop.fitting import synthetic


def _fisher(J, sigma=0.2):
    return J.T @ J / sigma ** 2


def test_linear_oracle_rank_correlation_and_refusal():
    """A linear design with known Jacobian: column c = 2a - b is exactly confounded with a and b;
    the correlation of a nearly collinear pair matches the closed form of (J^T J)^-1."""
    rng = np.random.default_rng(0)
    a, b, d = rng.normal(size=(3, 200))
    J = np.stack([a, b, 2 * a - b], axis=1)
    r = idf.analyse_fisher(("a", "b", "c"), _fisher(J))
    assert r.rank == 2 and not r.ok
    assert sorted(r.confounded[0]) == ["a", "b", "c"]
    with pytest.raises(UserError, match="a and b and c"):
        r.raise_if_confounded()
    # two columns at correlation ~0.99: refused? no; warned, with the closed-form correlation
    x = a + 0.1 * d
    J2 = np.stack([a, x, b], axis=1)
    r2 = idf.analyse_fisher(("a", "x", "b"), _fisher(J2))
    assert r2.ok and r2.rank == 3
    cov = np.linalg.inv(_fisher(J2))
    expect = cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])
    assert r2.correlation[0, 1] == pytest.approx(expect, rel=1e-8)
    assert abs(expect) > 0.95
    assert len(r2.warnings) == 1 and "a and x" in r2.warnings[0]
    np.testing.assert_allclose(r2.se_log, np.sqrt(np.diag(cov)), rtol=1e-8)
    # a parameter that no observation depends on
    r3 = idf.analyse_fisher(("a", "z"), _fisher(np.stack([a, 0 * a], axis=1)))
    assert r3.uninformed == ["z"]
    with pytest.raises(UserError, match="z"):
        r3.raise_if_confounded()


@pytest.mark.slow  # ~18 s cold: a Fisher information through the course
def test_il6_clearances_confounded_when_only_il6_is_observed(default_config):
    """Without tocilizumab, the linear and receptor-mediated IL-6 clearances enter the model only as their
    sum (elimination and basal production): with IL-6 alone observed they are exactly confounded, and the
    check refuses them by name; IL-6 production vs linear clearance is separable (not refused)."""
    data, _ = synthetic.simulate_dataset(default_config, 4, ("car_prolif_max",), {"car_prolif_max": 1.0},
                                         {"car_prolif_max": 0.1}, 0.2, times=[0.5, 1, 2, 4, 7], analytes=["il6"],
                                         seed=1)
    free = ("il6_per_myeloid", "il6_clearance_linear", "il6_clearance_receptor")
    prob = fm.build_problem(data, default_config, free, fm.GridSettings(substeps=1), days=7.0)
    r = idf.check_identifiability(prob, sigma=0.2)
    assert r.rank == 2
    assert [sorted(g) for g in r.confounded] == [["il6_clearance_linear", "il6_clearance_receptor"]]
    with pytest.raises(UserError, match="il6_clearance_linear and il6_clearance_receptor"):
        r.raise_if_confounded()
    # production vs linear clearance: full rank (strongly correlated on this short design, but not refused)
    sub = idf.analyse_fisher(free[:2], r.fisher[:2, :2])
    assert sub.ok and sub.rank == 2

"""Oracles for the model: the no-CAR-T steady state and the drugs' closed-form pharmacokinetics.

Each test compares a solve with an answer known without solving the model:

* With no CAR-T cells nothing should happen. Every state stays at its
  baseline for 28 days, except two that legitimately move and whose paths are
  known in closed form: the untreated tumour grows, a0 exp(r t), and platelets
  dip after lymphodepleting chemotherapy (marrow production falls by
  s * ld * exp(-t / tau) and recovers; solved below). With ld_intensity = 0
  and tumour growth 0 every state must stay exactly where it started.
* The drug compartments are linear (dexamethasone, anakinra) or have a
  separable Michaelis-Menten elimination (tocilizumab), so their solutions
  are closed forms: a matrix exponential, an exponential, and an implicit
  time-of-concentration formula.

The steady state is checked at 1e-6 relative (1e-9 absolute for states whose
baseline is zero) through the engine's course and through a tight scipy (LSODA)
solve of `rhs`; the pharmacokinetics at tolerances set by the ETDRK4 step (1 h by
default), stated and justified in each test.
"""

from __future__ import annotations

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from scipy.integrate import solve_ivp
from scipy.optimize import brentq

from vpop.engine import course as engine
from vpop.engine.course import EngineSettings
from vpop.model import equations as model
from vpop.observation import readouts
from vpop.policy.settings import OFF, PRESETS
from vpop.population.sampler import COVARIATES, PopulationSampler, patient_keys
from vpop.run.cohort import split_keys
from vpop.solver.etdrk import integrate_interval

from helpers import one, sample_patients

DAYS = 28.0
SETTINGS = EngineSettings(days=DAYS, record_rows=True, substeps=6)  # 1 h steps: the tolerances below are measured at 1 h
REL = 1e-6  # steady state, relative to the baseline
ABS_ZERO = 1e-9  # steady state of states whose baseline is 0 (pg/mL, cells/uL, ...)
SAMPLED = (0, 1, 2, 3)
RHS = jax.jit(model.rhs)
JAC = jax.jit(jax.jacfwd(model.rhs, argnums=1))


def _reference(p, y0, grid):
    """A tight reference solve of `rhs` (one patient), at the times `grid`.

    LSODA switches between stiff and non-stiff methods; Radau is no good here: at an exact steady state the
    excess-over-baseline terms sit on their kink and its Newton iterations stall (10^5 evaluations)."""
    sol = solve_ivp(lambda t, y: np.asarray(RHS(t, y, p)), (0.0, grid[-1]), np.asarray(y0), method="LSODA",
                    t_eval=grid, rtol=1e-11, atol=1e-14, jac=lambda t, y: np.asarray(JAC(t, y, p)))
    assert sol.success
    return sol.y.T


@jax.jit
def _engine_solver_path(y0, p):
    """The engine's integrator, assessment by assessment over 28 days: states after each interval."""
    def interval(y, k):
        t = k * SETTINGS.dt
        y, _, _ = integrate_interval(model.production_loss, readouts.interval_signs, t, t + SETTINGS.dt, y, p,
                                     SETTINGS.substeps, SETTINGS.rtol, SETTINGS.atol, SETTINGS.chart_marks)
        return y, y

    return jax.lax.scan(interval, y0, jnp.arange(SETTINGS.n_rows - 1))[1]


def _typical_patient(config):
    """Covariates at their marginal centres, no random effects, no CAR-T."""
    sampler = PopulationSampler(config.population, config.parameters)
    cov = {n: jnp.asarray(config.population.marginals[n].center, jnp.float32) for n in COVARIATES}
    cov["female"] = jnp.asarray(0.0, jnp.float32)
    key = split_keys(patient_keys(config.seed, np.arange(1)))[0][0]
    _, p = sampler.individual_from_covariates(key, cov, {n: 0.0 for n in sampler.eta_names})
    return p


@pytest.fixture(scope="module")
def patients(default_config):
    """Batch of no-CAR-T patients (float64): the typical patient with lymphodepletion and tumour growth off,
    the typical patient as configured, and sampled patients."""
    typical = _typical_patient(default_config)
    strict = dict(typical, ld_intensity=jnp.asarray(0.0), tumor_growth=jnp.asarray(0.0))
    _, sampled, keys = sample_patients(default_config, np.asarray(SAMPLED))
    members = [strict, typical] + [one(sampled, i) for i in range(len(SAMPLED))]
    p = {name: jnp.asarray(np.stack([np.asarray(m[name], np.float64) for m in members]), jnp.float64)
         for name in sampled}
    p["car_dose_per_kg"] = jnp.zeros_like(p["car_dose_per_kg"])
    keys = jnp.concatenate([keys[:2], keys])
    return p, keys


def expected_states(p, t):
    """Closed-form no-CAR-T path of every state, shape (len(t), N_STATES): baseline except tumour and platelets."""
    t = np.asarray(t, np.float64)[:, None]
    y0 = np.asarray(model.initial_state(p), np.float64)
    y = np.repeat(y0[None, :], t.shape[0], axis=0)
    y[:, model.IDX["antigen"]] = (y0[model.IDX["antigen"]] * np.exp(float(p["tumor_growth"]) * t))[:, 0]
    # dP/dt = (1 - s ld exp(-t/tau)) P0 / L - P / L, P(0) = P0.
    life, tau = float(p["platelet_lifespan"]), float(p["marrow_recovery_time"])
    drop = float(p["ld_marrow_suppression"]) * float(p["ld_intensity"]) * y0[model.IDX["platelets"]] / life
    dip = drop * (np.exp(-t / tau) - np.exp(-t / life)) / (1.0 / life - 1.0 / tau)
    y[:, model.IDX["platelets"]] = (y0[model.IDX["platelets"]] - dip)[:, 0]
    return y


def assert_at_baseline(got, want, names, what):
    """|got - want| <= REL |want|, or <= ABS_ZERO where the baseline is zero; reports the worst offenders."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    bound = np.where(want == 0.0, ABS_ZERO, REL * np.abs(want))
    excess = np.abs(got - want) / bound
    worst = excess.max(axis=0)
    bad = {n: float(np.abs(got - want)[:, i].max()) for i, n in enumerate(names) if worst[i] > 1.0}
    assert not bad, f"{what}: drift beyond tolerance (max |deviation| by state): {bad}"


# ---------------------------------------------------------------- steady state

def test_expected_paths_are_nontrivial_where_they_move(patients):
    """The oracle itself: tumour and platelets do move in the configured patient, and not in the strict one."""
    p, _ = patients
    strict, typical = expected_states(one(p, 0), [0.0, DAYS]), expected_states(one(p, 1), [0.0, DAYS])
    np.testing.assert_array_equal(strict[0], strict[1])
    assert typical[1, model.IDX["antigen"]] > 1.5 * typical[0, model.IDX["antigen"]]
    assert typical[1, model.IDX["platelets"]] < 0.9 * typical[0, model.IDX["platelets"]]


def test_no_car_t_baseline_is_a_fixed_point_of_the_equations(patients):
    """dy/dt at the initial state is zero to rounding (relative to each state's own turnover P), except the
    tumour's growth r a0 and the platelets' post-chemotherapy fall -s ld P0 / L."""
    p, _ = patients
    y0 = model.initial_state(p)
    production, loss = (np.asarray(x) for x in model.production_loss(0.0, y0, p))
    rate = production - loss * np.asarray(y0)
    want = np.zeros_like(rate)
    want[model.IDX["antigen"]] = np.asarray(p["tumor_growth"] * p["tumor_burden"])
    want[model.IDX["platelets"]] = -np.asarray(p["ld_marrow_suppression"] * p["ld_intensity"] * p["platelets0"]
                                               / p["platelet_lifespan"])
    turnover = np.maximum(np.abs(production), np.abs(loss * np.asarray(y0)))
    bad = np.abs(rate - want) > 1e-12 * turnover + 1e-300
    assert not bad.any(), {model.STATE_NAMES[i]: rate[i] for i in np.nonzero(bad.any(axis=1))[0]}


@pytest.mark.parametrize("member", range(2 + len(SAMPLED)))
def test_no_car_t_every_state_stays_at_baseline_tight_scipy_solve(patients, member):
    p, _ = patients
    pi = one(p, member)
    grid = np.linspace(0.0, DAYS, 57)
    got = _reference(pi, model.initial_state(pi), grid)
    assert_at_baseline(got, expected_states(pi, grid), model.STATE_NAMES, f"patient {member}")


def test_no_car_t_every_state_stays_at_baseline_through_the_engine_solver(patients):
    """The engine's integrator on every state (the course reads only some of them out)."""
    p, _ = patients
    path = np.asarray(_engine_solver_path(model.initial_state(p), p))  # (rows - 1, N_STATES, patients)
    grid = SETTINGS.times()[1:]
    for i in range(path.shape[-1]):
        assert_at_baseline(path[:, :, i], expected_states(one(p, i), grid), model.STATE_NAMES, f"patient {i}")


@pytest.fixture(scope="module")
def course(patients):
    """Run the engine's course on the no-CAR-T batch under a policy; one compile for every policy."""
    p, keys = patients
    run = engine.compiled_batch(SETTINGS)

    def go(policy):
        rows, summary = run(p, keys, policy.to_arrays(jnp.float64))
        return {k: np.asarray(v) for k, v in rows.items()}, {k: np.asarray(v) for k, v in summary.items()}

    return go


# Engine read-outs that are states, and the state each one reads.
READ_STATES = {
    "car_t_cells_per_ul": None, "antigen_burden": "antigen", "ifng_pg_ml": "ifng", "tnf_pg_ml": "tnf",
    "gmcsf_pg_ml": "gmcsf", "il6_pg_ml": "il6", "il1b_pg_ml": "il1", "il1ra_pg_ml": "il1ra", "il10_pg_ml": "il10",
    "crp_mg_l": "crp", "ferritin_ng_ml": "ferritin", "fibrinogen_g_l": "fibrinogen", "ddimer_mg_l": "ddimer",
    "platelets_1e9_l": "platelets", "ang2_ng_ml": "ang2", "vwf_iu_dl": "vwf", "csf_il6_pg_ml": "csf_il6",
    "nfl_pg_ml": "nfl", "tocilizumab_ug_ml": None, "dexamethasone_ng_ml": None,
}


def test_no_car_t_course_sits_at_baseline_with_no_toxicity_and_no_treatment(patients, course, default_config):
    p, _ = patients
    rows, summary = course(default_config.policy)
    grid = SETTINGS.times()
    names = list(READ_STATES)
    for i in range(len(rows["time_day"])):
        want_states = expected_states(one(p, i), grid)
        want = np.stack([want_states[:, model.IDX[s]] if s else np.zeros_like(grid) for s in READ_STATES.values()], 1)
        got = np.stack([rows[n][i] for n in names], axis=1)
        assert_at_baseline(got, want, names, f"patient {i}")
        # derived read-outs: blood pressure and albumin follow leak and vasoplegia, both absent
        np.testing.assert_allclose(rows["map_mmhg"][i], float(p["map_baseline"][i]), rtol=REL)
        np.testing.assert_allclose(rows["serum_albumin_g_l"][i], 40.0, rtol=REL)
    for name in (n for n in rows if n.startswith(("crs_grade_", "icans_grade_"))):
        assert (rows[name] == 0).all(), name
    assert (rows["temp_c"] < 37.1).all()
    for name in ("tocilizumab_mg", "dexamethasone_mg", "methylprednisolone_mg", "anakinra_mg"):
        assert (summary[name] == 0).all(), name
    assert (summary["solver_status"] == engine.STATUS_OK).all()


# ---------------------------------------------------------------- drug PK

def _policy(**fields):
    return replace(PRESETS["none"], name="pk", **fields)


def _dex_closed_form(p, dose_mg, t):
    """Oral dexamethasone, depot -> central <-> peripheral: y(t) = expm(K t) y0; central in ng/mL."""
    ka, cl, q = float(p["dex_absorption"]), float(p["dex_clearance"]), float(p["dex_intercompartmental"])
    vc, vp = float(p["dex_central_volume"]), float(p["dex_peripheral_volume"])
    k = np.array([[-ka, 0.0, 0.0], [ka, -(cl + q) / vc, q / vp], [0.0, q / vc, -q / vp]])
    y0 = np.array([dose_mg * float(p["dex_bioavailability"]), 0.0, 0.0])
    return np.array([1000.0 * (scipy.linalg.expm(k * ti) @ y0)[1] / vc for ti in t])


def test_dexamethasone_oral_two_compartment_matches_the_matrix_exponential(patients, course):
    """One 10 mg oral dose at day 0. ETDRK4 at 1 h steps treats each compartment's own loss exactly and the
    transfers between compartments to fourth order; the fast absorption (ka ~ 11/d, 0.46 per step) sets the
    error: measured 1.0e-5 relative, so 1e-4 is asserted while the level is above 1e-6 of its peak."""
    p, _ = patients
    rows, summary = course(_policy(prophylactic_dex_days=(0.0,), prophylactic_dex_mg=10.0))
    grid = SETTINGS.times()
    assert (summary["dexamethasone_mg"] == 10.0).all()
    for i in range(len(rows["time_day"])):
        want = _dex_closed_form(one(p, i), 10.0, grid)
        got = rows["dexamethasone_ng_ml"][i]
        peak = want.max()
        assert peak > 50.0  # a 10 mg dose in ~51 L: the oracle is not trivially zero
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * peak)
        live = want > 1e-6 * peak
        np.testing.assert_allclose(got[live], want[live], rtol=1e-4, atol=1e-9 * peak)


def _toci_time_to(c, c0, p):
    """Days for tocilizumab to fall from c0 to c (ug/mL) under linear plus Michaelis-Menten elimination.

    dc/dt = -k c - a c / (Km + c), with k = CL/V and a = Vmax/V, separates into
    t = (Km / b) ln(c0 / c) + (a / (b k)) ln((k c0 + b) / (k c + b)), b = k Km + a.
    """
    k = float(p["toci_clearance"]) / float(p["toci_volume"])
    a = float(p["toci_vmax"]) / float(p["toci_volume"])
    km = float(p["toci_km"])
    b = k * km + a
    return km / b * np.log(c0 / c) + a / (b * k) * np.log((k * c0 + b) / (k * c + b))


def _toci_closed_form(p, c0, t):
    """c(t) by inverting `_toci_time_to`; NaN once c has fallen below 1e-9 c0 (root-finding is not needed there)."""
    floor = 1e-9 * c0
    return np.array([np.nan if _toci_time_to(floor, c0, p) < ti else
                     brentq(lambda c: _toci_time_to(c, c0, p) - ti, floor, c0, xtol=1e-6 * floor, rtol=1e-14)
                     for ti in t])


def test_tocilizumab_matches_its_exact_michaelis_menten_solution(patients, course):
    """One dose at day 0 (IL-6 trigger below baseline, one dose allowed). At ~140-180 ug/mL the target-mediated
    route is saturated (Km 0.22 ug/mL): elimination is linear plus a constant; below Km, after about three
    weeks, it is fast and first order. The exact solution (implicit, solved by root-finding) covers both. The
    elimination is a loss term, integrated exactly by ETDRK4 up to its dependence on the level within a step:
    measured 3e-7 relative, so 1e-6 is asserted."""
    p, _ = patients
    rows, summary = course(_policy(toci_il6_trigger_pg_ml=0.0, toci_max_total=1.0))
    grid = SETTINGS.times()
    for i in range(len(rows["time_day"])):
        pi = one(p, i)
        dose = summary["tocilizumab_mg"][i]
        np.testing.assert_allclose(dose, min(8.0 * float(pi["weight_kg"]), 800.0), rtol=1e-12)
        c0 = dose / float(pi["toci_volume"])
        assert c0 > 100.0 * float(pi["toci_km"])  # saturated regime
        want = _toci_closed_form(pi, c0, grid[1:])
        got = rows["tocilizumab_ug_ml"][i][1:]
        live = np.isfinite(want)
        assert live.sum() > 40  # days of saturated and then linear elimination, down past Km
        assert want[live].min() < 0.1 * float(pi["toci_km"])
        np.testing.assert_allclose(got[live], want[live], rtol=1e-6)
        assert (np.abs(got[~live]) < 1e-8 * c0).all()
        # the saturated, linear-plus-constant limit is close, but the model's remaining curvature is visible
        k, a = float(pi["toci_clearance"]) / float(pi["toci_volume"]), float(pi["toci_vmax"]) / float(pi["toci_volume"])
        linear = (c0 + a / k) * np.exp(-k * grid[1:]) - a / k
        np.testing.assert_allclose(want[:8], linear[:8], rtol=1e-3)


def test_anakinra_decays_mono_exponentially(patients):
    """100 mg at day 0, through the engine's integrator and a tight scipy solve of `rhs`: A0 exp(-CL/V t).
    The elimination is a pure loss term, which ETDRK4 integrates exactly, so 1e-9 relative is asserted
    (1e-9 mg absolute once the drug is gone: its half-life is ~4 h)."""
    p, _ = patients
    y0 = model.initial_state(p).at[model.IDX["anakinra"]].add(100.0)
    path = np.asarray(_engine_solver_path(y0, p))
    grid = SETTINGS.times()[1:]
    for i in range(path.shape[-1]):
        pi = one(p, i)
        want = 100.0 * np.exp(-float(pi["anakinra_clearance"]) / float(pi["anakinra_volume"]) * grid)
        np.testing.assert_allclose(path[:, model.IDX["anakinra"], i], want, rtol=1e-9, atol=1e-9)
    pi = one(p, 1)
    short = grid[:8]
    want = 100.0 * np.exp(-float(pi["anakinra_clearance"]) / float(pi["anakinra_volume"]) * short)
    got = _reference(pi, y0[:, 1], short)[:, model.IDX["anakinra"]]
    np.testing.assert_allclose(got, want, rtol=1e-8)


@pytest.mark.parametrize("preset", ["default", "ciltacel", "tisacel_ball"])
def test_no_car_t_whole_population_stays_at_rest(preset):
    """Every one of 256 sampled patients of a preset (CD28 LBCL, BCMA myeloma, paediatric B-ALL), not only the
    typical one: a patient whose amplification loops (monocytes' TNF/IL-1, glia and CSF IL-6) have a gain
    above one at rest would ignite from rounding and get CRS or ICANS without CAR-T cells. Lymphodepletion
    and tumour growth are off here, so every state must stay where it started (tolerances as above)."""
    from vpop.run.config import load_config

    _, p, _ = sample_patients(load_config(preset), np.arange(256))
    p = dict(p, car_dose_per_kg=jnp.zeros_like(p["car_dose_per_kg"]), ld_intensity=jnp.zeros_like(p["ld_intensity"]),
             tumor_growth=jnp.zeros_like(p["tumor_burden"]))
    y0 = model.initial_state(p)
    path = np.asarray(_engine_solver_path(y0, p))  # (rows - 1, N_STATES, patients)
    want = np.asarray(y0)
    bound = np.where(want == 0.0, ABS_ZERO, REL * np.abs(want))
    drifting = (np.abs(path - want[None]) > bound[None]).any(axis=(0, 1))
    worst = np.abs(path - want[None]).max(axis=(0, 2))
    assert not drifting.any(), (f"{drifting.sum()} of 256 patients leave rest; largest deviation by state: "
                                f"{ {n: float(w) for n, w in zip(model.STATE_NAMES, worst) if w > 0} }")


# ---------------------------------------------------------------- capillary leak

def _leak_rate_of_change(pi, endothelium, leak):
    """dL/dt from the model's own production and loss, at a given endothelial activation and leak."""
    y = model.initial_state(pi)
    y = y.at[model.IDX["endothelium"]].set(endothelium).at[model.IDX["leak"]].set(leak)
    production, loss = model.production_loss(0.0, y, pi)
    i = model.IDX["leak"]
    return float(production[i] - loss[i] * y[i])


@pytest.mark.parametrize("endothelium", [0.6, 0.8])
def test_leak_settles_where_the_eroded_oncotic_gradient_balances_it(patients, endothelium):
    """Held at activation e, leak L obeys dL/dt = r e^2 - R g(L) L with the oncotic gradient
    g(L) = (1 - a L - f) / (1 - f) (a: albumin lost per unit leak, f: interstitial share). That is the
    quadratic R L (1 - k L) = r e^2, k = a / (1 - f), whose smaller root is the stable steady state
    L* = (1 - sqrt(1 - 4 k r e^2 / R)) / (2 k): above r e^2 / R, where a constant resorption would stop."""
    p, _ = patients
    pi = one(p, 1)
    r, big_r = float(pi["leak_rate"]), float(pi["leak_return"])
    a, f = float(pi["albumin_loss_per_leak"]), float(pi["interstitial_oncotic_fraction"])
    k = a / (1.0 - f)
    drive = r * endothelium ** 2 / big_r
    settled = (1.0 - np.sqrt(1.0 - 4.0 * k * drive)) / (2.0 * k)
    assert settled > drive * 1.05  # the feedback matters at these activations
    scale = r * endothelium ** 2
    assert abs(_leak_rate_of_change(pi, endothelium, settled)) < 1e-9 * scale
    assert _leak_rate_of_change(pi, endothelium, drive) > 0.0  # still rising where constant resorption stops
    assert _leak_rate_of_change(pi, endothelium, 0.9 * settled) > 0.0  # and stable: pushed back from either side
    assert _leak_rate_of_change(pi, endothelium, 1.1 * settled) < 0.0


def test_serum_albumin_and_the_oncotic_gradient_fall_with_leak_in_closed_form(patients):
    """Serum albumin 40 (1 - a min(L, 1)) g/L; the gradient (1 - a L - f) / (1 - f): 1 at rest, 0.3 at full
    leak with the shipped a = 0.35 and f = 0.5 (the lung's 14 of 28 mmHg)."""
    p, _ = patients
    pi = one(p, 1)
    a, f = float(pi["albumin_loss_per_leak"]), float(pi["interstitial_oncotic_fraction"])
    assert (a, f) == pytest.approx((0.35, 0.5), rel=1e-6)
    for leak in (0.0, 0.25, 0.5, 1.0, 1.5):
        y = model.initial_state(pi).at[model.IDX["leak"]].set(leak)
        albumin = float(readouts.biomarkers(y, pi)["serum_albumin_g_l"])
        assert albumin == pytest.approx(40.0 * (1.0 - a * min(leak, 1.0)), rel=1e-12)
        gradient = float(model.oncotic_gradient(jnp.asarray(leak, jnp.float64), pi))
        assert gradient == pytest.approx((1.0 - a * min(leak, 1.0) - f) / (1.0 - f), rel=1e-12)
    assert float(model.oncotic_gradient(jnp.asarray(1.0, jnp.float64), pi)) == pytest.approx(0.3, rel=1e-6)


def test_past_the_tipping_point_leak_runs_on_to_the_full_leak_balance(patients):
    """When 4 k r e^2 / R > 1 the quadratic has no root: resorption can never catch up below full leak, and leak
    runs on to where the gradient stops falling (L >= 1, g = g(1)) and settles at L = r e^2 / (R g(1)). This is
    the point of no return of a severe leak (here at full activation and a leak rate of 0.5 per day)."""
    p, _ = patients
    pi = dict(one(p, 1), leak_rate=jnp.asarray(0.5, jnp.float64))
    r, big_r = float(pi["leak_rate"]), float(pi["leak_return"])
    k = float(pi["albumin_loss_per_leak"]) / (1.0 - float(pi["interstitial_oncotic_fraction"]))
    assert 4.0 * k * r / big_r > 1.0
    for leak in np.linspace(0.0, 1.0, 21):
        assert _leak_rate_of_change(pi, 1.0, leak) > 0.0
    g1 = float(model.oncotic_gradient(jnp.asarray(1.0, jnp.float64), pi))
    settled = r / (big_r * g1)
    assert settled > 1.0
    assert abs(_leak_rate_of_change(pi, 1.0, settled)) < 1e-6 * r

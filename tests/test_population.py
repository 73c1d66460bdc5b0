"""Virtual populations: sampled covariates, random effects, patient tables, product presets."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest
import yaml

from vpop.run.config import load_config, shipped_config
from vpop.errors import ConfigError, DataError
from vpop.model.parameters import TABLE
from vpop.population.sampler import COVARIATES, PopulationSampler, patient_keys

PRESETS = ("axicel", "tisacel_dlbcl", "tisacel_ball", "lisocel", "idecel", "ciltacel")
N_SIM = 200  # every simulation in these tests uses 200 patients and 14 days: one compile


def short_config(tmp_path, preset, **population):
    """A config extending a shipped preset, 14 days, optionally with population keys."""
    data = {"extends": str(shipped_config(f"{preset}.yaml")), "name": f"{preset}_short",
            "schedule": {"days": 14}}
    if population:
        data["population"] = population
    path = tmp_path / f"{preset}_short.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


# --- sampled covariates and random effects ------------------------------------------


@pytest.fixture(scope="module")
def sampled():
    cfg = load_config(shipped_config("axicel.yaml"))
    sampler = PopulationSampler(cfg.population, cfg.parameters)
    keys = patient_keys(123, np.arange(20_000))
    cov = jax.jit(jax.vmap(sampler.covariates))(keys)
    eta = jax.jit(jax.vmap(sampler.random_effects))(keys)
    return cfg, {k: np.asarray(v, np.float64) for k, v in cov.items()}, {k: np.asarray(v, np.float64) for k, v in eta.items()}


def test_marginals_match_config(sampled):
    # Tolerances: 20,000 draws; truncation to [low, high] moves centres by < 2% of a spread.
    cfg, cov, _ = sampled
    for name in COVARIATES:
        m = cfg.population.marginals[name]
        v = cov[name]
        assert v.min() >= m.low - 1e-4 and v.max() <= m.high + 1e-3, name
        if m.dist == "normal":
            assert abs(np.median(v) - m.center) < 0.05 * m.spread, name
            assert abs(np.std(v) / m.spread - 1.0) < 0.08, name
        else:
            lv = np.log(v)
            assert abs(np.median(lv) - np.log(m.center)) < 0.05 * m.spread, name
            iqr = np.subtract(*np.percentile(lv, [75, 25]))
            assert abs(iqr / (1.349 * m.spread) - 1.0) < 0.06, name
    assert abs(cov["female"].mean() - cfg.population.female_fraction) < 0.015
    np.testing.assert_allclose(cov["easix"], cov["ldh"] * cov["creatinine"] / cov["platelets0"], rtol=1e-5)


def test_correlations_match_config(sampled):
    # Normal scores (log for log-normal marginals); tolerance 0.05 (SE ~0.007; clipping biases slightly).
    cfg, cov, _ = sampled
    scores = {n: (np.log(cov[n]) if cfg.population.marginals[n].dist == "lognormal" else cov[n]) for n in COVARIATES}
    for (a, b), r in cfg.population.correlations.items():
        assert abs(np.corrcoef(scores[a], scores[b])[0, 1] - r) < 0.05, (a, b)
    assert abs(np.corrcoef(scores["age_years"], scores["ldh"])[0, 1]) < 0.03  # uncorrelated pair


def test_random_effects_match_omega(sampled):
    cfg, _, eta = sampled
    for name, sd in cfg.population.omega.items():
        assert abs(np.std(eta[name]) / sd - 1.0) < 0.03, name
        assert abs(np.mean(eta[name])) < 0.03 * sd + 0.005, name


def test_patient_is_same_whatever_n():
    cfg = load_config(shipped_config("axicel.yaml"))
    sampler = PopulationSampler(cfg.population, cfg.parameters)
    f = jax.jit(jax.vmap(sampler.individual))
    cov_a, p_a = f(patient_keys(7, np.arange(10)))
    cov_b, p_b = f(patient_keys(7, np.arange(5, 15)))  # same batch shape: one compile
    for k in cov_a:
        np.testing.assert_array_equal(np.asarray(cov_a[k])[5:], np.asarray(cov_b[k])[:5])
    np.testing.assert_array_equal(np.asarray(p_a["car_prolif_factor"])[5:], np.asarray(p_b["car_prolif_factor"])[:5])


def test_individual_from_covariates_reproduces_individual():
    cfg = load_config(shipped_config("axicel.yaml"))
    sampler = PopulationSampler(cfg.population, cfg.parameters)
    keys = patient_keys(3, np.arange(8))
    cov, p = jax.vmap(sampler.individual)(keys)
    given = {k: cov[k] for k in (*COVARIATES, "female")}
    cov2, p2 = jax.vmap(sampler.individual_from_covariates)(keys, given)
    for k in p:
        np.testing.assert_allclose(np.asarray(p[k]), np.asarray(p2[k]), rtol=1e-6, err_msg=k)


def test_endothelial_sensitivity_reads_easix_at_the_reference_ldh_not_the_patients():
    """LDH marks tumour burden, which acts through antigen: doubling a patient's LDH leaves the endothelial
    sensitivity as it is, doubling creatinine raises it by 2^0.25 (EASIX's exponent) and doubling platelets
    lowers it by as much."""
    cfg = load_config(shipped_config("axicel.yaml"))
    sampler = PopulationSampler(cfg.population, cfg.parameters)
    keys = patient_keys(3, np.arange(4))
    cov, _ = jax.vmap(sampler.individual)(keys)
    given = {k: np.asarray(cov[k]) for k in (*COVARIATES, "female")}

    def endo(**changes):
        c = {**given, **{k: given[k] * v for k, v in changes.items()}}
        _, p = jax.vmap(sampler.individual_from_covariates)(keys, c)
        return np.asarray(p["endothelial_sensitivity"], np.float64)

    base = endo()
    np.testing.assert_allclose(endo(ldh=2.0), base, rtol=1e-6)
    np.testing.assert_allclose(endo(creatinine=2.0), base * 2.0 ** 0.25, rtol=1e-5)
    np.testing.assert_allclose(endo(platelets0=2.0), base * 2.0 ** -0.25, rtol=1e-5)
    assert np.all(np.isfinite(base)) and np.all(base > 0)


def _at_ages(ages):
    """Parameters of the first sampled axi-cel patient given each age in turn (everything else fixed)."""
    cfg = load_config(shipped_config("axicel.yaml"))
    sampler = PopulationSampler(cfg.population, cfg.parameters)
    keys = patient_keys(3, np.zeros(len(ages), int))
    cov, _ = jax.vmap(sampler.individual)(keys)
    given = {k: np.asarray(cov[k]) for k in (*COVARIATES, "female")}
    given["age_years"] = np.asarray(ages, np.float32)
    _, p = jax.vmap(sampler.individual_from_covariates)(keys, given)
    return cfg, {k: np.asarray(v, np.float64) for k, v in p.items()}


def test_a_childs_blood_pressure_and_hypotension_limits_follow_age():
    """Normal MAP rises 1.6 mmHg a year up to 20 (Flynn 2017) and the hypotension limits fall 2 mmHg a year
    under 10 (PALS): closed forms at 3, 10, 15, 20 and 60 years; adults are untouched."""
    ages = np.array([3.0, 10.0, 15.0, 20.0, 60.0])
    cfg, p = _at_ages(ages)
    adult = TABLE["map_baseline"].value
    np.testing.assert_allclose(p["map_baseline"], adult - 1.6 * np.maximum(20.0 - ages, 0.0), atol=1e-4)
    np.testing.assert_allclose(p["map_age_shift"], -2.0 * np.maximum(10.0 - ages, 0.0), atol=1e-5)
    np.testing.assert_allclose(p["map_baseline"][[0, -1]], [adult - 27.2, adult], atol=1e-4)


def test_no_child_or_adult_is_hypotensive_at_rest_and_a_child_needs_pressors_sooner():
    """At rest (MAP at its baseline) no age from 1 to 80 reads hypotension; the same fall in MAP that an adult
    meets with fluids puts a 12-year-old on a vasopressor, because the child starts lower against the same
    PALS limit (SBP < 90 from 10 years)."""
    from vpop.observation import readouts

    ages = np.arange(1.0, 81.0)
    _, p = _at_ages(ages)
    hypotension, pressors, _, _ = readouts.haemodynamics(p["map_baseline"], p)
    assert not np.any(np.asarray(hypotension)) and not np.any(np.asarray(pressors))
    _, q = _at_ages(np.array([12.0, 40.0]))
    fall = 20.0  # mmHg
    _, pressors, _, _ = readouts.haemodynamics(q["map_baseline"] - fall, q)
    assert list(np.asarray(pressors)) == [1, 0]


# --- patient tables ------------------------------------------------------------------


def _table(n=N_SIM, seed=5):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "patient_id": np.arange(100, 100 + n),
        "age_years": rng.uniform(20, 80, n), "weight_kg": rng.uniform(50, 110, n),
        "tumor_burden": rng.lognormal(0, 1, n), "ldh": rng.uniform(150, 900, n),
        "platelets0": rng.uniform(50, 300, n), "crp0": rng.uniform(1, 80, n),
        "ferritin0": rng.uniform(100, 3000, n), "creatinine": rng.uniform(0.5, 1.5, n),
        "ang2_0": rng.uniform(1, 5, n), "nfl0": rng.uniform(5, 40, n),
        "sex": rng.choice(["F", "M"], n),
    })


def test_patient_table_used_as_given(tmp_path):
    from vpop.run.cohort import simulate

    tab = _table()
    tab.to_parquet(tmp_path / "patients.parquet")
    cfg = short_config(tmp_path, "axicel", patients_file="patients.parquet")
    res = simulate(cfg, seed=1, record_rows=False)
    d = res.patients
    assert len(d) == N_SIM
    np.testing.assert_array_equal(d["patient_id"].to_numpy(), tab["patient_id"].to_numpy())
    for name in COVARIATES:
        np.testing.assert_allclose(d[name].to_numpy(), tab[name].to_numpy(), rtol=1e-6, err_msg=name)
    assert (d["sex"].to_numpy() == tab["sex"].to_numpy()).all()
    np.testing.assert_allclose(d["car_dose_per_kg"], 2.0e6, rtol=1e-6)  # the product's per-kg dose


def test_patient_table_reproduces_sampled_patients(tmp_path):
    """Ids, covariates and eta of sampled patients, read back, give the same patients (rows shuffled)."""
    from vpop.run.cohort import simulate
    from vpop.trials.selection import selected_patient_table

    cfg = short_config(tmp_path, "axicel")
    first = simulate(cfg, n=N_SIM, seed=4, record_rows=False).patients
    tab = selected_patient_table(cfg, first, seed=4).sample(frac=1.0, random_state=0)
    tab.to_csv(tmp_path / "again.csv", index=False)
    cfg2 = short_config(tmp_path, "axicel", patients_file=str(tmp_path / "again.csv"))
    again = simulate(cfg2, seed=4, record_rows=False).patients.set_index("patient_id").loc[first["patient_id"]]
    for col in ("crs_max_grade", "icans_max_grade", "crs_onset_day", "peak_car_t_cells_per_ul", "peak_car_t_day"):
        np.testing.assert_allclose(again[col].to_numpy(np.float64), first[col].to_numpy(np.float64),
                                   rtol=1e-4, equal_nan=True, err_msg=col)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.drop(columns=["ldh"]), "missing column(s) ldh"),
    (lambda t: t.assign(crp0=t["crp0"].where(t.index != 6, np.nan)), "row 7, column crp0"),
    (lambda t: t.assign(weight_kg=t["weight_kg"].where(t.index != 2, -3.0)), "row 3, column weight_kg"),
    (lambda t: t.assign(age_years=t["age_years"].astype(object).where(t.index != 0, "old")), "row 1, column age_years"),
    (lambda t: t.assign(sex=t["sex"].where(t.index != 4, "X")), "row 5, column sex"),
    (lambda t: t.assign(patient_id=t["patient_id"].where(t.index != 3, 100)), "row 4, column patient_id"),
    (lambda t: t.assign(eta_not_a_parameter=0.1), "column eta_not_a_parameter"),
])
def test_bad_patient_table_names_row_and_column(tmp_path, edit, message):
    from vpop.population.patient_table import load_patient_table

    path = tmp_path / "bad.csv"
    edit(_table(10)).to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        load_patient_table(path)
    assert message in str(err.value) and "bad.csv" in str(err.value)
    assert "allowed" in str(err.value) or "required" in str(err.value)


def test_bad_patient_table_exits_2_on_the_command_line(tmp_path, capsys):
    from vpop.cli import main

    (tmp_path / "bad.csv").write_text("age_years,weight_kg\n50,70\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"extends": "axicel.yaml", "population": {"patients_file": "bad.csv"}}))
    assert main(["simulate", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "bad.csv" in capsys.readouterr().err
    (tmp_path / "t.txt").write_text("x")
    cfg.write_text(yaml.safe_dump({"extends": "axicel.yaml", "population": {"patients_file": "t.txt"}}))
    assert main(["simulate", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]) == 2


def test_patients_file_must_be_a_string(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"extends": "axicel.yaml", "population": {"patients_file": 3}}))
    with pytest.raises(ConfigError, match="population.patients_file"):
        load_config(cfg)


# --- product presets -------------------------------------------------------------------


def test_presets_load_and_are_distinct():
    kinetics = {}
    for name in PRESETS:
        cfg = load_config(shipped_config(f"{name}.yaml"))
        pp = cfg.population.product_parameters
        kinetics[name] = tuple(sorted(pp.items())) + (cfg.population.dose_per_kg, cfg.population.flat_dose,
                                                      cfg.population.ld_intensity, cfg.disease)
    assert len(set(kinetics.values())) == len(PRESETS)
    cilta = load_config(shipped_config("ciltacel.yaml"))
    ball = load_config(shipped_config("tisacel_ball.yaml"))
    assert cilta.product["target"] == "BCMA" and cilta.product["costimulation"] == "4-1BB"
    assert cilta.population.marginals["age_years"].center > 55
    assert ball.population.marginals["age_years"].center < 18 and ball.population.dose_per_kg == 3.1e6
    assert abs(ball.population.ld_intensity - 1.0) < 1e-9  # Flu 30 x4 + Cy 500 x2 (same total)


def test_cd28_preset_has_earlier_crs_and_expansion_than_ciltacel(tmp_path):
    from vpop.run.cohort import simulate

    out = {}
    for name in ("axicel", "ciltacel"):
        d = simulate(short_config(tmp_path, name), n=N_SIM, seed=0, record_rows=False).patients
        out[name] = (d["crs_onset_day"].median(), d["peak_car_t_day"].median(), (d["crs_max_grade"] >= 1).mean())
    assert out["axicel"][0] + 2.0 <= out["ciltacel"][0], out  # median CRS onset (axi ~2 d, cilta ~6 d)
    assert out["axicel"][1] + 3.0 <= out["ciltacel"][1], out  # median CAR-T Tmax
    assert out["ciltacel"][2] > 0.5, out


# --- parameters shared by every patient (the engine takes them as scalars) ----------


@pytest.mark.parametrize("preset", ["axicel", "ciltacel", "tisacel_ball"])
def test_shared_parameters_are_exactly_those_equal_for_every_sampled_patient(preset):
    """The traced dependency walk names a parameter shared iff no two of 500 sampled patients differ in it
    (a flat-dose product, cilta-cel, also makes the dose per kg individual)."""
    cfg = load_config(shipped_config(f"{preset}.yaml"))
    sampler = PopulationSampler(cfg.population, cfg.parameters)
    _, p = jax.jit(jax.vmap(sampler.individual))(patient_keys(5, np.arange(500)))
    equal = {k for k, v in p.items() if np.ptp(np.asarray(v)) == 0}
    shared = set(sampler.shared_parameters())
    assert shared <= equal  # never call shared what differs between patients
    # Read from age but flat from 20 years (a child's blood pressure): equal within an all-adult population.
    plateau = {"map_baseline", "map_age_shift"}
    assert equal - shared == (plateau if p["age_years"].min() >= 20.0 else set())
    assert {"cytokine_sensitivity", "tumor_burden", "weight_kg"}.isdisjoint(equal)


def test_shared_parameters_as_scalars_give_the_same_courses(default_config):
    """The engine broadcasts 0-d parameters: the same grades and doses, peaks to float32 rounding."""
    import jax.numpy as jnp
    from dataclasses import replace

    from vpop.engine.course import compiled_batch, simulate_batch
    from vpop.run import driver

    cfg = default_config
    settings = replace(driver.plan(cfg, 64, 0, False).settings, days=7.0)
    sampler = PopulationSampler(cfg.population, cfg.parameters)
    pop_keys, event_keys = driver.split_keys(patient_keys(3, np.arange(64)))
    _, p = driver.compiled_sampler(sampler, jnp.float32)(pop_keys)
    scalars = driver.shared_as_scalars(p, driver.shared_parameters(sampler))
    assert sum(np.ndim(v) == 0 for v in scalars.values()) == len(sampler.shared_parameters()) > 100
    policy = cfg.policy.to_arrays(jnp.float32)
    run = compiled_batch(settings)
    rows_a, summ_a = run(p, event_keys, policy)
    rows_s, summ_s = jax.jit(lambda q, k, pol: simulate_batch(q, k, pol, settings))(scalars, event_keys, policy)
    for name in rows_a:
        if "grade" in name:
            np.testing.assert_array_equal(np.asarray(rows_s[name]), np.asarray(rows_a[name]), err_msg=name)
    assert np.asarray(summ_a["peak_il6_pg_ml"]).max() > 100.0  # the week has a storm to compare
    for name in ("tocilizumab_mg", "dexamethasone_mg", "peak_il6_pg_ml", "peak_crp_mg_l", "nadir_map_mmhg"):
        np.testing.assert_allclose(np.asarray(summ_s[name]), np.asarray(summ_a[name]), rtol=1e-4, err_msg=name)

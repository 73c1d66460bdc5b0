"""Data simulated by vpop with known parameters (recovery tests, benchmark, recovery study).

Patients get covariates drawn from the config's population, individual values
of the free parameters theta_i = theta_true x exp(omega z_i), and log-normal
measurement error; values below an LLOQ are written as BLQ rows. The time
courses come from the fitting model's own solve (`vpop.fitting.model`), run
with 3x the substeps used for fitting.
"""

from __future__ import annotations

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np

from vpop.fitting import model as fm
from vpop.fitting.data import ANALYTES, PatientData, write_patient_data


def simulate_dataset(config, n: int, free, theta_true: dict, omega_true: dict, sigma: float, times, analytes,
                     seed: int = 0, lloq: dict | None = None, settings: fm.GridSettings = fm.GridSettings(),
                     path=None, grades: bool = False, occasions: int = 1, omega_bov: dict | None = None):
    """Returns (PatientData, truth dict). Writes the long CSV to `path` if given.

    `occasions` > 1: n subjects with that many courses each (ids `<s>`, `<s>/2`, ... as resets give them;
    subjects and occasions recorded), a course's log factor omega z_s + omega_bov k_c on the parameters of
    `omega_bov` (between-occasion variability), the subject's covariates on every course."""
    rng = np.random.default_rng(seed)
    free = fm.check_free(free)
    keys = [ANALYTES[a] for a in analytes]
    sampler_cov = _covariates(config, n, seed)
    times = np.asarray(times, dtype=float)
    m = len(times) * len(keys)
    subjects = np.repeat(np.arange(1, n + 1), occasions)
    occ = np.tile(np.arange(1, occasions + 1), n)
    ids = [f"{s}" if k == 1 else f"{s}/{k}" for s, k in zip(subjects, occ)]
    if occasions > 1:
        if path is not None:
            raise ValueError("simulate_dataset: occasions > 1 is not written to a file")
        sampler_cov = [sampler_cov[s - 1] for s in subjects]
        n_subjects, n = n, n * occasions
    data = PatientData("<simulated>", ids if occasions > 1 else list(range(1, n + 1)), tuple(keys),
                       [np.repeat(times, len(keys)) for _ in range(n)],
                       [np.tile(np.arange(len(keys)), len(times)).astype(np.int32) for _ in range(n)],
                       [np.ones(m) for _ in range(n)], [np.zeros(m, bool) for _ in range(n)],
                       [np.zeros(0)] * n, [np.zeros(0, np.int32)] * n, [np.zeros(0)] * n, sampler_cov, {})
    fine = replace(settings, substeps=settings.substeps * 3)
    prob = fm.build_problem(data, config, free, fine, days=float(times.max()))
    omega = np.array([omega_true[f] for f in free])
    if occasions > 1:
        data.subjects, data.occasions = subjects.tolist(), occ.tolist()
        z_subject = rng.standard_normal((n_subjects, len(free)))
        ob = np.array([(omega_bov or {}).get(f, 0.0) for f in free])
        kappa = ob * rng.standard_normal((n, len(free)))
        z = z_subject[subjects - 1] + kappa / omega
    else:
        z = rng.standard_normal((n, len(free)))
    log_factor = np.log([theta_true[f] for f in free]) - prob.log_ref + omega * z
    mu, sev, _ = jax.jit(lambda lf: fm.predictions(prob, lf))(jnp.asarray(log_factor))
    mu = np.asarray(mu)
    values = np.exp(mu + sigma * rng.standard_normal(mu.shape))
    per = [values[i].reshape(len(times), len(keys)) for i in range(n)]
    grade_rows = None
    if grades:
        crs = np.digitize(np.log(np.asarray(sev["crs"]) + fm.SEVERITY_EPS["crs"]), [-5.0, -3.0, -1.5, -0.5])
        icans = np.digitize(np.log(np.asarray(sev["icans"]) + fm.SEVERITY_EPS["icans"]), [-4.0, -2.0, -1.0, 0.0])
        grade_rows = [{"crs": int(c), "icans": int(g)} for c, g in zip(crs, icans)]
    out = None
    if path is not None:
        write_patient_data(path, data.ids, times, analytes, per, lloq=lloq, covariates=sampler_cov, grades=grade_rows)
        from vpop.fitting.data import read_patient_data

        out = read_patient_data(path)
    else:
        out = data
        lim = {ANALYTES[a]: v for a, v in (lloq or {}).items()}
        for i in range(n):
            v = values[i].copy()
            cens = np.zeros(m, bool)
            for j, k in enumerate(keys):
                if k in lim:
                    sel = (data.obs_analyte[i] == j) & (v < lim[k])
                    cens |= sel
                    v[sel] = lim[k]
            out.obs_value[i], out.obs_censored[i] = v, cens
        if grade_rows is not None:
            out.grades = {k: np.array([g[k] for g in grade_rows], np.int32) for k in ("crs", "icans")}
    truth = {"theta": dict(theta_true), "omega": dict(omega_true), "sigma": sigma, "z": z,
             "log_factor": log_factor, "clean_log": mu}
    return out, truth


def _covariates(config, n, seed):
    from vpop.population.sampler import COVARIATES, PopulationSampler, patient_keys

    sampler = PopulationSampler(config.population, config.parameters)
    keys = patient_keys(seed + 1000, np.arange(n))
    cov = jax.vmap(sampler.covariates)(keys)
    return [{c: float(cov[c][i]) for c in COVARIATES} for i in range(n)]

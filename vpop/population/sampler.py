"""Virtual patients: covariates, between-patient variability, individual parameters.

Patient i of a run is a pure function of (seed, i): its random key is
`fold_in(PRNGKey(seed), i)`, split into independent streams for covariates,
random effects and bedside events. So the same patient comes out whatever the
cohort size, batch size or device count.

Individual parameter = typical value x covariate effects x exp(eta), with
eta ~ MVN(0, Omega). Covariates are drawn through a Gaussian copula: each
covariate has a marginal (normal or log-normal, truncated to a range) and the
normal scores share a configurable correlation matrix.

docs/populations.md documents each distribution, effect and default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from vpop import tracing
from vpop.model.parameters import TABLE, typical_values


# Continuous covariates drawn for every patient, in this order.
COVARIATES: tuple[str, ...] = (
    "age_years",
    "weight_kg",
    "tumor_burden",
    "ldh",
    "platelets0",
    "crp0",
    "ferritin0",
    "creatinine",
    "ang2_0",
    "nfl0",
)

# Sensitivities carry between-patient variability on whole mechanisms.
SENSITIVITIES: tuple[str, ...] = (
    "car_prolif_factor",
    "cytokine_sensitivity",
    "myeloid_sensitivity",
    "endothelial_sensitivity",
    "bbb_sensitivity",
    "cns_sensitivity",
    "neuro_sensitivity",
)


@dataclass(frozen=True)
class Marginal:
    """A covariate's marginal: `normal` (mean, sd) or `lognormal` (median, sd of log)."""

    dist: str
    center: float
    spread: float
    low: float
    high: float


@dataclass(frozen=True)
class PopulationSpec:
    """Everything needed to draw patients: marginals, correlations, variability, product."""

    marginals: dict[str, Marginal]
    correlations: dict[tuple[str, str], float]
    omega: dict[str, float]  # SD of eta by parameter or sensitivity name
    omega_correlations: dict[tuple[str, str], float]
    female_fraction: float
    # product and regimen
    dose_per_kg: float | None  # CAR-T cells/kg, or
    flat_dose: float | None  # CAR-T cells (flat)
    ld_intensity: float
    product_parameters: dict[str, float] = field(default_factory=dict)


def correlation_matrix(names, pairs):
    n = len(names)
    c = np.eye(n)
    index = {name: i for i, name in enumerate(names)}
    for (a, b), r in pairs.items():
        c[index[a], index[b]] = c[index[b], index[a]] = r
    return c


def cholesky_or_raise(names, pairs, what):
    from vpop.errors import ConfigError

    c = correlation_matrix(names, pairs)
    try:
        return np.linalg.cholesky(c)
    except np.linalg.LinAlgError:
        raise ConfigError(f"{what}: the correlations given do not form a positive-definite matrix") from None


def patient_keys(seed: int, patient_ids) -> jax.Array:
    """Key of each patient: fold_in(PRNGKey(seed), patient_id)."""
    base = jax.random.PRNGKey(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(patient_ids, dtype=jnp.uint32))


class PopulationSampler:
    """Draws covariates and individual parameters for patients, one key each."""

    def __init__(self, spec: PopulationSpec, parameter_overrides: dict[str, float] | None = None):
        self.spec = spec
        self.typical = typical_values()
        self.typical.update(spec.product_parameters)
        self.typical.update(parameter_overrides or {})
        self.cov_chol = jnp.asarray(cholesky_or_raise(COVARIATES, spec.correlations, "population.correlations"), jnp.float32)
        self.eta_names = tuple(spec.omega)
        if self.eta_names:
            chol = cholesky_or_raise(self.eta_names, spec.omega_correlations, "population.variability correlations")
            sd = np.array([spec.omega[n] for n in self.eta_names])
            self.eta_chol = jnp.asarray(sd[:, None] * chol, jnp.float32)
        else:
            self.eta_chol = jnp.zeros((0, 0), jnp.float32)

    def covariates(self, key) -> dict[str, jax.Array]:
        """One patient's covariates (a dict of scalars)."""
        k_z, k_sex = jax.random.split(key)
        z = self.cov_chol @ jax.random.normal(k_z, (len(COVARIATES),), dtype=jnp.float32)
        out = {}
        for i, name in enumerate(COVARIATES):
            m = self.spec.marginals[name]
            if m.dist == "normal":
                v = m.center + m.spread * z[i]
            else:
                v = m.center * jnp.exp(m.spread * z[i])
            out[name] = jnp.clip(v, m.low, m.high)
        out["female"] = (jax.random.uniform(k_sex, dtype=jnp.float32) < self.spec.female_fraction).astype(jnp.float32)
        return self.derived_covariates(out)

    def individual(self, key) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """One patient's (covariates, individual parameters)."""
        k_cov, k_eta = jax.random.split(key)
        cov = self.covariates(k_cov)
        return cov, self.parameters_of(cov, self.random_effects(k_eta))

    def random_effects(self, k_eta) -> dict[str, jax.Array]:
        """eta ~ MVN(0, Omega), by name (empty when no variability is configured)."""
        if not self.eta_names:
            return {}
        eta = self.eta_chol @ jax.random.normal(k_eta, (len(self.eta_names),), dtype=jnp.float32)
        return {name: eta[i] for i, name in enumerate(self.eta_names)}

    def patient_random_effects(self, key) -> dict[str, jax.Array]:
        """The eta that `individual(key)` uses (same key split)."""
        return self.random_effects(jax.random.split(key)[1])

    def derived_covariates(self, cov: dict, key=None) -> dict[str, jax.Array]:
        """Complete given covariates: EASIX, m-EASIX, dose per kg, LD intensity, sex.

        Values already in `cov` are kept (a patient table may give `female`,
        `car_dose_per_kg` or `ld_intensity`); `female` missing is drawn from
        `key` with the configured female fraction.
        """
        out = dict(cov)
        if "female" not in out:
            k_sex = jax.random.split(key)[1]
            out["female"] = (jax.random.uniform(k_sex, dtype=jnp.float32) < self.spec.female_fraction).astype(jnp.float32)
        out["easix"] = easix(out["ldh"], out["creatinine"], out["platelets0"])
        out["m_easix"] = out["ldh"] * (out["crp0"] / 10.0) / out["platelets0"]  # CRP in mg/dL
        if "car_dose_per_kg" not in out:
            if self.spec.dose_per_kg is not None:
                out["car_dose_per_kg"] = jnp.asarray(self.spec.dose_per_kg, dtype=jnp.float32)
            else:
                out["car_dose_per_kg"] = self.spec.flat_dose / out["weight_kg"]
        if "ld_intensity" not in out:
            out["ld_intensity"] = jnp.asarray(self.spec.ld_intensity, dtype=jnp.float32)
        return out

    def individual_from_covariates(self, key, cov: dict, eta: dict | None = None):
        """(covariates, parameters) of a patient whose covariates are given (a patient table).

        `key` is the patient's population key, as for `individual`: the random
        effects come from the same stream, so a table row with patient i's
        covariates and key gives patient i's parameters. `eta` (by name)
        replaces the drawn random effects it names.
        """
        k_cov, k_eta = jax.random.split(key)
        cov = self.derived_covariates(cov, k_cov)
        effects = self.random_effects(k_eta)
        effects.update(eta or {})
        return cov, self.parameters_of(cov, effects)

    def shared_parameters(self) -> tuple[str, ...]:
        """Names of the parameters that are the same for every patient (no covariate, effect or eta touches them).

        Read from the traced sampler, not from values: an output is shared when nothing in its
        computation reads the patient's key. With this model's default population that is 162 of
        180 parameters; the engine takes them as scalars (`vpop.run.driver.shared_as_scalars`).
        """
        return shared_outputs(self.individual, jax.random.PRNGKey(0))[1]

    def parameters_of(self, cov: dict, eta: dict) -> dict[str, jax.Array]:
        """One patient's model parameters from derived covariates and random effects by name (`{}`: the
        population's covariate model at eta = 0, as the fitting model starts from)."""
        p = {name: jnp.asarray(v, dtype=jnp.float32) for name, v in self.typical.items()}
        for name in SENSITIVITIES:
            p[name] = jnp.asarray(1.0, dtype=jnp.float32)
        p.update(covariate_effects(cov, p))
        for name, value in eta.items():
            p[name] = p[name] * jnp.exp(value)
        for name in ("tumor_burden", "platelets0", "crp0", "ferritin0", "ang2_0", "nfl0", "ld_intensity",
                     "car_dose_per_kg", "weight_kg", "age_years"):
            p[name] = cov[name]
        p["vwf_0"] = jnp.asarray(100.0, dtype=jnp.float32) * (cov["ang2_0"] / 2.0) ** 0.3
        p["fibrinogen0"] = jnp.asarray(3.2, dtype=jnp.float32) * (cov["crp0"] / 5.0) ** 0.1
        # Reiber: upper reference of the albumin quotient is age/25 + 8 (x1e-3).
        p["qalb0"] = 0.65 * (cov["age_years"] / 25.0 + 8.0)
        # Children's blood pressure: normal MAP rises about 1.6 mmHg a year to the adult value by 20 (Flynn 2017,
        # 50th percentiles), while the hypotension limit (SBP < 70 + 2 x age) falls below the adult one only under 10
        # (PALS; Mahadeo 2019), so a child starts nearer the point where fluids and vasopressors begin.
        p["map_baseline"] = p["map_baseline"] - MAP_RISE_PER_YEAR * jnp.maximum(ADULT_MAP_AGE - cov["age_years"], 0.0)
        p["map_age_shift"] = -PEDIATRIC_SBP_PER_YEAR * jnp.maximum(PEDIATRIC_SBP_AGE - cov["age_years"], 0.0)
        return p


def shared_outputs(fn, *args) -> tuple:
    """For `fn(*args)` returning a tuple of dicts: per dict, the sorted keys whose value does not depend on `args`.

    An output that only constants and literals feed is the same whatever the arguments, so for a
    per-patient function it is shared by every patient (`vpop.tracing`).
    """
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    dep = tracing.dependence(jaxpr, [True] * len(jaxpr.invars))
    flat = [not tracing.depends(dep, v) for v in jaxpr.outvars]
    shared = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(jax.eval_shape(fn, *args)), flat)
    return tuple(tuple(sorted(k for k, s in part.items() if s)) for part in shared)


# Age and blood pressure (parameters_of): mmHg per year of normal MAP below the age it reaches the adult value, and
# of the systolic hypotension limit below 10 years (PALS: SBP < 70 + 2 x age).
MAP_RISE_PER_YEAR = 1.6
ADULT_MAP_AGE = 20.0
PEDIATRIC_SBP_PER_YEAR = 2.0
PEDIATRIC_SBP_AGE = 10.0


def easix(ldh, creatinine, platelets):
    """Endothelial Activation and Stress Index: LDH (U/L) x creatinine (mg/dL) / platelets (1e9/L)."""
    return ldh * creatinine / platelets


# U/L: the LDH at which the endothelial sensitivity reads EASIX (the axi-cel population's median, so the typical
# LBCL patient's sensitivity is unchanged).
EASIX_REFERENCE_LDH = 330.0


def covariate_effects(cov, p) -> dict[str, jax.Array]:
    """Documented covariate effects on the typical parameters (docs/populations.md)."""
    ld = cov["ld_intensity"]
    return {
        # Lymphodepletion intensity (1 = Flu 30 / Cy 500 x 3 d) boosts expansion.
        "car_prolif_factor": p["car_prolif_factor"] * (1.0 + p["ld_expansion_gain"] * (ld - 1.0)),
        # Baseline endothelial stress (EASIX, Ang-2) sensitises the endothelium (Hay 2017; Korell 2022). EASIX
        # is read at a reference LDH: LDH mostly marks tumour burden, which already acts through antigen, so the
        # patient's own LDH counted the burden twice (docs/populations.md).
        "endothelial_sensitivity": (p["endothelial_sensitivity"]
                                    * (easix(EASIX_REFERENCE_LDH, cov["creatinine"], cov["platelets0"]) / 2.0) ** 0.25
                                    * (cov["ang2_0"] / 2.0) ** 0.3),
        # Baseline inflammation primes monocytes (Locke 2020; CAR-HEMATOTOX ferritin/CRP).
        "myeloid_sensitivity": p["myeloid_sensitivity"] * (cov["crp0"] / 10.0) ** 0.1 * (cov["ferritin0"] / 500.0) ** 0.1,
    }

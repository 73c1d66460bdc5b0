"""Simulation configs: strict YAML in, a frozen `SimulationConfig` out.

A config may `extends:` another file (path relative to itself, or the name
of a shipped config such as `axicel.yaml`); mappings merge key by key, the
extending file winning. `load_config("axicel")` (and `vpop simulate axicel`)
takes a shipped preset by name from any folder. Every key is checked: an
unknown key is an error that names it and lists the allowed ones; a bad value
names the field, the value and what is allowed; a key given twice in one
mapping is an error (YAML would silently keep the last). Model parameters
must be physically possible (non-negative; fractions at most 1) and inside
the parameter table's plausible range unless the config says
`allow_outside_range: true` (then each one outside is warned about).
Covariate distributions may not reach physically impossible values (negative
weight, age, tumour burden or laboratory value). Errors are `ConfigError`
(exit status 2 on the command line).
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from vpop.engine.course import EngineSettings
from vpop.errors import ConfigError
from vpop.grading.legacy import CRS_SCALES, NEURO_SCALES
from vpop.model.parameters import TABLE
from vpop.policy.settings import CRS_TRIGGER_SCALES, ICANS_TRIGGER_SCALES, PRESETS, PolicySettings, check_scales, with_overrides
from vpop.population.sampler import COVARIATES, SENSITIVITIES, Marginal, PopulationSpec


def shipped_config_dir():
    """The folder of configs shipped with vpop: the `vpop.configs` package (configs/ in a checkout links to it)."""
    return resources.files("vpop.configs")


def shipped_config(name: str) -> Path:
    return Path(str(shipped_config_dir() / name))


def preset_names() -> list[str]:
    """Names of the shipped configs (`axicel`, `default`, ...), sorted."""
    return sorted(p.name[:-5] for p in shipped_config_dir().iterdir() if p.name.endswith(".yaml"))


def resolve_config_path(path: str | Path | None) -> Path:
    """A config file: the path itself when it is a file, else the shipped preset of that name.

    `axicel` and `axicel.yaml` name the shipped preset whatever the working
    folder; a file of that name in the working folder wins. Anything else that
    is not a file is a ConfigError listing the presets.
    """
    if path is None:
        return shipped_config("default.yaml")
    path = Path(path)
    if path.is_file():
        return path
    text = str(path)
    if "/" not in text and "\\" not in text:
        stem = text[:-5] if text.endswith(".yaml") else text[:-4] if text.endswith(".yml") else text
        candidate = shipped_config(stem + ".yaml")
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{path}: config file not found; give a path to a config YAML or the name of a shipped "
                      f"preset: {', '.join(preset_names())} (`vpop presets` describes them)")


# --- value checkers: each returns the clean value or raises ValueError(allowed)


def _int(low=None):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int) or (low is not None and v < low):
            raise ValueError(f"an integer >= {low}" if low is not None else "an integer")
        return v
    return check


def _num(low=None, high=None, low_open=False):
    def check(v):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if ok and low is not None:
            ok = v > low if low_open else v >= low
        if ok and high is not None:
            ok = v <= high
        if not ok:
            bounds = []
            if low is not None:
                bounds.append(f"{'>' if low_open else '>='} {low}")
            if high is not None:
                bounds.append(f"<= {high}")
            raise ValueError("a finite number" + (" " + " and ".join(bounds) if bounds else ""))
        return float(v)
    return check


def _str(choices=None):
    def check(v):
        if not isinstance(v, str) or (choices is not None and v not in choices):
            raise ValueError("one of: " + ", ".join(choices) if choices else "a string")
        return v
    return check


def _bool(v):
    if not isinstance(v, bool):
        raise ValueError("true or false")
    return v


def _optional(check):
    def inner(v):
        return None if v is None else check(v)
    return inner


def _num_list(v):
    if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise ValueError("a list of numbers")
    return [float(x) for x in v]


def _plain(v) -> str:
    """A number as a person writes it: 2, 0.5, 2000000 (never np.float64(2.0) or 2e+06)."""
    v = float(v)
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.6g}"


# --- physical limits ------------------------------------------------------------

# Covariate values that are physically possible. A marginal's center, low and
# high must lie inside them; patients are clipped to [low, high], so no patient
# can leave them.
COVARIATE_LIMITS: dict[str, tuple[float, float]] = {
    "age_years": (0.0, 120.0),
    "weight_kg": (0.5, 400.0),
    "tumor_burden": (0.0, math.inf),
    "ldh": (0.0, math.inf),
    "platelets0": (0.0, math.inf),
    "crp0": (0.0, math.inf),
    "ferritin0": (0.0, math.inf),
    "creatinine": (0.0, math.inf),
    "ang2_0": (0.0, math.inf),
    "nfl0": (0.0, math.inf),
}


def is_fraction(name: str) -> bool:
    """Parameters that are fractions or probabilities (at most 1 by definition), besides being >= 0."""
    unit = TABLE[name].unit
    return unit in ("fraction", "FiO2") or name.endswith(("_fraction", "_bioavailability", "_emax"))


def check_parameter_ranges(params: dict[str, float], where: str, allow: bool, source: str) -> None:
    """Refuse (or, with allow_outside_range, warn about) values outside the parameter table's plausible range."""
    for name, v in params.items():
        spec = TABLE[name]
        if spec.low <= v <= spec.high:
            continue
        text = (f"{source}: {where}.{name}: {_plain(v)} is outside the plausible range {_plain(spec.low)} to "
                f"{_plain(spec.high)} {spec.unit} of the parameter table (docs/model.md)")
        if not allow:
            raise ConfigError(text + "; set `allow_outside_range: true` at the top of the config to use it anyway")
        warnings.warn(text + " (allowed by allow_outside_range: true)", OutsideRangeWarning, stacklevel=3)


class OutsideRangeWarning(UserWarning):
    """A model parameter outside its plausible range, allowed by `allow_outside_range: true`."""


# --- schema ------------------------------------------------------------------

_POLICY_FIELDS = {f.name: f for f in fields(PolicySettings)}

SCHEMA: dict[str, Any] = {
    "name": _str(),
    "description": _str(),
    "extends": _str(),
    "trial": _str(),  # the published cohort the config is modelled on (vpop/data/published_cohorts.csv)
    "allow_outside_range": _bool,  # model parameters outside the table's plausible range: warn, not refuse
    "cohort": {"n": _int(1), "seed": _int(0), "batch_size": _int(1)},
    "schedule": {"days": _num(0.25, 365.0), "assessment_hours": _num(0.5, 24.0)},
    "solver": {
        "substeps": _int(1),
        "dtype": _str(("float32", "float64")),
        "rtol": _num(0.0, low_open=True),
        "atol": _num(0.0, low_open=True),
    },
    "product": {
        "name": _str(),
        "target": _str(("CD19", "BCMA", "CD22", "other")),
        "costimulation": _str(("CD28", "4-1BB", "other")),
        "dose_per_kg": _optional(_num(0.0, low_open=True)),
        "flat_dose": _optional(_num(0.0, low_open=True)),
        "lymphodepletion": {
            "fludarabine_mg_m2": _num(0.0, 100.0),
            "cyclophosphamide_mg_m2": _num(0.0, 2000.0),
            "days": _int(0),
        },
        "parameters": "PARAMS",
    },
    "population": {
        "disease": _str(("LBCL", "DLBCL", "B-ALL", "MCL", "CLL", "FL", "MM")),
        "female_fraction": _num(0.0, 1.0),
        "covariates": "COVARIATES",
        "correlations": "CORRELATIONS",
        "variability": "VARIABILITY",
        "variability_correlations": "CORRELATIONS",
        "patients_file": _str(),  # CSV/Parquet patient table, relative to the config (vpop.population.patient_table)
    },
    "parameters": "PARAMS",
    "policy": "POLICY",
    "grading": {"scales": "SCALES"},
}

_MARGINAL = {
    "dist": _str(("normal", "lognormal")),
    "center": _num(),
    "spread": _num(0.0),
    "low": _num(),
    "high": _num(),
}


class Checker:
    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, msg: str):
        raise ConfigError(f"{self.source}: {where}: {msg}")

    def mapping(self, data, schema, where):
        if not isinstance(data, dict):
            self.fail(where or "top level", f"expected a mapping of keys, got {type(data).__name__}")
        out = {}
        for key, value in data.items():
            path = f"{where}.{key}" if where else str(key)
            if key not in schema:
                allowed = ", ".join(schema)
                self.fail(path, f"unknown key {key!r} (check the spelling); allowed keys here: {allowed}")
            out[key] = self.value(value, schema[key], path)
        return out

    def value(self, value, spec, path):
        if isinstance(spec, dict):
            return self.mapping(value, spec, path)
        if spec == "PARAMS":
            return self.params(value, path)
        if spec == "COVARIATES":
            return self.covariates(value, path)
        if spec == "CORRELATIONS":
            return self.correlations(value, path)
        if spec == "VARIABILITY":
            return self.variability(value, path)
        if spec == "POLICY":
            return self.policy(value, path)
        if spec == "SCALES":
            return self.scales(value, path)
        try:
            return spec(value)
        except ValueError as err:
            self.fail(path, f"got {value!r}; allowed: {err}")

    def params(self, value, path):
        if not isinstance(value, dict):
            self.fail(path, "expected a mapping of parameter name to value")
        out = {}
        for name, v in value.items():
            if name not in TABLE:
                self.fail(f"{path}.{name}", "unknown model parameter (the names are listed in docs/model.md)")
            # physically possible values only; the plausible range is checked once the whole config is known
            out[name] = self.value(v, _num(0.0, 1.0 if is_fraction(name) else None), f"{path}.{name}")
        return out

    def covariates(self, value, path):
        if not isinstance(value, dict):
            self.fail(path, "expected a mapping of covariate name to its distribution")
        out = {}
        for name, spec in value.items():
            if name not in COVARIATES:
                self.fail(f"{path}.{name}", f"unknown covariate; allowed: {', '.join(COVARIATES)}")
            m = self.mapping(spec, _MARGINAL, f"{path}.{name}")
            lo, hi = COVARIATE_LIMITS[name]
            for key in ("center", "low", "high"):
                if key in m and not lo <= m[key] <= hi:
                    self.fail(f"{path}.{name}.{key}", f"got {_plain(m[key])}; allowed: a value from {_plain(lo)} to "
                              f"{_plain(hi)} (the covariate is clipped to [low, high], so these bound every patient)")
            out[name] = m
        return out

    def correlations(self, value, path):
        if not isinstance(value, list):
            self.fail(path, "expected a list of [name, name, correlation] triples")
        out = []
        for i, item in enumerate(value):
            where = f"{path}[{i}]"
            if not (isinstance(item, list) and len(item) == 3):
                self.fail(where, f"got {item!r}; allowed: [name, name, correlation between -1 and 1]")
            a, b, r = item
            r = self.value(r, _num(-1.0, 1.0), where)
            out.append([a, b, r])
        return out

    def variability(self, value, path):
        if not isinstance(value, dict):
            self.fail(path, "expected a mapping of parameter name to the SD of its log-normal random effect")
        out = {}
        for name, v in value.items():
            if name not in TABLE and name not in SENSITIVITIES:
                self.fail(f"{path}.{name}", f"not a model parameter nor one of {', '.join(SENSITIVITIES)}")
            out[name] = self.value(v, _num(0.0, 3.0), f"{path}.{name}")
        return out

    def policy(self, value, path):
        if isinstance(value, str):
            value = {"preset": value}
        if not isinstance(value, dict):
            self.fail(path, "expected a preset name or a mapping")
        out = {}
        for key, v in value.items():
            where = f"{path}.{key}"
            if key == "preset":
                out[key] = self.value(v, _str(tuple(PRESETS)), where)
            elif key == "name":
                out[key] = self.value(v, _str(), where)
            elif key in _POLICY_FIELDS:
                default = _POLICY_FIELDS[key].default
                if key == "prophylactic_dex_days":
                    out[key] = tuple(self.value(v, _num_list, where))
                elif key == "crs_trigger_scale":
                    out[key] = self.value(v, _str(CRS_TRIGGER_SCALES), where)
                elif key == "icans_trigger_scale":
                    out[key] = self.value(v, _str(ICANS_TRIGGER_SCALES), where)
                elif isinstance(default, bool):
                    out[key] = self.value(v, _bool, where)
                else:
                    out[key] = self.value(v, _optional(_num(0.0)), where)
            else:
                allowed = ", ".join(["preset", *(_POLICY_FIELDS)])
                self.fail(where, f"unknown key {key!r} (check the spelling); allowed keys here: {allowed}")
        return out

    def scales(self, value, path):
        allowed = sorted(set(CRS_SCALES) | set(NEURO_SCALES))
        if value == "all":
            return ["all"]
        if not isinstance(value, list) or not all(isinstance(s, str) and s in allowed for s in value):
            self.fail(path, f"got {value!r}; allowed: 'all' or a list of: {', '.join(allowed)}")
        if "astct" not in value:
            self.fail(path, "the list must include 'astct' (management policies act on ASTCT grades)")
        return value


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one YAML mapping (PyYAML would keep the last one silently)."""

    def __init__(self, key, line: int, first_line: int):
        super().__init__(f"line {line}: duplicate key {key!r} (first given at line {first_line}); "
                         "each key may appear once in a mapping")
        self.key, self.line, self.first_line = key, line, first_line


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and also reads 2e6 and 2.0e6 as floats (YAML 1.2 style)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges may be overridden, by design
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader reports it itself
                    continue
                line = key_node.start_mark.line + 1
                if first is not None:
                    raise DuplicateKeyError(key, line, first)
                seen[key] = line
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def load_yaml_file(path, what: str = "config"):
    """A YAML file's contents; ConfigError naming the file when it is missing or not valid YAML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    try:
        return load_yaml(path.read_text())
    except DuplicateKeyError as err:
        raise ConfigError(f"{path}: {err}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: Path, chain=()) -> dict:
    data = load_yaml_file(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level: expected a mapping of keys")
    parent = data.get("extends")
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError(f"{path}: extends: got {parent!r}; allowed: a config file name")
        candidate = (path.parent / parent)
        if not candidate.is_file():
            candidate = shipped_config(parent)
        if not candidate.is_file():
            raise ConfigError(f"{path}: extends: {parent}: config file not found (looked beside {path.name} "
                              "and among the shipped configs)")
        if candidate.resolve() in chain:
            raise ConfigError(f"{path}: extends: {parent} extends itself (a cycle)")
        base = _read_yaml(candidate, chain + (path.resolve(),))
        Checker(str(candidate)).mapping(base, SCHEMA, "")
        data = _deep_merge(base, {k: v for k, v in data.items() if k != "extends"})
    return data


@dataclass(frozen=True)
class SimulationConfig:
    """A fully resolved, validated simulation config."""

    name: str
    description: str
    source: str
    n: int
    seed: int
    batch_size: int
    engine: EngineSettings
    dtype: str
    population: PopulationSpec
    disease: str
    product: dict
    parameters: dict[str, float]
    policy: PolicySettings
    trial: str | None = None  # the published cohort the config is modelled on (vpop.data.trial_scales)
    raw: dict = field(repr=False, default_factory=dict)

    def resolved_dict(self) -> dict:
        """The config as written to DIR/config.yaml: every value explicit."""
        out = copy.deepcopy(self.raw)
        out.pop("extends", None)
        out["cohort"] = {"n": self.n, "seed": self.seed, "batch_size": self.batch_size}
        pol = asdict(self.policy)
        pol["prophylactic_dex_days"] = list(pol["prophylactic_dex_days"])
        out["policy"] = pol
        return out


REQUIRED_SECTIONS = ("cohort", "schedule", "solver", "product", "population", "policy")


def _ld_intensity(ld: dict) -> float:
    """Lymphodepletion intensity relative to Flu 30 / Cy 500 mg/m2 x 3 days (= 1)."""
    flu = ld["fludarabine_mg_m2"] * ld["days"] / 90.0
    cy = ld["cyclophosphamide_mg_m2"] * ld["days"] / 1500.0
    return 0.5 * flu + 0.5 * cy


def config_from_dict(data: dict, source: str = "<config>") -> SimulationConfig:
    checker = Checker(source)
    clean = checker.mapping(data, SCHEMA, "")
    for section in REQUIRED_SECTIONS:
        if section not in clean:
            checker.fail(section, "missing required section")

    def need(sec, key):
        if key not in clean[sec]:
            checker.fail(f"{sec}.{key}", "missing required key")
        return clean[sec][key]

    product = clean["product"]
    dose_per_kg, flat = product.get("dose_per_kg"), product.get("flat_dose")
    if (dose_per_kg is None) == (flat is None):
        checker.fail("product", "give exactly one of dose_per_kg (cells/kg) or flat_dose (cells)")
    ld = product.get("lymphodepletion", {"fludarabine_mg_m2": 30.0, "cyclophosphamide_mg_m2": 500.0, "days": 3})
    for key in ("fludarabine_mg_m2", "cyclophosphamide_mg_m2", "days"):
        if key not in ld:
            checker.fail(f"product.lymphodepletion.{key}", "missing required key")

    pop = clean["population"]
    covs = pop.get("covariates", {})
    for name in COVARIATES:
        if name not in covs:
            checker.fail(f"population.covariates.{name}", "missing; every covariate needs a distribution")
        m = covs[name]
        for key in _MARGINAL:
            if key not in m:
                checker.fail(f"population.covariates.{name}.{key}", "missing required key")
        if m["low"] >= m["high"]:
            checker.fail(f"population.covariates.{name}", f"low ({m['low']}) must be below high ({m['high']})")
        if m["dist"] == "lognormal" and m["center"] <= 0:
            checker.fail(f"population.covariates.{name}.center", "a log-normal median must be > 0")

    def pairs(items, names, where):
        out = {}
        for i, (a, b, r) in enumerate(items):
            for x in (a, b):
                if x not in names:
                    checker.fail(f"{where}[{i}]", f"{x!r} is not one of: {', '.join(names)}")
            if a == b:
                checker.fail(f"{where}[{i}]", "a correlation needs two different names")
            out[(a, b)] = r
        return out

    allow = clean.get("allow_outside_range", False)
    check_parameter_ranges(product.get("parameters", {}), "product.parameters", allow, source)
    check_parameter_ranges(clean.get("parameters", {}), "parameters", allow, source)
    if "trial" in clean:
        from vpop.data import cohort_names

        if clean["trial"] not in cohort_names():
            checker.fail("trial", f"got {clean['trial']!r}; allowed: a cohort of the published-cohort table "
                         f"(vpop/data/published_cohorts.csv): {', '.join(cohort_names())}")
    if "patients_file" in pop and Path(source).is_file():
        table = Path(pop["patients_file"])
        table = table if table.is_absolute() else Path(source).parent / table
        if not table.is_file():
            checker.fail("population.patients_file", f"{table}: patient table not found (a path relative to "
                         "the config's folder, or absolute)")

    variability = pop.get("variability", {})
    spec = PopulationSpec(
        marginals={n: Marginal(**covs[n]) for n in COVARIATES},
        correlations=pairs(pop.get("correlations", []), COVARIATES, "population.correlations"),
        omega=variability,
        omega_correlations=pairs(pop.get("variability_correlations", []), tuple(variability), "population.variability_correlations"),
        female_fraction=pop.get("female_fraction", 0.5),
        dose_per_kg=dose_per_kg,
        flat_dose=flat,
        ld_intensity=_ld_intensity(ld),
        product_parameters=product.get("parameters", {}),
    )

    pol_data = dict(clean["policy"])
    preset = pol_data.pop("preset", "asco2021")
    policy = with_overrides(PRESETS[preset], pol_data)

    scales = clean.get("grading", {}).get("scales", ["all"])
    if scales == ["all"]:
        crs, neuro = tuple(CRS_SCALES), tuple(NEURO_SCALES)
    else:
        crs = tuple(s for s in scales if s in CRS_SCALES)
        neuro = tuple(s for s in scales if s in NEURO_SCALES)
    solver = clean["solver"]
    schedule = clean["schedule"]
    engine = EngineSettings(
        days=need("schedule", "days"),
        assessment_hours=schedule.get("assessment_hours", 6.0),
        substeps=solver.get("substeps", EngineSettings.substeps),
        rtol=solver.get("rtol", 0.1),
        atol=solver.get("atol", 0.05),
        crs_scales=crs,
        neuro_scales=neuro,
    )
    check_scales(policy, crs, neuro, f"{source}: policy")
    cohort = clean["cohort"]
    return SimulationConfig(
        name=clean.get("name", Path(source).stem),
        description=clean.get("description", ""),
        source=source,
        n=need("cohort", "n"),
        seed=cohort.get("seed", 0),
        batch_size=cohort.get("batch_size", 4096),
        engine=engine,
        dtype=solver.get("dtype", "float32"),
        population=spec,
        disease=pop.get("disease", "LBCL"),
        product=product,
        parameters=clean.get("parameters", {}),
        policy=policy,
        trial=clean.get("trial"),
        raw=clean,
    )


def load_config(path: str | Path | None = None) -> SimulationConfig:
    """Load and validate a config file or shipped preset by name (default: the shipped default.yaml)."""
    path = resolve_config_path(path)
    data = _read_yaml(path)
    return config_from_dict(data, str(path))

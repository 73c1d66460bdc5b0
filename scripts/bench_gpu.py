"""GPU benchmark: one command, one call, correctness first (issue 16).

    python scripts/bench_gpu.py              # the device run: < 8 min on an H200
    python scripts/bench_gpu.py --smoke      # tiny sizes on the CPU (the tested mode)

On the default JAX device, in this order:

(a) correctness: patients 0..N-1 (N = 10,000) in float32 against the same
    patients on the CPU in float64 (a subprocess with JAX_PLATFORMS=cpu and
    x64, so the float64 switch cannot leak into the float32 run). Passes when,
    for every grading scale, >= 99.9 % of patients get the identical maximum
    grade. A failed check stops the run (exit 1): timing wrong numbers is pointless.
(b) vpop at 10k, 100k, 1M and 10M patients (ascending): the population sampler, the
    engine (ETDRK4, grading under every scale, the config's management) and a
    per-patient reduction to maximum grades, in device batches of at most
    `--max-batch` patients (memory is bounded by the batch, not by N). Compile
    is timed apart; patients/s; peak device memory (`memory_stats()`); a
    `simulate_stream` run (Parquet tables included) at 100k for the end-to-end rate.
(c) plain `jit(vmap(diffeqsolve))` Tsit5 + PID on the same model and device
    (scripts/diffrax_baseline.py, shared with scripts/bench_simulate.py).
(d) one value-and-gradient of the fitting log density for 100 and 1,000
    patients and 20 NUTS iterations (subprocess, x64 as scripts/bench_fit.py;
    an import or API failure is recorded as a skip with its reason).
(e) bench_gpu.json and bench_gpu.md under $OUT (default ./bench-gpu-out); the
    table is printed last.

Floating-point operations and bytes per patient-step (one 6-h assessment:
6 ETDRK4 sub-steps, hourly charting, grading, management) come from XLA's cost
analysis of the compiled engine (`compile().cost_analysis()`), with the loop
trip counts XLA leaves out put back (see `cost_per_patient_step`). Multiplied
by the steps per second this gives the fraction of the H200's FP32
(67 TFLOP/s) and memory-bandwidth (4.8 TB/s) limits.

A wall-clock budget (`--budget-s`, default 420 s) guards the 8-minute call:
a stage predicted not to fit is skipped and the reason recorded. Order: (a),
the cost analysis, (b), (c), (d), then the end-to-end streamed run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
H200_FP32_FLOPS = 67e12
H200_BYTES_PER_S = 4.8e12
# 2-core development CPU, vpop 100k patients (docs/performance.md, "Simulation").
CPU_2CORE_PATIENTS_PER_S = 4974.0
AGREEMENT = 0.999

FULL = {"agreement_n": 10_000, "sizes": [10_000, 100_000, 1_000_000, 10_000_000], "max_batch": 1_000_000,
        "stream_n": 100_000, "diffrax_sizes": [100_000], "fit_sizes": [100, 1000], "nuts_iterations": 20,
        "budget_s": 420.0}
SMOKE = {"agreement_n": 200, "sizes": [200, 600], "max_batch": 200, "stream_n": 400, "diffrax_sizes": [32],
         "fit_sizes": [4], "nuts_iterations": 0, "budget_s": 300.0}  # NUTS compiles for minutes on 2 cores


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------- engine pieces


def _config():
    from vpop.run.config import load_config

    return load_config(None)


def _settings(config):
    return replace(config.engine, record_rows=False)


def scale_columns(settings) -> list[str]:
    """Column names of the max-grade matrix, in order: crs scales, then neurological scales."""
    return [f"crs_{s}" for s in settings.crs_scales] + [f"icans_{s}" for s in settings.neuro_scales]


def max_grades(rows: dict, summary: dict, settings):
    """(N, scales) maximum grade over the rows while alive, and (N,) solver status: the reduction kept per patient."""
    import jax.numpy as jnp

    alive = rows["alive"]
    cols = [rows[f"crs_grade_{s}"] for s in settings.crs_scales] + \
           [rows[f"icans_grade_{s}"] for s in settings.neuro_scales]
    stacked = jnp.stack([jnp.max(jnp.where(alive, g, 0), axis=1) for g in cols], axis=1)
    return stacked.astype(jnp.int8), summary["solver_status"]


class Cohort:
    """vpop in device batches: sample, run the engine, reduce to max grades; only the reduction leaves the device."""

    def __init__(self, config, dtype_name: str, perturb: tuple[str, float] | None = None):
        import jax
        import jax.numpy as jnp

        from vpop.engine import course
        from vpop.population.sampler import PopulationSampler
        from vpop.run import cohort as cohort_mod

        self.config, self.settings = config, _settings(config)
        self.dtype = jnp.float64 if dtype_name == "float64" else jnp.float32
        self.sampler = cohort_mod.compiled_sampler(PopulationSampler(config.population, config.parameters),
                                                   self.dtype)
        self.policy = config.policy.to_arrays(self.dtype)
        self.jitted = course.compiled_batch(self.settings)
        self.perturb = perturb
        settings = self.settings
        self.reduce = jax.jit(lambda rows, summ: max_grades(rows, summ, settings))
        self.compile_s: dict[int, float] = {}

    def inputs(self, ids, seed: int):
        from vpop.population.sampler import patient_keys
        from vpop.run.cohort import split_keys

        pop_keys, event_keys = split_keys(patient_keys(seed, ids))
        _, p = self.sampler(pop_keys)
        if self.perturb is not None:  # the agreement check's negative control
            name, factor = self.perturb
            if name not in p:
                raise SystemExit(f"--perturb: no parameter {name!r}; allowed: {', '.join(sorted(p))}")
            p = dict(p, **{name: p[name] * factor})
        return p, event_keys

    def executable(self, batch: int, seed: int = 0):
        """The compiled engine for this batch shape (shared with vpop.run's executables cache)."""
        from vpop.run.cohort import executable, padded_ids

        p, keys = self.inputs(padded_ids(0, batch, batch), seed)
        if batch not in self.compile_s:
            t0 = time.perf_counter()
            exe = executable(self.jitted, self.settings, p, keys, self.policy)
            self.compile_s[batch] = time.perf_counter() - t0
            # first calls of the sampler and the reduction compile too: outside the timing
            import jax
            jax.block_until_ready(self.reduce(*exe(p, keys, self.policy)))
        return executable(self.jitted, self.settings, p, keys, self.policy)

    def run(self, n: int, batch: int, seed: int = 0, keep: bool = False) -> dict:
        """Patients 0..n-1 in batches of `batch` (the last one padded). Returns timings, counts, grades if `keep`."""
        import jax

        from vpop.run.cohort import padded_ids

        exe = self.executable(batch, seed)
        n_cols = len(scale_columns(self.settings))
        counts = np.zeros((n_cols, 6), np.int64)  # patients per (scale, max grade)
        status = np.zeros(3, np.int64)
        kept = []
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            take = min(batch, n - start)
            p, keys = self.inputs(padded_ids(start, n, batch), seed)
            grades, st = self.reduce(*exe(p, keys, self.policy))
            grades, st = np.asarray(grades)[:take], np.asarray(st)[:take]
            for j in range(n_cols):
                counts[j] += np.bincount(grades[:, j], minlength=6)[:6]
            status += np.bincount(st, minlength=3)[:3]
            if keep:
                kept.append(grades)  # np.asarray above waited for the batch: nothing is left in flight
        run_s = time.perf_counter() - t0
        out = {"n": n, "batch": batch, "batches": -(-n // batch), "compile_s": self.compile_s[batch],
               "run_s": run_s, "patients_per_s": n / run_s, "grade_counts": counts.tolist(),
               "status_counts": status.tolist()}
        if keep:
            out["max_grades"] = np.concatenate(kept)
        return out


# ----------------------------------------------------------------------------- device facts


def device_memory() -> dict:
    """Bytes in use and peak bytes in use on the default device, where the backend reports them."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return {k: int(stats[k]) for k in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit") if k in stats}


def _cost(lowered, compiled=None) -> dict:
    c = (compiled if compiled is not None else lowered).cost_analysis()
    c = c[0] if isinstance(c, (list, tuple)) else (c or {})
    return {k: float(c.get(k, 0.0)) for k in ("flops", "bytes accessed", "transcendentals")}


def cost_per_patient_step(cohort: Cohort, batch: int) -> dict:
    """XLA's flops and bytes of the engine per patient and assessment step, loop trip counts applied.

    XLA's cost analysis counts a loop body once. The engine is a scan over
    assessments (checked: the same count at 28 and 14 days) around a loop over
    chart marks around a loop over sub-steps, so one pass of the scan body
    holds one ETDRK4 step and one charting; the other (substeps - 1) steps and
    (marks - 1) chartings are added from the costs of `etdrk4_step` and
    `interval_signs` compiled alone. Flops and bytes come from the compiled
    programs on this device (bytes after fusion); `hlo_flops_per_patient_step`
    is the same sum over the unoptimised HLO (backend-independent flops).
    """
    import jax
    import jax.numpy as jnp

    from vpop.engine import course
    from vpop.model import equations as model
    from vpop.observation import readouts
    from vpop.run.cohort import executable, padded_ids
    from vpop.solver.etdrk import etdrk4_step

    t0 = time.perf_counter()
    s = cohort.settings
    p, keys = cohort.inputs(padded_ids(0, batch, batch), 0)
    exe = executable(course.compiled_batch(s), s, p, keys, cohort.policy)  # already compiled by the run
    low = course.compiled_batch(s).lower(p, keys, cohort.policy)
    half = replace(s, days=s.days / 2)
    low_half = course.compiled_batch(half).lower(p, keys, cohort.policy)
    counted_once = abs(_cost(low)["flops"] - _cost(low_half)["flops"]) <= 1e-6 * max(_cost(low)["flops"], 1.0)

    y = model.initial_state(p)
    t, h = jnp.asarray(1.0, cohort.dtype), jnp.asarray(s.dt / s.substeps, cohort.dtype)
    step = jax.jit(lambda t, y, h, p: etdrk4_step(model.production_loss, t, y, h, p)).lower(t, y, h, p)
    obs = jax.jit(readouts.interval_signs).lower(t, y, p)
    pieces = {"engine": (low, exe), "step": (step, step.compile()), "chart": (obs, obs.compile())}
    compiled = {k: _cost(lo, co) for k, (lo, co) in pieces.items()}
    hlo = {k: _cost(lo) for k, (lo, _) in pieces.items()}
    extra_steps, extra_marks = s.substeps - 1, s.chart_marks - 1

    def per_step(c, key):
        if not counted_once:  # a backend that multiplies by trip counts: the engine alone is the answer
            return c["engine"][key] / batch / s.n_rows
        return (c["engine"][key] + extra_steps * c["step"][key] + extra_marks * c["chart"][key]) / batch

    return {"flops_per_patient_step": per_step(compiled, "flops"),
            "bytes_per_patient_step": per_step(compiled, "bytes accessed"),
            "transcendentals_per_patient_step": per_step(compiled, "transcendentals"),
            "hlo_flops_per_patient_step": per_step(hlo, "flops"),
            "pieces_per_patient": {k: {m: v / batch for m, v in c.items()} for k, c in compiled.items()},
            "steps_per_patient": s.n_rows, "substeps_per_step": s.substeps, "chart_marks_per_step": s.chart_marks,
            "loop_body_counted_once": counted_once, "batch": batch, "seconds": time.perf_counter() - t0}


def roofline(row: dict, cost: dict | None) -> None:
    if not cost or not row.get("patients_per_s"):
        return
    steps_per_s = row["patients_per_s"] * cost["steps_per_patient"]
    row["flop_per_s"] = steps_per_s * cost["flops_per_patient_step"]
    row["bytes_per_s"] = steps_per_s * cost["bytes_per_patient_step"]
    row["fraction_fp32_peak"] = row["flop_per_s"] / H200_FP32_FLOPS
    row["fraction_bandwidth"] = row["bytes_per_s"] / H200_BYTES_PER_S


# ----------------------------------------------------------------------------- correctness


def agreement(fast: np.ndarray, ref: np.ndarray, columns: list[str], threshold: float = AGREEMENT) -> dict:
    """Per scale, the fraction of patients with the identical maximum grade; passes if every one >= threshold."""
    fast, ref = np.asarray(fast), np.asarray(ref)
    if fast.shape != ref.shape or fast.shape[1] != len(columns):
        raise ValueError(f"grade matrices differ in shape: {fast.shape} vs {ref.shape} ({len(columns)} scales)")
    same = fast == ref
    per = {c: float(same[:, j].mean()) for j, c in enumerate(columns)}
    return {"n": int(fast.shape[0]), "per_scale": per, "all_scales": float(same.all(axis=1).mean()),
            "min_scale": min(per, key=per.get), "patients_differing": int((~same.all(axis=1)).sum()),
            "threshold": threshold, "passed": bool(all(v >= threshold for v in per.values()))}


def start_reference(n: int, seed: int, path: Path) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_X64="1")
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--part", "reference", "--n", str(n),
                             "--seed", str(seed), "--grades-file", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def part_reference(n: int, seed: int, path: Path) -> dict:
    """Float64 on the CPU: max grades of patients 0..n-1 written to `path` (.npy)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    cfg = _config()
    cfg = replace(cfg, dtype="float64")
    with jax.default_device(jax.devices("cpu")[0]):
        cohort = Cohort(cfg, "float64")
        r = cohort.run(n, min(n, 2048), seed=seed, keep=True)
    np.save(path, r.pop("max_grades"))
    r.update(device=str(jax.devices("cpu")[0]), dtype="float64")
    return r


# ----------------------------------------------------------------------------- fitting


def part_fit(sizes: list[int], nuts_iterations: int) -> dict:
    """Gradient of the fitting log density (100, 1,000 patients) and a short NUTS run, as scripts/bench_fit.py."""
    import jax

    jax.config.update("jax_enable_x64", True)
    from numpyro.infer.util import initialize_model

    from vpop.fitting import infer, synthetic
    from vpop.fitting import model as fm
    try:  # the statistical model is moving out of fitting.model
        from vpop.fitting.statistical_model import numpyro_model
    except ImportError:
        numpyro_model = fm.numpyro_model

    sys.path.insert(0, str(HERE))
    from bench_fit import FREE, OMEGA, TIMES, TRUTH

    cfg = _config()
    out = {"device": str(jax.devices()[0]), "free": list(FREE), "gradients": []}
    problems = {}
    for n in sizes:
        t0 = time.perf_counter()
        data, _ = synthetic.simulate_dataset(cfg, n, FREE, TRUTH, OMEGA, 0.2, TIMES,
                                             ["car_t", "il6", "crp", "ferritin"], seed=11, lloq={"il6": 10.0})
        problem = fm.build_problem(data, cfg, FREE, fm.GridSettings())
        problems[n] = problem
        info = initialize_model(jax.random.PRNGKey(0), numpyro_model, model_args=(problem,),
                                model_kwargs={"parameterisation": "centred"})
        vg = jax.jit(jax.value_and_grad(info.potential_fn))
        x = info.param_info.z
        t1 = time.perf_counter()
        jax.block_until_ready(vg(x))
        t2 = time.perf_counter()
        reps = 5
        for _ in range(reps):
            jax.block_until_ready(vg(x))
        t3 = time.perf_counter()
        out["gradients"].append({"patients": n, "observations": int(data.n_observations()),
                                 "data_s": t1 - t0, "compile_s": t2 - t1, "gradient_ms": (t3 - t2) / reps * 1e3})
    if nuts_iterations <= 0:
        out["nuts"] = {"skipped": "no NUTS iterations asked for"}
        return out
    n0 = sizes[0]
    warm = nuts_iterations // 2
    fit = infer.run_nuts(problems[n0], chains=1, warmup=warm, draws=nuts_iterations - warm,
                         parameterisation="centred")
    d = fit.diagnostics
    out["nuts"] = {"patients": n0, "chains": 1, "warmup": warm, "draws": nuts_iterations - warm,
                   "seconds": fit.seconds, "seconds_per_iteration": fit.seconds / nuts_iterations,
                   "mean_leapfrog_steps": float(d.get("mean_leapfrog_steps", float("nan"))),
                   "note": "includes compiling the sampler"}
    return out


def run_part_subprocess(part: str, args: list[str], timeout: float, env: dict | None = None) -> dict:
    try:
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--part", part, *args],
                             capture_output=True, text=True, timeout=max(timeout, 1.0), env=env)
    except subprocess.TimeoutExpired:
        return {"skipped": f"{part}: did not finish within the remaining budget ({timeout:.0f} s)"}
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        return {"skipped": f"{part}: exit {out.returncode}: {' | '.join(tail)}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report


def _fmt_n(n) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else (f"{n / 1e3:g}k" if n >= 1000 else str(n))


def _gib(b) -> str:
    return "-" if b is None else f"{b / 2**30:.2f} GiB"


def table(result: dict) -> str:
    lines = [f"# vpop GPU benchmark ({result['meta']['mode']}): {result['meta']['device']}, "
             f"jax {result['meta']['jax']}, {result['meta']['date']}", ""]
    c = result.get("correctness")
    if c:
        worst = c["min_scale"]
        lines.append(f"Correctness: {c['n']} patients, {c['device_dtype']} on {c['device']} vs float64 on the CPU: "
                     f"identical max grades {100 * c['all_scales']:.2f}% (all scales at once), worst scale "
                     f"{worst} {100 * c['per_scale'][worst]:.2f}% -> {'PASS' if c['passed'] else 'FAIL'} "
                     f"(>= {100 * c['threshold']:.1f}% on every scale)")
    cost = result.get("cost")
    if cost:
        lines.append(f"Per patient-step (one 6-h assessment, {cost['substeps_per_step']} ETDRK4 sub-steps): "
                     f"{cost['flops_per_patient_step']:.3g} flop, {cost['bytes_per_patient_step']:.3g} bytes "
                     f"(XLA cost analysis); {cost['steps_per_patient']} steps per patient")
    lines += ["", "| run | N | batch | compile s | run s | patients/s | peak device mem | % FP32 peak | % HBM BW |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in result.get("vpop", []):
        if "skipped" in r:
            lines.append(f"| vpop | {_fmt_n(r['n'])} | | | | skipped: {r['skipped']} | | | |")
            continue
        lines.append(f"| vpop | {_fmt_n(r['n'])} | {_fmt_n(r['batch'])} | {r['compile_s']:.1f} | {r['run_s']:.2f} | "
                     f"{r['patients_per_s']:,.0f} | {_gib(r.get('peak_device_bytes'))} | "
                     f"{100 * r.get('fraction_fp32_peak', float('nan')):.2f} | "
                     f"{100 * r.get('fraction_bandwidth', float('nan')):.1f} |")
    s = result.get("stream")
    if s and "skipped" not in s:
        lines.append(f"| vpop simulate_stream (Parquet) | {_fmt_n(s['n'])} | {_fmt_n(s['chunk_size'])} | "
                     f"{s['compile_s']:.1f} | {s['run_s']:.2f} | {s['patients_per_s']:,.0f} | | | |")
    elif s:
        lines.append(f"| vpop simulate_stream | | | | | skipped: {s['skipped']} | | | |")
    for d in result.get("diffrax", []):
        if "skipped" in d:
            lines.append(f"| diffrax Tsit5+PID | {_fmt_n(d['n'])} | | | | skipped: {d['skipped']} | | | |")
            continue
        lines.append(f"| diffrax Tsit5+PID ({d['median_steps']:.0f} steps) | {_fmt_n(d['n'])} | {_fmt_n(d['n'])} | "
                     f"{d['compile_s']:.1f} | {d['run_s']:.2f} | {d['n'] / d['run_s']:,.0f} | | | |")
    f = result.get("fit", {})
    lines.append("")
    if "skipped" in f:
        lines.append(f"Fitting: skipped: {f['skipped']}")
    elif f:
        g = ", ".join(f"{x['patients']} patients {x['gradient_ms']:.1f} ms" for x in f["gradients"])
        nuts = f["nuts"]
        if "skipped" in nuts:
            lines.append(f"Fitting: one log-density gradient: {g}; NUTS skipped: {nuts['skipped']}")
        else:
            lines.append(f"Fitting: one log-density gradient: {g}; NUTS {nuts['warmup']}+{nuts['draws']} iterations "
                         f"({nuts['patients']} patients): {nuts['seconds']:.1f} s with compile")
    t = result.get("targets", {})
    if t:
        lines.append("Targets: " + "; ".join(f"{k}: {v}" for k, v in t.items()))
    for reason in result.get("skipped", []):
        lines.append(f"Skipped: {reason}")
    lines.append(f"Total {result['total_s']:.0f} s.")
    return "\n".join(lines)


def targets(result: dict) -> dict:
    out = {}
    vp = {r["n"]: r for r in result.get("vpop", []) if "skipped" not in r}
    if 1_000_000 in vp:
        r = vp[1_000_000]
        out["1M <= 10 s"] = f"{r['run_s']:.1f} s ({'met' if r['run_s'] <= 10 else 'missed'})"
        x = r["patients_per_s"] / CPU_2CORE_PATIENTS_PER_S
        out[">= 50x the 2-core CPU"] = f"{x:.0f}x ({'met' if x >= 50 else 'missed'})"
    for d in result.get("diffrax", []):
        if "skipped" not in d and d["n"] in vp:
            x = vp[d["n"]]["patients_per_s"] * d["run_s"] / d["n"]
            out[f">= 10x diffrax at {_fmt_n(d['n'])}"] = f"{x:.1f}x ({'met' if x >= 10 else 'missed'})"
    if 10_000_000 in vp:
        out["10M streamed"] = f"done, peak device memory {_gib(vp[10_000_000].get('peak_device_bytes'))}"
    return out


def write(result: dict, out_dir: Path) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_gpu.json").write_text(json.dumps(result, indent=2, default=float) + "\n")  # first: kept if the table fails
    text = table(result)
    (out_dir / "bench_gpu.md").write_text(text + "\n")
    return text


# ----------------------------------------------------------------------------- main


def _sizes(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (well under a minute)")
    ap.add_argument("--out", default=None, help="output folder (default: $OUT, else ./bench-gpu-out)")
    ap.add_argument("--sizes", default=None, help="vpop cohort sizes, comma-separated (default 10k,100k,1M,10M)")
    ap.add_argument("--max-batch", type=int, default=None, help="patients per device call (default 1,000,000)")
    ap.add_argument("--agreement-n", type=int, default=None, help="patients in the correctness check (default 10,000)")
    ap.add_argument("--diffrax-sizes", default=None, help="diffrax cohort sizes (default 100k)")
    ap.add_argument("--stream-n", type=int, default=None, help="simulate_stream size, 0 to skip (default 100k)")
    ap.add_argument("--fit-sizes", default=None, help="fitting gradient sizes, empty to skip (default 100,1000)")
    ap.add_argument("--nuts-iterations", type=int, default=None, help="NUTS iterations, warm-up included (default 20)")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-clock budget in seconds (default 420)")
    ap.add_argument("--only-correctness", action="store_true", help="stop after the correctness check")
    ap.add_argument("--perturb", default=None, metavar="PARAM=FACTOR",
                    help="multiply a parameter in the device run only (a negative control: the check must fail)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--part", choices=("reference", "fit"), help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--grades-file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    plan = dict(SMOKE if args.smoke else FULL)
    for key, value in (("sizes", args.sizes and _sizes(args.sizes)), ("max_batch", args.max_batch),
                       ("agreement_n", args.agreement_n), ("diffrax_sizes", args.diffrax_sizes and _sizes(args.diffrax_sizes)),
                       ("stream_n", args.stream_n), ("nuts_iterations", args.nuts_iterations),
                       ("budget_s", args.budget_s)):
        if value is not None:
            plan[key] = value
    if args.fit_sizes is not None:
        plan["fit_sizes"] = _sizes(args.fit_sizes)

    if args.part == "reference":
        print(json.dumps(part_reference(args.n, args.seed, Path(args.grades_file)), default=float))
        return 0
    if args.part == "fit":
        print(json.dumps(part_fit(plan["fit_sizes"], plan["nuts_iterations"]), default=float))
        return 0

    if args.smoke:
        os.environ["JAX_PLATFORMS"] = "cpu"  # before jax is imported
    perturb = None
    if args.perturb:
        name, _, factor = args.perturb.partition("=")
        try:
            perturb = (name.strip(), float(factor))
        except ValueError:
            print(f"--perturb: got {args.perturb!r}; allowed: PARAM=FACTOR, e.g. car_prolif_max=1.5", file=sys.stderr)
            return 2
    out_dir = Path(args.out or os.environ.get("OUT") or "bench-gpu-out")

    t_start = time.perf_counter()

    def left() -> float:
        return plan["budget_s"] - (time.perf_counter() - t_start)

    def guarded(name: str, fn):
        """Run one stage; an error is recorded (the device call is one-shot: keep what was measured)."""
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - recorded in the JSON and the table
            result["skipped"].append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}")
            _log(f"{name} failed: {err!r}")
            return None

    tmp = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    ref_proc = start_reference(plan["agreement_n"], args.seed, tmp / "reference.npy")  # CPU, in parallel

    import jax
    import jaxlib

    import vpop

    dev = jax.devices()[0]
    result: dict = {
        "meta": {"mode": "smoke" if args.smoke else "full", "date": _dt.datetime.now().isoformat(timespec="seconds"),
                 "device": getattr(dev, "device_kind", str(dev)), "platform": dev.platform,
                 "devices": len(jax.devices()), "jax": jax.__version__,
                 "jaxlib": jaxlib.__version__, "vpop": vpop.__version__,
                 "python": platform.python_version(), "cpu_count": os.cpu_count(), "argv": sys.argv[1:],
                 "plan": plan, "limits": {"fp32_flop_per_s": H200_FP32_FLOPS, "bytes_per_s": H200_BYTES_PER_S},
                 "cpu_2core_patients_per_s": CPU_2CORE_PATIENTS_PER_S},
        "skipped": [],
    }
    config = _config()
    cohort = Cohort(config, "float32", perturb)
    columns = scale_columns(cohort.settings)
    result["meta"]["scales"] = columns

    # (a) correctness first
    n_ag = plan["agreement_n"]
    batch_ag = min(n_ag, plan["max_batch"])
    _log(f"(a) correctness: {n_ag} patients, float32 on {dev} vs float64 on the CPU")
    fast = cohort.run(n_ag, batch_ag, seed=args.seed, keep=True)
    stdout, stderr = ref_proc.communicate(timeout=max(left(), 60))
    if ref_proc.returncode != 0:
        raise RuntimeError(f"float64 reference failed: {stderr.strip()[-2000:]}")
    ref_info = json.loads(stdout.strip().splitlines()[-1])
    ref = np.load(tmp / "reference.npy")
    check = agreement(fast.pop("max_grades"), ref, columns)
    check.update(device=str(dev), device_dtype="float32", reference=ref_info, perturb=args.perturb,
                 device_run={k: fast[k] for k in ("compile_s", "run_s", "status_counts")})
    result["correctness"] = check
    if not check["passed"] or args.only_correctness:
        result["total_s"] = time.perf_counter() - t_start
        if not check["passed"]:
            result["skipped"].append("timings: the correctness check failed")
        shutil.rmtree(tmp, ignore_errors=True)
        print(write(result, out_dir))
        return 0 if check["passed"] else 1

    # flops and bytes per patient-step
    _log("cost analysis")
    cost = guarded("cost analysis", lambda: cost_per_patient_step(cohort, batch_ag))
    result["cost"] = cost

    # (b) vpop, largest size last
    sizes = sorted(plan["sizes"])
    rows: dict[int, dict] = {}

    def vpop_size(n: int) -> None:
        batch = min(n, plan["max_batch"])
        best = max((r["patients_per_s"] for r in rows.values() if "skipped" not in r), default=None)
        predicted = (n / best if best else 0.0) + (0.0 if batch in cohort.compile_s else
                                                   max(cohort.compile_s.values(), default=0.0) * 1.5)
        if best and predicted > left():
            rows[n] = {"n": n, "skipped": f"predicted {predicted:.0f} s > {left():.0f} s left in the budget"}
            result["skipped"].append(f"vpop {n}: {rows[n]['skipped']}")
            return
        _log(f"(b) vpop {n} patients, batch {batch}")
        r = cohort.run(n, batch, seed=args.seed)
        mem = device_memory()
        r.update(peak_device_bytes=mem.get("peak_bytes_in_use"), device_bytes_in_use=mem.get("bytes_in_use"),
                 host_peak_rss_mb=_rss_mb())
        r["rates_grade3_astct"] = {c: sum(r["grade_counts"][j][3:]) / n for j, c in enumerate(columns)
                                   if c.endswith("_astct")}
        roofline(r, cost)
        rows[n] = r

    for n in sizes:
        if guarded(f"vpop {n}", lambda: vpop_size(n) or True) is None:
            rows[n] = {"n": n, "skipped": result["skipped"][-1]}

    # (c) diffrax on the same device
    sys.path.insert(0, str(HERE))

    def diffrax_run(n: int) -> dict:
        import jax.numpy as jnp

        import diffrax_baseline

        d = diffrax_baseline.time_solve(diffrax_baseline.sample_parameters(config, n, jnp.float32, args.seed))
        d["peak_device_bytes"] = device_memory().get("peak_bytes_in_use")
        if n in rows and "skipped" not in rows[n]:
            d["vpop_speedup"] = rows[n]["patients_per_s"] * d["per_patient_s"]
        return d

    result["diffrax"] = []
    for n in plan["diffrax_sizes"]:
        done = [d for d in result["diffrax"] if "skipped" not in d]
        if done and done[-1]["per_patient_s"] * n * 1.5 > left():
            d = {"n": n, "skipped": f"predicted {done[-1]['per_patient_s'] * n:.0f} s > {left():.0f} s left"}
            result["skipped"].append(f"diffrax {n}: {d['skipped']}")
        else:
            _log(f"(c) diffrax Tsit5+PID {n} patients")
            d = guarded(f"diffrax {n}", lambda: diffrax_run(n)) or {"n": n, "skipped": result["skipped"][-1]}
        result["diffrax"].append(d)

    # (d) fitting, in its own process (x64; the modules may be mid-refactor)
    if plan["fit_sizes"]:
        _log(f"(d) fitting gradients {plan['fit_sizes']}, {plan['nuts_iterations']} NUTS iterations")
        reserve = 30.0 if plan["stream_n"] else 0.0  # leave the streamed run a little time
        result["fit"] = run_part_subprocess(
            "fit", ["--fit-sizes", ",".join(map(str, plan["fit_sizes"])),
                    "--nuts-iterations", str(plan["nuts_iterations"])] + (["--smoke"] if args.smoke else []),
            timeout=left() - reserve,
            # this process holds its preallocated device pool: the child takes memory as it goes
            env=dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false"))
        if "skipped" in result["fit"]:
            result["skipped"].append(f"fit: {result['fit']['skipped']}")
    else:
        result["fit"] = {"skipped": "no fit sizes asked for"}

    # the end-to-end streamed run (tables and Parquet included), sharing the compiled engine
    ns = plan["stream_n"]
    if ns:
        batch = min(ns, plan["max_batch"])
        best = max((r["patients_per_s"] for r in rows.values() if "skipped" not in r), default=None)
        if best and 20 * ns / best > left():
            result["stream"] = {"skipped": f"predicted to exceed the {left():.0f} s left"}
        else:
            def stream() -> dict:
                from vpop.run.streaming import simulate_stream

                _log(f"(b) simulate_stream {ns} patients (Parquet, no observation rows)")
                t0 = time.perf_counter()
                s = simulate_stream(replace(config, batch_size=batch), tmp / "stream", n=ns, seed=args.seed,
                                    record_rows=False, chunk_size=batch)
                return {"n": ns, "chunk_size": batch, "compile_s": s.compile_seconds, "run_s": s.run_seconds,
                        "wall_s": time.perf_counter() - t0, "patients_per_s": ns / s.run_seconds,
                        "failed": s.n_failed, "flagged": s.n_inaccurate,
                        "note": "tables and Parquet writing included"}
            result["stream"] = guarded("simulate_stream", stream) or {"skipped": result["skipped"][-1]}
        if "skipped" in result["stream"] and not result["skipped"][-1].startswith("simulate_stream"):
            result["skipped"].append(f"simulate_stream: {result['stream']['skipped']}")

    result["vpop"] = [rows[n] for n in sorted(rows)]
    result["targets"] = targets(result)
    result["total_s"] = time.perf_counter() - t_start
    shutil.rmtree(tmp, ignore_errors=True)
    print(write(result, out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time sampling covariates and individual parameters (no simulation).

    python scripts/bench_population.py [N] [CONFIG]

Prints the wall time of drawing N patients (default 1,000,000) through
`PopulationSampler.individual` (jit + vmap, in chunks of 250,000), after a
warm-up call that compiles it, and the same through
`individual_from_covariates` (patient-table path).
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from vpop.run.config import load_config
from vpop.population.sampler import PopulationSampler, patient_keys


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    cfg = load_config(sys.argv[2] if len(sys.argv) > 2 else None)
    sampler = PopulationSampler(cfg.population, cfg.parameters)
    chunk = min(n, 250_000)
    draw = jax.jit(jax.vmap(sampler.individual))
    given = jax.jit(jax.vmap(sampler.individual_from_covariates))
    keys0 = patient_keys(cfg.seed, np.arange(chunk))
    t = time.perf_counter()
    cov0, _ = jax.block_until_ready(draw(keys0))
    table = {k: cov0[k] for k in ("age_years", "weight_kg", "tumor_burden", "ldh", "platelets0", "crp0",
                                  "ferritin0", "creatinine", "ang2_0", "nfl0", "female")}
    jax.block_until_ready(given(keys0, table))
    print(f"compile + first chunk: {time.perf_counter() - t:.2f} s")

    t = time.perf_counter()
    total = 0.0
    for start in range(0, n, chunk):
        keys = patient_keys(cfg.seed, np.arange(start, start + chunk))
        cov, p = jax.block_until_ready(draw(keys))
        total += float(jnp.sum(p["car_prolif_factor"]))
    elapsed = time.perf_counter() - t
    print(f"sampled {n:,} patients' covariates and parameters in {elapsed:.2f} s "
          f"({n / elapsed:,.0f} patients/s; {len(p)} parameters each) on {jax.devices()[0].platform}")

    t = time.perf_counter()
    for start in range(0, n, chunk):
        keys = patient_keys(cfg.seed, np.arange(start, start + chunk))
        jax.block_until_ready(given(keys, table))
    elapsed = time.perf_counter() - t
    print(f"patient-table path: {n:,} patients' parameters in {elapsed:.2f} s")


if __name__ == "__main__":
    main()

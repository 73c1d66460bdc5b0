"""NUTS chains in parallel over CPU devices give the draws of the vectorised (lock-step) run (slow: solves).

The device count must be set before JAX starts, so the comparison runs in a fresh process.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
from vpop.engine import sharding
granted = sharding.request_cpu_devices(2)
import numpy as np
from vpop.run.config import load_config
from vpop.fitting import infer, synthetic
from vpop.fitting import model as fm

cfg = load_config(None)
free = ("car_prolif_max", "crp_max")
data, _ = synthetic.simulate_dataset(cfg, 3, free, {"car_prolif_max": 1.3, "crp_max": 250.0},
                                     {"car_prolif_max": 0.15, "crp_max": 0.2}, 0.2, times=[1, 3],
                                     analytes=["car_t", "crp", "il6"], seed=3, lloq={"il6": 100.0})
problem = fm.build_problem(data, cfg, free, fm.GridSettings(substeps=1))
sharded = []  # the parallel run must go through the sharded segment (not a cached lock-step one)
wrapped = infer._over_chain_devices
infer._over_chain_devices = lambda run, d: sharded.append(d) or wrapped(run, d)
fits = {m: infer.run_nuts(problem, chains=2, warmup=6, draws=6, seed=0, parameterisation="centred", segment=6,
                          chain_method=m) for m in ("vectorized", "parallel")}
a, b = (np.asarray(fits[m].samples["theta"]) for m in ("vectorized", "parallel"))
later = sharding.request_cpu_devices(4)  # the backends are up: nothing changes
print(json.dumps({"sharded": sharded, "granted": granted, "later": later, "devices": infer.chain_devices(2),
                  "shape": list(b.shape), "max_rel": float(np.max(np.abs(a - b) / np.abs(a))),
                  "chains_differ": bool(np.any(np.abs(b[0] - b[1]) > 1e-6 * np.abs(b[0])))}))
"""


@pytest.mark.slow
def test_parallel_chains_match_the_vectorised_run():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["granted"] == 2 and out["later"] == 2 and out["devices"] == 2
    assert out["sharded"] == [2]  # one segment length, compiled once, over 2 devices
    assert out["shape"] == [2, 6, 2]
    assert out["chains_differ"]  # two real chains, not one copied
    assert out["max_rel"] < 1e-6, out


def test_chain_devices_divides_the_chains(monkeypatch):
    """The most local devices that split the chains evenly: 4 chains on 3 devices use 2, 3 chains on 2 use 1."""
    import jax

    from vpop.fitting import infer

    for n_dev, chains, want in ((3, 4, 2), (2, 3, 1), (4, 4, 4), (8, 4, 4), (1, 4, 1)):
        monkeypatch.setattr(jax, "local_devices", lambda n_dev=n_dev: list(range(n_dev)))
        assert infer.chain_devices(chains) == want, (n_dev, chains)


CLI_SCRIPT = r"""
import json, sys
import jax
from vpop.cli import fit
from vpop.cli.main import build_parser

seen = []
fit._run = lambda args: seen.append(len(jax.local_devices())) or 0  # what the command body would find
for argv in (["fit", "d.csv", "--method", "nuts", "--chains", "3"], ["fit", "d.csv", "--method", "nuts"]):
    args = build_parser().parse_args(argv)
    args.func(args)
print(json.dumps(seen))
"""


def test_vpop_fit_nuts_asks_for_a_cpu_device_per_chain_before_jax_starts():
    """`vpop fit --method nuts` (parallel chains, the default) starts JAX with one CPU device per chain; the
    count is fixed at the first start, so a second command in the same process finds the first's."""
    r = subprocess.run([sys.executable, "-c", CLI_SCRIPT], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [3, 3]


def test_vpop_fit_vectorized_chains_keep_one_device():
    script = CLI_SCRIPT.replace('"--chains", "3"]', '"--chains", "3", "--chain-method", "vectorized"]')
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [1, 1]

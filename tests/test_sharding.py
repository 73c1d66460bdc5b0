"""Several devices: 4 fake CPU devices give the one-device cohort bit for bit (float64).

The fake devices need XLA_FLAGS before jax is imported, so the multi-device
run happens in a subprocess; the one-device reference runs here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from vpop.run import cohort

from vpop.engine import sharding
N, SEED = 40, 5  # batch_size 4: every device runs batches of 4, as one device does

SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    import jax
    jax.config.update("jax_enable_x64", True)
    from dataclasses import replace
    import numpy as np
    from vpop.run import cohort
    from vpop.engine import sharding
    from vpop.run.config import load_config
    assert sharding.device_count() == 4, jax.devices()
    assert sharding.round_batch(6) == 8 and sharding.global_batch(4, 40) == 16
    cfg = load_config(None)
    cfg = replace(cfg, engine=replace(cfg.engine, days=2.0), batch_size=4, dtype="float64")
    res = cohort.simulate(cfg, n={n}, seed={seed}, record_rows=True)
    res.patients.to_parquet(sys.argv[1] + "/patients.parquet")
    res.observations.to_parquet(sys.argv[1] + "/observations.parquet")
    # shard_map mode: one SPMD program; same grades, floats to ~1e-13 (not bit for bit).
    os.environ["VPOP_SHARDING"] = "shard_map"
    res2 = cohort.simulate(cfg, n={n}, seed={seed}, record_rows=False)
    a, b = res.patients, res2.patients
    for col in a.columns:
        if a[col].dtype.kind == "f":
            np.testing.assert_allclose(b[col], a[col], rtol=1e-9, atol=1e-12, err_msg=col)
        else:
            assert (a[col] == b[col]).all(), col
    print("OK")
""")


@pytest.mark.slow
def test_four_fake_devices_equal_one_device_bit_for_bit(default_config, tmp_path):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    script = SCRIPT.format(n=N, seed=SEED)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
    assert sharding.device_count() == 1
    cfg = replace(default_config, engine=replace(default_config.engine, days=2.0), batch_size=4, dtype="float64")
    one = cohort.simulate(cfg, n=N, seed=SEED, record_rows=True)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "patients.parquet"), one.patients, check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "observations.parquet"),
                                  one.observations.reset_index(drop=True), check_exact=True)


def test_process_share_partitions_the_chunks():
    shares = [list(sharding.process_share(11, i, 3)) for i in range(3)]
    assert sorted(sum(shares, [])) == list(range(11))
    assert shares[0] == [0, 3, 6, 9]
    assert sharding.round_batch(5, 4) == 8 and sharding.round_batch(8, 4) == 8 and sharding.round_batch(3, 1) == 3


def test_a_balanced_batch_needs_no_more_calls_pads_less_and_takes_few_shapes():
    """n split evenly over the fewest calls `batch_size` allows, in granules of an eighth of it: never more
    calls than unbalanced batches, never above `batch_size`, padding under one granule per call, at most
    eight batch shapes for every n that needs several calls (each shape compiles once); a stream's batches
    (balance off) stay `batch_size`, so they tile its chunks."""
    assert sharding.global_batch(4096, 10_000, 1, balance=True) == 3584
    assert sharding.global_batch(4096, 10_000, 1) == 4096
    for d in (1, 2, 4):
        for cap in (7, 64, 1000, 4096):
            granule = max(8, cap // 8)
            shapes = set()
            for n in (1, 9, 63, 100, 1000, 4097, 10_000, 20_000, 33_333, 123_457):
                plain = sharding.global_batch(cap, n, d)
                bal = sharding.global_batch(cap, n, d, balance=True)
                calls_plain, calls_bal = -(-n // plain), -(-n // bal)
                assert bal // d <= cap and calls_bal <= calls_plain, (d, cap, n)
                assert bal * calls_bal - n < calls_bal * granule * d + d, (d, cap, n, bal)
                if calls_plain > 1:
                    shapes.add(bal)
            assert len(shapes) <= 8, (d, cap, shapes)

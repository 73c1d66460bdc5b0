"""NUTS draws saved as they come: one file per segment and the sampler state, so a run can resume.

Layout of `DIR/nuts/`:
* `run.json`: the run's settings (chains, warm-up, free set, patients, ...) and how many
  iterations are done; a resume with other settings is refused;
* `state.pkl`: the sampler state after the last saved segment (numpy arrays, pickled);
* `segment_0000.npz`, ...: per segment, the unconstrained draws `z.<site>` (chains, iterations, ...),
  `diverging`, `num_steps`, `accept_prob`, `energy` (chains, iterations), `start` (first
  iteration) and `warmup` (whether the segment is warm-up).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import jax
import numpy as np

from vpop.errors import UserError

FOLDER = "nuts"


def _dir(save_dir) -> Path:
    return Path(save_dir) / FOLDER


def clear(save_dir) -> None:
    d = _dir(save_dir)
    if d.is_dir():
        for f in list(d.glob("segment_*.npz")) + [d / "state.pkl", d / "run.json"]:
            if f.exists():
                f.unlink()


def save(save_dir, meta: dict, state, seg: dict, done: int, index: int) -> None:
    d = _dir(save_dir)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {f"z.{k}": v for k, v in seg["z"].items()}
    arrays.update({k: seg[k] for k in ("diverging", "num_steps", "accept_prob", "energy")})
    tmp = d / f"segment_{index:04d}.tmp.npz"
    np.savez(tmp, start=seg["start"], warmup=seg["warmup"], **arrays)
    tmp.replace(d / f"segment_{index:04d}.npz")
    with open(d / "state.tmp", "wb") as f:
        pickle.dump(jax.device_get(state), f)
    (d / "state.tmp").replace(d / "state.pkl")
    (d / "run.json").write_text(json.dumps({**meta, "done": done, "segments": index + 1}, indent=1))


def load(save_dir, meta: dict):
    """(state, iterations done, segments) of a saved run with the same settings, or None if there is none."""
    d = _dir(save_dir)
    if not (d / "run.json").is_file() or not (d / "state.pkl").is_file():
        return None
    saved = json.loads((d / "run.json").read_text())
    differ = [k for k in meta if k != "seed" and saved.get(k) != meta[k]]
    if differ:
        what = ", ".join(f"{k}: {saved.get(k)!r} there, {meta[k]!r} now" for k in differ)
        raise UserError(f"--resume: {d} holds a run with other settings ({what}); use another --out or drop --resume")
    with open(d / "state.pkl", "rb") as f:
        state = pickle.load(f)
    segs = []
    for i in range(saved["segments"]):
        with np.load(d / f"segment_{i:04d}.npz") as z:
            seg = {"z": {k[2:]: z[k] for k in z.files if k.startswith("z.")}, "start": int(z["start"]),
                   "warmup": bool(z["warmup"])}
            seg.update({k: z[k] for k in ("diverging", "num_steps", "accept_prob", "energy")})
        segs.append(seg)
    return jax.tree.map(np.asarray, state), int(saved["done"]), segs

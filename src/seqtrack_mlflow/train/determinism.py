"""Seeding and RNG state: the same seed, config and machine give bit-identical results.

Sample order and augmentation do not use these global generators at all (each sample draws
from its own generator seeded by (seed, epoch, index), see data/sampler.py); the global ones
seed model initialisation and dropout, and their states are saved in every checkpoint so a
resumed run continues exactly where the uninterrupted one would have been.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """The assignment's settings, plus deterministic algorithms everywhere."""
    # cuBLAS needs this before its first use for deterministic matmuls on CUDA.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)


def rng_state() -> dict:
    """Every global generator's state as plain data (no numpy arrays: weights_only loading)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": list(_listify(random.getstate())),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _listify(value):
    return [_listify(v) for v in value] if isinstance(value, tuple) else value


def _tuplify(value):
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value

"""Checkpoints: atomic writes, safe loading, clear errors."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch

from seqtrack_mlflow.errors import CheckpointError
from seqtrack_mlflow.fsutil import sha256_file
from seqtrack_mlflow.train.checkpoint import load_checkpoint, save_checkpoint
from seqtrack_mlflow.train.determinism import rng_state, set_rng_state


def _state():
    return {"model_state_dict": torch.nn.Linear(3, 2).state_dict(), "optimizer_state_dict": {},
            "epoch": 1, "seed": 8, "rng": rng_state(), "config": {"seed": 8}, "metrics": [{"val_iou": 0.5}]}


def test_round_trip_with_weights_only(tmp_path):
    original = _state()
    path = save_checkpoint(tmp_path / "epoch_1.ckpt", original)
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and state["seed"] == 8 and state["metrics"] == [{"val_iou": 0.5}]
    for key, tensor in original["model_state_dict"].items():
        assert torch.equal(state["model_state_dict"][key], tensor)
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_rng_state_round_trip_restores_every_generator(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = load_checkpoint(save_checkpoint(tmp_path / "c.ckpt", _state()))["rng"]
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "epoch_1.ckpt", _state())
    before = sha256_file(path)

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, {**_state(), "epoch": 2})
    assert sha256_file(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["epoch_1.ckpt"]


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "epoch_1.ckpt", _state())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a PyTorch checkpoint"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated or not a PyTorch checkpoint"):
        load_checkpoint(path)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/seqtrack_pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"model_state_dict": {}, "optimizer_state_dict": {}, "epoch": 1, "seed": 8,
                "payload": _Exploit()}, path)
    with pytest.raises(CheckpointError, match="could execute code"):
        load_checkpoint(path)
    assert not os.path.exists("/tmp/seqtrack_pwned")


def test_wrong_format_and_missing_keys(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")
    (tmp_path / "a.ckpt").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "a.ckpt")
    torch.save({"epoch": 1}, tmp_path / "b.ckpt")
    with pytest.raises(CheckpointError, match="missing model_state_dict"):
        load_checkpoint(tmp_path / "b.ckpt")
    torch.save([1, 2], tmp_path / "c.ckpt")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(tmp_path / "c.ckpt")

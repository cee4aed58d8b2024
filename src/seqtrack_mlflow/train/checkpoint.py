"""Epoch checkpoints: plain data, written atomically, loaded without executing code.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so
`torch.load(..., weights_only=True)` always works and a file from a stranger cannot run code.
Keys (the spec's four first):
    model_state_dict, optimizer_state_dict, epoch, seed,
    scheduler_state_dict, rng (python / numpy / torch / cuda states), config (resolved, nested),
    metrics (per-epoch history up to this epoch), progress (global sample count, elapsed
    seconds), versions (torch, numpy, mlflow, seqtrack_mlflow), format (CHECKPOINT_FORMAT).

Writes go to a temporary file in the same folder, are fsynced, then renamed over the target:
a crash leaves either the complete old file, the complete new one, or no file, never a torn
one (POSIX rename is atomic within a file system). A kill -9 may leave the temporary
`.epoch_N.ckpt.XXXX.tmp` behind: nothing reads such names, and resume removes them. A failed
write (disk full, read-only folder) raises StorageError naming the file and the reason.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from seqtrack_mlflow.errors import CheckpointError, StorageError, describe_os_error

CHECKPOINT_FORMAT = "seqtrack-mlflow/1"
REQUIRED_KEYS = ("model_state_dict", "optimizer_state_dict", "epoch", "seed")


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch}.ckpt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write `state` to `path` (temp file + fsync + rename + fsync of the folder)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise StorageError(f"checkpoint not saved: {describe_os_error(exc, path=path)}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        # torch.save reports a failed write (e.g. ENOSPC) as a RuntimeError whose context is
        # the OSError: name the file and the system's reason in one line.
        cause = exc if isinstance(exc, OSError) else exc.__context__
        if isinstance(cause, OSError) and isinstance(exc, (OSError, RuntimeError)):
            raise StorageError(f"checkpoint not saved: {describe_os_error(cause, path=path)}; "
                               f"earlier checkpoints are untouched") from exc
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return path


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete what a killed `save_checkpoint` (or manifest write) left in folder: temporary
    `.epoch_N.ckpt.XXXX.tmp` / `manifest.json.tmp` files, never complete checkpoints. Call
    it only when no process is writing there (resume does, for the run it takes over)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.is_file() and (
        (p.name.startswith(".epoch_") and p.name.endswith(".tmp")) or p.name == "manifest.json.tmp")]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (weights_only=True) or raise CheckpointError saying why."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any global that is not a plain tensor/container: e.g. a pickle
        # that would call os.system. Never retry with weights_only=False.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} holds objects that are not plain data and was "
                              f"refused (it could execute code): {first}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or not a torch checkpoint: "
                              f"{first}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a seqtrack-mlflow checkpoint: "
                              f"missing {', '.join(missing)}")
    return state


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

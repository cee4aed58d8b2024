"""The checkpoint manager: what a checkpoint holds, writing it, the manifest, loading, restoring.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so
`torch.load(..., weights_only=True)` always works and a file from a stranger cannot run code.
Keys (the assignment's four first):
    model_state_dict, optimizer_state_dict, epoch, seed,
    scheduler_state_dict, rng (python / numpy / torch / cuda states), config (resolved, nested),
    metrics (per-epoch history up to this epoch), progress (global sample count, elapsed
    seconds), versions, run_id, format (CHECKPOINT_FORMAT); with weight averaging
    (train.ema_decay) model_state_dict is the average, and training_weights, ema_updates are added.

Files are written with `fsutil.atomic_write`: complete or absent, whatever stops the process.
`manifest.json` beside them lists each file's epoch, size and sha256; wherever a manifest
exists, a checkpoint is verified against it before it is used, and a file it does not match is
refused. A checkpoint with no manifest beside it loads with a warning that it is unverified.
`restore` puts a state back into model, optimizer, scheduler and RNGs, both for a resume and
for `check_restorable`'s dry run into throw-away objects before a run exists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from seqtrack_mlflow import experiment, provenance
from seqtrack_mlflow.config import Config
from seqtrack_mlflow.errors import CheckpointError, StorageError, TrackingError, first_line
from seqtrack_mlflow.fsutil import atomic_write, remove_temp_files, sha256_file
from seqtrack_mlflow.model.seqtrack import SeqTrack
from seqtrack_mlflow.model.weights import load_strict
from seqtrack_mlflow.names import CHECKPOINTS, MANIFEST, TRAINING_LOG, checkpoint_epochs, checkpoint_name
from seqtrack_mlflow.torchfile import read_torch_file, state_dict_of
from seqtrack_mlflow.train.averaging import build_ema, evaluated
from seqtrack_mlflow.train.determinism import rng_state, set_rng_state
from seqtrack_mlflow.train.optim import build_optimizer

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "seqtrack-mlflow/1"
# With train.ema_decay: the raw (not averaged) weights and the number of averaging updates.
TRAINING_WEIGHTS = "training_weights"
EMA_UPDATES = "ema_updates"
REQUIRED_KEYS = ("model_state_dict", "optimizer_state_dict", "epoch", "seed")


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete epoch_N.ckpt files in a folder, by epoch."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [folder / checkpoint_name(e) for e in checkpoint_epochs([p.name for p in folder.iterdir()])]


# -- writing -------------------------------------------------------------------------------------
def training_state(epoch: int, cfg: Config, model, optimizer, scheduler, scaler, history: list[dict],
                   global_samples: int, elapsed_seconds: float, run_id: str, ema=None) -> dict[str, Any]:
    """Everything a checkpoint holds (see the module docstring), as plain data. With weight
    averaging (`ema`), model_state_dict holds the averaged weights, the ones every reader of a
    checkpoint uses; the raw weights and the average's update count are kept for a resume."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "model_state_dict": evaluated(model, ema).state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "scheduler_state_dict": scheduler.state_dict(),
        "epoch": epoch,
        "seed": cfg.seed,
        "rng": rng_state(),
        "config": cfg.to_dict(),
        "metrics": [dict(h) for h in history],
        "progress": {"global_samples": global_samples, "elapsed_seconds": elapsed_seconds},
        "versions": provenance.versions(),
        "run_id": run_id,
    }
    if scaler.is_enabled():
        state["scaler_state_dict"] = scaler.state_dict()
    if ema is not None:
        state[TRAINING_WEIGHTS] = model.state_dict()
        state[EMA_UPDATES] = int(ema.n_averaged)
    return state


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write `state` to `path`."""
    try:
        return atomic_write(path, lambda f: torch.save(state, f))
    except StorageError as exc:
        raise StorageError(f"checkpoint {exc}; earlier checkpoints are untouched") from exc


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """What killed checkpoint or manifest writes left in folder (never complete files)."""
    return remove_temp_files(folder, ("epoch_", MANIFEST))


class Manifest:
    """manifest.json of a checkpoint folder: {"checkpoints": [{file, epoch, sha256, bytes}]}."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.entries: dict[int, dict[str, Any]] = {}

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST

    @classmethod
    def read(cls, folder: str | Path) -> "Manifest | None":
        """The manifest of a folder, None when it has none; CheckpointError if unreadable."""
        manifest = cls(folder)
        if not manifest.path.is_file():
            return None
        try:
            doc = json.loads(manifest.path.read_text(encoding="utf-8"))
            entries = doc["checkpoints"]
            manifest.entries = {int(e["epoch"]): {"file": str(e["file"]), "epoch": int(e["epoch"]),
                                                  "sha256": str(e["sha256"]).lower(),
                                                  "bytes": int(e["bytes"]) if e.get("bytes") is not None else None}
                                for e in entries}
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{manifest.path} is not a checkpoint manifest ({type(exc).__name__}: "
                                  f"{exc}); checkpoints beside it cannot be verified") from None
        return manifest

    def add(self, path: Path, epoch: int) -> None:
        """Record a complete checkpoint file and rewrite manifest.json atomically."""
        self.entries[epoch] = {"file": path.name, "epoch": epoch, "sha256": sha256_file(path),
                               "bytes": path.stat().st_size}
        doc = {"checkpoints": [self.entries[e] for e in sorted(self.entries)]}
        atomic_write(self.path, json.dumps(doc, indent=2) + "\n")

    def list(self) -> list[dict[str, Any]]:
        return [self.entries[e] for e in sorted(self.entries)]

    def verify(self, path: Path) -> None:
        """CheckpointError unless `path` is listed here with the same sha256."""
        entry = next((e for e in self.entries.values() if e["file"] == path.name), None)
        if entry is None:
            raise CheckpointError(f"checkpoint {path} is not listed in {self.path}; refusing an "
                                  "unlisted file")
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise CheckpointError(f"checkpoint {path} does not match {self.path} (sha256 {actual[:12]}... "
                                  f"vs {entry['sha256'][:12]}... listed): the file is corrupt or was "
                                  "changed; refusing it")


def verify_checkpoint(path: str | Path) -> bool:
    """Check a checkpoint against the manifest beside it: True if verified, False (with a
    warning) when there is no manifest; CheckpointError on a mismatch."""
    path = Path(path)
    manifest = Manifest.read(path.parent)
    if manifest is None:
        log.warning("checkpoint %s has no %s beside it: it is loaded unverified", path, MANIFEST)
        return False
    manifest.verify(path)
    return True


# -- reading -------------------------------------------------------------------------------------
def load_checkpoint(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """A checkpoint of this project: verified against its manifest (when one is beside it),
    loaded safely, and checked to hold what training needs; CheckpointError says what is wrong."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if verify:
        verify_checkpoint(path)
    state = read_torch_file(path)
    check_state(state, path)
    return state


def check_state(state: Any, path: Path | str) -> None:
    """The structure of a project checkpoint, so a bad file stops with one line, not a traceback."""
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a seqtrack-mlflow checkpoint: "
                              f"missing {', '.join(missing)}")
    epoch = state["epoch"]
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise CheckpointError(f"checkpoint {path}: epoch is {epoch!r}, not a whole number >= 0")
    state_dict_of(state["model_state_dict"], f"checkpoint {path} model_state_dict")
    if not isinstance(state["optimizer_state_dict"], dict):
        raise CheckpointError(f"checkpoint {path}: optimizer_state_dict is a "
                              f"{type(state['optimizer_state_dict']).__name__}, not a dict")


def check_resumable(state: dict[str, Any], path: Path | str) -> None:
    """What a resume needs beyond the weights: format, config, RNG states, progress."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"resume: {path} has format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    for key, kind in (("config", dict), ("rng", dict), ("progress", dict), ("metrics", list),
                      ("scheduler_state_dict", dict)):
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"resume: {path} has no usable {key!r} ({kind.__name__} expected); "
                                  "it cannot be resumed exactly")


# -- restoring ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Restored:
    """What a restored state hands back to the training loop besides the objects it filled."""
    history: list[dict[str, float]]
    global_samples: int
    elapsed_seconds: float


# What restoring a damaged (but safely loaded) state raises from torch's load_state_dict /
# set_rng_state and the plain-data accesses around them.
RESTORE_ERRORS = (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError)


def restore(state: dict[str, Any], model, optimizer, scheduler, scaler, source: str, ema=None) -> Restored:
    """Put a resumable state back: weights (strict; the raw and the averaged ones with weight
    averaging), optimizer, scheduler, loss scaler, every RNG. A damaged state is one
    CheckpointError line naming `source`."""
    try:
        if ema is not None:
            load_strict(model, state_dict_of(state[TRAINING_WEIGHTS], source), source)
            load_strict(ema.module, state_dict_of(state["model_state_dict"], source), source)
            ema.n_averaged.fill_(int(state[EMA_UPDATES]))
        else:
            load_strict(model, state_dict_of(state["model_state_dict"], source), source)
        optimizer.load_state_dict(state["optimizer_state_dict"])
        scheduler.load_state_dict(state["scheduler_state_dict"])
        if "scaler_state_dict" in state and scaler.is_enabled():
            scaler.load_state_dict(state["scaler_state_dict"])
        set_rng_state(state["rng"])
        return Restored(history=[dict(h) for h in state["metrics"]],
                        global_samples=int(state["progress"]["global_samples"]),
                        elapsed_seconds=float(state["progress"]["elapsed_seconds"]))
    except RESTORE_ERRORS as exc:
        raise CheckpointError(f"{source} cannot be restored ({type(exc).__name__}: {first_line(exc)})") from None


def check_restorable(cfg: Config, state: dict[str, Any], source: str) -> None:
    """`restore` into a throw-away model, optimizer and scaler, so that a tensor of the wrong
    shape, a damaged optimizer or RNG state stops with one line before any run exists. Every
    global generator is left exactly as it was."""
    saved = rng_state()
    try:
        with torch.random.fork_rng(devices=[]):
            model = SeqTrack(dataclasses.replace(cfg.model, pretrained=""))
            optimizer, scheduler = build_optimizer(model, cfg.train)
            scaler = torch.amp.GradScaler("cpu", enabled=False)
            restore(state, model, optimizer, scheduler, scaler, source, build_ema(model, cfg.train.ema_decay))
    finally:
        set_rng_state(saved)


# -- a run's checkpoints in the tracking store ----------------------------------------------------
def download_checkpoints(run_id: str, folder: Path) -> Path:
    """A run's checkpoints (with manifest) and training log, downloaded into folder; the
    newest checkpoint's path."""
    epochs = experiment.checkpoint_epochs(run_id)
    if not epochs:
        raise TrackingError(f"run {run_id} has no {CHECKPOINTS}/epoch_N.ckpt artifact")
    experiment.download_artifacts(run_id, CHECKPOINTS, folder)
    with contextlib.suppress(TrackingError):  # a run killed early may not have logged it
        experiment.download_artifacts(run_id, TRAINING_LOG, folder)
    return folder / CHECKPOINTS / checkpoint_name(epochs[-1])


def download_checkpoint(run_id: str, epoch: int, folder: Path) -> Path:
    """One checkpoint of a run, with the manifest that verifies it (not every epoch's file):
    folder/checkpoints/epoch_N.ckpt and folder/checkpoints/manifest.json; the checkpoint's path.
    A run without a manifest gives an unverified checkpoint (`load_checkpoint` warns)."""
    with contextlib.suppress(TrackingError):
        experiment.download_artifacts(run_id, f"{CHECKPOINTS}/{MANIFEST}", folder)
    local = experiment.download_artifacts(run_id, f"{CHECKPOINTS}/{checkpoint_name(epoch)}", folder)
    return local if local.is_file() else local / checkpoint_name(epoch)

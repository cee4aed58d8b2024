"""Everything about checkpoint files: names, the manifest, the atomic write, the one safe load.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so
`torch.load(..., weights_only=True)` always works and a file from a stranger cannot run code.
Keys (the assignment's four first):
    model_state_dict, optimizer_state_dict, epoch, seed,
    scheduler_state_dict, rng (python / numpy / torch / cuda states), config (resolved, nested),
    metrics (per-epoch history up to this epoch), progress (global sample count, elapsed
    seconds), versions, run_id, format (CHECKPOINT_FORMAT).

Files are written with `fsutil.atomic_write`: complete or absent, whatever stops the process.
`manifest.json` beside them lists each file's epoch, size and sha256; wherever a manifest
exists, a checkpoint is verified against it before it is used, and a file it does not match is
refused. A checkpoint with no manifest beside it loads with a warning that it is unverified.
"""

from __future__ import annotations

import collections
import json
import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from seqtrack_mlflow.errors import CheckpointError, StorageError
from seqtrack_mlflow.fsutil import atomic_write, remove_temp_files, sha256_file

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "seqtrack-mlflow/1"
REQUIRED_KEYS = ("model_state_dict", "optimizer_state_dict", "epoch", "seed")
MANIFEST = "manifest.json"
_NAME_RE = re.compile(r"epoch_([1-9]\d*)\.ckpt")


# -- names ---------------------------------------------------------------------------------------
def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch}.ckpt"


def checkpoint_epoch(name: str) -> int | None:
    """N of 'epoch_N.ckpt' (a bare name or a path), None for any other file name."""
    match = _NAME_RE.fullmatch(Path(name).name)
    return int(match.group(1)) if match else None


def checkpoint_epochs(names: list[str]) -> list[int]:
    """The epochs of the checkpoint files among these names, ascending."""
    return sorted(e for e in map(checkpoint_epoch, names) if e is not None)


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete epoch_N.ckpt files in a folder, by epoch."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [folder / checkpoint_name(e) for e in checkpoint_epochs([p.name for p in folder.iterdir()])]


# -- writing -------------------------------------------------------------------------------------
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
                                                  "sha256": str(e["sha256"]), "bytes": int(e["bytes"])}
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
class _OfficialRecord:
    """Inert stand-in for the official trainer's bookkeeping objects in a .pth.tar
    (Settings, AverageMeter, ...): keeps their plain-data state and runs none of their code."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_OfficialRecord":
        return super().__new__(cls)

    def __setstate__(self, state: Any) -> None:
        self.state = state


# Globals an official SEQTRACK_ep*.pth.tar may hold besides tensors (lib/train/trainers/
# base_trainer.py save_checkpoint stores 'stats' and 'settings' objects). Only these exact
# names are let through, each as an inert stand-in; anything else is refused.
_OFFICIAL_GLOBALS: dict[str, Any] = {
    "lib.train.admin.settings.Settings": _OfficialRecord,
    "lib.train.admin.stats.AverageMeter": _OfficialRecord,
    "lib.train.admin.stats.StatValue": _OfficialRecord,
    "lib.train.admin.local.EnvironmentSettings": _OfficialRecord,
    "argparse.Namespace": _OfficialRecord,
    "easydict.EasyDict": collections.OrderedDict,  # a dict subclass: keep keys and attributes
}
# What a torch.load of a damaged or foreign file raises (an unpickler fed garbage can raise
# almost anything: IndexError and KeyError were seen on /etc/passwd).
_LOAD_ERRORS = (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, IndexError, KeyError,
                TypeError, AttributeError, UnicodeDecodeError, MemoryError, OverflowError)


def first_line(exc: BaseException) -> str:
    """An exception as one line of at most 300 characters (its type name if it has no text)."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def read_torch_file(path: str | Path) -> Any:
    """torch.load(weights_only=True) with every failure turned into one CheckpointError line.

    If the safe loader refuses the file only because of the official trainer's bookkeeping
    objects, they are read as inert records (never executed); any other global is refused.
    Never retry with weights_only=False.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refusal = exc
    except _LOAD_ERRORS as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or not a PyTorch checkpoint "
                              f"({type(exc).__name__}: {first_line(exc)})") from None
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (*_LOAD_ERRORS, pickle.UnpicklingError):
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or not a PyTorch checkpoint "
                              f"({first_line(refusal)})") from None
    unknown = sorted(set(names) - set(_OFFICIAL_GLOBALS))
    if not names or unknown:
        detail = f"unknown object types {unknown}" if unknown else first_line(refusal)
        raise CheckpointError(f"checkpoint {str(path)!r} holds objects that are not plain data and was "
                              f"refused (it could execute code): {detail}") from None
    try:
        with torch.serialization.safe_globals([(_OFFICIAL_GLOBALS[n], n) for n in names]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (*_LOAD_ERRORS, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be loaded safely: {first_line(exc)}") from None


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


def state_dict_of(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The model state dict inside a loaded object (official checkpoints keep it under 'net')."""
    if isinstance(obj, Mapping):
        for key in ("net", "model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source} holds no state dict (want a mapping of tensors, or one under 'net')")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source} is not a state dict: entries {bad[:3]} are not tensors")
    # Checkpoints saved from a DistributedDataParallel wrapper prefix every name with 'module.'.
    return {k.removeprefix("module."): v for k, v in obj.items()}

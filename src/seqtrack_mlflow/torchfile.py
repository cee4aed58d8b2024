"""The one safe reader of PyTorch files (checkpoints, official releases, pretrained weights).

`torch.load(weights_only=True)` only: a file from a stranger cannot run code. The official
trainer's bookkeeping objects in a released `.pth.tar` are let through as inert records by their
exact names; anything else that is not plain data is refused. Every failure is one
CheckpointError line.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from seqtrack_mlflow.errors import CheckpointError, first_line


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

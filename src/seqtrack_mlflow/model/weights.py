"""Comparing a state dict with a module's, and loading it with every mismatch named in one line."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
import torch.nn as nn

from seqtrack_mlflow.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """How a state dict differs from a module's: names in the module's (or the state's) order."""
    missing: list[str]      # in the module, not in the state
    unexpected: list[str]   # in the state, not in the module
    wrong_shape: list[str]  # in both, of another shape (checked only when the names match)


def compare(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> Mismatch | None:
    """None when `state` has exactly `own`'s names and shapes; else what differs."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [] if missing or unexpected else [k for k, v in own.items() if state[k].shape != v.shape]
    return Mismatch(missing, unexpected, wrong) if missing or unexpected or wrong else None


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True) with each kind of mismatch reported as CheckpointError
    (the first differing key and both shapes for a shape mismatch)."""
    own = module.state_dict()
    diff = compare(own, state)
    if diff is not None and (diff.missing or diff.unexpected):
        parts = []
        if diff.missing:
            parts.append(f"{len(diff.missing)} missing key(s) e.g. {diff.missing[:3]}")
        if diff.unexpected:
            parts.append(f"{len(diff.unexpected)} unexpected key(s) e.g. {diff.unexpected[:3]}")
        raise CheckpointError(f"{source} does not match the model: {'; '.join(parts)}")
    if diff is not None:
        k = diff.wrong_shape[0]
        raise CheckpointError(f"{source} does not fit the model: {len(diff.wrong_shape)} tensor(s) of another "
                              f"shape, first {k}: {tuple(state[k].shape)} in the weights vs "
                              f"{tuple(own[k].shape)} in the model")
    module.load_state_dict(state, strict=True)

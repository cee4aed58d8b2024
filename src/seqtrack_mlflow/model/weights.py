"""Loading a state dict into a module with every mismatch named in one line."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from seqtrack_mlflow.errors import CheckpointError


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True) with each kind of mismatch reported as CheckpointError
    (the first differing key and both shapes for a shape mismatch)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) e.g. {unexpected[:3]}")
        raise CheckpointError(f"{source} does not match the model: {'; '.join(parts)}")
    wrong = [k for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{source} does not fit the model: {len(wrong)} tensor(s) of another shape, "
                              f"first {k}: {tuple(state[k].shape)} in the weights vs {tuple(own[k].shape)} "
                              "in the model")
    module.load_state_dict(state, strict=True)

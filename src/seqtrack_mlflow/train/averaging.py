"""Weight averaging (train.ema_decay): an exponential moving average of the weights, updated
after every optimizer step with torch's `AveragedModel`. The averaged copy is the model the
run validates, tracks, checkpoints and publishes; the raw weights go on training."""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def build_ema(model: torch.nn.Module, decay: float) -> AveragedModel | None:
    """The averaged copy of `model` (its current weights), or None when decay is 0. Its first
    update copies the weights; each later one moves them (1 - decay) of the way to the model's."""
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def evaluated(model: torch.nn.Module, ema: AveragedModel | None) -> torch.nn.Module:
    """The weights a run scores and publishes: the average when there is one."""
    return ema.module if ema is not None else model

"""The optimizer and learning-rate schedule of the official recipe (microsoft/VideoX SeqTrack,
lib/train/base_functions.py): AdamW with a lower encoder lr, StepLR counted in epochs; or
warm-up + cosine counted in optimizer steps."""

from __future__ import annotations

import functools
import math

import torch

from seqtrack_mlflow.config import TrainConfig


def cosine_factor(step: int, warmup: int, total: int) -> float:
    """lr multiplier after `step` optimizer steps: linear warm-up from 0 over `warmup` steps,
    then half a cosine down to 0 at `total` (SGDR, Loshchilov & Hutter 2017, without restarts;
    the warm-up as in Goyal et al. 2017)."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def build_optimizer(model: torch.nn.Module, t: TrainConfig, steps_per_epoch: int = 1):
    """AdamW over the model's (decoder, encoder) groups and the lr schedule: the official
    StepLR counted in epochs ('step'), or warm-up + cosine counted in optimizer steps."""
    # fused: one kernel for all parameters, same AdamW math; torch's CPU default is a Python
    # loop per tensor (x4 slower for B256, benchmarks/speed.py).
    optimizer = torch.optim.AdamW(model.param_groups(t.lr, t.encoder_lr_mult, t.weight_decay), lr=t.lr,
                                  weight_decay=t.weight_decay, fused=True)
    if t.schedule == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=t.lr_drop_epoch, gamma=t.lr_drop_factor)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
            cosine_factor, warmup=t.warmup_steps, total=t.epochs * steps_per_epoch))
    return optimizer, scheduler

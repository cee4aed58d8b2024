"""Where training and tracking run (`train.device`) and at which precision (`train.precision`)."""

from __future__ import annotations

import contextlib

import torch

from seqtrack_mlflow.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """'auto' = CUDA when available, else the CPU; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} asked for, but CUDA is not available; use auto or cpu")
    return torch.device(name)


def check_precision(device: torch.device, precision: str) -> None:
    """Refuse a precision the device cannot run, before any run or file is created."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision: 'fp16' needs CUDA; use bf16 on CPU")


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CPU or CUDA, fp16 AMP on CUDA, nothing for fp32."""
    check_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)

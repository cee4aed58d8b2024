"""Where training and tracking run (`train.device`) and at which precision (`train.precision`)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import torch

from seqtrack_mlflow.config import Config
from seqtrack_mlflow.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """'auto' = CUDA when available, else the CPU; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} asked for, but CUDA is not available; use auto or cpu")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 matmuls natively: CUDA with bf16 support, or a CPU that
    reports AVX512-BF16 or AMX-BF16 (provenance.cpu_facts reads the flags). Without them CPU
    bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    from seqtrack_mlflow.provenance import cpu_facts

    flags = cpu_facts()["cpu_flags"].split(",")
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(cfg: Config, device: torch.device) -> Config:
    """The config a run records and checkpoints: precision 'auto' replaced by what it chose on
    this machine (bf16 where native, else fp32), so a resume on a machine that would choose
    differently is refused instead of silently changing the arithmetic."""
    if cfg.train.precision != "auto":
        return cfg
    precision = "bf16" if native_bf16(device) else "fp32"
    log.info("precision auto: %s on %s", precision, device)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision))


def check_precision(device: torch.device, precision: str) -> None:
    """Refuse a precision the device cannot run, before any run or file is created."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision: 'fp16' needs CUDA; use bf16 on CPU")


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CPU or CUDA, fp16 AMP on CUDA, nothing for fp32."""
    check_precision(device, precision)
    if precision == "auto":
        precision = "bf16" if native_bf16(device) else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)

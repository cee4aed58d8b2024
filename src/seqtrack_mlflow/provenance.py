"""Facts about the code and the machine a run was made on, for tags and checkpoints.

Results are bit-identical only for the same machine type, torch build and thread count (BLAS
kernels differ between CPU kinds), so every run records the CPU model and the ISA flags that
select kernels, and two runs' comparability is visible in `mlflow ui`.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

import seqtrack_mlflow

# CPU flags that change which matmul/conv kernels oneDNN and OpenBLAS pick.
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def versions() -> dict[str, str]:
    import mlflow

    return {"seqtrack_mlflow": seqtrack_mlflow.__version__, "torch": str(torch.__version__),
            "numpy": np.__version__, "mlflow": mlflow.__version__, "python": platform.python_version()}


def cpu_facts() -> dict[str, str]:
    """CPU model name, kernel-relevant ISA flags and torch's thread count."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu": model, "cpu_flags": ",".join(f for f in KERNEL_FLAGS if f in flags) or "none",
            "threads": str(torch.get_num_threads())}

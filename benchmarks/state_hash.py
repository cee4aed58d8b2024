"""Fingerprint of a short default-preset training: sha256 of the final model + optimizer state and
of the per-epoch metrics (wall-clock figures left out), so that a change meant to keep behaviour identical can be checked.

    python benchmarks/state_hash.py            # 2 epochs x 160 samples, default preset, CPU
    python benchmarks/state_hash.py --epochs 3 --samples 320

Runs `seqtrack_mlflow train` in a temporary folder with its own sqlite store and prints three
hashes; equal hashes before and after a change mean bit-identical training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def tensor_digest(obj, h) -> None:
    """Feed a nested state (dicts, lists, tensors, numbers) into h in a fixed order."""
    if isinstance(obj, torch.Tensor):
        h.update(str((obj.dtype, tuple(obj.shape))).encode())
        h.update(obj.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
                 if obj.numel() else b"")
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            h.update(repr(key).encode())
            tensor_digest(obj[key], h)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            tensor_digest(item, h)
    else:
        h.update(repr(obj).encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=160, help="samples per epoch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="state-hash-") as tmp:
        env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db",
                   MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING="false")
        subprocess.run([sys.executable, "-m", "seqtrack_mlflow", "train", "--epochs", str(args.epochs),
                        "--samples-per-epoch", str(args.samples), "--device", "cpu"],
                       cwd=tmp, env=env, check=True, stdout=subprocess.DEVNULL)
        ckpt = next(Path(tmp, "outputs").glob(f"*/checkpoints/epoch_{args.epochs}.ckpt"))
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        for key in ("model_state_dict", "optimizer_state_dict"):
            h = hashlib.sha256()
            tensor_digest(state[key], h)
            print(f"{key}: {h.hexdigest()}")
        # Wall-clock figures (epoch seconds, tracking fps) differ between identical runs.
        timeless = [{k: v for k, v in epoch.items() if k != "seconds" and "fps" not in k}
                    for epoch in state["metrics"]]
        metrics = json.dumps(timeless, sort_keys=True, default=repr)
        print(f"metrics: {hashlib.sha256(metrics.encode()).hexdigest()}")


if __name__ == "__main__":
    main()

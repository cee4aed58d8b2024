"""What logging each epoch as an MLflow LoggedModel costs beside the checkpoint-only run.

    python benchmarks/model_logging.py [--presets default,seqtrack_b256] [--epochs 3]

For each preset: a model and AdamW state of that size (one optimizer step on zero gradients,
so the checkpoint holds its full moments), then per "epoch", in a temporary sqlite store:
- checkpoint only: what the trainer did before (atomic torch.save, log_artifact, store_once);
- model logging: what it adds (safetensors + config.json export, mlflow.pyfunc.log_model with
  signature and input example, which loads the model once to check the example).
Prints the median seconds per epoch of each and the bytes each adds to the artifact store.
Not a test: numbers depend on the machine (and on what else runs on it).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from seqtrack_mlflow import experiment, names  # noqa: E402
from seqtrack_mlflow.config import load_config  # noqa: E402
from seqtrack_mlflow.model import build_seqtrack  # noqa: E402
from seqtrack_mlflow.names import checkpoint_name  # noqa: E402
from seqtrack_mlflow.publish.export import export_pretrained  # noqa: E402
from seqtrack_mlflow.publish.models import EpochModels  # noqa: E402
from seqtrack_mlflow.train.checkpoint import save_checkpoint  # noqa: E402
from seqtrack_mlflow.train.optim import build_optimizer  # noqa: E402


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(preset: str, epochs: int, work: Path) -> dict:
    cfg = load_config(preset, {"model.pretrained": ""})
    torch.manual_seed(0)
    model = build_seqtrack(cfg.model)
    optimizer, scheduler = build_optimizer(model, cfg.train)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # creates the moments a real checkpoint holds
    run = experiment.TrainingRun(f"bench-{preset}").start()
    models = EpochModels(run.run_id)
    ckpt_s, model_s, ckpt_bytes, model_bytes = [], [], 0, 0
    out = work / run.run_id
    out.mkdir(parents=True)
    try:
        for epoch in range(1, epochs + 1):
            state = {"format": 1, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                     "scheduler_state_dict": scheduler.state_dict(), "epoch": epoch, "seed": cfg.seed,
                     "config": cfg.to_dict(), "metrics": [], "run_id": run.run_id}
            t0 = time.perf_counter()
            path = save_checkpoint(out / checkpoint_name(epoch), state)
            run.log_artifact(path, names.CHECKPOINTS)
            run.store_once(path, names.CHECKPOINTS)
            ckpt_s.append(time.perf_counter() - t0)
            ckpt_bytes = path.stat().st_size
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                export_pretrained(state, Path(tmp) / "weights", run.run_id)
                model_id = models.log(epoch, Path(tmp) / "weights", dataclasses.asdict(cfg.track))
            model_s.append(time.perf_counter() - t0)
            import mlflow

            stored = Path(mlflow.MlflowClient().get_logged_model(model_id).artifact_location.removeprefix("file://"))
            model_bytes = folder_bytes(stored)
    finally:
        run.end("FINISHED")
    return {"preset": preset, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "ckpt_s": statistics.median(ckpt_s), "model_s": statistics.median(model_s),
            "ckpt_MB": ckpt_bytes / 1e6, "model_MB": model_bytes / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="default,seqtrack_b256")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
        os.chdir(tmp)  # the Default experiment's artifacts go to ./mlruns here
        rows = [measure(p, args.epochs, Path(tmp) / "out") for p in args.presets.split(",")]
    print(f"{'preset':<15}{'params':>9}{'checkpoint s':>14}{'+ model s':>11}{'checkpoint MB':>15}{'+ model MB':>12}")
    for r in rows:
        print(f"{r['preset']:<15}{r['params_M']:>8.1f}M{r['ckpt_s']:>14.2f}{r['model_s']:>11.2f}"
              f"{r['ckpt_MB']:>15.1f}{r['model_MB']:>12.1f}")


if __name__ == "__main__":
    main()

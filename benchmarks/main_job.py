"""The whole main job (`mlflow run . -P epochs=5`, default preset) at fp32 and at bf16, side by side.

    python benchmarks/main_job.py                       # 2 full 5-epoch jobs: ~8 min on 2 idle cores
    python benchmarks/main_job.py --epochs 1 --samples-per-epoch 512   # a 1-minute look
    python benchmarks/main_job.py --repeat 2            # fp32, bf16, bf16, fp32
    python benchmarks/main_job.py --out ''             # no picture (default: results/precision_curves.png)

Each job is the real trainer in its own process (`python -m seqtrack_mlflow train`, what the
MLproject's main entry point runs), with a throw-away MLflow store, so the wall time includes
start-up, data loading, validation, checkpoints and logging. The jobs run one after the other in
this one invocation; with --repeat 2 the order is ABBA and the faster of each pair counts (other
load only ever slows a job down).

Same final IoU within noise: both final models are decoded again on the same held-out samples;
the IoU difference is compared with the validation-set sampling noise (95% half-width of the
difference of two means over that many samples: how far another validation set could move it)
and with the fp32 run's largest epoch-to-epoch move of its own val IoU (a rough scale of the
training noise, which one seed per precision cannot measure). The paired per-sample difference
is printed too.
The picture (--out) shows both loss curves (per 50-sample block and per epoch) and the
validation IoU per epoch, read back from the runs' MLflow metrics.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from seqtrack_mlflow import experiment, names  # noqa: E402
from seqtrack_mlflow.data.dataset import open_dataset  # noqa: E402
from seqtrack_mlflow.data.sampler import ValidationSamples  # noqa: E402
from seqtrack_mlflow.model import model_from_checkpoint  # noqa: E402
from seqtrack_mlflow.names import checkpoint_name  # noqa: E402
from seqtrack_mlflow.train.checkpoint import load_checkpoint  # noqa: E402
from seqtrack_mlflow.train.validation import validation_ious  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def run_job(workdir: Path, precision: str, args: argparse.Namespace) -> tuple[float, Path]:
    """One training job in a fresh process; returns (wall seconds, its last checkpoint)."""
    out = workdir / f"{precision}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "seqtrack_mlflow", "train", "--config", "default",
           "--epochs", str(args.epochs), "--precision", precision, "--output-dir", str(out)]
    if args.samples_per_epoch:
        cmd += ["--samples-per-epoch", str(args.samples_per_epoch)]
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    env.pop("MLFLOW_RUN_ID", None)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{precision} job failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    (ckpt,) = out.glob(f"*/checkpoints/{checkpoint_name(args.epochs)}")  # out/<run id>/checkpoints
    return wall, ckpt


def plot(curves: dict[str, dict[str, list[tuple[int, float]]]], epochs: int, samples: int,
         out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    styles = {"fp32": dict(color="tab:blue", lw=1.6), "bf16": dict(color="tab:orange", lw=1.2, ls="--")}
    for p, c in curves.items():
        axes[0].plot(*zip(*c[names.TRAIN_LOSS]), label=p, **styles[p])
        axes[1].plot(*zip(*c[names.EPOCH_TRAIN_LOSS]), marker="o", label=p, **styles[p])
        axes[2].plot(*zip(*c[names.VAL_IOU]), marker="o", label=p, **styles[p])
    axes[0].set(title="train loss per progress block", xlabel="samples seen", ylabel="loss")
    axes[1].set(title="train loss per epoch", xlabel="epoch", ylabel="loss")
    axes[2].set(title="validation IoU per epoch", xlabel="epoch", ylabel="IoU")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"SeqTrack default preset: fp32 vs bf16 autocast (CPU), {epochs} epochs x "
                 f"{samples} samples, seed 8")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"saved {out} ({out.stat().st_size / 1024:.0f} KB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--samples-per-epoch", type=int, default=0, help="0 = the preset's 2000")
    ap.add_argument("--repeat", type=int, default=1, choices=(1, 2), help="2 = ABBA order, best of each")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "precision_curves.png"),
                    help="where to save the fp32 vs bf16 curves ('' = no picture)")
    args = ap.parse_args()
    order = ["fp32", "bf16"] if args.repeat == 1 else ["fp32", "bf16", "bf16", "fp32"]
    print(f"main job: default preset, {args.epochs} epochs x "
          f"{args.samples_per_epoch or 'the preset'} samples, torch {torch.__version__}, "
          f"{os.cpu_count()} logical CPUs; order {', '.join(order)}", flush=True)
    walls: dict[str, list[float]] = {"fp32": [], "bf16": []}
    ckpts: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="main-job-") as tmp:
        for precision in order:
            wall, path = run_job(Path(tmp), precision, args)
            walls[precision].append(wall)
            ckpts[precision] = load_checkpoint(path)
            print(f"  {precision}: {wall:.1f} s", flush=True)
        mlflow.set_tracking_uri(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        curves = {p: {key: experiment.metric_points(ck["run_id"], key)
                      for key in (names.TRAIN_LOSS, names.EPOCH_TRAIN_LOSS, names.VAL_IOU)}
                  for p, ck in ckpts.items()}

    print("\n| precision | job wall s | training s (trainer clock) | train loss per epoch | val IoU per epoch |")
    print("|---|---|---|---|---|")
    for p in ("fp32", "bf16"):
        ck = ckpts[p]
        losses = ", ".join(f"{m['train_loss']:.3f}" for m in ck["metrics"])
        ious = ", ".join(f"{m['val_iou']:.3f}" for m in ck["metrics"])
        print(f"| {p} | {min(walls[p]):.1f} | {ck['progress']['elapsed_seconds']:.1f} | {losses} | {ious} |")
    gaps = [abs(a["train_loss"] - b["train_loss"]) / a["train_loss"]
            for a, b in zip(ckpts["fp32"]["metrics"], ckpts["bf16"]["metrics"])]
    print(f"\ntrain loss, bf16 vs fp32: relative gap per epoch {', '.join(f'{g:.2%}' for g in gaps)}")
    speed = min(walls["fp32"]) / min(walls["bf16"])
    print(f"\nwhole job: bf16 is x{speed:.2f} the speed of fp32")

    # Same final IoU within noise: both final models on the same held-out samples, paired.
    ious = {}
    for p, ck in ckpts.items():
        model, cfg = model_from_checkpoint(ck, f"{p} checkpoint")
        ious[p] = validation_ious(model, ValidationSamples(open_dataset(cfg.data), cfg), cfg, torch.device("cpu"))
    diff = ious["bf16"] - ious["fp32"]
    n = len(diff)
    # Noise of a validation IoU: the 95% half-width of the difference of two independent means
    # over n samples (what drawing another validation set would move it by).
    noise = 1.96 * np.sqrt((ious["fp32"].var(ddof=1) + ious["bf16"].var(ddof=1)) / n)
    paired = 1.96 * diff.std(ddof=1) / np.sqrt(n)
    fp32_ious = [m["val_iou"] for m in ckpts["fp32"]["metrics"]]
    swing = max((abs(a - b) for a, b in zip(fp32_ious, fp32_ious[1:])), default=float("nan"))
    print(f"final val IoU over {n} held-out samples: fp32 {ious['fp32'].mean():.4f}, "
          f"bf16 {ious['bf16'].mean():.4f}; difference {diff.mean():+.4f}, "
          + ("within" if abs(diff.mean()) <= noise else "beyond")
          + f" the validation-set sampling noise +-{noise:.4f} (95%); for scale, the fp32 run's own "
          f"val IoU moves by up to {swing:.3f} from one epoch to the next")
    if args.out:
        plot(curves, args.epochs, ckpts["fp32"]["config"]["data"]["samples_per_epoch"], Path(args.out))
    print(f"(paired, per sample: {diff.mean():+.4f} +- {paired:.4f}; "
          f"{np.mean(np.abs(diff) > 1e-6):.0%} of the samples get a different box)")

if __name__ == "__main__":
    main()

"""The whole main job (`mlflow run . -P epochs=5`) against its own training step, side by side.

    python benchmarks/main_job.py                          # the default job (~8 min on 2 idle cores) + the step
    python benchmarks/main_job.py --epochs 1 --samples-per-epoch 2000   # a 1-minute look
    python benchmarks/main_job.py --compare-precisions     # fp32 and bf16 jobs, loss and IoU compared
    python benchmarks/main_job.py --compare-precisions --repeat 2 --out ''   # ABBA order, no picture

The job is the real main entry point in its own process (`mlflow run . --env-manager local`,
what README tells a user to run) with a throw-away MLflow store, so its wall time includes
start-up, data loading, validation, held-out tracking, checkpoints, model logging and the
registration. In this same invocation the training step alone (`speed.Stepper`: forward +
backward + clip + AdamW through the real actor, same preset, precision and batch, on real
crops, no data loading) is timed before and after the job; the job's training throughput
(`time/train_samples_per_second`: its samples over the seconds inside its training blocks) is
printed as a share of that rate, with the job's seconds per phase (`time/phase/*`) and the share
of its wall time spent outside training.

--compare-precisions: the same job at fp32 and at bf16 (in that order; with --repeat 2 the order
is ABBA and the faster of each pair counts, since other load only ever slows a job down), with
the same final IoU tested within noise: both final models are decoded again on the same
held-out samples; the IoU difference is compared with the validation-set sampling noise (95%
half-width of the difference of two means over that many samples) and with the fp32 run's
largest epoch-to-epoch move of its own val IoU (a rough scale of the training noise, which one
seed per precision cannot measure). The picture (--out) shows both loss curves and the
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

from speed import CPU, Stepper, machine_facts, preset, real_batch  # noqa: E402

from seqtrack_mlflow import experiment, names  # noqa: E402
from seqtrack_mlflow.data.dataset import open_dataset  # noqa: E402
from seqtrack_mlflow.data.sampler import ValidationSamples  # noqa: E402
from seqtrack_mlflow.model import model_from_checkpoint  # noqa: E402
from seqtrack_mlflow.names import checkpoint_name  # noqa: E402
from seqtrack_mlflow.train.checkpoint import load_checkpoint  # noqa: E402
from seqtrack_mlflow.train.device import resolve_precision  # noqa: E402
from seqtrack_mlflow.train.phases import IN_TRAINING  # noqa: E402
from seqtrack_mlflow.train.validation import validation_ious  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def run_job(workdir: Path, precision: str, args: argparse.Namespace) -> tuple[float, Path]:
    """`mlflow run . -P epochs=N` in a fresh process (the README's main job), with a throw-away
    store and output folder; returns (wall seconds, its last checkpoint)."""
    out = workdir / f"{precision}-{time.monotonic_ns()}"
    out.mkdir(parents=True)
    # The preset with only train.output_dir set: outputs in the throw-away folder, not the repo's.
    config = out / "config.yaml"
    config.write_text(f"train:\n  output_dir: {out / 'outputs'}\n")
    cmd = ["mlflow", "run", str(REPO), "--env-manager", "local", "-P", f"config={config}",
           "-P", f"epochs={args.epochs}", "-P", f"precision={precision}"]
    if args.samples_per_epoch:
        cmd += ["-P", f"samples_per_epoch={args.samples_per_epoch}"]
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    env.pop("MLFLOW_RUN_ID", None)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{precision} job failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    (ckpt,) = out.glob(f"outputs/*/checkpoints/{checkpoint_name(args.epochs)}")  # outputs/<run id>/checkpoints
    return wall, ckpt


def step_rate(precision: str, steps: int, rounds: int) -> list[float]:
    """Samples per second of the training step alone (speed.Stepper: the trainer's train_step on
    real crops of the default preset), one figure per round of `steps` steps."""
    cfg = resolve_precision(preset("default"), CPU) if precision == "auto" else preset("default")
    stepper = Stepper(cfg, real_batch(cfg, cfg.train.batch_size),
                      cfg.train.precision if precision == "auto" else precision)
    for _ in range(3):  # warm-up: allocator, autocast caches, AdamW state
        stepper.step()
    rates = []
    for _ in range(rounds):
        wall = sum(stepper.step().wall for _ in range(steps))
        rates.append(steps * cfg.train.batch_size / wall)
    return rates


def logged_timing(run_id: str) -> tuple[dict[str, float], dict[str, list[float]]]:
    """A finished job's end-of-job timing metrics and, per phase, its seconds in each epoch
    (plus the epochs' training throughput under names.EPOCH_SAMPLES_PER_SECOND)."""
    client = mlflow.MlflowClient()
    metrics = client.get_run(run_id).data.metrics
    keys = [k for k in metrics if k.startswith(names.PHASE_PREFIX)] + [names.EPOCH_SAMPLES_PER_SECOND]
    per_epoch = {k.removeprefix(names.PHASE_PREFIX): [m.value for m in sorted(client.get_metric_history(run_id, k),
                                                                               key=lambda m: m.step)]
                 for k in keys}
    return metrics, per_epoch


def throughput(args: argparse.Namespace) -> None:
    """The default job and its training step, side by side: the ratio, the phases, the outside share."""
    print(f"main job vs its training step: {args.epochs} epochs x {args.samples_per_epoch or 'the preset'} "
          f"samples, precision {args.precision}\n{machine_facts()}", flush=True)
    before = step_rate(args.precision, args.steps, args.rounds)
    print(f"  step alone, before the job: {', '.join(f'{r:.1f}' for r in before)} samples/s", flush=True)
    with tempfile.TemporaryDirectory(prefix="main-job-") as tmp:
        wall, ckpt_path = run_job(Path(tmp), args.precision, args)
        print(f"  job: {wall:.1f} s wall (`mlflow run`)", flush=True)
        mlflow.set_tracking_uri(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        metrics, phases = logged_timing(load_checkpoint(ckpt_path)["run_id"])
    after = step_rate(args.precision, args.steps, args.rounds)
    print(f"  step alone, after the job: {', '.join(f'{r:.1f}' for r in after)} samples/s", flush=True)

    step = float(np.median(before + after))
    job_rate = metrics[names.TRAIN_SAMPLES_PER_SECOND]
    inside = metrics[names.TRAINING_SECONDS]
    epochs = args.epochs
    rate = phases.pop(names.EPOCH_SAMPLES_PER_SECOND)
    cols = " | ".join(f"epoch {e}" for e in range(1, epochs + 1))
    print(f"\n| seconds per epoch | {cols} | mean |\n|---|" + "---|" * (epochs + 1))
    for phase, values in phases.items():
        print(f"| {phase} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {np.mean(values):.2f} |")
    print("| training throughput, samples/s | " + " | ".join(f"{v:.1f}" for v in rate) + f" | {job_rate:.1f} |")
    print(f"\nin training, not in a phase above (batch to device, block bookkeeping): "
          f"{inside / epochs - sum(np.mean(phases[p]) for p in IN_TRAINING):.2f} s per epoch; start-up "
          f"(process start to the first epoch) {metrics[names.STARTUP_SECONDS]:.2f} s; registration "
          f"{metrics[names.REGISTRATION_SECONDS]:.2f} s")
    print(f"\njob training throughput {job_rate:.1f} samples/s; the step alone {step:.1f} samples/s "
          f"(median of {len(before + after)} rounds of {args.steps} steps, before and after the job): "
          f"**{job_rate / step:.1%}** of the step's rate")
    print(f"outside training: {1 - inside / wall:.1%} of the job's {wall:.1f} s wall (`mlflow run`, "
          f"{wall - inside:.1f} s); {metrics[names.OUTSIDE_TRAINING_FRACTION]:.1%} of the trainer "
          f"process's {metrics[names.JOB_SECONDS]:.1f} s")


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


def compare_precisions(args: argparse.Namespace) -> None:
    """fp32 and bf16 jobs: wall, losses, final IoU within noise, the picture."""
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

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--samples-per-epoch", type=int, default=0, help="0 = the preset's")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                    help="of the job and its step (auto: as the job resolves it)")
    ap.add_argument("--steps", type=int, default=20, help="training steps per round of the step alone")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the step alone, before and after the job")
    ap.add_argument("--compare-precisions", action="store_true", help="fp32 vs bf16 jobs instead")
    ap.add_argument("--repeat", type=int, default=1, choices=(1, 2), help="2 = ABBA order, best of each")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "precision_curves.png"),
                    help="where --compare-precisions saves the fp32 vs bf16 curves ('' = no picture)")
    args = ap.parse_args()
    if args.compare_precisions:
        compare_precisions(args)
    else:
        throughput(args)


if __name__ == "__main__":
    main()

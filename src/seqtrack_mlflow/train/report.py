"""report.md and the loss / IoU curve plots of a finished training run (real numbers only)."""

from __future__ import annotations

import math
import platform
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure  # a Figure object: no global backend, never a window

from seqtrack_mlflow import epoch_ranking, names, provenance
from seqtrack_mlflow.config import Config, TrainConfig
from seqtrack_mlflow.data.summary import COUNT_KEYS
from seqtrack_mlflow.train.progress import hms


def schedule_text(t: TrainConfig) -> str:
    """The lr schedule in words, e.g. 'warm-up 100 steps, then cosine to 0'."""
    if t.schedule == "cosine":
        return f"warm-up {t.warmup_steps} steps, then cosine to 0" if t.warmup_steps else "cosine to 0"
    return f"lr x{t.lr_drop_factor:g} after epoch {t.lr_drop_epoch}"


def reproduce_commands(run_id: str) -> list[str]:
    """Commands that train this run's exact config again: its logged config.yaml replayed."""
    return [f"mlflow artifacts download -r {run_id} -a {names.CONFIG_FILE} -d reproduce-{run_id[:8]}",
            f"python -m seqtrack_mlflow train --config reproduce-{run_id[:8]}/{names.CONFIG_FILE}",
            f"# or: mlflow run . --env-manager local -P config=reproduce-{run_id[:8]}/{names.CONFIG_FILE}"]


def render(cfg: Config, summary: dict[str, Any], history: list[dict[str, float]],
           manifest: list[dict[str, Any]], total_seconds: float, device: torch.device, run_id: str,
           no_motion_iou: float, phase_rows: list[dict[str, float]] | None = None,
           timing: dict[str, float] | None = None) -> str:
    # report.md top to bottom, one section after another: long, but linear.
    best_epoch, best = max(enumerate((h[names.ROW_VAL_IOU] for h in history), start=1), key=lambda e: e[1])
    chosen = epoch_ranking.best_in_history(history, range(1, len(history) + 1))
    tracked = chosen is not None and chosen[1] == names.VAL_AUC  # data.val_tracking was on
    lines = [
        "# SeqTrack training report", "",
        f"MLflow run `{run_id}`. Every number below was measured in this run.", "",
        "## Dataset information", "",
        f"- Source: {summary.get('source', cfg.data.source)}",
        f"- Selected classes: {', '.join(cfg.data.classes)}",
    ]
    classes = summary["classes"]
    columns = list(COUNT_KEYS)
    lines += ["", "| class | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, counts in classes.items():
        lines.append(f"| {name} | " + " | ".join(str(counts[c]) for c in columns) + " |")
    lines.append("| **total** | " + " | ".join(str(summary["total"].get(c, "")) for c in columns) + " |")
    lines += [
        "", "## Environment and training configuration", "",
        f"- Device: {device} (torch {torch.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()})",
        f"- Seed: {cfg.seed} (PYTHONHASHSEED, random, numpy, torch, CUDA; cudnn deterministic, "
        "benchmark off, deterministic algorithms)",
        f"- Epochs: {cfg.train.epochs}, batch size {cfg.train.batch_size}, workers {cfg.train.workers}, "
        f"samples per epoch {cfg.data.samples_per_epoch}, precision {cfg.train.precision}",
        f"- Model: patch size {cfg.model.patch_size}, search {cfg.model.search_size} px, templates "
        f"{cfg.model.num_templates} x {cfg.model.template_size} px, encoder {cfg.model.depth} x "
        f"{cfg.model.embed_dim}, decoder {cfg.model.decoder_layers} x {cfg.model.decoder_dim}, "
        f"{cfg.model.bins} bins",
        f"- Optimiser: AdamW lr {cfg.train.lr:g} (encoder x{cfg.train.encoder_lr_mult:g}), weight decay "
        f"{cfg.train.weight_decay:g}, {schedule_text(cfg.train)}, grad clip {cfg.train.grad_clip:g}, "
        f"{cfg.train.label_rounding} token labels",
        "", "## Training results", "",
        f"- Best IoU: {best:.4f} (validation, epoch {best_epoch})",
        *([f"- Best epoch: {chosen[0]} (tracking AUC {chosen[2]:.4f} on the held-out sequences, the highest; "
           "the epoch registered, mirrored and evaluated as 'best')"] if tracked else []),
        f"- No-motion baseline IoU: {no_motion_iou:.4f} (the previous frame's box as the answer; the "
        "validation crop is centred on it, so only a validation IoU above this shows localisation)",
        f"- Average loss per epoch: {sum(h['train_loss'] for h in history) / len(history):.6f} "
        "(mean of the per-epoch averages below)",
        f"- Total training time: {hms(total_seconds)} hours",
        *([f"- Sample draws redrawn because a frame was unreadable (data.skip_bad_sequences): {skipped}"]
          if (skipped := int(sum(h.get(names.ROW_SKIPPED, 0) for h in history))) else []),
        "", "| epoch | average train loss | validation IoU | best IoU so far |"
        + (" tracking AUC |" if tracked else "") + " seconds |",
        "|---|---|---|---|" + ("---|" if tracked else "") + "---|",
    ]
    for epoch, h in enumerate(history, start=1):
        lines.append(f"| {epoch} | {h['train_loss']:.6f} | {h['val_iou']:.4f} | {h['best_val_iou']:.4f} |"
                     + (f" {h.get('val_auc', math.nan):.4f} |" if tracked else "") + f" {h['seconds']:.1f} |")
    if phase_rows and timing:
        lines += time_lines(phase_rows, timing, len(history) - len(phase_rows) + 1)
    lines += ["", "## Checkpoints", "", "| file | bytes | sha256 |", "|---|---|---|"]
    for m in manifest:
        lines.append(f"| checkpoints/{m['file']} | {m['bytes']} | `{m['sha256']}` |")
    lines += ["", "Each holds model_state_dict, optimizer_state_dict, epoch and seed (plus scheduler, "
              "RNG states, config and metrics); load with `torch.load(path, weights_only=True)`.",
              "", "## Reproduce", "",
              f"Code: git commit `{provenance.git_commit()}`; data: {summary.get('source', cfg.data.source)}"
              + (f" (revision `{summary['revision']}`)" if summary.get("revision") else "") + ". "
              "The config below is the complete resolved config of this run (`config.yaml`); on the same "
              "machine type, torch build and thread count the results are bit-identical.", "",
              "```bash", *reproduce_commands(run_id), "```", ""]
    return "\n".join(lines)


def time_lines(phase_rows: list[dict[str, float]], timing: dict[str, float], first_epoch: int) -> list[str]:
    """'Where the time went': seconds per phase of each epoch trained in this process, and the job."""
    keys = list(phase_rows[0])
    lines = ["", "## Where the time went", "",
             f"Training throughput {timing[names.TRAIN_SAMPLES_PER_SECOND]:.1f} samples/s inside the training "
             f"blocks; {timing[names.OUTSIDE_TRAINING_FRACTION]:.1%} of the job's "
             f"{timing[names.JOB_SECONDS]:.0f} s (process start to the end of the registration, which took "
             f"{timing[names.REGISTRATION_SECONDS]:.1f} s) was spent outside them. Seconds per epoch "
             f"(`{names.PHASE_PREFIX}*` metrics):", "",
             "| epoch | " + " | ".join(k.replace("_", " ") for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for epoch, row in enumerate(phase_rows, start=first_epoch):
        lines.append(f"| {epoch} | " + " | ".join(f"{row[k]:.1f}" for k in keys) + " |")
    return lines


def save_plots(blocks: dict[str, list[tuple[int, float]]], history: list[dict[str, float]],
               folder: Path, no_motion_iou: float) -> list[Path]:
    """loss.png (per-block and per-epoch train loss) and iou.png (teacher-forced train IoU per
    block; validation IoU per epoch with the no-motion baseline of the validation samples as a
    dashed line), drawn from the values the trainer holds in memory."""
    folder.mkdir(parents=True, exist_ok=True)
    epochs = list(range(1, len(history) + 1))
    paths = []
    for name, block_key, block_title, epoch_key, ylabel in (
            ("loss.png", names.TRAIN_LOSS, "train/loss (every progress block)", names.ROW_TRAIN_LOSS,
             "cross-entropy loss"),
            ("iou.png", names.TRAIN_IOU, "train/iou, teacher-forced (every progress block)", names.ROW_VAL_IOU, "IoU")):
        fig = Figure(figsize=(10, 3.8))
        ax_block, ax_epoch = fig.subplots(1, 2)
        steps, values = zip(*blocks[block_key]) if blocks.get(block_key) else ((), ())
        ax_block.plot(steps, values, lw=1)
        ax_block.set(xlabel="training samples", ylabel=ylabel, title=block_title)
        ax_epoch.plot(epochs, [h[epoch_key] for h in history], marker="o", label=epoch_key)
        if name == "iou.png" and math.isfinite(no_motion_iou):
            ax_epoch.axhline(no_motion_iou, color="gray", ls="--", label="no-motion baseline")
        ax_epoch.set(xlabel="epoch", ylabel=ylabel, title="per epoch")
        ax_epoch.set_xticks(epochs)
        # Outside the axes, so the legend never hides a curve or the baseline.
        ax_epoch.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        for ax in (ax_block, ax_epoch):
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=100)
        paths.append(folder / name)
    return paths

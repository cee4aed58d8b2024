"""report.md and the loss / IoU curve plots of a finished training run (real numbers only)."""

from __future__ import annotations

import math
import platform
import shlex
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from seqtrack_mlflow.config import Config  # noqa: E402
from seqtrack_mlflow.data.summary import COUNT_KEYS  # noqa: E402
from seqtrack_mlflow.train.progress import hms  # noqa: E402


def reproduce_command(cfg: Config) -> str:
    """The `mlflow run` line that trains this exact config again."""
    params = {"epochs": cfg.train.epochs, "seed": cfg.seed, "batch_size": cfg.train.batch_size,
              "workers": cfg.train.workers, "patch_size": cfg.model.patch_size,
              "classes": ",".join(cfg.data.classes), "data": cfg.data.source,
              "samples_per_epoch": cfg.data.samples_per_epoch, "device": cfg.train.device,
              "precision": cfg.train.precision}
    return "mlflow run . " + " ".join(f"-P {k}={shlex.quote(str(v))}" for k, v in params.items())


def render(cfg: Config, summary: dict[str, Any], history: list[dict[str, float]],
           manifest: list[dict[str, Any]], total_seconds: float, device: torch.device, run_id: str,
           no_motion_iou: float) -> str:
    best_epoch, best = max(enumerate((h["val_iou"] for h in history), start=1), key=lambda e: e[1])
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
        f"{cfg.train.weight_decay:g}, lr x{cfg.train.lr_drop_factor:g} after epoch {cfg.train.lr_drop_epoch}, "
        f"grad clip {cfg.train.grad_clip:g}",
        "", "## Training results", "",
        f"- Best IoU: {best:.4f} (validation, epoch {best_epoch})",
        f"- No-motion baseline IoU: {no_motion_iou:.4f} (the previous frame's box as the answer; the "
        "validation crop is centred on it, so only a validation IoU above this shows localisation)",
        f"- Average loss per epoch: {sum(h['train_loss'] for h in history) / len(history):.6f} "
        "(mean of the per-epoch averages below)",
        f"- Total training time: {hms(total_seconds)} hours",
        "", "| epoch | average train loss | validation IoU | best IoU so far | seconds |",
        "|---|---|---|---|---|",
    ]
    for epoch, h in enumerate(history, start=1):
        lines.append(f"| {epoch} | {h['train_loss']:.6f} | {h['val_iou']:.4f} | {h['best_val_iou']:.4f} "
                     f"| {h['seconds']:.1f} |")
    lines += ["", "## Checkpoints", "", "| file | bytes | sha256 |", "|---|---|---|"]
    for m in manifest:
        lines.append(f"| checkpoints/{m['file']} | {m['bytes']} | `{m['sha256']}` |")
    lines += ["", "Each holds model_state_dict, optimizer_state_dict, epoch and seed (plus scheduler, "
              "RNG states, config and metrics); load with `torch.load(path, weights_only=True)`.",
              "", "## Reproduce", "", "```bash", reproduce_command(cfg), "```", ""]
    return "\n".join(lines)


def plot_curves(blocks: dict[str, list[tuple[int, float]]], history: list[dict[str, float]],
                folder: Path, no_motion_iou: float) -> list[Path]:
    """loss.png (per-block and per-epoch train loss) and iou.png (train and validation IoU,
    with the no-motion baseline of the validation samples as a dashed line)."""
    folder.mkdir(parents=True, exist_ok=True)
    epochs = list(range(1, len(history) + 1))
    paths = []
    for name, block_key, epoch_keys, ylabel in (
            ("loss.png", "train/loss", ["train_loss"], "cross-entropy loss"),
            ("iou.png", "train/iou", ["val_iou"], "IoU")):
        fig, (ax_block, ax_epoch) = plt.subplots(1, 2, figsize=(10, 3.8))
        steps, values = zip(*blocks[block_key]) if blocks.get(block_key) else ((), ())
        ax_block.plot(steps, values, lw=1)
        ax_block.set(xlabel="training samples", ylabel=ylabel, title=f"{block_key} (every progress block)")
        for key in epoch_keys:
            ax_epoch.plot(epochs, [h[key] for h in history], marker="o", label=key)
        if name == "iou.png" and math.isfinite(no_motion_iou):
            ax_epoch.axhline(no_motion_iou, color="gray", ls="--", label="no-motion baseline")
        ax_epoch.set(xlabel="epoch", ylabel=ylabel, title="per epoch")
        ax_epoch.set_xticks(epochs)
        ax_epoch.legend()
        for ax in (ax_block, ax_epoch):
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        paths.append(folder / name)
    return paths

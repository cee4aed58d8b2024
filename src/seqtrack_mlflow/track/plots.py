"""Evaluation figures: success / precision plots (matplotlib, Agg) and a tracking GIF (Pillow).

The plots follow the toolkit's (`plot_results.py`): x = threshold, y = success or precision
rate, the score in the legend (AUC for success, the value at 20 px / 0.2 for precision). The
overall curve is drawn bold; each sequence's curve is a thin line behind it.

The GIF shows every k-th frame (k chosen so that at most `max_frames` frames are kept), scaled
so the longer side is at most `max_side` pixels: ground truth in green (only where the target
is visible), prediction in red, frame number in the corner. A 2500-frame LaSOT video becomes
~40 frames of 240 px in 64 colours: a few hundred KB (the textured sample frames, 34 frames:
~0.7 MB).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from seqtrack_mlflow.geometry import xywh_to_xyxy
from seqtrack_mlflow.track.metrics import NORM_PRECISION_AT, PRECISION_AT, Curves

# Saturated cyan and magenta: colours the sample scenes (and most LaSOT videos) rarely contain,
# unlike the green/red of targets, distractors and foliage.
GT_COLOR = (0, 255, 255)
PRED_COLOR = (255, 0, 255)
LEGEND_HEIGHT = 14  # px: the band under each GIF frame naming the two box colours


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Figure, object]:
    fig = Figure(figsize=(5.5, 4.5), dpi=100)  # no pyplot: no global state, no GUI backend
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.grid(True, linestyle="--", alpha=0.4)
    return fig, ax


def _plot(path: str | Path, kind: str, overall: Curves, per_sequence: dict[str, Curves], title: str = "") -> Path:
    """kind: 'success' | 'precision' | 'norm_precision'; `title` (run and epoch) is appended."""
    if kind == "success":
        fig, ax = _figure("Success plot of OPE", "Overlap threshold", "Overlap Precision [%]")
        x, pick, score = overall.overlap_thresholds, (lambda c: c.success), (lambda c: c.auc)
        label = "AUC"
    elif kind == "precision":
        fig, ax = _figure("Precision plot of OPE", "Location error threshold [pixels]",
                          "Distance Precision [%]")
        x, pick, score = overall.center_thresholds, (lambda c: c.precision), (lambda c: c.precision_at())
        label = f"P@{PRECISION_AT:g}px"
    elif kind == "norm_precision":
        fig, ax = _figure("Normalized precision plot of OPE", "Location error threshold",
                          "Distance Precision [%]")
        x, pick, score = (overall.norm_thresholds, (lambda c: c.norm_precision),
                          (lambda c: c.norm_precision_at()))
        label = f"Pnorm@{NORM_PRECISION_AT:g}"
    else:
        raise ValueError(f"unknown plot kind {kind!r}")
    for name, curves in per_sequence.items():
        ax.plot(x, 100 * pick(curves), linewidth=0.8, alpha=0.5,
                label=f"{name} [{100 * score(curves):.1f}]")
    ax.plot(x, 100 * pick(overall), color="black", linewidth=2.2,
            label=f"overall {label} [{100 * score(overall):.1f}]")
    ax.set_xlim(float(x[0]), float(x[-1]))
    if title:
        ax.set_title(f"{ax.get_title()}\n{title}", fontsize=10)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def save_plots(folder: str | Path, overall: Curves, per_sequence: dict[str, Curves], title: str = "") -> list[Path]:
    """success_plot.png, precision_plot.png, norm_precision_plot.png in folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [_plot(folder / f"{kind}_plot.png", kind, overall, per_sequence, title)
            for kind in ("success", "precision", "norm_precision")]


def gif_frame_indices(num_frames: int, max_frames: int) -> list[int]:
    """Every k-th frame from 0, k = ceil(num_frames / max_frames): at most max_frames indices."""
    if num_frames < 1 or max_frames < 1:
        raise ValueError("need at least one frame")
    step = math.ceil(num_frames / max_frames)
    return list(range(0, num_frames, step))


def write_tracking_gif(path: str | Path, frame_at: Callable[[int], np.ndarray], gt_xywh: np.ndarray,
                       pred_xywh: np.ndarray, visible: np.ndarray | None = None,
                       max_frames: int = 40, max_side: int = 240, colors: int = 64,
                       duration_ms: int = 100, title: str = "") -> int:
    """Animated GIF of the subsampled frames with truth (cyan) and predicted (magenta) boxes,
    a legend band under each frame and `title` (sequence, run, epoch) above it.

    `frame_at(i)` decodes frame i; only the kept frames are decoded. Returns the frame count.
    """
    gt = np.asarray(gt_xywh, dtype=np.float64)
    pred = np.asarray(pred_xywh, dtype=np.float64)
    if gt.shape != pred.shape:
        raise ValueError(f"{len(pred)} predictions for {len(gt)} ground-truth frames")
    visible = np.ones(len(gt), bool) if visible is None else np.asarray(visible, bool)
    images = []
    for i in gif_frame_indices(len(gt), max_frames):
        img = Image.fromarray(frame_at(i))
        scale = min(1.0, max_side / max(img.size))
        if scale < 1.0:
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                             Image.Resampling.BILINEAR)
        draw = ImageDraw.Draw(img)
        if visible[i]:
            draw.rectangle((xywh_to_xyxy(gt[i]) * scale).tolist(), outline=GT_COLOR, width=2)
        draw.rectangle((xywh_to_xyxy(pred[i]) * scale).tolist(), outline=PRED_COLOR, width=2)
        # 1-based like the JPEG names; also keeps Pillow from merging two identical frames
        draw.text((3, 2), f"#{i + 1}", fill=(255, 255, 255))
        images.append(_with_legend(img, title).convert("P", palette=Image.Palette.ADAPTIVE, colors=colors))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return len(images)


def _with_legend(img: Image.Image, title: str) -> Image.Image:
    """The frame between a title band (if any) and a legend band: 'truth' and 'prediction' in
    their box colours on black."""
    top = LEGEND_HEIGHT if title else 0
    canvas = Image.new("RGB", (img.width, img.height + top + LEGEND_HEIGHT), (0, 0, 0))
    canvas.paste(img, (0, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((3, 2), title, fill=(255, 255, 255))
    y = top + img.height + 2
    x = 3
    for label, color in (("truth", GT_COLOR), ("prediction", PRED_COLOR)):
        draw.rectangle((x, y + 1, x + 14, y + 9), outline=color, width=2)
        draw.text((x + 18, y), label, fill=color)
        x += 18 + 7 * len(label) + 12
    return canvas

"""A picture of training samples: templates and search crop with the target box drawn.

`python -m seqtrack_mlflow debug-samples --count 8 --out samples.png` draws one row per
sample (epoch 0, indices 0..count-1): the de-normalised templates (resized to the search crop
height) then the search crop with its box in green. Use it to check crops and boxes by eye.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from seqtrack_mlflow.config import Config
from seqtrack_mlflow.data.transforms import denormalize

log = logging.getLogger(__name__)

GAP = 4  # pixels between tiles
HEADER = 14  # pixels of the caption row above the columns


def render_samples(items: list[dict[str, torch.Tensor]]) -> Image.Image:
    """One row per item: templates, then the search crop with its box (cxcywh / S) drawn."""
    if not items:
        raise ValueError("no samples to draw")
    side = items[0]["search"].shape[-1]
    n_t = items[0]["templates"].shape[0]
    width = (n_t + 1) * (side + GAP) + GAP
    sheet = Image.new("RGB", (width, HEADER + len(items) * (side + GAP) + GAP), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    captions = [f"template {j + 1}" for j in range(n_t)] + ["search + box"]
    for j, caption in enumerate(captions):
        draw.text((GAP + j * (side + GAP), 2), caption, fill=(230, 230, 230))
    for r, item in enumerate(items):
        y = HEADER + GAP + r * (side + GAP)
        for j in range(n_t):
            tile = Image.fromarray(denormalize(item["templates"][j])).resize((side, side), Image.NEAREST)
            sheet.paste(tile, (GAP + j * (side + GAP), y))
        search = Image.fromarray(denormalize(item["search"]))
        cx, cy, w, h = (float(v) * side for v in item["box"])
        ImageDraw.Draw(search).rectangle((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2),
                                         outline=(0, 255, 0), width=1)
        sheet.paste(search, (GAP + n_t * (side + GAP), y))
    return sheet


def save_sample_sheet(cfg: Config, count: int, out: Path) -> int:
    """Draw the first `count` training samples of epoch 0 into a PNG; returns how many."""
    from seqtrack_mlflow.data.dataset import open_dataset
    from seqtrack_mlflow.data.sampler import TrainSamples

    samples = TrainSamples(open_dataset(cfg.data), cfg, epoch=0)
    count = max(1, min(int(count), len(samples)))
    sheet = render_samples([samples[i] for i in range(count)])
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return count

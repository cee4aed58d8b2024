"""What the trainer measures on the held-out sequences after each epoch (main rank only):

- validation IoU: greedy autoregressive boxes (Hanning window on) on fixed held-out samples,
  decoded at the training precision; its bar is the no-motion IoU of the same samples;
- held-out tracking (data.val_tracking): the held-out sequences tracked in closed loop exactly as
  `evaluate` does (fp32, the `track` settings), scored by `track.scoring`, so epoch/val_auc
  equals evaluate's eval/auc for the same checkpoint.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from seqtrack_mlflow.config import Config
from seqtrack_mlflow.data.dataset import test_split
from seqtrack_mlflow.data.sampler import ValidationSamples
from seqtrack_mlflow.geometry import cxcywh_to_xywh, iou_xywh
from seqtrack_mlflow.model import tokens_to_boxes
from seqtrack_mlflow.track.scoring import tracker_config, tracking_scores
from seqtrack_mlflow.train.device import autocast

log = logging.getLogger(__name__)


def validation_samples(dataset, cfg: Config) -> ValidationSamples | None:
    """The fixed held-out samples of validation IoU, None when there are none."""
    if not dataset.test or cfg.data.val_samples == 0:
        log.warning("no held-out sequences: validation IoU is not computed")
        return None
    return ValidationSamples(dataset, cfg)


def validation_iou(model: torch.nn.Module, samples, cfg: Config, device: torch.device) -> float:
    """Mean IoU of greedy autoregressive boxes (Hanning window on) on held-out samples."""
    if samples is None or len(samples) == 0:
        return math.nan
    return float(validation_ious(model, samples, cfg, device).mean())


@torch.no_grad()
def validation_ious(model: torch.nn.Module, samples, cfg: Config, device: torch.device) -> np.ndarray:
    """IoU per held-out sample of the greedy autoregressive box (Hanning window on), decoded at
    cfg.train.precision in batches of cfg.train.batch_size. Leaves the model in eval mode."""
    model.eval()
    ious = []
    loader = DataLoader(samples, batch_size=cfg.train.batch_size, shuffle=False, num_workers=0)
    for batch in loader:
        templates = [t.to(device) for t in batch["templates"].unbind(1)]
        with autocast(device, cfg.train.precision):
            tokens, _ = model.predict(templates, batch["search"].to(device), window=True)
        pred = cxcywh_to_xywh(tokens_to_boxes(tokens, cfg.model.bins).float().cpu().numpy())
        ious.append(iou_xywh(pred, cxcywh_to_xywh(batch["box"].numpy())))
    return np.concatenate(ious)


def track_held_out(model: torch.nn.Module, dataset, cfg: Config, device: torch.device) -> dict[str, float]:
    """{auc, precision, norm_precision} of tracking the held-out sequences in closed loop, as
    `evaluate` does; {} when data.val_tracking leaves it off or there are none."""
    d = cfg.data
    tracks = d.val_tracking == "always" or (d.val_tracking == "auto" and d.source == "sample")
    sequences = test_split(dataset)  # the sequences `evaluate` of this run scores
    if not (tracks and sequences):
        return {}
    t0 = time.perf_counter()
    scores = tracking_scores(model, tracker_config(cfg, cfg.track), sequences, device)
    log.info("tracked the %d held-out sequences: AUC %.4f (%.1f s)", len(sequences), scores["auc"],
             time.perf_counter() - t0)
    return scores

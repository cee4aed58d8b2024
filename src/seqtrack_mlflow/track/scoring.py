"""Scoring tracked sequences with the LaSOT metrics, shared by `evaluate` and the trainer's
per-epoch tracking of the held-out sequences (data.val_tracking), so both give the same values.

Metric conventions (see metrics.py): pytracking's LaSOT protocol, invisible frames count as
failures; overall = mean of the per-sequence curves; the first-frame box on every frame is
scored the same way as the floor (`static_*`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from seqtrack_mlflow.config import Config, TrackConfig
from seqtrack_mlflow.data.frames import read_frame
from seqtrack_mlflow.track import metrics as M
from seqtrack_mlflow.track.tracker import SeqTrackTracker, SequenceResult, TrackerConfig, track_frames


def score_sequences(results: list[SequenceResult], sequences: list[Any]) -> dict[str, Any]:
    """metrics.json content: per sequence and overall scores, and the overall curves."""
    per_seq, curves, static_curves = {}, {}, []
    for res, seq in zip(results, sequences):
        c = M.sequence_curves(res.boxes, seq.boxes, seq.visible)
        curves[seq.name] = c
        # The floor: the first-frame box on every frame, scored with the same code.
        static = M.sequence_curves(M.static_predictions(seq.boxes), seq.boxes, seq.visible)
        static_curves.append(static)
        per_seq[seq.name] = {**c.scores(), **{f"static_{k}": v for k, v in static.scores().items()},
                             "mean_iou": M.mean_iou(res.boxes, seq.boxes, seq.visible),
                             "fps": res.fps, "frames": len(seq.boxes),
                             "visible_frames": int(np.asarray(seq.visible).sum()),
                             "skipped": res.skipped}
    overall = M.average_curves(list(curves.values()))
    frames = sum(len(r.times) for r in results)
    seconds = float(sum(r.times.sum() for r in results))
    static_overall = M.average_curves(static_curves)
    summary = {**overall.scores(), **{f"static_{k}": v for k, v in static_overall.scores().items()},
               "mean_iou": float(np.mean([s["mean_iou"] for s in per_seq.values()])),
               "fps": frames / seconds if seconds > 0 else float("inf"),
               "frames": frames, "sequences": len(results)}
    return {"overall": summary, "sequences": per_seq, "curves": curves, "overall_curves": overall}


def tracker_config(trained: Config, track: TrackConfig) -> TrackerConfig:
    """The tracker for a model trained with `trained`: its crop factors and sizes, `track`'s rest."""
    return TrackerConfig(
        template_factor=trained.data.template_factor, template_size=trained.model.template_size,
        search_factor=trained.data.search_factor, search_size=trained.model.search_size,
        num_templates=trained.model.num_templates, **dataclasses.asdict(track))


def tracking_scores(model: Any, tcfg: TrackerConfig, sequences: list[Any], device: Any) -> dict[str, float]:
    """Overall AUC, precision and norm_precision of tracking `sequences` in closed loop, nothing
    written: the trainer's per-epoch check (data.val_tracking). The same tracker, frames and
    scoring as `evaluate` (fp32: call it outside autocast), so the values equal its eval/*."""
    results = []
    for seq in sequences:
        frames = (read_frame(seq.frame_path(i)) for i in range(len(seq.boxes)))
        boxes, times = track_frames(SeqTrackTracker(model, tcfg, device), frames, seq.boxes[0])
        results.append(SequenceResult(seq.name, boxes, times))
    overall = score_sequences(results, sequences)["overall"]  # evaluate's scoring, not a copy of it
    return {key: overall[key] for key in ("auc", "precision", "norm_precision")}

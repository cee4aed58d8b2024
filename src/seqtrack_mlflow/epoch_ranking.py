"""Which epoch is "best": one rule for evaluate, the model registry, the Hub mirror and uploader.

An epoch's score is its closed-loop tracking AUC on the held-out sequences (`epoch/val_auc`,
measured after each epoch when `data.val_tracking` is on) if the run measured it, else its
validation IoU (`epoch/val_iou`); the highest score wins, the earliest epoch on ties. Why AUC
first: the validation crops are centred on the previous true box, so a model that answers "the
centre" scores well there; on the sample data the highest validation IoU is epoch 1, a model that
tracks at 5% AUC (benchmarks/results/learning.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from seqtrack_mlflow import experiment, names

SCORES = ((names.ROW_VAL_AUC, names.VAL_AUC), (names.ROW_VAL_IOU, names.VAL_IOU))
"""(history key, MLflow metric) in order of preference."""


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def best_epoch(points: Iterable[tuple[int, float]], available: Iterable[int]) -> tuple[int, float] | None:
    """(epoch, value) of the highest finite value among `available` epochs; earliest on ties."""
    allowed = set(available)
    candidates = [(int(e), float(v)) for e, v in points if e in allowed and _finite(v)]
    return max(candidates, key=lambda p: (p[1], -p[0])) if candidates else None


def history_points(history: Any, key: str) -> list[tuple[int, float]]:
    """(epoch, history[key]) from a checkpoint's `metrics` list (one dict per epoch, from 1)."""
    if not isinstance(history, list):
        return []
    return [(int(h.get("epoch", i + 1)), float(h[key])) for i, h in enumerate(history)
            if isinstance(h, Mapping) and _finite(h.get(key))]


def best_in_history(history: Any, available: Iterable[int]) -> tuple[int, str, float] | None:
    """(epoch, metric name, value) by the rule above, from a trainer history / checkpoint."""
    available = list(available)
    for key, metric in SCORES:
        best = best_epoch(history_points(history, key), available)
        if best is not None:
            return best[0], metric, best[1]
    return None


def best_of_run(run_id: str, available: list[int],
                last_history: Callable[[], Any]) -> tuple[int, str, float] | None:
    """(epoch, metric name, value) by the rule above from the run's logged metrics; if it logged
    none, from the history in its last checkpoint (`last_history()` is called only then)."""
    for _, metric in SCORES:
        best = best_epoch(experiment.metric_points(run_id, metric), available)
        if best is not None:
            return best[0], metric, best[1]
    return best_in_history(last_history(), available)


def row_score(row: Mapping[str, Any]) -> float:
    """One epoch's score (its val_auc, else its val_iou; NaN if neither). Every epoch of a run
    has the same metrics (data.val_tracking cannot change on resume), so scores compare."""
    return next((float(row[key]) for key, _ in SCORES if _finite(row.get(key))), math.nan)


def describe(metric: str, value: float) -> str:
    """'best epoch/val_auc=0.2480' (what evaluate and the mirror report as the reason)."""
    return f"best {metric}={value:.4f}"


def run_bests(history: list[Mapping[str, Any]]) -> dict[str, float]:
    """The run-level bests after the last epoch of `history`: the epoch this rule picks
    (epoch/best_epoch) and the highest val AUC so far (epoch/best_val_auc, when measured);
    epoch/best_val_iou is in each epoch's own row."""
    out: dict[str, float] = {}
    best = best_in_history(history, range(1, len(history) + 1))
    if best is not None:
        out[names.BEST_EPOCH] = float(best[0])
    auc = best_epoch(history_points(history, "val_auc"), range(1, len(history) + 1))
    if auc is not None:
        out[names.BEST_VAL_AUC] = auc[1]
    return out

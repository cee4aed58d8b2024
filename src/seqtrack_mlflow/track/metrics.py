"""LaSOT one-pass-evaluation metrics: success (AUC), precision (P@20 px), normalised precision.

Pure functions over explicit threshold arrays. They follow the analysis code SeqTrack's own
numbers come from (pytracking's `lib/test/analysis/extract_results.py` and `plot_results.py`
in microsoft/VideoX SeqTrack, driven by `tracking/analysis_results.py`):

- Per frame (`sequence_errors`, = `calc_seq_err_robust`): the first frame is scored as the
  ground truth (the tracker was given it); a prediction of zero width or height is replaced by
  the previous frame's; IoU from `geometry.iou_xywh`; centre error in pixels and normalised by
  the ground-truth w, h. The toolkit's "+1 pixel" corners (`x2 = x + w - 1`, centre
  `x + (w - 1) / 2`) cancel in both IoU and centre *differences*, so continuous corners give the
  same numbers (tested).
- Frames that are not valid (target fully occluded or out of view, or a gt box with w <= 0 or
  h <= 0) get IoU -1 and centre error +inf: they count as failures at every threshold and stay
  in the denominator, as pytracking does by default (`exclude_invalid_frames=False`), which is
  the protocol of the paper's LaSOT figures. `exclude_invalid=True` drops them from the
  denominator instead, like the LaSOT MATLAB toolkit's `calc_seq_err_robust.m`, which deletes
  absent frames before scoring. Either way a sequence with no valid frame is an error.
- Success curve: fraction of frames with IoU *strictly greater* than each threshold of
  0:0.05:1 (toolkit: `err_overlap > threshold`); AUC = the mean of that 21-point curve.
  Precision curves: fraction of frames with error *less than or equal to* each threshold
  (0..50 px; 0..0.5 normalised); P = curve at 20 px, Pnorm = curve at 0.2.
- Overall: the per-sequence curves are averaged with equal weight per sequence
  (`ave_success_rate_plot_*.mean(0)`), then AUC / P / Pnorm are read off the averaged curves;
  long sequences do not dominate.

All scores here are fractions in [0, 1]; the toolkit prints them x100.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seqtrack_mlflow.geometry import iou_xywh, xywh_to_cxcywh

# Threshold sets of the toolkit (extract_results: arange(0, 1.05, 0.05), arange(0, 51),
# arange(0, 51) / 100). linspace avoids arange's floating-point end point surprises.
OVERLAP_THRESHOLDS = np.linspace(0.0, 1.0, 21)
CENTER_THRESHOLDS = np.arange(0, 51, dtype=np.float64)  # pixels
NORM_CENTER_THRESHOLDS = np.arange(0, 51, dtype=np.float64) / 100.0
for _t in (OVERLAP_THRESHOLDS, CENTER_THRESHOLDS, NORM_CENTER_THRESHOLDS):
    _t.setflags(write=False)  # shared defaults: never modified in place
PRECISION_AT = 20.0  # pixels (plot_results: prec_curve[:, 20])
NORM_PRECISION_AT = 0.2


@dataclass(frozen=True)
class SequenceErrors:
    """Per-frame errors of one sequence, as `calc_seq_err_robust` returns them."""

    iou: np.ndarray  # (N,) IoU, -1 on invalid frames
    center: np.ndarray  # (N,) centre error in pixels, +inf on invalid frames
    norm_center: np.ndarray  # (N,) centre error / gt (w, h), +inf on invalid frames
    valid: np.ndarray  # (N,) bool: visible and gt w > 0, h > 0


@dataclass(frozen=True)
class Curves:
    """Success and precision curves over the thresholds they were computed on."""

    success: np.ndarray  # (len(overlap_thresholds),)
    precision: np.ndarray  # (len(center_thresholds),)
    norm_precision: np.ndarray  # (len(norm_thresholds),)
    overlap_thresholds: np.ndarray
    center_thresholds: np.ndarray
    norm_thresholds: np.ndarray

    @property
    def auc(self) -> float:
        """Success AUC: mean of the success curve (plot_results.get_auc_curve)."""
        return float(np.mean(self.success))

    def precision_at(self, pixels: float = PRECISION_AT) -> float:
        return _curve_at(self.precision, self.center_thresholds, pixels)

    def norm_precision_at(self, threshold: float = NORM_PRECISION_AT) -> float:
        return _curve_at(self.norm_precision, self.norm_thresholds, threshold)

    def scores(self) -> dict[str, float]:
        """{'auc', 'precision', 'norm_precision'} in [0, 1] (P@20 px, Pnorm@0.2)."""
        return {"auc": self.auc, "precision": self.precision_at(), "norm_precision": self.norm_precision_at()}


def _curve_at(curve: np.ndarray, thresholds: np.ndarray, value: float) -> float:
    hits = np.flatnonzero(np.isclose(thresholds, value))
    if hits.size == 0:
        raise ValueError(f"threshold {value} is not in the threshold set {thresholds.tolist()}")
    return float(curve[hits[0]])


def _check_boxes(name: str, boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), got {boxes.shape}")
    if not np.isfinite(boxes).all():
        bad = int(np.flatnonzero(~np.isfinite(boxes).all(axis=1))[0])
        raise ValueError(f"{name} has NaN or inf at frame {bad}")
    return boxes


def _check_thresholds(name: str, thresholds: np.ndarray) -> np.ndarray:
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim != 1 or thresholds.size == 0 or not np.isfinite(thresholds).all():
        raise ValueError(f"{name} must be a non-empty 1-D array of finite numbers")
    return thresholds


def sequence_errors(pred_xywh: np.ndarray, gt_xywh: np.ndarray,
                    visible: np.ndarray | None = None) -> SequenceErrors:
    """Per-frame IoU and centre errors of one sequence (pytracking `calc_seq_err_robust`).

    Raises ValueError on NaN/inf predictions or ground truth, negative predicted sizes, or
    a number of predictions different from the number of ground-truth frames.
    """
    pred = _check_boxes("predictions", pred_xywh)
    gt = _check_boxes("ground truth", gt_xywh)
    if pred.shape[0] != gt.shape[0]:
        raise ValueError(f"{pred.shape[0]} predictions for {gt.shape[0]} ground-truth frames")
    if pred.shape[0] == 0:
        raise ValueError("empty sequence")
    if (pred[:, 2:] < 0).any():
        frame = int(np.flatnonzero((pred[:, 2:] < 0).any(axis=1))[0])
        raise ValueError(f"negative predicted size at frame {frame}")
    if visible is None:
        visible = np.ones(gt.shape[0], dtype=bool)
    visible = np.asarray(visible, dtype=bool)
    if visible.shape != (gt.shape[0],):
        raise ValueError(f"visible must have shape ({gt.shape[0]},), got {visible.shape}")

    pred = pred.copy()
    # A zero-size prediction keeps the previous frame's box (the toolkit's loop, in order).
    for i in range(1, pred.shape[0]):
        if (pred[i, 2:] == 0).any():
            pred[i] = pred[i - 1]
    pred[0] = gt[0]  # the first frame is the initialisation, never scored against the tracker

    valid = visible & (gt[:, 2:] > 0).all(axis=1)
    iou = np.where(valid, iou_xywh(pred, gt), -1.0)
    diff = xywh_to_cxcywh(pred)[:, :2] - xywh_to_cxcywh(gt)[:, :2]  # (N, 2) pixels
    center = np.where(valid, np.sqrt((diff ** 2).sum(axis=1)), np.inf)
    safe_wh = np.where(gt[:, 2:] > 0, gt[:, 2:], 1.0)
    norm_center = np.where(valid, np.sqrt(((diff / safe_wh) ** 2).sum(axis=1)), np.inf)
    return SequenceErrors(iou=iou, center=center, norm_center=norm_center, valid=valid)


def success_curve(iou: np.ndarray, thresholds: np.ndarray = OVERLAP_THRESHOLDS,
                  denominator: int | None = None) -> np.ndarray:
    """Fraction of frames with IoU > threshold (strict, as the toolkit). Invalid frames carry
    IoU -1 and so never succeed; `denominator` defaults to the number of frames."""
    iou = np.asarray(iou, dtype=np.float64)
    if np.isnan(iou).any():
        raise ValueError("IoU contains NaN")
    thresholds = _check_thresholds("overlap thresholds", thresholds)
    n = iou.size if denominator is None else denominator
    if n <= 0:
        raise ValueError("success curve of a sequence without frames")
    return (iou[:, None] > thresholds[None, :]).sum(axis=0) / n


def precision_curve(errors: np.ndarray, thresholds: np.ndarray = CENTER_THRESHOLDS,
                    denominator: int | None = None) -> np.ndarray:
    """Fraction of frames with centre error <= threshold (inclusive, as the toolkit); invalid
    frames carry +inf and never count. Also used for the normalised precision."""
    errors = np.asarray(errors, dtype=np.float64)
    if np.isnan(errors).any():
        raise ValueError("centre errors contain NaN")
    thresholds = _check_thresholds("centre thresholds", thresholds)
    n = errors.size if denominator is None else denominator
    if n <= 0:
        raise ValueError("precision curve of a sequence without frames")
    return (errors[:, None] <= thresholds[None, :]).sum(axis=0) / n


def sequence_curves(pred_xywh: np.ndarray, gt_xywh: np.ndarray, visible: np.ndarray | None = None,
                    exclude_invalid: bool = False,
                    overlap_thresholds: np.ndarray = OVERLAP_THRESHOLDS,
                    center_thresholds: np.ndarray = CENTER_THRESHOLDS,
                    norm_thresholds: np.ndarray = NORM_CENTER_THRESHOLDS) -> Curves:
    """Success / precision / normalised-precision curves of one sequence.

    exclude_invalid=False (default, pytracking): invalid frames are failures and stay in the
    denominator. True (LaSOT MATLAB toolkit): they are left out of it.
    """
    err = sequence_errors(pred_xywh, gt_xywh, visible)
    n = int(err.valid.sum()) if exclude_invalid else err.valid.size
    if int(err.valid.sum()) == 0:
        raise ValueError("sequence has no valid frame (target never visible with a positive-size box)")
    return Curves(
        success=success_curve(err.iou, overlap_thresholds, n),
        precision=precision_curve(err.center, center_thresholds, n),
        norm_precision=precision_curve(err.norm_center, norm_thresholds, n),
        overlap_thresholds=np.asarray(overlap_thresholds, dtype=np.float64),
        center_thresholds=np.asarray(center_thresholds, dtype=np.float64),
        norm_thresholds=np.asarray(norm_thresholds, dtype=np.float64),
    )


def static_predictions(gt_xywh: np.ndarray) -> np.ndarray:
    """The boxes of a tracker that never moves: the first frame's (given) box on every frame.

    Scored like any tracker, it is the floor a learned tracker must clear on a benchmark: on
    slow targets it already overlaps for a while (evaluate logs it as `eval/static_*`)."""
    gt = _check_boxes("ground truth", gt_xywh)
    if gt.shape[0] == 0:
        raise ValueError("empty sequence")
    return np.repeat(gt[:1], gt.shape[0], axis=0)


def mean_iou(pred_xywh: np.ndarray, gt_xywh: np.ndarray, visible: np.ndarray | None = None) -> float:
    """Average overlap over valid frames (extract_results' `avg_overlap_all`)."""
    err = sequence_errors(pred_xywh, gt_xywh, visible)
    if not err.valid.any():
        raise ValueError("sequence has no valid frame")
    return float(err.iou[err.valid].mean())


def average_curves(curves: list[Curves]) -> Curves:
    """Overall curves: equal-weight mean of per-sequence curves (plot_results: `.mean(0)`)."""
    if not curves:
        raise ValueError("no sequences to average")
    first = curves[0]
    for c in curves[1:]:
        if not (np.array_equal(c.overlap_thresholds, first.overlap_thresholds)
                and np.array_equal(c.center_thresholds, first.center_thresholds)
                and np.array_equal(c.norm_thresholds, first.norm_thresholds)):
            raise ValueError("curves computed on different threshold sets cannot be averaged")
    return Curves(
        success=np.mean([c.success for c in curves], axis=0),
        precision=np.mean([c.precision for c in curves], axis=0),
        norm_precision=np.mean([c.norm_precision for c in curves], axis=0),
        overlap_thresholds=first.overlap_thresholds,
        center_thresholds=first.center_thresholds,
        norm_thresholds=first.norm_thresholds,
    )

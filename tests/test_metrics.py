"""LaSOT metrics against hand-computed cases and the toolkit's own conventions."""

from __future__ import annotations

import numpy as np
import pytest

from seqtrack_mlflow.track import metrics as M

GT = np.array([0.0, 0.0, 10.0, 10.0])


def seq(*preds, gt=GT):
    """Sequences start with a frame the toolkit scores as perfect (it is the init box)."""
    pred = np.array([gt, *preds], dtype=float)
    return pred, np.tile(gt, (len(pred), 1))


def test_threshold_sets_are_the_toolkits():
    assert M.OVERLAP_THRESHOLDS.shape == (21,)
    assert np.allclose(M.OVERLAP_THRESHOLDS, np.arange(21) * 0.05)
    assert np.array_equal(M.CENTER_THRESHOLDS, np.arange(51))
    assert np.allclose(M.NORM_CENTER_THRESHOLDS, np.arange(51) / 100)
    assert M.CENTER_THRESHOLDS[20] == 20 and np.isclose(M.NORM_CENTER_THRESHOLDS[20], 0.2)


def test_perfect_tracking():
    pred, gt = seq(GT, GT, GT)
    c = M.sequence_curves(pred, gt)
    # IoU 1 > t for every t < 1, but not for t = 1 (strict, as the toolkit): AUC 20/21.
    assert np.array_equal(c.success, [1.0] * 20 + [0.0])
    assert c.auc == pytest.approx(20 / 21)
    assert c.precision_at() == 1.0 and c.norm_precision_at() == 1.0
    assert np.all(c.precision == 1.0)  # error 0 <= 0 counts (inclusive)


def test_disjoint_boxes():
    pred, gt = seq([20.0, 20.0, 10.0, 10.0])  # IoU 0, centre error sqrt(800) = 28.28 px
    c = M.sequence_curves(pred, gt)
    assert np.allclose(c.success, [0.5] * 20 + [0.0])  # IoU 0 is not > 0
    assert c.auc == pytest.approx(10 / 21)
    assert c.precision_at(20) == 0.5 and c.precision_at(28) == 0.5 and c.precision_at(29) == 1.0
    # normalised: (20/10, 20/10) -> 2.83 > 0.5
    assert c.norm_precision_at() == 0.5 and c.norm_precision[-1] == 0.5


def test_partial_overlap_and_threshold_edges():
    # IoU of [5,0,10,10] with [0,0,10,10]: 50 / 150 = 1/3, centre error 5 px, normalised 0.5.
    pred, gt = seq([5.0, 0.0, 10.0, 10.0])
    err = M.sequence_errors(pred, gt)
    assert err.iou[1] == pytest.approx(1 / 3)
    assert err.center[1] == pytest.approx(5.0) and err.norm_center[1] == pytest.approx(0.5)
    c = M.sequence_curves(pred, gt)
    assert np.allclose(c.success[:7], 1.0) and np.allclose(c.success[7:20], 0.5)  # 1/3 > 0.30
    assert c.norm_precision[-1] == 1.0  # 0.5 <= 0.5: inclusive
    assert c.precision_at(4) == 0.5 and c.precision_at(5) == 1.0
    # exactly IoU 0.5 does not pass threshold 0.5; exactly 20 px passes 20 px.
    pred, gt = seq([0.0, 0.0, 10.0, 5.0], [20.0, 0.0, 10.0, 10.0])
    c = M.sequence_curves(pred, gt)
    err = M.sequence_errors(pred, gt)
    assert err.iou[1] == 0.5 and err.center[2] == 20.0
    assert c.success[10] == pytest.approx(1 / 3)  # t = 0.5: only the init frame
    assert c.success[9] == pytest.approx(2 / 3)
    assert c.precision_at(20) == 1.0


def test_first_frame_is_scored_as_ground_truth_and_zero_size_keeps_previous():
    gt = np.tile(GT, (3, 1))
    pred = np.array([[50, 50, 5, 5], [5, 0, 10, 10], [0, 0, 0, 0]], dtype=float)
    err = M.sequence_errors(pred, gt)
    assert err.iou[0] == 1.0  # frame 0 replaced by its ground truth
    assert err.iou[2] == pytest.approx(err.iou[1]) == pytest.approx(1 / 3)  # zero size -> previous


def test_zero_size_ground_truth_is_invalid():
    gt = np.array([GT, [0, 0, 0, 0], GT])
    pred = np.array([GT, GT, GT])
    err = M.sequence_errors(pred, gt)
    assert err.valid.tolist() == [True, False, True]
    assert err.iou[1] == -1.0 and np.isinf(err.center[1]) and np.isinf(err.norm_center[1])


def test_invisible_frames_count_as_failures_by_default_and_can_be_excluded():
    gt = np.tile(GT, (4, 1))
    pred = gt.copy()
    visible = np.array([True, True, False, True])
    c = M.sequence_curves(pred, gt, visible)  # pytracking default: 3 of 4 frames succeed
    assert c.success[0] == 0.75 and c.precision_at() == 0.75 and c.norm_precision_at() == 0.75
    assert c.auc == pytest.approx(0.75 * 20 / 21)
    c = M.sequence_curves(pred, gt, visible, exclude_invalid=True)  # LaSOT MATLAB toolkit
    assert c.success[0] == 1.0 and c.precision_at() == 1.0 and c.auc == pytest.approx(20 / 21)
    # a prediction on an invisible frame, however bad, changes nothing
    pred[2] = [500, 500, 3, 3]
    assert M.sequence_curves(pred, gt, visible).auc == pytest.approx(0.75 * 20 / 21)
    assert M.mean_iou(pred, gt, visible) == 1.0
    with pytest.raises(ValueError, match="no valid frame"):
        M.sequence_curves(pred, gt, np.zeros(4, bool))


def test_pixel_inclusive_corners_of_the_toolkit_give_the_same_numbers():
    """calc_iou_overlap uses x2 = x + w - 1 and size = br - tl + 1; calc_err_center uses
    x + (w - 1) / 2. Both offsets cancel, so continuous corners agree to rounding."""
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.uniform(0, 50, (200, 2)), rng.uniform(1, 40, (200, 2))], 1)
    b = np.concatenate([rng.uniform(0, 50, (200, 2)), rng.uniform(1, 40, (200, 2))], 1)
    tl = np.maximum(a[:, :2], b[:, :2])
    br = np.minimum(a[:, :2] + a[:, 2:] - 1.0, b[:, :2] + b[:, 2:] - 1.0)
    inter = np.clip(br - tl + 1.0, 0, None).prod(1)
    iou_toolkit = inter / (a[:, 2:].prod(1) + b[:, 2:].prod(1) - inter)
    ca = a[:, :2] + 0.5 * (a[:, 2:] - 1.0)
    cb = b[:, :2] + 0.5 * (b[:, 2:] - 1.0)
    center_toolkit = np.sqrt(((ca - cb) ** 2).sum(1))
    norm_toolkit = np.sqrt(((ca / b[:, 2:] - cb / b[:, 2:]) ** 2).sum(1))
    pred = np.concatenate([b[:1], a[1:]])  # frame 0 is replaced by the gt anyway
    err = M.sequence_errors(pred, b)
    assert np.allclose(err.iou[1:], iou_toolkit[1:])
    assert np.allclose(err.center[1:], center_toolkit[1:])
    assert np.allclose(err.norm_center[1:], norm_toolkit[1:])


def test_overall_is_the_mean_of_sequence_curves():
    short = M.sequence_curves(*seq([20.0, 20.0, 10.0, 10.0]))  # 2 frames, AUC 10/21
    long_pred, long_gt = seq(*[GT] * 9)  # 10 perfect frames, AUC 20/21
    long = M.sequence_curves(long_pred, long_gt)
    overall = M.average_curves([short, long])
    assert overall.auc == pytest.approx((10 / 21 + 20 / 21) / 2)  # not pooled frames (12 frames)
    assert overall.precision_at() == pytest.approx((0.5 + 1.0) / 2)
    assert set(overall.scores()) == {"auc", "precision", "norm_precision"}


def test_bad_input_raises():
    pred, gt = seq(GT)
    bad = pred.copy()
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        M.sequence_curves(bad, gt)
    with pytest.raises(ValueError, match="2 ground-truth"):
        M.sequence_curves(pred[:1], gt)
    neg = pred.copy()
    neg[1, 2] = -1
    with pytest.raises(ValueError, match="negative"):
        M.sequence_errors(neg, gt)
    with pytest.raises(ValueError, match="shape"):
        M.sequence_errors(pred[:, :3], gt)
    with pytest.raises(ValueError, match="NaN"):
        M.success_curve(np.array([0.5, np.nan]))
    with pytest.raises(ValueError, match="thresholds"):
        M.success_curve(np.array([0.5]), np.array([np.nan]))
    with pytest.raises(ValueError, match="not in the threshold set"):
        M.sequence_curves(pred, gt).precision_at(20.5)
    with pytest.raises(ValueError, match="visible"):
        M.sequence_errors(pred, gt, np.ones(3, bool))
    with pytest.raises(ValueError, match="no sequences"):
        M.average_curves([])


def test_explicit_threshold_sets():
    pred, gt = seq([5.0, 0.0, 10.0, 10.0])
    c = M.sequence_curves(pred, gt, overlap_thresholds=np.array([0.0, 0.5]),
                          center_thresholds=np.array([5.0]), norm_thresholds=np.array([0.49]))
    assert c.success.tolist() == [1.0, 0.5]
    assert c.precision.tolist() == [1.0] and c.norm_precision.tolist() == [0.5]
    assert c.auc == 0.75

"""The default tracker against the official SeqTrack tracker's formulas.

The reference below is this test's own transcription of the official code's formulas
(microsoft/VideoX SeqTrack: `sample_target` in lib/test/tracker/seqtrack_utils.py,
`SEQTRACK.track` / `map_box_back` in lib/test/tracker/seqtrack.py, `clip_box` in
lib/utils/box_ops.py), written with cv2 and numpy only; the official repository is not
vendored. benchmarks/official_tracker.py runs the official file itself side by side.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from seqtrack_mlflow.data.frames import read_frame
from seqtrack_mlflow.data.synthetic import ensure_sample_data
from seqtrack_mlflow.errors import ConfigError
from seqtrack_mlflow.geometry import crop_image, crop_official, map_box_back, target_window
from seqtrack_mlflow.track.tracker import (
    SeqTrackTracker,
    TrackerConfig,
    hanning_window,
    official_model_input,
    track_frames,
)

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)


# -- the official formulas, transcribed -----------------------------------------------------------
def ref_sample_target(im: np.ndarray, box, factor: float, out: int) -> tuple[np.ndarray, float]:
    """Official sample_target: slice, cv2.copyMakeBorder (note the `+ 1` of the far pads), resize."""
    x, y, w, h = (float(v) for v in box)
    crop_sz = math.ceil(math.sqrt(w * h) * factor)
    x1 = round(x + 0.5 * w - crop_sz * 0.5)
    y1 = round(y + 0.5 * h - crop_sz * 0.5)
    x2, y2 = x1 + crop_sz, y1 + crop_sz
    x1_pad, y1_pad = max(0, -x1), max(0, -y1)
    x2_pad, y2_pad = max(x2 - im.shape[1] + 1, 0), max(y2 - im.shape[0] + 1, 0)
    im_crop = im[y1 + y1_pad:y2 - y2_pad, x1 + x1_pad:x2 - x2_pad, :]
    padded = cv2.copyMakeBorder(im_crop, y1_pad, y2_pad, x1_pad, x2_pad, cv2.BORDER_CONSTANT)
    return cv2.resize(padded, (out, out)), out / crop_sz


def ref_preprocess(crop: np.ndarray) -> np.ndarray:
    """Official Preprocessor.process in numpy float32: (x / 255 - mean) / std, (1, 3, S, S)."""
    x = crop.astype(np.float32).transpose(2, 0, 1)[None]
    return (x / np.float32(255.0) - MEAN) / STD


def ref_clip_box(box, H, W, margin):
    x1, y1, w, h = box
    x2, y2 = x1 + w, y1 + h
    x1 = min(max(0, x1), W - margin)
    x2 = min(max(margin, x2), W)
    y1 = min(max(0, y1), H - margin)
    y2 = min(max(margin, y2), H)
    return [x1, y1, max(margin, x2 - x1), max(margin, y2 - y1)]


def ref_track(frames, init_box, script, cfg: TrackerConfig, bins: int):
    """Official SEQTRACK.initialize/track driven by `script` (frame -> tokens, confidence):
    per-frame boxes, the frames whose template update fired, and the search crops."""
    state = [float(v) for v in init_box]
    boxes, updates, searches = [list(state)], [], []
    for fid in range(1, len(frames)):
        image = frames[fid]
        H, W = image.shape[:2]
        crop, resize_factor = ref_sample_target(image, state, cfg.search_factor, cfg.search_size)
        searches.append(ref_preprocess(crop))
        tokens, confidence = script[fid]
        # official: (tokens / (bins - 1)) * search_size / resize_factor, in float32
        pred = (np.asarray(tokens, np.float32) / np.float32(bins - 1) * np.float32(cfg.search_size)
                / np.float32(resize_factor))
        cx, cy, w, h = (float(v) for v in pred)
        cx_prev, cy_prev = state[0] + 0.5 * state[2], state[1] + 0.5 * state[3]
        half_side = 0.5 * cfg.search_size / resize_factor
        cx_real, cy_real = cx + (cx_prev - half_side), cy + (cy_prev - half_side)
        state = ref_clip_box([cx_real - 0.5 * w, cy_real - 0.5 * h, w, h], H, W, cfg.clip_margin)
        if fid % cfg.update_interval == 0 and float(np.sum(confidence)) * 10 > cfg.update_threshold:
            updates.append(fid)
        boxes.append(list(state))
    return np.array(boxes), updates, searches


# -- a scripted network ---------------------------------------------------------------------------
class ScriptedNet:
    """Answers fixed tokens and confidences per frame, whatever it is shown; records its inputs."""

    def __init__(self, script: dict[int, tuple[np.ndarray, np.ndarray]], bins: int):
        self.script, self.bins = script, bins
        self.frame = 0
        self.searches: list[np.ndarray] = []
        self.templates: list[list[int]] = []
        self.windows: list = []

    def predict(self, templates, search, window=False, use_cache=True):
        self.frame += 1
        tokens, confidence = self.script[self.frame]
        self.searches.append(search.numpy().copy())
        self.templates.append([id(t) for t in templates])
        self.windows.append(window)
        return torch.as_tensor(tokens, dtype=torch.long)[None], torch.as_tensor(confidence)[None]


def make_script(n: int, bins: int, search_factor: float, interval: int, seed: int = 3):
    """Tokens that wander around the crop centre and keep the target size (1/search_factor of
    the crop) up to +-8%; confidence high on update frames 1 and 3, low on update frame 2."""
    rng = np.random.default_rng(seed)
    script = {}
    for fid in range(1, n):
        centre = 0.5 + rng.uniform(-0.04, 0.04, 2)
        size = rng.uniform(0.92, 1.08, 2) / search_factor
        tokens = np.floor(np.concatenate([centre, size]) * (bins - 1)).astype(np.int64)
        low = fid // interval == 2
        confidence = np.full(4, 0.005 if low else 0.05, dtype=np.float64)  # score 0.2 or 2.0
        script[fid] = (tokens, confidence)
    return script


@pytest.fixture(scope="module")
def sample_sequence():
    """The first 40 frames of the bundled sample's held-out airplane-1 (RGB) and its boxes."""
    seq = ensure_sample_data() / "airplane" / "airplane-1"
    gt = np.loadtxt(seq / "groundtruth.txt", delimiter=",", dtype=np.float64)
    frames = [read_frame(seq / "img" / f"{i + 1:08d}.jpg") for i in range(40)]
    return frames, gt[:40]


BINS = 4000  # the official vocabulary: a bin is far below a pixel, so mapping errors show


def official_cfg(**kw) -> TrackerConfig:
    base = {"template_factor": 2.0, "template_size": 64, "search_factor": 4.0, "search_size": 128,
            "update_interval": 10}
    return TrackerConfig(**{**base, **kw})


def test_scripted_network_boxes_and_updates_equal_the_official_formulas(sample_sequence):
    frames, gt = sample_sequence
    cfg = official_cfg()
    script = make_script(len(frames), BINS, cfg.search_factor, cfg.update_interval)
    want, want_updates, want_searches = ref_track(frames, gt[0], script, cfg, BINS)
    assert want_updates == [10, 30]  # the script's design: frame 20 scores below 0.6

    net = ScriptedNet(script, BINS)
    tracker = SeqTrackTracker(net, cfg)
    boxes, _ = track_frames(tracker, frames, gt[0])
    # the bar is 0.01 px; the same float arithmetic makes it exact up to float64 rounding
    assert np.abs(boxes - want).max() <= 1e-6, np.abs(boxes - want).max()
    # update frames: the dynamic template (slot 1) changes on the call after an update frame
    dynamic = [t[1] for t in net.templates]  # call k is frame k + 1
    changed = [k for k in range(1, len(dynamic)) if dynamic[k] != dynamic[k - 1]]
    assert changed == want_updates and tracker.updates == len(want_updates)
    assert all(t[0] == net.templates[0][0] for t in net.templates)  # template 1 never changes
    # the network saw the official crops, preprocessed as the official Preprocessor
    for got, ref in zip(net.searches, want_searches):
        assert np.abs(got - ref).max() <= 1e-6  # float32 rounding only; 1/255 would be ~0.017
    # the window is the official one: np.hanning(bins), float64
    assert all(w.dtype == torch.float64 and torch.equal(w[0], torch.from_numpy(np.hanning(BINS)))
               for w in net.windows)


def test_exact_corner_geometry_is_the_documented_deviation(sample_sequence):
    """The old geometry drifts away from the official boxes through the rounded crop corner."""
    frames, gt = sample_sequence
    cfg = official_cfg(geometry="exact-corner")
    script = make_script(len(frames), BINS, cfg.search_factor, cfg.update_interval)
    want, _, _ = ref_track(frames, gt[0], script, official_cfg(), BINS)
    net = ScriptedNet(script, BINS)
    boxes, _ = track_frames(SeqTrackTracker(net, cfg), frames, gt[0])
    diff = np.abs(boxes - want).max()
    assert diff > 0.01, diff  # the issue measured up to 4.3 px over 80 frames
    assert net.windows[0] is True  # exact-corner keeps predict()'s own float32 window


@pytest.mark.parametrize("box", [
    (100.0, 80.0, 30.0, 20.0),   # inside
    (-5.3, 3.7, 40.0, 25.0),     # past the left and top edges
    (290.4, 200.2, 25.0, 30.0),  # past the right and bottom edges
    (270.0, 190.0, 20.0, 20.0),  # a window ending exactly at the right/bottom edge
    (120.0, 90.0, 150.0, 120.0),  # larger than the image
    (7.5, 11.5, 3.0, 3.0),       # .5 centres: Python's round() (half to even)
])
@pytest.mark.parametrize("factor,out", [(4.0, 128), (2.0, 64), (3.0, 300)])
def test_crop_equals_cv2_sample_target(box, factor, out):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    want, resize_factor = ref_sample_target(image, box, factor, out)
    window = target_window(np.array(box), factor, out)
    got = crop_official(image, window)
    assert got.shape == (out, out, 3) and got.dtype == np.uint8
    assert np.array_equal(got, want)  # the bar is 1/255; it is bit-equal
    assert window.scale == resize_factor
    # the official input tensor is the official preprocessing of that crop
    assert np.abs(official_model_input(got).numpy() - ref_preprocess(want)).max() <= 1e-6


def test_window_reaching_the_last_column_loses_it_as_the_official_crop_does():
    image = np.full((20, 20, 3), 200, dtype=np.uint8)
    inside = target_window(np.array([13.0, 13.0, 4.0, 4.0]), 1.5, 6)  # x1 = 12, x2 = 18 < 20
    assert (inside.x1, inside.side) == (12, 6) and (crop_official(image, inside) == 200).all()
    edge = target_window(np.array([15.0, 15.0, 4.0, 4.0]), 1.5, 6)  # x1 = 14, x2 = 20 = W
    assert (edge.x1, edge.side) == (14, 6)
    crop = crop_official(image, edge)  # side = output size: no resampling, pixels as cut
    assert (crop[:, -1] == 0).all() and (crop[-1] == 0).all() and (crop[:-1, :-1] == 200).all()


def test_old_crop_differs_from_the_official_crop():
    """PIL's bilinear resample of the same window is not cv2's: the deviation the issue measured."""
    seq = ensure_sample_data() / "airplane" / "airplane-1"
    image = read_frame(seq / "img" / "00000001.jpg")
    gt = np.loadtxt(seq / "groundtruth.txt", delimiter=",")[0]
    window = target_window(gt, 4.0, 128)
    diff = np.abs(crop_image(image, window).astype(int) - crop_official(image, window).astype(int))
    assert diff.mean() > 0.1  # grey levels


def test_map_box_back_uses_the_unrounded_half_side():
    prev = np.array([10.0, 20.0, 11.0, 9.0])  # centre (15.5, 24.5)
    crop_sz = math.ceil(math.sqrt(11 * 9) * 4.0)  # 40
    rf = 128 / crop_sz
    box = map_box_back(prev, [20.0, 20.0, 8.0, 6.0], 128, rf)
    # centre = pred + prev centre - crop_sz / 2, not + the rounded corner round(15.5 - 20) = -4
    assert np.allclose(box, [15.5 - 20 + 20 - 4, 24.5 - 20 + 20 - 3, 8.0, 6.0])


def test_hanning_window_is_numpy_float64():
    w = hanning_window(64)
    assert w.shape == (1, 64) and w.dtype == torch.float64
    assert torch.equal(w[0], torch.from_numpy(np.hanning(64)))


def test_tracker_config_rejects_bad_values_with_config_error():
    with pytest.raises(ConfigError, match="track.geometry"):
        TrackerConfig(geometry="pil")
    with pytest.raises(ConfigError, match="track.clip_margin"):
        TrackerConfig(clip_margin=0.0)
    with pytest.raises(ConfigError, match="track.search_factor"):
        TrackerConfig(search_factor=0.0)

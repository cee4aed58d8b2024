"""Box conventions, IoU and the SeqTrack crop: the one place where box maths lives.

Conventions (as in LaSOT and the official code):
- `xywh`: top-left x, y and width, height in pixels (LaSOT groundtruth.txt; 1-based files are
  read as-is, exactly like the official toolkit, which never subtracts 1).
- `cxcywh`: centre x, y and width, height.
- `xyxy`: top-left and bottom-right corners, x2 = x + w (continuous, not "+1" inclusive pixels).
All functions take numpy arrays of shape (..., 4) and broadcast over leading dimensions.

Two crops of the same square window (side ceil(sqrt(w*h) * factor) centred on the box, corner
rounded, zero outside the image), as in `sample_target` of the official
`lib/train/data/processing_utils.py` and `lib/test/tracker/seqtrack_utils.py`:
- `crop_official`: the official pixels exactly (the same cv2 calls on the same padded array,
  including the official padding's quirk of never using the image's last row and column);
  `map_box_back` is the official tracker's inverse mapping (through the unrounded half side).
- `crop_image` + `CropWindow`: one PIL affine resample of the window from the whole image, and
  an exact inverse through the window's rounded corner (`CropWindow.crop_to_image`). Training
  uses this by default; the tracker offers it as `track.geometry=exact-corner`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

# The two crop geometries, the values of data.crop_geometry and track.geometry.
OFFICIAL_GEOMETRY = "official"
"""The official pixels (`crop_official`) and box mapping through the unrounded centre."""
EXACT_CORNER_GEOMETRY = "exact-corner"
"""One PIL resample (`crop_image`) and box mapping through the rounded crop corner."""
GEOMETRIES = (OFFICIAL_GEOMETRY, EXACT_CORNER_GEOMETRY)

# A box a crop is centred on may be at most this many times the frame's width and height, and
# lie at most that many frame widths/heights off the frame: a crop's side is sqrt(w*h) * factor
# and the official crop pads to it, so a box of 1e5 px on a 1280x720 frame would ask for
# ~100 GiB. LaSOT's boxes lie on their frames.
MAX_BOX_FRAME_FACTOR = 2.0


def check_box_on_frame(box_xywh, height: int, width: int, what: str = "box") -> None:
    """DataError (one line) unless the box is finite, positive and within MAX_BOX_FRAME_FACTOR
    of a height x width frame."""
    from seqtrack_mlflow.errors import DataError

    x, y, w, h = (float(v) for v in np.asarray(box_xywh, dtype=np.float64).reshape(4))
    k = MAX_BOX_FRAME_FACTOR
    ok = (all(math.isfinite(v) for v in (x, y, w, h)) and w > 0 and h > 0 and height >= 1 and width >= 1
          and w <= k * width and h <= k * height and x >= -k * width and y >= -k * height
          and x + w <= (1 + k) * width and y + h <= (1 + k) * height and math.isfinite(math.sqrt(w * h)))
    if not ok:
        raise DataError(f"{what} [{x:.6g}, {y:.6g}, {w:.6g}, {h:.6g}] does not fit a {width}x{height} frame: "
                        f"it must be finite with w, h > 0, at most {k:g}x the frame's size and within "
                        f"{k:g} frame sizes of it")


def xywh_to_xyxy(box: np.ndarray) -> np.ndarray:
    box = np.asarray(box, dtype=np.float64)
    return np.concatenate([box[..., :2], box[..., :2] + box[..., 2:]], axis=-1)


def xywh_to_cxcywh(box: np.ndarray) -> np.ndarray:
    box = np.asarray(box, dtype=np.float64)
    return np.concatenate([box[..., :2] + 0.5 * box[..., 2:], box[..., 2:]], axis=-1)


def cxcywh_to_xywh(box: np.ndarray) -> np.ndarray:
    box = np.asarray(box, dtype=np.float64)
    return np.concatenate([box[..., :2] - 0.5 * box[..., 2:], box[..., 2:]], axis=-1)


def iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of matching boxes, shape (...,). 0 where the union is empty.

    Same formula as the LaSOT/pytracking toolkit (`calc_iou_overlap`): continuous corners,
    intersection clamped at 0, so disjoint or zero-size boxes give 0, never NaN.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape[-1] != 4 or b.shape[-1] != 4:
        raise ValueError(f"boxes must have 4 numbers in the last axis, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("IoU of a box with NaN or inf coordinates")
    tl = np.maximum(a[..., :2], b[..., :2])
    br = np.minimum(a[..., :2] + a[..., 2:], b[..., :2] + b[..., 2:])
    inter = np.clip(br - tl, 0.0, None).prod(axis=-1)
    union = np.clip(a[..., 2:], 0, None).prod(axis=-1) + np.clip(b[..., 2:], 0, None).prod(axis=-1) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


@dataclass(frozen=True)
class CropWindow:
    """Where a square crop of side `side` (image pixels) starting at (x1, y1) was taken."""

    x1: int
    y1: int
    side: int
    output_size: int

    @property
    def scale(self) -> float:
        """Crop pixels per image pixel (the official `resize_factor`)."""
        return self.output_size / self.side

    def image_to_crop(self, box_xywh: np.ndarray) -> np.ndarray:
        """Image-pixel xywh -> crop-pixel xywh."""
        box = np.asarray(box_xywh, dtype=np.float64)
        xy = (box[..., :2] - np.array([self.x1, self.y1])) * self.scale
        return np.concatenate([xy, box[..., 2:] * self.scale], axis=-1)

    def crop_to_image(self, box_xywh: np.ndarray) -> np.ndarray:
        """Crop-pixel xywh -> image-pixel xywh (inverse of image_to_crop)."""
        box = np.asarray(box_xywh, dtype=np.float64)
        xy = box[..., :2] / self.scale + np.array([self.x1, self.y1])
        return np.concatenate([xy, box[..., 2:] / self.scale], axis=-1)


def crop_window(center_xy: tuple[float, float], side: float, output_size: int) -> CropWindow:
    """Integer square window of side ceil(side) centred (rounded) on center_xy."""
    side_px = math.ceil(side)
    if side_px < 1:
        raise ValueError(f"crop side {side} is too small (box of zero area?)")
    x1 = round(center_xy[0] - 0.5 * side_px)
    y1 = round(center_xy[1] - 0.5 * side_px)
    return CropWindow(int(x1), int(y1), side_px, output_size)


def target_window(box_xywh: np.ndarray, factor: float, output_size: int) -> CropWindow:
    """The official crop around a target: side ceil(sqrt(w*h) * factor), centred on the box."""
    x, y, w, h = (float(v) for v in box_xywh)
    return crop_window((x + 0.5 * w, y + 0.5 * h), math.sqrt(max(w * h, 0.0)) * factor, output_size)


def crop_image(image: np.ndarray | Image.Image, window: CropWindow, scale: float = 1.0) -> np.ndarray:
    """Cut `window` out of an (H, W, 3) uint8 image (or the same as a PIL image), zero outside
    it, resized (bilinear). `scale`: the image is the frame decoded at that size (DCT-scaled
    decoding, data/frames.py), so the window's corners are scaled by it.

    One PIL affine transform does crop, zero padding and resize together, so no padded
    full-size copy is ever made.
    """
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    box = tuple(v * scale for v in (window.x1, window.y1, window.x1 + window.side, window.y1 + window.side))
    out = img.transform((window.output_size, window.output_size), Image.Transform.EXTENT, box,
                        resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    return np.asarray(out)


def crop_official(image: np.ndarray, window: CropWindow) -> np.ndarray:
    """The official `sample_target` crop of `window` (built by `target_window`): uint8 (S, S, 3).

    The official code slices the image, zero-pads it with `cv2.copyMakeBorder` and resizes it
    with `cv2.resize` (bilinear). Its right/bottom padding is `x2 - W + 1`, one more than needed,
    so whenever the window reaches the image's last column (row) that column (row) is replaced
    by zeros: the crop is always cut from `image[:H-1, :W-1]`. Here the same padded array is
    built by pasting that region into a zero square (the same bytes as copyMakeBorder), then
    resized by the same cv2 call. Where the official slice would be empty (a window entirely off
    the image, which the official code does not survive) this returns zeros.
    """
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"want an (H, W, C) uint8 image, got {image.shape} {image.dtype}")
    H, W = image.shape[:2]
    side = window.side
    padded = np.zeros((side, side, image.shape[2]), dtype=np.uint8)  # (side, side, C)
    # the official slice: [x1 + x1_pad, x2 - x2_pad) with x2_pad = max(x2 - W + 1, 0)
    sx1, sy1 = max(window.x1, 0), max(window.y1, 0)
    sx2, sy2 = min(window.x1 + side, W - 1), min(window.y1 + side, H - 1)
    if sx2 > sx1 and sy2 > sy1:
        padded[sy1 - window.y1:sy2 - window.y1, sx1 - window.x1:sx2 - window.x1] = image[sy1:sy2, sx1:sx2]
    size = window.output_size
    return cv2.resize(padded, (size, size))  # official: cv.resize(im, (sz, sz)), INTER_LINEAR


def map_box_back(prev_xywh: np.ndarray, pred_cxcywh: list[float], search_size: int,
                 resize_factor: float) -> np.ndarray:
    """The official tracker's `map_box_back` (lib/test/tracker/seqtrack.py).

    `pred_cxcywh` is the prediction already scaled to image pixels but relative to the search
    crop (tokens / (bins - 1) * search_size / resize_factor). The crop is taken to start at the
    previous box's centre minus half the *unrounded* crop side (search_size / resize_factor / 2),
    not at the rounded corner the pixels were actually cut from (up to 0.5 px apart).
    """
    x, y, w, h = (float(v) for v in prev_xywh)
    cx_prev, cy_prev = x + 0.5 * w, y + 0.5 * h
    cx, cy, pw, ph = (float(v) for v in pred_cxcywh)
    half_side = 0.5 * search_size / resize_factor
    cx_real = cx + (cx_prev - half_side)
    cy_real = cy + (cy_prev - half_side)
    return np.array([cx_real - 0.5 * pw, cy_real - 0.5 * ph, pw, ph], dtype=np.float64)


def clip_box(box_xywh: np.ndarray, height: int, width: int, margin: float = 0.0) -> np.ndarray:
    """Keep a tracker's xywh box on the image, at least `margin` pixels wide and high.

    The official tracker's `clip_box` (lib/utils/box_ops.py): corners clamped to the image, the
    top-left kept `margin` pixels from the right/bottom edge, the size floored at `margin`
    (SeqTrack tracks with margin=10, so a box never collapses to a point it cannot crop around).
    """
    x, y, w, h = (float(v) for v in box_xywh)
    x2, y2 = x + w, y + h
    x1 = min(max(0.0, x), width - margin)
    x2 = min(max(margin, x2), float(width))
    y1 = min(max(0.0, y), height - margin)
    y2 = min(max(margin, y2), float(height))
    return np.array([x1, y1, max(margin, x2 - x1), max(margin, y2 - y1)], dtype=np.float64)

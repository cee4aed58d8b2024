"""SeqTrack training transforms: box jitter, crops, grayscale, flip, brightness, normalisation.

Follows the official `lib/train/data/processing.py` (SeqTrackProcessing), `processing_utils.py`
and `transforms.py` with the transform chain of `lib/train/base_functions.py`:

- joint (one roll for all frames of a sample): ToGrayscale(p=0.05), RandomHorizontalFlip(0.5);
- per crop (`joint=False`: each crop rolls its own): ToTensorAndJitter(0.2) (brightness factor
  U(max(0, 1-b), 1+b), then clamp to [0, 1]), Normalize(ImageNet mean/std);
- search crop centred on a jittered box (`_get_jittered_box`): size * exp(N(0,1) * scale_jitter),
  centre + sqrt(jittered w*h) * center_jitter * (U(0,1) - 0.5); templates use no jitter
  (TEMPLATE CENTER_JITTER = SCALE_JITTER = 0 in the b256 yaml).

Differences from the official processing, on purpose; each has a `data.*` switch to the
official behaviour (defaults keep this project's pipeline; docs/fidelity.md lists the measured effects):
- `data.augment_on=crops`: grayscale and flip act on the crops instead of the full frames
  (cheaper; the same law: grayscale is per pixel and the centre jitter is symmetric). The crop
  flip is continuous, x' = side - x - w; the official frame flip uses pixel indices,
  x' = W - 1 - x - w, and the official grey is cv2's fixed-point RGB2GRAY (ours: float weights,
  rounded). `frames` does it the official way.
- `data.per_crop_flip=false`: the official `transform_train` also holds a *per-crop*
  RandomHorizontalFlip_Norm(0.5), which flips each template and the search crop independently
  of one another (so templates and search disagree half the time); we keep only the joint
  flip. `true` adds it (x' = 1 - x - w in normalised units).
- `data.crop_geometry=exact-corner`: crops by one PIL bilinear resample of the window and maps
  boxes through the window's rounded corner, normalised by the crop size. The official
  `sample_target` pads with cv2 (losing the image's last row/column at the border) and resizes
  with cv2, and `transform_image_to_crop` puts the box relative to the *unrounded* centre at
  (size - 1) / 2 and normalises by (size - 1): half a pixel off, and inconsistent with the
  official tracker, which decodes tokens / (bins - 1) * size. `official` does that.
Also different and not switchable: the sampler redraws a sample only when the jittered search
box is empty; the official one also redraws crops whose attention mask is all padding (a
search window wholly off the image), which the centre jitter here (< half the crop) cannot
produce for a target on the image.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from seqtrack_mlflow.geometry import (
    EXACT_CORNER_GEOMETRY,
    OFFICIAL_GEOMETRY,
    CropWindow,
    check_box_on_frame,
    crop_image,
    crop_official,
    target_window,
)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# ITU-R BT.601 luma weights, as cv2.COLOR_RGB2GRAY (official ToGrayscale).
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def jitter_box(box_xywh: np.ndarray, center_jitter: float, scale_jitter: float,
               rng: np.random.Generator) -> np.ndarray:
    """Official `_get_jittered_box`: two normal draws (log-size), then two uniform (centre)."""
    box = np.asarray(box_xywh, dtype=np.float64)
    size = box[2:] * np.exp(rng.standard_normal(2) * scale_jitter)
    max_offset = math.sqrt(float(size[0] * size[1])) * center_jitter
    centre = box[:2] + 0.5 * box[2:] + max_offset * (rng.random(2) - 0.5)
    return np.concatenate([centre - 0.5 * size, size])


def crop_side_ok(box_xywh: np.ndarray, factor: float) -> bool:
    """The official validity check: ceil(sqrt(w*h) * factor) >= 1."""
    w, h = float(box_xywh[2]), float(box_xywh[3])
    side = math.sqrt(w * h) * factor if w > 0 and h > 0 else 0.0
    # 1e308-sized boxes give an infinite side (math.ceil would raise OverflowError): not a crop.
    return math.isfinite(side) and math.ceil(side) >= 1


def crop_around(image: np.ndarray, centre_box: np.ndarray, gt_box: np.ndarray, factor: float,
                size: int, geometry: str = EXACT_CORNER_GEOMETRY) -> tuple[np.ndarray, np.ndarray, CropWindow]:
    """Crop a (size, size) square around `centre_box` (side sqrt(w*h)*factor); return the crop
    (uint8), `gt_box` in crop pixels (xywh) and the window.

    geometry 'official': the official `sample_target` pixels and `transform_image_to_crop` box
    (centre at (size - 1) / 2 + offset from the unrounded crop centre, times resize factor).
    DataError when the annotated box does not fit the frame (geometry.check_box_on_frame; the
    jittered centre box is bounded through it)."""
    check_box_on_frame(gt_box, image.shape[0], image.shape[1], "annotated box")
    window = target_window(centre_box, factor, size)
    if geometry == OFFICIAL_GEOMETRY:
        c = np.asarray(centre_box, dtype=np.float64)
        g = np.asarray(gt_box, dtype=np.float64)
        centre = (size - 1) / 2 + ((g[:2] + 0.5 * g[2:]) - (c[:2] + 0.5 * c[2:])) * window.scale
        wh = g[2:] * window.scale
        return crop_official(image, window), np.concatenate([centre - 0.5 * wh, wh]), window
    return crop_image(image, window), window.image_to_crop(gt_box), window


def label_extent(size: int, geometry: str = EXACT_CORNER_GEOMETRY) -> int:
    """What a unit box coordinate spans in crop pixels: size, or size - 1 officially."""
    return size - 1 if geometry == OFFICIAL_GEOMETRY else size


def to_grayscale_frame(frame: np.ndarray) -> np.ndarray:
    """Official ToGrayscale on a whole frame: cv2 RGB2GRAY, stacked to three channels."""
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    return np.stack([grey, grey, grey], axis=2)


def flip_frame(frame: np.ndarray, boxes: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Official RandomHorizontalFlip on a whole frame: pixel-index flip, x' = W - 1 - x - w."""
    W = frame.shape[1]
    out = []
    for b in boxes:
        b = np.array(b, dtype=np.float64)
        b[0] = (W - 1) - b[0] - b[2]
        out.append(b)
    return np.ascontiguousarray(frame[:, ::-1]), out


def to_grayscale(crop: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> the same shape with R = G = B = luma."""
    c = crop.astype(np.float32)  # elementwise, not a matmul: identical on every BLAS
    luma = c[:, :, 0] * GRAY_WEIGHTS[0] + c[:, :, 1] * GRAY_WEIGHTS[1] + c[:, :, 2] * GRAY_WEIGHTS[2]
    luma = np.rint(luma).clip(0, 255).astype(np.uint8)
    return np.repeat(luma[:, :, None], 3, axis=2)


def flip_crop(crop: np.ndarray, box_xywh: np.ndarray, extent: float | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal flip of a square crop and of a box in its pixel coordinates: x' = extent - x - w
    (extent = the crop side; official normalised flip 1 - x - w: extent = side - 1)."""
    side = crop.shape[1] if extent is None else extent
    box = np.array(box_xywh, dtype=np.float64)
    box[0] = side - box[0] - box[2]
    return np.ascontiguousarray(crop[:, ::-1]), box


def pixel_scale(brightness: float = 1.0) -> np.float32:
    """The factor a crop's uint8 pixels are multiplied by: brightness / 255, in float32."""
    return np.float32(brightness / 255.0)


def to_tensor(crop: np.ndarray, brightness: float = 1.0) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32: x * brightness / 255, clamped to [0, 1], then
    ImageNet-normalised (official ToTensorAndJitter + Normalize)."""
    chw = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))
    return normalize_crops(chw, torch.tensor(pixel_scale(brightness)))


def normalize_crops(crops: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """uint8 crops (..., 3, H, W) with one `pixel_scale` each (...) -> float32: x * scale,
    clamped to [0, 1], ImageNet-normalised; `to_tensor` is this for one crop, so a batch
    normalised here equals its crops normalised one by one. numpy, not torch: one thread, so no
    parallel region waits on a core the data worker holds."""
    x = crops.numpy().astype(np.float32) * scales.numpy()[..., None, None, None]
    np.clip(x, 0.0, 1.0, out=x)
    x -= IMAGENET_MEAN[:, None, None]
    x /= IMAGENET_STD[:, None, None]
    return torch.from_numpy(x)


def denormalize(t: torch.Tensor) -> np.ndarray:
    """(3, H, W) normalised tensor -> (H, W, 3) uint8, for pictures."""
    x = t.detach().cpu().numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def box_to_target(box_xywh_crop: np.ndarray, size: int, geometry: str = EXACT_CORNER_GEOMETRY) -> torch.Tensor:
    """Box in crop pixels (xywh) -> FloatTensor(4) cxcywh / size (official: / (size - 1));
    may leave [0, 1] slightly."""
    b = np.asarray(box_xywh_crop, dtype=np.float64)
    out = np.array([b[0] + 0.5 * b[2], b[1] + 0.5 * b[3], b[2], b[3]]) / label_extent(size, geometry)
    return torch.tensor(out, dtype=torch.float32)

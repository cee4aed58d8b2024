"""SeqTrack training transforms: box jitter, crops, grayscale, flip, brightness, normalisation.

Follows the official `lib/train/data/processing.py` (SeqTrackProcessing), `processing_utils.py`
and `transforms.py` with the transform chain of `lib/train/base_functions.py`:

- joint (one roll for all frames of a sample): ToGrayscale(p=0.05), RandomHorizontalFlip(0.5);
- per crop (`joint=False`: each crop rolls its own): ToTensorAndJitter(0.2) (brightness factor
  U(max(0, 1-b), 1+b), then clamp to [0, 1]), Normalize(ImageNet mean/std);
- search crop centred on a jittered box (`_get_jittered_box`): size * exp(N(0,1) * scale_jitter),
  centre + sqrt(jittered w*h) * center_jitter * (U(0,1) - 0.5); templates use no jitter
  (TEMPLATE CENTER_JITTER = SCALE_JITTER = 0 in the b256 yaml).

Differences, on purpose:
- Grayscale and flip are applied to the crops instead of the full frames (much cheaper; the
  same distribution: grayscale is per pixel, and the centre jitter is symmetric so flipping
  before or after the jittered crop gives the same law). Flip is continuous: x' = side - x - w.
- The official `transform_train` also holds a *per-crop* RandomHorizontalFlip_Norm(0.5),
  which flips each template and the search crop independently of one another; we keep only
  the joint flip, so templates and search always agree (the config has one flip_prob).
- Boxes map to the crop with the exact geometry of `geometry.CropWindow` and are normalised by
  the crop size (official: `(crop_sz - 1) / 2` centre and `/(crop_sz - 1)`, half a pixel off).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from seqtrack_mlflow.geometry import CropWindow, crop_image, target_window

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
    return w > 0 and h > 0 and math.ceil(math.sqrt(w * h) * factor) >= 1


def crop_around(image: np.ndarray, centre_box: np.ndarray, gt_box: np.ndarray, factor: float,
                size: int) -> tuple[np.ndarray, np.ndarray, CropWindow]:
    """Crop a (size, size) square around `centre_box` (side sqrt(w*h)*factor); return the crop
    (uint8), `gt_box` in crop pixels (xywh) and the window."""
    window = target_window(centre_box, factor, size)
    return crop_image(image, window), window.image_to_crop(gt_box), window


def to_grayscale(crop: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> the same shape with R = G = B = luma."""
    c = crop.astype(np.float32)  # elementwise, not a matmul: identical on every BLAS
    luma = c[:, :, 0] * GRAY_WEIGHTS[0] + c[:, :, 1] * GRAY_WEIGHTS[1] + c[:, :, 2] * GRAY_WEIGHTS[2]
    luma = np.rint(luma).clip(0, 255).astype(np.uint8)
    return np.repeat(luma[:, :, None], 3, axis=2)


def flip_crop(crop: np.ndarray, box_xywh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal flip of a square crop and of a box in its pixel coordinates."""
    side = crop.shape[1]
    box = np.array(box_xywh, dtype=np.float64)
    box[0] = side - box[0] - box[2]
    return np.ascontiguousarray(crop[:, ::-1]), box


def to_tensor(crop: np.ndarray, brightness: float = 1.0) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32: x * brightness / 255, clamped to [0, 1], then
    ImageNet-normalised (official ToTensorAndJitter + Normalize)."""
    x = crop.astype(np.float32) * np.float32(brightness / 255.0)
    np.clip(x, 0.0, 1.0, out=x)
    x -= IMAGENET_MEAN
    x /= IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def denormalize(t: torch.Tensor) -> np.ndarray:
    """(3, H, W) normalised tensor -> (H, W, 3) uint8, for pictures."""
    x = t.detach().cpu().numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def box_to_target(box_xywh_crop: np.ndarray, size: int) -> torch.Tensor:
    """Box in crop pixels (xywh) -> FloatTensor(4) cxcywh / size (may leave [0, 1] slightly)."""
    b = np.asarray(box_xywh_crop, dtype=np.float64)
    out = np.array([b[0] + 0.5 * b[2], b[1] + 0.5 * b[3], b[2], b[3]]) / size
    return torch.tensor(out, dtype=torch.float32)

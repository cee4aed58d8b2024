"""SeqTrack inference: follow one target through a video exactly as the official tracker does.

By default (`geometry="official"`) this reproduces `lib/test/tracker/seqtrack.py` of
microsoft/VideoX SeqTrack step by step (checked against it by benchmarks/official_tracker.py):
- `initialize`: the template is cropped around frame 1's box (template_factor, template_size)
  with the official `sample_target` (`geometry.crop_official`: cv2 zero padding and resize)
  and used for all `num_templates` slots.
- `track`: the search region is cropped the same way around the previous box (search_factor,
  search_size) and preprocessed as the official `Preprocessor` (x / 255, then ImageNet
  mean/std, in that float32 order); the model decodes 4 tokens greedily, cx and cy
  multiplied by the Hanning window built as the official one (`np.hanning(bins)`, float64).
  The box is computed in the official float32 arithmetic (tokens / (bins - 1) * search_size /
  resize_factor), mapped back with the official `map_box_back` (through the unrounded half
  side of the crop) and clipped with the official `clip_box` (margin 10).
- Template update: on frames that are multiples of `update_interval`, if the confidence score
  exceeds `update_threshold`, a new template is cut around the new box; template 1 stays fixed
  and the newest replaces the dynamic one (official `template_list.pop(1)`). The score is the
  official one: the sum of the four tokens' (windowed) probabilities times 10
  (`confidence.sum() * 10`). Official LaSOT setting: interval 450, threshold 0.6.

`geometry="exact-corner"` is a documented deviation from the official geometry:
crops by one PIL bilinear resample (`geometry.crop_image`, no lost last row/column) and maps
predictions back through the crop's actual rounded corner (`CropWindow.crop_to_image`), in
float64. It differs from the official mapping by up to 0.5 px a frame, which feeds the next
crop (docs/fidelity.md).

The tracker accepts any model with `bins` and `predict(templates, search, window, use_cache)`
returning (tokens (B, 4), confidence (B, 4)), so tests can drive it with an oracle.

Results use the LaSOT/pytracking layout: `{seq}.txt` with one `x,y,w,h` line per frame and
`{seq}_time.txt` with per-frame seconds (frame decoding excluded, as pytracking measures).
pytracking writes boxes as integers (`%d`); we keep two decimals, which its loader also reads.
A sequence whose result files are complete is not tracked again (pytracking's behaviour).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from seqtrack_mlflow.config_rules import MAX_CROP_FACTOR, MAX_CROP_SIZE, MAX_TEMPLATES
from seqtrack_mlflow.data.frames import read_frame
from seqtrack_mlflow.data.transforms import IMAGENET_MEAN, IMAGENET_STD, to_tensor
from seqtrack_mlflow.errors import ConfigError, DataError
from seqtrack_mlflow.geometry import (
    GEOMETRIES,
    OFFICIAL_GEOMETRY,
    check_box_on_frame,
    clip_box,
    crop_image,
    crop_official,
    cxcywh_to_xywh,
    map_box_back,
    target_window,
)
from seqtrack_mlflow.model import tokens_to_boxes

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class TrackerConfig:
    """Inference settings (official TEST section of experiments/seqtrack/*.yaml)."""

    template_factor: float = 4.0
    """Template crop side = sqrt(w*h) * factor (must match training)."""
    template_size: int = 256
    """Template crop side in pixels fed to the model."""
    search_factor: float = 4.0
    """Search crop side = sqrt(w*h) * factor around the previous box."""
    search_size: int = 256
    """Search crop side in pixels fed to the model."""
    num_templates: int = 2
    """Template slots: 1 fixed initial template + (num_templates - 1) updated ones."""
    geometry: str = OFFICIAL_GEOMETRY
    """'official' (crops, mapping and arithmetic of the official tracker) or 'exact-corner'."""
    window: bool = True
    """Hanning window on the cx, cy token probabilities (official b256 TEST.WINDOW: true)."""
    update_interval: int = 450
    """Frames between template updates (official LaSOT 450)."""
    update_threshold: float = 0.6
    """Confidence score (sum of the 4 token probabilities x 10) needed to update (official 0.6)."""
    clip_margin: float = 10.0
    """Predicted boxes stay on the image and at least this many pixels wide/high (official 10)."""

    def __post_init__(self) -> None:
        # Settings may come from outside (a served model's model config): types first.
        for f in dataclasses.fields(self):
            value, want = getattr(self, f.name), {"float": (int, float), "int": (int,), "bool": (bool,),
                                                  "str": (str,)}.get(str(f.type), (object,))
            if not isinstance(value, want) or (isinstance(value, bool) and bool not in want):
                raise ConfigError(f"track.{f.name}: {str(value)[:80]!r} is not allowed; use a {f.type}")
        checks = [
            (0 < self.template_factor <= MAX_CROP_FACTOR, "template_factor", f"use > 0 and <= {MAX_CROP_FACTOR}"),
            (0 < self.search_factor <= MAX_CROP_FACTOR, "search_factor", f"use > 0 and <= {MAX_CROP_FACTOR}"),
            (1 <= self.template_size <= MAX_CROP_SIZE, "template_size", f"use >= 1 and <= {MAX_CROP_SIZE}"),
            (1 <= self.search_size <= MAX_CROP_SIZE, "search_size", f"use >= 1 and <= {MAX_CROP_SIZE}"),
            (1 <= self.num_templates <= MAX_TEMPLATES, "num_templates", f"use >= 1 and <= {MAX_TEMPLATES}"),
            (self.geometry in GEOMETRIES, "geometry", f"use one of {', '.join(GEOMETRIES)}"),
            (self.update_interval >= 1, "update_interval", "use >= 1"),
            (math.isfinite(self.update_threshold), "update_threshold", "use a finite number"),
            (math.isfinite(self.clip_margin) and self.clip_margin >= 1, "clip_margin", "use >= 1 (px), else a box can collapse to a point"),
        ]
        for ok, key, allowed in checks:
            if not ok:
                raise ConfigError(f"track.{key}: {getattr(self, key)!r} is not allowed; {allowed}")


# Official Preprocessor constants: float32 tensors shaped (1, 3, 1, 1).
_MEAN = torch.tensor(IMAGENET_MEAN.tolist(), dtype=torch.float32).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD.tolist(), dtype=torch.float32).view(1, 3, 1, 1)


def to_model_input(crop: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(S, S, 3) uint8 crop -> (1, 3, S, S) float: /255 and ImageNet-normalised, exactly as the
    training crops (`data.transforms.to_tensor`)."""
    return to_tensor(crop)[None].to(device)  # (1, 3, S, S)


def official_model_input(crop: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(S, S, 3) uint8 crop -> (1, 3, S, S) float32 by the official `Preprocessor.process`
    (lib/test/tracker/seqtrack_utils.py): `(x.float() / 255.0 - mean) / std`. The same values as
    `to_model_input` up to float32 rounding (x / 255 vs x * (1 / 255)), but bit-equal to the
    official input, so a network sees exactly what the official tracker feeds it."""
    x = torch.from_numpy(np.ascontiguousarray(crop)).to(device).float().permute(2, 0, 1)[None]
    return (x / 255.0 - _MEAN.to(device)) / _STD.to(device)  # (1, 3, S, S)


def hanning_window(bins: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The official window: `torch.tensor(np.hanning(bins)).unsqueeze(0)`, float64 (1, bins).
    float32 probabilities times it become float64, as in the official decoder."""
    return torch.from_numpy(np.hanning(bins))[None].to(device)  # (1, bins) float64


class SeqTrackTracker:
    """One target, one video: `initialize(frame0, box)`, then `track(frame)` per frame."""

    def __init__(self, model: Any, cfg: TrackerConfig, device: torch.device | str = "cpu"):
        if not (hasattr(model, "predict") and hasattr(model, "bins")):
            raise TypeError("model needs predict(templates, search, window, use_cache) and bins")
        self.model = model
        self.cfg = cfg
        self.device = torch.device(device)
        self.bins = int(model.bins)
        self.official = cfg.geometry == OFFICIAL_GEOMETRY
        # official: the float64 np.hanning window; exact-corner: predict()'s own (float32) window
        self.window: bool | torch.Tensor = cfg.window
        if cfg.window and self.official:
            self.window = hanning_window(self.bins, self.device)
        self.state: np.ndarray | None = None  # current box, xywh image pixels
        self.templates: list[torch.Tensor] = []
        self.frame_id = 0
        self.updates = 0  # template updates done in this sequence

    def _crop(self, image: np.ndarray, box: np.ndarray, factor: float, size: int):
        """(window, (1, 3, size, size) model input) of the square crop around `box`."""
        window = target_window(box, factor, size)
        if self.official:
            return window, official_model_input(crop_official(image, window), self.device)
        return window, to_model_input(crop_image(image, window), self.device)

    def initialize(self, image: np.ndarray, box_xywh: np.ndarray) -> None:
        box = np.asarray(box_xywh, dtype=np.float64)
        if box.shape != (4,) or not np.isfinite(box).all() or box[2] <= 0 or box[3] <= 0:
            raise DataError(f"initial box {box.tolist()} must be finite with w > 0 and h > 0")
        if image.ndim != 3 or image.shape[0] < 1 or image.shape[1] < 1 or image.shape[2] != 3:
            raise DataError(f"a frame must be (H, W, 3) with H, W >= 1, got shape {tuple(image.shape)}")
        check_box_on_frame(box, image.shape[0], image.shape[1], "initial box")
        _, template = self._crop(image, box, self.cfg.template_factor, self.cfg.template_size)
        self.templates = [template] * self.cfg.num_templates
        self.state = box
        self.frame_id = 0
        self.updates = 0

    def _box_in_image(self, tokens: torch.Tensor, window) -> np.ndarray:
        """Tokens (1, 4) -> xywh in image pixels, before clipping."""
        size = self.cfg.search_size
        if self.official:
            # official float32 arithmetic: (tokens / (bins - 1)).mean(0) * search_size / resize_factor
            pred = (tokens.view(-1, 4).cpu() / (self.bins - 1)).mean(dim=0) * size / window.scale
            return map_box_back(self.state, pred.tolist(), size, window.scale)
        unit = tokens_to_boxes(tokens, self.bins)[0].double().cpu().numpy()  # (4,) cxcywh in [0, 1]
        return window.crop_to_image(cxcywh_to_xywh(unit * size))

    def track(self, image: np.ndarray) -> np.ndarray:
        """Predict the target box (xywh, image pixels) in the next frame."""
        if self.state is None:
            raise DataError("tracker.track() called before initialize()")
        if image.ndim != 3 or image.shape[0] < 1 or image.shape[1] < 1 or image.shape[2] != 3:
            raise DataError(f"a frame must be (H, W, 3) with H, W >= 1, got shape {tuple(image.shape)}")
        H, W = image.shape[:2]
        self.frame_id += 1
        window, search = self._crop(image, self.state, self.cfg.search_factor, self.cfg.search_size)
        tokens, confidence = self.model.predict(self.templates, search, window=self.window)
        self.state = clip_box(self._box_in_image(tokens, window), H, W, margin=self.cfg.clip_margin)

        if self.cfg.num_templates > 1 and self.frame_id % self.cfg.update_interval == 0:
            score = float(confidence.sum()) * 10.0  # official: out_dict['confidence'].sum() * 10
            if score > self.cfg.update_threshold:
                _, template = self._crop(image, self.state, self.cfg.template_factor, self.cfg.template_size)
                self.templates.append(template)
                if len(self.templates) > self.cfg.num_templates:
                    self.templates.pop(1)  # keep the first (ground-truth) template
                self.updates += 1
        return self.state.copy()


@dataclass(frozen=True)
class SequenceResult:
    name: str
    boxes: np.ndarray  # (N, 4) xywh, image pixels; row 0 = the initial box
    times: np.ndarray  # (N,) seconds per frame; row 0 = initialisation
    skipped: bool = False  # True when read back from finished result files

    @property
    def fps(self) -> float:
        total = float(self.times.sum())
        return len(self.times) / total if total > 0 else math.inf


def track_frames(tracker: SeqTrackTracker, frames: Iterable[np.ndarray],
                 init_box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run the tracker over decoded frames; (boxes (N, 4), seconds (N,)). Frame 0 initialises."""
    boxes, times = [], []
    with torch.inference_mode():
        for i, frame in enumerate(frames):
            start = time.perf_counter()
            if i == 0:
                tracker.initialize(frame, init_box)
                box = np.asarray(init_box, dtype=np.float64)
            else:
                box = tracker.track(frame)
            times.append(time.perf_counter() - start)
            boxes.append(box)
    if not boxes:
        raise DataError("sequence has no frames")
    return np.stack(boxes), np.asarray(times)


# -- result files (LaSOT / pytracking layout) -----------------------------------------------------
def result_paths(results_dir: str | Path, name: str) -> tuple[Path, Path]:
    results_dir = Path(results_dir)
    return results_dir / f"{name}.txt", results_dir / f"{name}_time.txt"


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_results(results_dir: str | Path, name: str, boxes: np.ndarray, times: np.ndarray) -> Path:
    """Write `{name}_time.txt`, then `{name}.txt` (its presence marks the sequence finished)."""
    box_path, time_path = result_paths(results_dir, name)
    box_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(time_path, "".join(f"{t:.6f}\n" for t in times))
    _write_atomic(box_path, "".join(",".join(f"{v:.2f}" for v in b) + "\n" for b in boxes))
    return box_path


def load_results(results_dir: str | Path, name: str, num_frames: int) -> SequenceResult | None:
    """Finished results of a sequence, or None when absent or not of `num_frames` lines."""
    box_path, time_path = result_paths(results_dir, name)
    if not (box_path.is_file() and time_path.is_file()):
        return None
    try:
        boxes = np.loadtxt(box_path, delimiter=",", dtype=np.float64, ndmin=2)
        times = np.loadtxt(time_path, dtype=np.float64, ndmin=1)
    except ValueError as exc:
        log.warning("ignoring unreadable results of %s (%s); tracking it again", name, exc)
        return None
    if boxes.shape != (num_frames, 4) or times.shape != (num_frames,):
        log.warning("results of %s have %d lines for %d frames; tracking it again",
                    name, boxes.shape[0], num_frames)
        return None
    if not (np.isfinite(boxes).all() and np.isfinite(times).all()):
        log.warning("results of %s hold a NaN or infinite value; tracking it again", name)
        return None
    return SequenceResult(name, boxes, times, skipped=True)


def run_sequence(tracker: SeqTrackTracker, sequence: Any, results_dir: str | Path,
                 reader: Callable[[Path], np.ndarray] = read_frame) -> SequenceResult:
    """Track a dataset sequence (`.name`, `.boxes`, `frame_path(i)`) unless already finished;
    write its result files."""
    n = len(sequence.boxes)
    done = load_results(results_dir, sequence.name, n)
    if done is not None:
        log.info("%s: finished results found, skipped", sequence.name)
        return done
    frames = (reader(sequence.frame_path(i)) for i in range(n))
    boxes, times = track_frames(tracker, frames, sequence.boxes[0])
    save_results(results_dir, sequence.name, boxes, times)
    result = SequenceResult(sequence.name, boxes, times)
    log.info("%s: %d frames, %.1f fps, %d template update(s)", sequence.name, n, result.fps, tracker.updates)
    return result

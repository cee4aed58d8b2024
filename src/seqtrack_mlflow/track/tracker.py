"""SeqTrack inference: follow one target through a video, as the official tracker does.

Mirrors `lib/test/tracker/seqtrack.py` of microsoft/VideoX SeqTrack:
- `initialize`: the template is cropped around frame 1's box (template_factor, template_size)
  and used for all `num_templates` slots.
- `track`: the search region is cropped around the previous box (search_factor, search_size);
  the model decodes 4 tokens greedily (Hanning window on cx, cy when `window`); tokens / (bins-1)
  are (cx, cy, w, h) in the unit search crop, scaled to crop pixels and mapped to the image with
  `CropWindow.crop_to_image` (the official `map_box_back`, but using the crop's actual rounded
  corner), then clipped to the image with a 10 px margin (official `clip_box`).
- Template update: every `update_interval` frames, if the confidence score exceeds
  `update_threshold`, a new template is cut around the new box; template 1 stays fixed and the
  newest replaces the dynamic one (official `template_list.pop(1)`). The score is the official
  one: the sum of the four tokens' probabilities times 10 (`confidence.sum() * 10`). Official
  LaSOT setting: interval 450, threshold 0.6.

The tracker accepts any model with `bins` and `predict(templates, search, window, use_cache)`
returning (tokens (B, 4), confidence (B, 4)), so tests can drive it with an oracle.

Results use the LaSOT/pytracking layout: `{seq}.txt` with one `x,y,w,h` line per frame and
`{seq}_time.txt` with per-frame seconds (frame decoding excluded, as pytracking measures).
pytracking writes boxes as integers (`%d`); we keep two decimals, which its loader also reads.
A sequence whose result files are complete is not tracked again (pytracking's behaviour).
"""

from __future__ import annotations

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

from seqtrack_mlflow.config import Config
from seqtrack_mlflow.data.frames import read_frame
from seqtrack_mlflow.data.transforms import to_tensor
from seqtrack_mlflow.errors import DataError
from seqtrack_mlflow.geometry import clip_box, crop_image, cxcywh_to_xywh, target_window
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
    window: bool = True
    """Hanning window on the cx, cy token probabilities (official b256 TEST.WINDOW: true)."""
    update_interval: int = 450
    """Frames between template updates (official LaSOT 450)."""
    update_threshold: float = 0.6
    """Confidence score (sum of the 4 token probabilities x 10) needed to update (official 0.6)."""
    clip_margin: float = 10.0
    """Predicted boxes stay on the image and at least this many pixels wide/high (official 10)."""

    def __post_init__(self) -> None:
        assert self.template_factor > 0 and self.search_factor > 0, "crop factors must be > 0"
        assert self.template_size >= 1 and self.search_size >= 1, "crop sizes must be >= 1"
        assert self.num_templates >= 1, "num_templates must be >= 1"
        assert self.update_interval >= 1, "update_interval must be >= 1"
        assert self.clip_margin >= 1, "clip_margin must be >= 1 px, else a box can collapse to a point"

    @classmethod
    def from_config(cls, cfg: Config, **overrides: Any) -> "TrackerConfig":
        """Crop geometry of the training config (the model only knows those crops)."""
        values = dict(template_factor=cfg.data.template_factor, template_size=cfg.model.template_size,
                      search_factor=cfg.data.search_factor, search_size=cfg.model.search_size,
                      num_templates=cfg.model.num_templates)
        values.update(overrides)
        return cls(**values)


def to_model_input(crop: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(S, S, 3) uint8 crop -> (1, 3, S, S) float: /255 and ImageNet-normalised, exactly as the
    training crops (`data.transforms.to_tensor`; official Preprocessor.process)."""
    return to_tensor(crop)[None].to(device)  # (1, 3, S, S)


class SeqTrackTracker:
    """One target, one video: `initialize(frame0, box)`, then `track(frame)` per frame."""

    def __init__(self, model: Any, cfg: TrackerConfig, device: torch.device | str = "cpu"):
        assert hasattr(model, "predict") and hasattr(model, "bins"), \
            "model needs predict(templates, search, window, use_cache) and bins"
        self.model = model
        self.cfg = cfg
        self.device = torch.device(device)
        self.bins = int(model.bins)
        self.state: np.ndarray | None = None  # current box, xywh image pixels
        self.templates: list[torch.Tensor] = []
        self.frame_id = 0
        self.updates = 0  # template updates done in this sequence

    def _crop(self, image: np.ndarray, box: np.ndarray, factor: float, size: int):
        window = target_window(box, factor, size)
        return window, to_model_input(crop_image(image, window), self.device)

    def initialize(self, image: np.ndarray, box_xywh: np.ndarray) -> None:
        box = np.asarray(box_xywh, dtype=np.float64)
        if box.shape != (4,) or not np.isfinite(box).all() or box[2] <= 0 or box[3] <= 0:
            raise DataError(f"initial box {box.tolist()} must be finite with w > 0 and h > 0")
        _, template = self._crop(image, box, self.cfg.template_factor, self.cfg.template_size)
        self.templates = [template] * self.cfg.num_templates
        self.state = box
        self.frame_id = 0
        self.updates = 0

    def track(self, image: np.ndarray) -> np.ndarray:
        """Predict the target box (xywh, image pixels) in the next frame."""
        assert self.state is not None, "call initialize() first"
        H, W = image.shape[:2]
        self.frame_id += 1
        window, search = self._crop(image, self.state, self.cfg.search_factor, self.cfg.search_size)
        tokens, confidence = self.model.predict(self.templates, search, window=self.cfg.window)
        unit = tokens_to_boxes(tokens, self.bins)[0].double().cpu().numpy()  # (4,) cxcywh in [0, 1]
        box_crop = cxcywh_to_xywh(unit * self.cfg.search_size)  # crop pixels
        self.state = clip_box(window.crop_to_image(box_crop), H, W, margin=self.cfg.clip_margin)

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

"""Training and validation samples for SeqTrack: (templates, search crop, target box).

Training follows the official `lib/train/data/sampler.py` (TrackingSampler, frame_sample_mode
'causal', the SeqTrack default) with `SeqTrackProcessing` (see transforms.py):

1. Sequence: uniform over training sequences with enough visible frames (official
   `sample_seq_from_dataset`: more than 2 * (templates + searches) visible frames and at least
   20 frames). Official LaSOT is one dataset sampled uniformly by sequence, so a class's share
   of the samples is its share of the eligible training sequences.
2. Frames ('causal'): a visible base frame in [T-1, N-1); T-1 further visible template frames
   drawn (with replacement) from [base - max_gap - g, base); one visible search frame from
   (base, base + max_gap + g). Templates are ordered [base, earlier...] exactly as the
   official `template_frame_ids = base_frame_id + prev_frame_ids`. If a range holds no visible
   frame, g grows by 5 and a new base is drawn (official `gap_increase`).
3. Processing: joint grayscale and flip rolls, template crops without jitter, a jittered
   search crop, per-crop brightness, ImageNet normalisation. A sample whose search crop would
   be empty is redrawn (official `valid = False`).

Determinism: every draw of sample `index` in epoch `epoch` comes from
`np.random.Generator(np.random.PCG64([seed, epoch, index]))`, so a sample is a pure function
of (seed, epoch, index) whatever the worker count or order. No global RNG is touched. The
official sampler instead ignores the index and uses the global `random`, and hides errors
behind a bare `except`; here a failure raises `DataError`.

Decoding: each sample decodes each distinct frame once (simplejpeg when installed), at the
smallest JPEG DCT scale that keeps every crop of that frame at >= 1 decoded pixel per output
pixel (`data.scaled_decode`, see frames.py; x2-3 fewer decode seconds on 1280x720 LaSOT frames,
benchmarks/real_frames.py). A per-worker frame cache was measured and not kept (see
benchmarks/data_pipeline.py).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from seqtrack_mlflow.config import Config
from seqtrack_mlflow.data.frames import FrameCache, crop_scaled, needed_fraction, read_frame
from seqtrack_mlflow.data.lasot import LasotDataset, Sequence
from seqtrack_mlflow.data.transforms import (
    box_to_target,
    crop_around,
    crop_side_ok,
    flip_crop,
    flip_frame,
    jitter_box,
    label_extent,
    to_grayscale,
    to_grayscale_frame,
    normalize_crops,
    pixel_scale,
    to_tensor,
)
from seqtrack_mlflow.errors import DataError
from seqtrack_mlflow.geometry import EXACT_CORNER_GEOMETRY, iou_xywh, target_window

log = logging.getLogger(__name__)

NUM_SEARCH = 1  # SeqTrack trains with one search frame (DATA.SEARCH.NUMBER)
GAP_STEP = 5  # official gap_increase step
MAX_ATTEMPTS = 100  # redraws of a whole sample before giving up (official: forever)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one training sample."""
    return np.random.Generator(np.random.PCG64([seed, epoch, index]))


def is_eligible(seq: Sequence, num_templates: int) -> bool:
    """Official rule: more than 2 * (templates + searches) visible frames and >= 20 frames."""
    return int(seq.visible.sum()) > 2 * (num_templates + NUM_SEARCH) and len(seq) >= 20


def class_shares(dataset: LasotDataset, cfg: Config) -> dict[str, int]:
    """Samples per epoch of each class: its share of the eligible training sequences (the
    expectation of uniform sequence sampling), rounded by largest remainder to sum exactly."""
    t = cfg.model.num_templates
    counts = {c: sum(1 for s in dataset.train if s.class_name == c and is_eligible(s, t))
              for c in dataset.classes}
    total = sum(counts.values())
    if total == 0:
        return {c: 0 for c in counts}
    exact = {c: cfg.data.samples_per_epoch * n / total for c, n in counts.items()}
    shares = {c: math.floor(v) for c, v in exact.items()}
    rest = cfg.data.samples_per_epoch - sum(shares.values())
    for c in sorted(exact, key=lambda c: (shares[c] - exact[c], c))[:rest]:
        shares[c] += 1
    return shares


@dataclass(frozen=True)
class FramePick:
    """Which frames one sample uses (indices are 0-based frame numbers)."""

    sequence: int
    templates: tuple[int, ...]
    search: int


def _visible_in(ids: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Visible frame ids in [lo, hi) (ids sorted)."""
    return ids[np.searchsorted(ids, max(lo, 0)):np.searchsorted(ids, hi)]


class TrainSamples(Dataset):
    """Map-style dataset of `cfg.data.samples_per_epoch` training samples for `epoch`.

    item = {'templates': (num_templates, 3, T, T) float32, 'search': (3, S, S) float32,
            'box': (4,) float32 cxcywh of the target in the search crop / S}.
    With normalize=False (the trainer's loader) the crops stay uint8, with their `pixel_scale`s
    as 'template_scales' (num_templates,) and 'search_scale' (); `model_batch` normalises a
    batch of them in the training process: a quarter of the bytes to pass from the data worker,
    and its normalisation taken off the worker.
    """

    def __init__(self, dataset: LasotDataset, cfg: Config, epoch: int, normalize: bool = True):
        self.cfg = cfg
        self.epoch = int(epoch)
        self.normalize = normalize
        self.num_templates = cfg.model.num_templates
        self.sequences = [s for s in dataset.train if is_eligible(s, self.num_templates)]
        if not self.sequences:
            raise DataError(f"{dataset.root}: no training sequence of {', '.join(dataset.classes)} has "
                            f"more than {2 * (self.num_templates + NUM_SEARCH)} visible frames")
        self._visible_ids = [np.flatnonzero(s.visible) for s in self.sequences]
        self.frames = FrameCache(cfg.data.frame_cache_mb << 20)  # filled in the process that loads

    def __len__(self) -> int:
        return self.cfg.data.samples_per_epoch

    def pick_frames(self, rng: np.random.Generator) -> FramePick:
        """Official 'causal' frame sampling (see the module docstring)."""
        k = int(rng.integers(len(self.sequences)))
        ids, n = self._visible_ids[k], len(self.sequences[k])
        t = self.num_templates
        gap = self.cfg.data.max_gap
        increase = 0
        while increase <= n + GAP_STEP:  # beyond that every range already covers the sequence
            bases = _visible_in(ids, t - 1, n - NUM_SEARCH)
            base = int(bases[rng.integers(len(bases))])
            prev_pool = _visible_in(ids, base - gap - increase, base)
            if t > 1 and len(prev_pool) == 0:
                increase += GAP_STEP
                continue
            prev = [int(v) for v in prev_pool[rng.integers(len(prev_pool), size=t - 1)]] if t > 1 else []
            search_pool = _visible_in(ids, base + 1, base + gap + increase)
            if len(search_pool) == 0:
                increase += GAP_STEP
                continue
            search = int(search_pool[rng.integers(len(search_pool))])
            return FramePick(k, (base, *prev), search)
        raise DataError(f"{self.sequences[k].path}: no visible template/search frames could be drawn")

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """Sample `index` of this epoch, or of another with key (epoch, index) (`EpochSampler`)."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range 0..{len(self) - 1}")
        rng = sample_rng(self.cfg.seed, epoch, index)
        skipped = 0
        for _ in range(MAX_ATTEMPTS):
            pick = self.pick_frames(rng)
            try:
                item = self.make_sample(pick, rng)
            except DataError as exc:
                # A frame that turns out unreadable only now (the index checks files, not every
                # JPEG): with skip_bad_sequences the draw is made again from the same generator,
                # so the replacement is the same on every run and with any number of workers.
                if not self.cfg.data.skip_bad_sequences:
                    raise
                log.warning("sample %d of epoch %d: %s; drawn again (data.skip_bad_sequences)",
                            index, epoch, exc)
                skipped += 1
                continue
            if item is not None:
                item["skipped"] = torch.tensor(skipped)  # summed per epoch by the trainer
                return item
        raise DataError(f"sample {index} of epoch {epoch}: no valid search crop in "
                        f"{MAX_ATTEMPTS} draws (boxes too small?)")

    def make_sample(self, pick: FramePick, rng: np.random.Generator) -> dict[str, torch.Tensor] | None:
        """Crops and transforms of one frame pick; None if the jittered search box is empty.

        The rolls are drawn in one fixed order (grayscale, flip, search jitter, brightness per
        crop, then per-crop flips only when data.per_crop_flip), so the default pipeline's
        samples do not depend on the official-behaviour switches (transforms.py lists them)."""
        d, m = self.cfg.data, self.cfg.model
        geometry = d.crop_geometry
        seq = self.sequences[pick.sequence]
        ids = sorted({*pick.templates, pick.search})
        gray = rng.random() < d.grayscale_prob  # joint rolls, official order: grayscale, flip
        flip = rng.random() < d.flip_prob
        boxes = {i: seq.boxes[i] for i in ids}
        frames = None
        if d.augment_on == "frames":  # official: joint transform on the whole frames, then crops
            frames = {i: self.frames.read(seq.frame_path(i)) for i in ids}
            for i in ids:
                if gray:
                    frames[i] = to_grayscale_frame(frames[i])
                if flip:
                    frames[i], (boxes[i],) = flip_frame(frames[i], [boxes[i]])
            gray = flip = False  # done
        search_box = jitter_box(boxes[pick.search], d.center_jitter, d.scale_jitter, rng)
        if not crop_side_ok(search_box, d.search_factor):
            return None
        low, high = max(0.0, 1.0 - d.brightness_jitter), 1.0 + d.brightness_jitter
        brightness = rng.uniform(low, high, size=self.num_templates + 1)  # per crop
        crop_flips = (rng.random(self.num_templates + 1) < d.flip_prob if d.per_crop_flip
                      else np.zeros(self.num_templates + 1, dtype=bool))
        extents = (label_extent(m.template_size, geometry), label_extent(m.search_size, geometry))

        templates = []
        if frames is None and geometry == EXACT_CORNER_GEOMETRY:
            # Crop windows first, so each distinct frame is decoded once, at the smallest DCT
            # scale that still gives every crop taken from it >= 1 decoded pixel per output pixel.
            windows = [(fid, target_window(boxes[fid], d.template_factor, m.template_size))
                       for fid in pick.templates]
            windows.append((pick.search, target_window(search_box, d.search_factor, m.search_size)))
            scaled = {}
            for fid in sorted({fid for fid, _ in windows}):
                need = needed_fraction([w for f, w in windows if f == fid]) if d.scaled_decode else 1.0
                scaled[fid] = self.frames.read_scaled(seq.frame_path(fid), need)
            for j, (fid, window) in enumerate(windows[:-1]):
                crop = crop_scaled(*scaled[fid], window)
                templates.append(self._finish(crop, None, gray, flip ^ crop_flips[j], brightness[j], extents[0])[0])
            window = windows[-1][1]
            crop = crop_scaled(*scaled[pick.search], window)
            gt = window.image_to_crop(boxes[pick.search])
        else:  # the official crop (cv2) or frame-level augmentation: full-size frames
            if frames is None:
                frames = {i: self.frames.read(seq.frame_path(i)) for i in ids}
            for j, fid in enumerate(pick.templates):
                crop, _, _ = crop_around(frames[fid], boxes[fid], boxes[fid], d.template_factor,
                                         m.template_size, geometry)
                templates.append(self._finish(crop, None, gray, flip ^ crop_flips[j], brightness[j], extents[0])[0])
            crop, gt, _ = crop_around(frames[pick.search], search_box, boxes[pick.search],
                                      d.search_factor, m.search_size, geometry)
        search, gt = self._finish(crop, gt, gray, flip ^ crop_flips[-1], brightness[-1], extents[1])
        box = box_to_target(gt, m.search_size, geometry)
        if self.normalize:
            return {"templates": torch.stack(templates), "search": search, "box": box}
        return {"templates": torch.stack([t for t, _ in templates]), "search": search[0], "box": box,
                "template_scales": torch.tensor(np.array([s for _, s in templates])),
                "search_scale": torch.tensor(search[1])}

    def _finish(self, crop, box, gray, flip, brightness, extent):
        if gray:
            crop = to_grayscale(crop)
        if flip:  # joint flip and per-crop flip (when both roll, they cancel)
            crop, box = flip_crop(crop, box if box is not None else np.zeros(4), extent)
        if self.normalize:
            return to_tensor(crop, brightness), box
        return (torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))), pixel_scale(brightness)), box


def model_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch of normalize=False items (on the CPU) as the model takes it: crops normalised
    (`to_tensor`'s values exactly), the scales dropped."""
    out = {k: v for k, v in batch.items() if k not in ("template_scales", "search_scale")}
    out["templates"] = normalize_crops(batch["templates"], batch["template_scales"])
    out["search"] = normalize_crops(batch["search"], batch["search_scale"])
    return out


class EpochSampler(Sampler):
    """The (epoch, index) keys of the samples one process trains in an epoch, in order: one
    DataLoader, and so one persistent data worker (with its frame cache), serves every epoch;
    set `epoch` before iterating."""

    def __init__(self, indices: list[int]):
        self.indices = indices
        self.epoch = 1

    def __iter__(self):
        return ((self.epoch, i) for i in self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class ValidationSamples(Dataset):
    """A fixed list of `cfg.data.val_samples` held-out samples from the TEST sequences, as a
    tracker sees them: every template is the first visible frame (the official tracker fills
    all template slots with the initial frame), the search crop is centred on the previous
    frame's ground-truth box without jitter, and no augmentation is applied.

    Samples are spread round-robin over the test sequences; within a sequence the search frames
    are evenly spaced over the frames f whose target is visible in f and f-1. No randomness:
    the list does not depend on seed or epoch.

    item = TrainSamples' item + 'gt_xywh': (4,) float32, the search-frame box in crop pixels.
    """

    def __init__(self, dataset: LasotDataset, cfg: Config):
        self.cfg = cfg
        count = cfg.data.val_samples
        seqs = []
        for s in dataset.test:
            first = np.flatnonzero(s.visible)
            cand = np.flatnonzero(s.visible[1:] & s.visible[:-1]) + 1
            if len(first) and len(cand[cand > first[0]]):
                seqs.append((s, int(first[0]), cand[cand > first[0]]))
        if count and not seqs:
            raise DataError(f"{dataset.root}: no test sequence with visible frames for validation "
                            f"(classes {', '.join(dataset.classes)}); set data.val_samples=0 to skip")
        per_seq = [len(range(k, count, len(seqs))) for k in range(len(seqs))] if seqs else []
        self.plan: list[tuple[Sequence, int, int]] = []
        for i in range(count):
            k, j = i % len(seqs), i // len(seqs)
            s, first, cand = seqs[k]
            f = int(cand[min(int((j + 0.5) * len(cand) / per_seq[k]), len(cand) - 1)])
            self.plan.append((s, first, f))
        self._cache: dict[int, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.plan)

    def no_motion_iou(self) -> float:
        """Mean IoU of a tracker that never moves: the previous frame's box as the answer.

        The search crop is centred on that box, so this is the prior a model must beat before
        its validation IoU says it localises anything (from the annotations, no model)."""
        if not self.plan:
            return float("nan")
        previous = np.array([s.boxes[f - 1] for s, _, f in self.plan])  # (N, 4) xywh
        current = np.array([s.boxes[f] for s, _, f in self.plan])  # (N, 4) xywh
        return float(iou_xywh(previous, current).mean())

    def describe(self, index: int) -> tuple[str, int]:
        """(sequence name, 0-based search frame) of a validation sample."""
        s, _, f = self.plan[index]
        return s.name, f

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"validation sample {index} out of range 0..{len(self) - 1}")
        if index not in self._cache:
            d, m = self.cfg.data, self.cfg.model
            seq, first, f = self.plan[index]
            tmpl, _, _ = crop_around(read_frame(seq.frame_path(first)), seq.boxes[first],
                                     seq.boxes[first], d.template_factor, m.template_size, d.crop_geometry)
            template = to_tensor(tmpl)
            crop, gt, _ = crop_around(read_frame(seq.frame_path(f)), seq.boxes[f - 1], seq.boxes[f],
                                      d.search_factor, m.search_size, d.crop_geometry)
            self._cache[index] = {
                "templates": template.unsqueeze(0).repeat(m.num_templates, 1, 1, 1),
                "search": to_tensor(crop),
                "box": box_to_target(gt, m.search_size, d.crop_geometry),
                "gt_xywh": torch.tensor(gt, dtype=torch.float32),
            }
        return {k: v.clone() for k, v in self._cache[index].items()}

"""Training/validation samples: shapes, determinism, official frame rules, crop geometry."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from seqtrack_mlflow.config import load_config
from seqtrack_mlflow.data.lasot import LasotDataset
from seqtrack_mlflow.data.sampler import TrainSamples, ValidationSamples, class_shares, model_batch, sample_rng
from seqtrack_mlflow.errors import DataError
from tests.datatrees import make_lasot_tree


def _cfg(**over):
    base = {"data.samples_per_epoch": "24", "data.val_samples": "6", "data.max_gap": "10",
            "model.template_size": "32", "model.search_size": "64"}
    base.update({k: str(v) for k, v in over.items()})
    return load_config(overrides=base)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = make_lasot_tree(tmp_path_factory.mktemp("lasot"), seqs_per_class=3, frames=40, size=(96, 72))
    return LasotDataset(root, ("airplane", "bicycle"))


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_item_format(dataset):
    cfg = _cfg()
    samples = TrainSamples(dataset, cfg, epoch=0)
    assert len(samples) == 24
    item = samples[0]
    assert item["templates"].shape == (2, 3, 32, 32) and item["templates"].dtype == torch.float32
    assert item["search"].shape == (3, 64, 64) and item["box"].shape == (4,)
    assert torch.isfinite(item["search"]).all()
    with pytest.raises(IndexError):
        samples[24]


def test_pure_function_of_seed_epoch_index(dataset):
    cfg = _cfg()
    a = TrainSamples(dataset, cfg, epoch=3)
    b = TrainSamples(dataset, cfg, epoch=3)
    # global RNGs are neither used nor disturbed
    np.random.seed(1), random.seed(1), torch.manual_seed(1)
    state = (np.random.get_state()[1].copy(), random.getstate(), torch.get_rng_state().clone())
    forward = [a[i] for i in range(8)]
    assert (np.random.get_state()[1] == state[0]).all() and random.getstate() == state[1]
    assert torch.equal(torch.get_rng_state(), state[2])
    np.random.seed(99), random.seed(99), torch.manual_seed(99)
    backward = [b[i] for i in reversed(range(8))][::-1]  # other order, other global seeds
    assert all(_equal(x, y) for x, y in zip(forward, backward))
    other_epoch = TrainSamples(dataset, cfg, epoch=4)[0]
    other_seed = TrainSamples(dataset, _cfg(seed=9), epoch=3)[0]
    assert not _equal(forward[0], other_epoch) and not _equal(forward[0], other_seed)


def test_dataloader_workers_do_not_change_batches(dataset):
    samples = TrainSamples(dataset, _cfg(), epoch=1)
    main = list(DataLoader(samples, batch_size=4, num_workers=0))
    worker = list(DataLoader(samples, batch_size=4, num_workers=1))
    assert len(main) == len(worker) == 6
    assert all(_equal(x, y) for x, y in zip(main, worker))


def test_frame_pick_follows_official_causal_rule(dataset):
    samples = TrainSamples(dataset, _cfg(), epoch=0)
    gap = 10
    for i in range(300):
        pick = samples.pick_frames(sample_rng(8, 0, i))
        seq = samples.sequences[pick.sequence]
        base, prev = pick.templates
        assert seq.split == "train"
        assert all(seq.visible[f] for f in (*pick.templates, pick.search))
        assert base - gap <= prev < base < pick.search < base + gap  # [base, earlier], then later
        assert base >= 1 and base < len(seq) - 1


def test_search_box_stays_within_jitter_bound(dataset):
    cfg = _cfg(**{"data.grayscale_prob": 0.5})
    samples = TrainSamples(dataset, cfg, epoch=0)
    bound = cfg.data.center_jitter / (2 * cfg.data.search_factor)  # 0.4375 of the crop side
    boxes = torch.stack([samples[i]["box"] for i in range(24)])
    assert ((boxes[:, :2] - 0.5).abs() <= bound + 2 / cfg.model.search_size).all()
    assert (boxes[:, 2:] > 0).all()


def test_no_jitter_centres_the_target(dataset):
    cfg = _cfg(**{"data.center_jitter": 0, "data.scale_jitter": 0, "data.flip_prob": 0})
    box = TrainSamples(dataset, cfg, epoch=0)[5]["box"]
    side_frac = 1 / cfg.data.search_factor  # target side / crop side for a square target
    assert torch.allclose(box, torch.tensor([0.5, 0.5, side_frac, side_frac]), atol=0.02)


def test_box_centre_sits_on_the_target(dataset):
    # the tree's targets are saturated squares on grey: the box centre must be coloured,
    # with and without the flip
    from seqtrack_mlflow.data.transforms import denormalize
    for flip in (0.0, 1.0):
        cfg = _cfg(**{"data.flip_prob": flip, "data.grayscale_prob": 0})
        samples = TrainSamples(dataset, cfg, epoch=0)
        for i in range(12):
            item = samples[i]
            img = denormalize(item["search"]).astype(int)
            cx, cy = (item["box"][:2] * cfg.model.search_size).long().tolist()
            assert img[cy, cx].max() - img[cy, cx].min() > 60, (flip, i)


def test_class_shares_sum_exactly(dataset):
    cfg = _cfg(**{"data.samples_per_epoch": 7})
    shares = class_shares(dataset, cfg)
    assert sum(shares.values()) == 7 and set(shares) == {"airplane", "bicycle"}


def test_validation_samples_are_fixed(dataset):
    cfg = _cfg()
    val = ValidationSamples(dataset, cfg)
    assert len(val) == 6
    names = {val.describe(i)[0] for i in range(6)}
    assert names == {"airplane-1", "bicycle-2"}  # test sequences only
    again = ValidationSamples(dataset, _cfg(seed=123))
    assert all(_equal(val[i], again[i]) for i in range(6))
    item = val[0]
    assert set(item) == {"templates", "search", "box", "gt_xywh"}
    assert torch.equal(item["templates"][0], item["templates"][1])  # initial frame in every slot
    s = cfg.model.search_size
    gt = item["gt_xywh"]
    assert torch.allclose(item["box"], torch.stack([gt[0] + gt[2] / 2, gt[1] + gt[3] / 2, gt[2], gt[3]]) / s)
    for i in range(6):
        name, f = val.describe(i)
        seq = next(q for q in dataset.test if q.name == name)
        assert seq.visible[f] and seq.visible[f - 1]


def test_no_motion_baseline_is_the_mean_iou_of_the_previous_box(dataset):
    def iou(a, b):  # xywh
        ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
        iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
        return ix * iy / (a[2] * a[3] + b[2] * b[3] - ix * iy)

    val = ValidationSamples(dataset, _cfg())
    expected = []
    for i in range(len(val)):
        name, f = val.describe(i)
        seq = next(q for q in dataset.test if q.name == name)
        expected.append(iou(seq.boxes[f - 1], seq.boxes[f]))
    assert val.no_motion_iou() == pytest.approx(float(np.mean(expected)), abs=1e-12)
    assert 0 < val.no_motion_iou() < 1, "the test targets move, so the baseline is not perfect"
    assert math.isnan(ValidationSamples(dataset, _cfg(**{"data.val_samples": 0})).no_motion_iou())


def test_validation_without_test_sequences(tmp_path):
    root = make_lasot_tree(tmp_path / "l", classes=("bicycle",), seqs_per_class=1, frames=30)
    ds = LasotDataset(root, ("bicycle",))  # bicycle-1 is a training sequence
    with pytest.raises(DataError, match="no test sequence"):
        ValidationSamples(ds, _cfg())
    assert len(ValidationSamples(ds, _cfg(**{"data.val_samples": 0}))) == 0


def test_no_eligible_training_sequence(tmp_path):
    root = make_lasot_tree(tmp_path / "l", classes=("airplane",), seqs_per_class=1, frames=30)
    with pytest.raises(DataError, match="no training sequence"):
        TrainSamples(LasotDataset(root, ("airplane",)), _cfg(), 0)  # airplane-1 is test


@pytest.mark.parametrize("over", [{}, {"data.crop_geometry": "official"}, {"data.augment_on": "frames"}])
def test_frame_cache_never_changes_a_sample(dataset, over):
    """Cached frames give exactly the samples of decoding every time, on a first pass (misses),
    a second pass (hits) and under a bound that keeps one frame; kept arrays are read-only."""
    plain = TrainSamples(dataset, _cfg(**over, **{"data.frame_cache_mb": 0}), epoch=1)
    cached = TrainSamples(dataset, _cfg(**over), epoch=1)
    tight = TrainSamples(dataset, _cfg(**over), epoch=1)
    tight.frames.max_bytes = 96 * 72 * 4  # one frame of this tree
    expected = [plain[i] for i in range(len(plain))]
    for _ in range(2):
        assert all(_equal(cached[i], x) and _equal(tight[i], x) for i, x in enumerate(expected))
    assert cached.frames.hits > cached.frames.misses > 0 and plain.frames.bytes == 0
    assert 0 < tight.frames.bytes <= tight.frames.max_bytes and len(tight.frames.items) == 1
    for value, _, _ in cached.frames.items.values():
        assert not isinstance(value, np.ndarray) or not value.flags.writeable


def test_frame_cache_keeps_each_decode_scale_apart(tmp_path):
    """Large frames decode at 1/2, 1/4 or 1/8 when the crops allow: each scale is its own entry,
    and a sample never gets a frame decoded at another scale than decoding would give."""
    root = make_lasot_tree(tmp_path, seqs_per_class=2, frames=20, size=(1280, 720))
    large = LasotDataset(root, ("airplane", "bicycle"))
    plain = TrainSamples(large, _cfg(**{"data.frame_cache_mb": 0}), epoch=1)
    cached = TrainSamples(large, _cfg(), epoch=1)
    for _ in range(2):
        assert all(_equal(cached[i], plain[i]) for i in range(len(plain)))
    scales = {scale for _, scale, _ in cached.frames.items.values()}
    assert len(scales) > 1 and min(scales) < 1.0, scales


@pytest.mark.parametrize("over", [{}, {"data.grayscale_prob": 0.5, "data.brightness_jitter": 0.4}])
def test_uint8_items_normalised_in_the_batch_are_the_normalised_items(dataset, over):
    """The trainer's loader passes uint8 crops and normalises the batch (`model_batch`): the
    same float32 values, bit for bit, as items normalised one by one."""
    cfg = _cfg(**over)
    normalised = TrainSamples(dataset, cfg, epoch=2)
    raw = TrainSamples(dataset, cfg, epoch=2, normalize=False)
    assert raw[0]["search"].dtype == torch.uint8 and raw[0]["template_scales"].dtype == torch.float32
    for expected, batch in zip(DataLoader(normalised, batch_size=8), DataLoader(raw, batch_size=8)):
        assert _equal(expected, model_batch(batch))

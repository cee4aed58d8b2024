"""The data switches to the official SeqTrack processing (transforms.py lists the deviations)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from seqtrack_mlflow.config import load_config
from seqtrack_mlflow.data.lasot import LasotDataset
from seqtrack_mlflow.data.sampler import TrainSamples, ValidationSamples
from seqtrack_mlflow.data.transforms import box_to_target, crop_around, flip_frame, to_grayscale_frame
from seqtrack_mlflow.errors import ConfigError
from seqtrack_mlflow.geometry import crop_official, target_window
from tests.datatrees import make_lasot_tree


def test_official_crop_geometry_labels_follow_transform_image_to_crop():
    image = np.random.default_rng(0).integers(0, 256, (72, 96, 3), dtype=np.uint8)
    centre, gt = np.array([30.3, 20.6, 12.0, 9.0]), np.array([33.0, 21.0, 11.0, 10.0])
    crop, box, _ = crop_around(image, centre, gt, 3.0, 64, "official")
    assert np.array_equal(crop, crop_official(image, target_window(centre, 3.0, 64)))
    crop_sz = math.ceil(math.sqrt(12 * 9) * 3.0)
    rf = 64 / crop_sz
    c = 63 / 2 + (np.array([38.5, 26.0]) - np.array([36.3, 25.1])) * rf  # official: (crop_sz - 1) / 2
    assert np.allclose(box, [c[0] - 5.5 * rf, c[1] - 5 * rf, 11 * rf, 10 * rf])
    t = box_to_target(box, 64, "official")  # normalised by (size - 1)
    assert np.allclose(t.numpy(), [c[0] / 63, c[1] / 63, 11 * rf / 63, 10 * rf / 63], atol=1e-6)


def test_official_frame_augmentation():
    frame = np.random.default_rng(1).integers(0, 256, (10, 20, 3), dtype=np.uint8)
    flipped, (box,) = flip_frame(frame, [np.array([2.0, 3.0, 5.0, 4.0])])
    assert np.array_equal(flipped, frame[:, ::-1]) and np.allclose(box, [19 - 2 - 5, 3, 5, 4])
    grey = to_grayscale_frame(frame)
    assert np.array_equal(grey[:, :, 0], cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
    assert np.array_equal(grey[:, :, 0], grey[:, :, 2])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = make_lasot_tree(tmp_path_factory.mktemp("lasot"), seqs_per_class=3, frames=40, size=(96, 72))
    return LasotDataset(root, ("airplane", "bicycle"))


def _cfg(**over):
    base = {"data.samples_per_epoch": "12", "data.val_samples": "4", "data.max_gap": "10",
            "model.template_size": "32", "model.search_size": "64"}
    base.update({k: str(v) for k, v in over.items()})
    return load_config(overrides=base)


def test_switches_make_valid_deterministic_samples(dataset):
    official = dict(**{"data.crop_geometry": "official", "data.augment_on": "frames",
                       "data.per_crop_flip": "true", "data.grayscale_prob": "0.5"})
    a, b = TrainSamples(dataset, _cfg(**official), 0), TrainSamples(dataset, _cfg(**official), 0)
    default = TrainSamples(dataset, _cfg(**{"data.grayscale_prob": "0.5"}), 0)
    differs = 0
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert all(torch.equal(x[k], y[k]) for k in x) and torch.isfinite(x["search"]).all()
        differs += not torch.equal(x["search"], default[i]["search"])
    assert differs > 0  # the switches change the samples
    val = ValidationSamples(dataset, _cfg(**official))
    assert val[0]["search"].shape == (3, 64, 64)


def test_unknown_switch_values_are_config_errors():
    with pytest.raises(ConfigError, match="data.crop_geometry"):
        _cfg(**{"data.crop_geometry": "pil"})
    with pytest.raises(ConfigError, match="data.augment_on"):
        _cfg(**{"data.augment_on": "both"})

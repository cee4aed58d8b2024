"""Config loading, overrides and every rejection rule."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from seqtrack_mlflow.config import Config, load_config
from seqtrack_mlflow.errors import ConfigError


def test_default_preset_matches_the_spec():
    cfg = load_config()
    assert cfg.seed == 8
    assert cfg.train.epochs == 5 and cfg.train.batch_size == 16 and cfg.train.workers == 1
    assert cfg.model.patch_size == 8
    assert cfg.data.classes == ("airplane", "bicycle")
    assert cfg.data.source == "sample" and cfg.train.device == "auto"


def test_b256_preset_is_the_official_model():
    m = load_config("seqtrack_b256").model
    assert (m.patch_size, m.search_size, m.template_size, m.num_templates) == (16, 256, 256, 2)
    assert (m.embed_dim, m.depth, m.num_heads, m.bins) == (768, 12, 12, 4000)
    assert (m.decoder_dim, m.decoder_layers, m.decoder_heads, m.decoder_ffn) == (256, 2, 8, 1024)


def test_string_overrides_are_parsed_by_field_type():
    cfg = load_config(overrides={"train.epochs": "3", "seed": "11", "train.lr": "2e-4",
                                 "data.classes": "bicycle", "data.skip_bad_sequences": "true",
                                 "data.samples_per_epoch": "5.0"})
    assert cfg.train.epochs == 3 and cfg.seed == 11 and cfg.train.lr == pytest.approx(2e-4)
    assert cfg.data.classes == ("bicycle",) and cfg.data.skip_bad_sequences is True
    assert cfg.data.samples_per_epoch == 5


def test_config_is_frozen_and_round_trips_through_yaml(tmp_path):
    cfg = load_config(overrides={"train.epochs": 2})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 3  # type: ignore[misc]
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg
    flat = cfg.flat()
    assert flat["train.epochs"] == 2 and flat["seed"] == 8 and flat["data.classes"] == ["airplane", "bicycle"]
    assert isinstance(cfg, Config)


@pytest.mark.parametrize("key,value,words", [
    ("train.epochs", "-1", ["train.epochs", "-1", ">= 1"]),
    ("train.epochs", "0", ["train.epochs", ">= 1"]),
    ("train.batch_size", "abc", ["train.batch_size", "abc", "not an integer"]),
    ("train.batch_size", "0", ["train.batch_size", ">= 1"]),
    ("train.workers", "-2", ["train.workers", ">= 0"]),
    ("train.device", "tpu", ["train.device", "tpu", "auto, cpu, cuda"]),
    ("train.precision", "fp8", ["train.precision", "fp8", "fp32"]),
    ("data.classes", "airplane,unicorn", ["data.classes", "unicorn", "airplane, bicycle"]),
    ("data.source", "imagenet", ["data.source", "imagenet", "sample, lasot"]),
    ("model.patch_size", "7", ["model.template_size", "multiple of model.patch_size=7"]),
    ("model.num_heads", "5", ["model.num_heads", "divisor"]),
    ("data.flip_prob", "1.5", ["data.flip_prob", "[0, 1]"]),
    ("data.skip_bad_sequences", "maybe", ["data.skip_bad_sequences", "true or false"]),
    ("train.lr", "fast", ["train.lr", "not a number"]),
    ("train.schedule", "linear", ["train.schedule", "linear", "step, cosine"]),
    ("train.warmup_steps", "-1", ["train.warmup_steps", ">= 0"]),
    ("model.pretrained", "/no/such/file.pth", ["model.pretrained", "existing weights file"]),
    ("train.nonsense", "1", ["train.nonsense", "allowed in train"]),
    ("nonsense", "1", ["nonsense", "<section>.<field>"]),
])
def test_bad_values_are_rejected_with_one_clear_line(key, value, words):
    with pytest.raises(ConfigError) as info:
        load_config(overrides={key: value})
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_lasot_accepts_every_lasot_class_but_sample_only_its_two():
    assert load_config(overrides={"data.source": "lasot", "data.classes": "zebra,rubicCube"}).data.classes == (
        "zebra", "rubicCube")
    with pytest.raises(ConfigError, match="zebra"):
        load_config(overrides={"data.classes": "zebra"})


def test_warm_up_needs_the_cosine_schedule():
    with pytest.raises(ConfigError, match="warm-up needs train.schedule=cosine"):
        load_config(overrides={"train.schedule": "step", "train.warmup_steps": "10"})


def test_unknown_yaml_keys_and_bad_yaml_are_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": {"epochz": 3}}))
    with pytest.raises(ConfigError, match="train.epochz"):
        load_config(bad)
    bad.write_text(yaml.safe_dump({"optimizer": {"lr": 1}}))
    with pytest.raises(ConfigError, match="optimizer"):
        load_config(bad)
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")

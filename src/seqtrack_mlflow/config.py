"""Typed, validated configuration: YAML preset <- overrides (CLI flags / MLproject -P values).

A config is frozen sections (data, model, train, track, hub, mlflow) plus the seed. The presets ship inside
the package (`seqtrack_mlflow/configs/*.yaml`, found and read by presets.py; the top-level
`configs/` is a link to them), and `default.yaml` is the one place that holds every default:
the dataclasses below declare and document the keys but give no values, and a tree that leaves
a key out (a checkpoint's config that lacks it, a short user preset) gets it from `default.yaml`.

Every config is built by `Config.from_dict` (used by `load_config`, resume, evaluation and the
benchmarks), validated there once (the rules are in config_rules.py), and never mutated
afterwards. An override whose value is None or "" means "not given" and keeps the preset's
value: MLproject passes "" for every `-P` the user left out, so its defaults never mask a
preset. Every rejection raises `ConfigError` with one line naming the key, the bad value and
what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from seqtrack_mlflow.config_rules import validate
from seqtrack_mlflow.errors import ConfigError
from seqtrack_mlflow.presets import default_tree, read_yaml, resolve_config_source


@dataclass(frozen=True)
class DataConfig:
    source: str
    """'sample' = bundled procedural LaSOT-format data (offline); 'lasot' = l-lt/LaSOT download."""
    root: str
    """Folder holding <class>/<class>-<n>/ trees; '' = a per-user cache folder."""
    classes: tuple[str, ...]
    """LaSOT classes to train and validate on."""
    samples_per_epoch: int
    """Training samples (template, template, search triplets) per epoch; official: 60000."""
    max_gap: int
    """Frames drawn within +-max_gap of a base frame (official MAX_SAMPLE_INTERVAL)."""
    template_factor: float
    """Template crop side = sqrt(w*h) * factor (official 4.0)."""
    search_factor: float
    """Search crop side = sqrt(w*h) * factor (official 4.0)."""
    center_jitter: float
    """Search crop centre jitter, in units of sqrt(w*h)/... as in the official processing."""
    scale_jitter: float
    """Search crop log-scale jitter (official 0.5)."""
    grayscale_prob: float
    """Probability that all three crops of a sample are turned grey together."""
    flip_prob: float
    """Probability of a joint horizontal flip."""
    brightness_jitter: float
    """Brightness factor drawn from U(1-b, 1+b) (official 0.2)."""
    val_samples: int
    """Held-out samples whose boxes are decoded autoregressively at the end of each epoch."""
    val_tracking: str
    """'always': after each epoch, track the held-out sequences with the `track` settings (as
    `evaluate` does, fp32) and log epoch/val_auc, val_precision, val_norm_precision; the epoch
    with the highest val AUC is then "best" (registry, Hub root, evaluate --epoch best) instead of
    the one with the highest val IoU. 'never': val IoU only. 'auto': always on the bundled sample
    (637 frames, ~3.5 s per epoch on the 2-core AMD EPYC), never on LaSOT (its test videos take hours)."""
    skip_bad_sequences: bool
    """Skip (and count) a malformed sequence instead of failing."""
    keep_zip: bool
    """Keep downloaded LaSOT class zips after extraction."""
    crop_geometry: str
    """Training crops and box labels: 'exact-corner' (PIL crop, box through the rounded crop
    corner, / crop size) or 'official' (cv2 sample_target crop, box relative to the unrounded
    centre at (size - 1) / 2, / (size - 1), as lib/train/data/processing_utils.py)."""
    augment_on: str
    """Where the joint grayscale and flip act: 'crops' (cheap) or 'frames' (official: cv2 grey
    and a flip of the whole frames, box x' = W - 1 - x - w, before cropping)."""
    per_crop_flip: bool
    """Also flip each crop on its own with flip_prob (official RandomHorizontalFlip_Norm)."""
    revision: str
    """l-lt/LaSOT revision (commit sha, branch or tag) to download; '' = main, resolved to its
    commit once per download and recorded in each class's marker and on the run."""
    follow_symlinks: bool
    """Follow symlinks in a LaSOT tree that lead outside it (always logged); false refuses them."""
    max_class_bytes: int
    """Most bytes one class zip may extract to (real LaSOT: the largest class is a few GB)."""
    scaled_decode: bool
    """Decode JPEG frames of >= 640x480 (LaSOT's 1280x720) at 1/2, 1/4 or 1/8 size (DCT scaling) when every
    training crop taken from the frame shrinks by at least that much; false = always full size."""
    frame_cache_mb: int
    """Decoded training frames kept in memory by each loading process (the data worker, or the
    training process with workers=0), in MiB; 0 = decode every time. Never changes a sample."""


@dataclass(frozen=True)
class ModelConfig:
    patch_size: int
    """ViT patch side in pixels (official 16; the assignment asks for 8)."""
    template_size: int
    """Template crop side in pixels (official B256: 256)."""
    search_size: int
    """Search crop side in pixels (official B256: 256)."""
    num_templates: int
    """Templates fed to the encoder (official 2)."""
    embed_dim: int
    """Encoder width (ViT-B: 768)."""
    depth: int
    """Encoder blocks (ViT-B: 12)."""
    num_heads: int
    """Encoder attention heads (ViT-B: 12)."""
    mlp_ratio: float
    """Encoder MLP hidden = mlp_ratio * embed_dim."""
    drop_path: float
    """Stochastic depth rate of the encoder."""
    bins: int
    """Quantisation bins per box coordinate; vocabulary = bins + 2 (END, START)."""
    decoder_dim: int
    """Decoder width (official 256)."""
    decoder_layers: int
    """Decoder layers (official 2)."""
    decoder_heads: int
    """Decoder heads (official 8)."""
    decoder_ffn: int
    """Decoder feed-forward width (official 1024)."""
    dropout: float
    """Decoder dropout (official 0.1)."""
    pretrained: str
    """Optional path to MAE/timm ViT weights for the encoder ('' = random init)."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    """Training epochs (official 500)."""
    batch_size: int
    """Samples per optimizer step (official 16 per GPU)."""
    workers: int
    """DataLoader worker processes per training process (0 = load in the main process)."""
    nproc: int
    """Data-parallel training processes (torchrun); batch_size stays the global batch."""
    device: str
    """'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    precision: str
    """'fp32', 'bf16' (autocast; CPU or CUDA), 'fp16' (CUDA AMP) or 'auto': bf16 where the
    hardware computes it natively (CPU with AVX512-BF16 or AMX, CUDA with bf16 support), else
    fp32; resolved once at start-up and recorded in the run's config."""
    lr: float
    """AdamW learning rate of the decoder and heads (official 1e-4)."""
    encoder_lr_mult: float
    """Encoder lr = lr * this (official ENCODER_MULTIPLIER 0.1)."""
    weight_decay: float
    """AdamW weight decay (official 1e-4)."""
    schedule: str
    """'step' (official: x lr_drop_factor after lr_drop_epoch, counted in epochs) or 'cosine'
    (per optimizer step, from lr after the warm-up down to 0 at the last step)."""
    warmup_steps: int
    """Optimizer steps of linear lr warm-up from 0 (cosine schedule only; official: none)."""
    lr_drop_epoch: int
    """Epoch after which lr is multiplied by lr_drop_factor (official 400 of 500)."""
    lr_drop_factor: float
    """Step-schedule decay (official 0.1)."""
    grad_clip: float
    """Max gradient norm (official 0.1); 0 disables clipping."""
    ema_decay: float
    """Exponential moving average of the weights, updated after every optimizer step with this
    decay (0 = off): validation, held-out tracking, the checkpoint's model_state_dict, the
    LoggedModels and the Hub hold the averaged weights; the raw ones are kept in the checkpoint
    for a resume (`training_weights`). The official recipe has none."""
    label_rounding: str
    """How box coordinates become token labels: 'floor' (official, floor(x * (bins - 1))) or
    'nearest' (floor(x * (bins - 1) + 0.5)). The tracker decodes token / (bins - 1), so floor
    labels bias every coordinate half a bin low: negligible with the official 4000 bins, a
    box that shrinks ~2% a frame in closed loop with 64 (benchmarks/results/learning.md)."""
    log_every: int
    """Samples between progress blocks (the assignment's 50; docs/training.md)."""
    output_dir: str
    """Local folder for checkpoints/, training_log.txt and report.md (one sub-folder per run)."""
    resume: str
    """Checkpoint path or MLflow run id to continue from ('' = start fresh)."""
    allow_data_change: bool
    """Let a resume continue on data whose fingerprint (annotations, split) differs from the
    checkpoint's; the new run records both fingerprints (tag seqtrack.resume_data_changed).
    false: such a resume stops with one line."""
    init: str
    """Warm start: model weights only (fresh optimizer and schedule, epoch 1) from a checkpoint
    or weights file, an MLflow run id (`<id>[:<epoch>]`, `runs:/<id>`), a `models:/` URI or a
    Hub repo mirrored by this project (`owner/name[@revision]`); '' = random init. See
    train/warm_start.py."""


@dataclass(frozen=True)
class TrackConfig:
    """Tracker settings (`evaluate`); crop factors and sizes come from the checkpoint's config."""

    geometry: str
    """'official' = the official tracker's crops and box mapping; 'exact-corner' = one PIL
    crop and the box mapped through the rounded crop corner (docs/fidelity.md)."""
    window: bool
    """Hanning window on the cx, cy token probabilities (official TEST.WINDOW: true)."""
    update_interval: int
    """Frames between template updates (official LaSOT 450)."""
    update_threshold: float
    """Confidence score (sum of the 4 token probabilities x 10) needed to update (official 0.6)."""
    clip_margin: float
    """Boxes stay on the image and at least this many pixels wide/high (official clip_box 10)."""


@dataclass(frozen=True)
class HubConfig:
    push_every_epoch: bool
    """Upload each epoch to the Hub in the background while training (HF_TOKEN needed); the
    training loop never waits on it, and `mirror` completes the repo afterwards."""
    repo_id: str
    """Model repo for push_every_epoch (`mirror` takes its own --repo-id)."""
    revision: str
    """Branch to push to ('' = main)."""
    private: bool
    """Create the repo as private if it does not exist."""


@dataclass(frozen=True)
class MlflowConfig:
    log_models: str
    """Which epochs become MLflow LoggedModels (pyfunc, safetensors weights) beside their
    checkpoint: all | best (each epoch that improves the best score so far: epoch/val_auc when
    the run tracks each epoch, else epoch/val_iou; epoch_ranking.py) | last."""
    registered_model: str
    """Model Registry name the best epoch is registered under at the end of training
    ('' = do not register)."""
    alias: str
    """Registry alias of the best version so far (e.g. models:/seqtrack-lasot@champion): a new
    run's version takes it only when its ranking score beats the current holder's, validated
    on the same held-out data (publish/models.py); every new version takes the alias `newest`."""
    force_champion: bool
    """Move `alias` to this run's version even when it does not beat the current one."""
    system_metrics: bool
    """Log CPU, memory (and GPU) use as system/* metrics of the training run (psutil)."""


@dataclass(frozen=True)
class Config:
    seed: int
    """Seed of every random generator (the assignment's 8)."""
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    track: TrackConfig
    hub: HubConfig
    mlflow: MlflowConfig

    @classmethod
    def from_dict(cls, tree: dict[str, Any], overrides: dict[str, Any] | None = None,
                  origin: str = "config") -> "Config":
        """The one way to build a config: a nested tree ({'seed': 8, 'model': {...}}) over the
        default preset, then dotted overrides ({'train.epochs': '5'}; None/"" = not given),
        each value parsed by its field's type, then `validate`. `origin` names the tree's source
        in error messages."""
        if not isinstance(tree, dict):
            raise ConfigError(f"{origin} must hold a mapping of sections, got {type(tree).__name__}")
        unknown = set(tree) - set(SECTIONS) - {"seed"}
        if unknown:
            raise ConfigError(f"{origin}: unknown top-level key(s) {sorted(map(str, unknown))}; "
                              f"allowed: seed, {', '.join(SECTIONS)}")
        base = default_tree()
        merged: dict[str, Any] = {"seed": tree.get("seed", base["seed"])}
        for name in SECTIONS:
            values = tree.get(name)
            if values is None:
                values = {}
            if not isinstance(values, dict):
                raise ConfigError(f"{origin}: section {name!r} must be a mapping of keys, "
                                  f"got {type(values).__name__} {values!r}")
            merged[name] = {**base.get(name, {}), **values}
        for key, value in (overrides or {}).items():
            if value is None or (isinstance(value, str) and value.strip() == ""):
                continue  # not given: keep the preset's value
            if key == "seed":
                merged["seed"] = value
                continue
            section, _, name = key.partition(".")
            if section not in SECTIONS or not name:
                raise ConfigError(f"config: unknown key {key!r}; use seed or <section>.<field> "
                                  f"with section in {', '.join(SECTIONS)}")
            merged[section][name] = value
        cfg = cls(seed=_coerce("seed", merged["seed"], int),
                  **{name: _build(name, sec, merged[name]) for name, sec in SECTIONS.items()})
        validate(cfg)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (tuples as lists), ready for YAML or a checkpoint."""
        return _plain(dataclasses.asdict(self))

    def flat(self) -> dict[str, Any]:
        """{'train.epochs': 5, ...}: one entry per leaf, for MLflow params."""
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "track": TrackConfig,
            "hub": HubConfig, "mlflow": MlflowConfig}


def load_config(source: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML preset (None = default, a preset name or a path), apply dotted-key
    overrides ({'train.epochs': '5'}; None or "" = not given), validate."""
    path = resolve_config_source(source)
    return Config.from_dict(read_yaml(path), overrides, origin=f"config {path}")


def _build(section: str, cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    unknown = set(values) - set(hints)
    if unknown:
        raise ConfigError(f"config: unknown key(s) {sorted(f'{section}.{k}' for k in unknown)}; "
                          f"allowed in {section}: {', '.join(hints)}")
    missing = set(hints) - set(values)
    if missing:  # only possible if default.yaml itself lacks a key
        raise ConfigError(f"config: no value for {sorted(f'{section}.{k}' for k in missing)}")
    return cls(**{k: _coerce(f"{section}.{k}", v, hints[k]) for k, v in values.items()})


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Turn a YAML or command-line value into the field's type, or raise ConfigError."""
    if typing.get_origin(typ) is tuple:  # tuple[str, ...]: "a,b" or a YAML list
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{key}: {value!r} is not a list; give comma-separated names")
        return tuple(str(v).strip() for v in items if str(v).strip())
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{key}: {value!r} is not a boolean; use true or false")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # MLflow may hand "5.0"
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+(\.0*)?\s*", value):
            return int(float(value))
        raise ConfigError(f"{key}: {value!r} is not an integer")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: {value!r} is not a number")
    if typ is str:
        if isinstance(value, (dict, list, tuple)):
            raise ConfigError(f"{key}: {value!r} is not a string")
        return "" if value is None else str(value)
    raise ConfigError(f"{key}: unsupported type {typ}")

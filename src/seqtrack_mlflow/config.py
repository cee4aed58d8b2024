"""Typed, validated configuration: YAML preset <- overrides (CLI flags / MLproject -P values).

A config is three frozen sections (data, model, train) plus the seed. It is built once by
`load_config`, validated in one place (`validate`), and never mutated afterwards; code that
needs a variant uses `dataclasses.replace`. Every rejection raises `ConfigError` with one line
naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seqtrack_mlflow.errors import ConfigError

# The 70 LaSOT categories (Fan et al., CVPR 2019), spelled as the dataset's folders are.
LASOT_CLASSES = (
    "airplane", "basketball", "bear", "bicycle", "bird", "boat", "book", "bottle", "bus", "car",
    "cat", "cattle", "chameleon", "coin", "crab", "crocodile", "cup", "deer", "dog", "drone",
    "electricfan", "elephant", "flag", "fox", "frog", "gametarget", "gecko", "giraffe",
    "goldfish", "gorilla", "guitar", "hand", "hat", "helmet", "hippo", "horse", "kangaroo",
    "kite", "leopard", "licenseplate", "lion", "lizard", "microphone", "monkey", "motorcycle",
    "mouse", "person", "pig", "pool", "rabbit", "racing", "robot", "rubicCube", "sepia", "shark",
    "sheep", "skateboard", "spider", "squirrel", "surfboard", "swing", "tank", "tiger", "train",
    "truck", "turtle", "umbrella", "volleyball", "yoyo", "zebra",
)
# The bundled procedural data only draws these two classes.
SAMPLE_CLASSES = ("airplane", "bicycle")
DATA_SOURCES = ("sample", "lasot")
PRECISIONS = ("fp32", "bf16", "fp16")
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"


@dataclass(frozen=True)
class DataConfig:
    source: str = "sample"
    """'sample' = bundled procedural LaSOT-format data (offline); 'lasot' = l-lt/LaSOT download."""
    root: str = ""
    """Folder holding <class>/<class>-<n>/ trees; '' = a per-user cache folder."""
    classes: tuple[str, ...] = ("airplane", "bicycle")
    """LaSOT classes to train and validate on."""
    samples_per_epoch: int = 2000
    """Training samples (template, template, search triplets) per epoch; official: 60000."""
    max_gap: int = 400
    """Frames drawn within +-max_gap of a base frame (official MAX_SAMPLE_INTERVAL)."""
    template_factor: float = 4.0
    """Template crop side = sqrt(w*h) * factor (official 4.0)."""
    search_factor: float = 4.0
    """Search crop side = sqrt(w*h) * factor (official 4.0)."""
    center_jitter: float = 3.5
    """Search crop centre jitter, in units of sqrt(w*h)/... as in the official processing."""
    scale_jitter: float = 0.5
    """Search crop log-scale jitter (official 0.5)."""
    grayscale_prob: float = 0.05
    """Probability that all three crops of a sample are turned grey together."""
    flip_prob: float = 0.5
    """Probability of a joint horizontal flip."""
    brightness_jitter: float = 0.2
    """Brightness factor drawn from U(1-b, 1+b) (official 0.2)."""
    val_samples: int = 64
    """Held-out samples whose boxes are decoded autoregressively at the end of each epoch."""
    skip_bad_sequences: bool = False
    """Skip (and count) a malformed sequence instead of failing."""
    keep_zip: bool = False
    """Keep downloaded LaSOT class zips after extraction."""
    revision: str = ""
    """l-lt/LaSOT revision (commit sha, branch or tag) to download; '' = main, resolved to its
    commit once per download and recorded in each class's marker and on the run."""
    follow_symlinks: bool = True
    """Follow symlinks in a LaSOT tree that lead outside it (always logged); false refuses them."""
    max_class_bytes: int = 32 * 2**30
    """Most bytes one class zip may extract to (real LaSOT: the largest class is a few GB)."""
    scaled_decode: bool = True
    """Decode JPEG frames of >= 640x480 (LaSOT's 1280x720) at 1/2, 1/4 or 1/8 size (DCT scaling) when every
    training crop taken from the frame shrinks by at least that much; false = always full size."""


@dataclass(frozen=True)
class ModelConfig:
    patch_size: int = 8
    """ViT patch side in pixels (official 16; the spec asks for 8)."""
    template_size: int = 64
    """Template crop side in pixels (official B256: 256)."""
    search_size: int = 128
    """Search crop side in pixels (official B256: 256)."""
    num_templates: int = 2
    """Templates fed to the encoder (official 2)."""
    embed_dim: int = 192
    """Encoder width (ViT-B: 768)."""
    depth: int = 4
    """Encoder blocks (ViT-B: 12)."""
    num_heads: int = 3
    """Encoder attention heads (ViT-B: 12)."""
    mlp_ratio: float = 4.0
    """Encoder MLP hidden = mlp_ratio * embed_dim."""
    drop_path: float = 0.0
    """Stochastic depth rate of the encoder."""
    bins: int = 4000
    """Quantisation bins per box coordinate; vocabulary = bins + 2 (END, START)."""
    decoder_dim: int = 256
    """Decoder width (official 256)."""
    decoder_layers: int = 2
    """Decoder layers (official 2)."""
    decoder_heads: int = 8
    """Decoder heads (official 8)."""
    decoder_ffn: int = 1024
    """Decoder feed-forward width (official 1024)."""
    dropout: float = 0.1
    """Decoder dropout (official 0.1)."""
    pretrained: str = ""
    """Optional path to MAE/timm ViT weights for the encoder ('' = random init)."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    """Training epochs (official 500)."""
    batch_size: int = 16
    """Samples per optimizer step (official 16 per GPU)."""
    workers: int = 1
    """DataLoader worker processes per training process (0 = load in the main process)."""
    nproc: int = 1
    """Data-parallel training processes (torchrun); batch_size stays the global batch."""
    device: str = "auto"
    """'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    precision: str = "fp32"
    """'fp32', 'bf16' (autocast; CPU or CUDA) or 'fp16' (CUDA AMP)."""
    lr: float = 1e-4
    """AdamW learning rate of the decoder and heads (official 1e-4)."""
    encoder_lr_mult: float = 0.1
    """Encoder lr = lr * this (official ENCODER_MULTIPLIER 0.1)."""
    weight_decay: float = 1e-4
    """AdamW weight decay (official 1e-4)."""
    lr_drop_epoch: int = 4
    """Epoch after which lr is multiplied by lr_drop_factor (official 400 of 500)."""
    lr_drop_factor: float = 0.1
    """Step-schedule decay (official 0.1)."""
    grad_clip: float = 0.1
    """Max gradient norm (official 0.1); 0 disables clipping."""
    log_every: int = 50
    """Samples between progress blocks (the spec's 50)."""
    output_dir: str = "outputs"
    """Local folder for checkpoints/, training_log.txt and report.md (one sub-folder per run)."""
    resume: str = ""
    """Checkpoint path or MLflow run id to continue from ('' = start fresh)."""


@dataclass(frozen=True)
class Config:
    seed: int = 8
    """Seed of every random generator (the spec's 8)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

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


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML preset, apply dotted-key overrides ({'train.epochs': '5'}), validate.

    Override values may be strings (as they come from the command line) and are parsed by
    the type of the field they set.
    """
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config: file {str(path)!r} not found (presets live in {CONFIG_DIR})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {path} must hold a mapping of sections, got {type(raw).__name__}")
    tree = {name: dict(raw.get(name) or {}) for name in SECTIONS}
    unknown = set(raw) - set(SECTIONS) - {"seed"}
    if unknown:
        raise ConfigError(f"config: unknown top-level key(s) {sorted(unknown)} in {path}; "
                          f"allowed: seed, {', '.join(SECTIONS)}")
    seed = raw.get("seed", Config.seed)
    for key, value in (overrides or {}).items():
        if key == "seed":
            seed = value
            continue
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            raise ConfigError(f"config: unknown key {key!r}; use seed or <section>.<field> "
                              f"with section in {', '.join(SECTIONS)}")
        tree[section][name] = value
    cfg = Config(
        seed=_coerce("seed", seed, int),
        **{name: _build(name, cls, tree[name]) for name, cls in SECTIONS.items()},
    )
    validate(cfg)
    return cfg


def _build(section: str, cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    unknown = set(values) - set(hints)
    if unknown:
        raise ConfigError(f"config: unknown key(s) {sorted(f'{section}.{k}' for k in unknown)}; "
                          f"allowed in {section}: {', '.join(hints)}")
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


def _need(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {value!r} is not allowed; {allowed}")


def validate(cfg: Config) -> None:
    """Every range and cross-field rule, checked once before any work starts."""
    d, m, t = cfg.data, cfg.model, cfg.train
    _need(cfg.seed >= 0, "seed", cfg.seed, "use an integer >= 0")
    _need(d.source in DATA_SOURCES, "data.source", d.source, f"use one of {', '.join(DATA_SOURCES)}")
    _need(len(d.classes) > 0, "data.classes", ",".join(d.classes), "name at least one class")
    _need(len(set(d.classes)) == len(d.classes), "data.classes", ",".join(d.classes),
          "name each class once")
    allowed = SAMPLE_CLASSES if d.source == "sample" else LASOT_CLASSES
    for name in d.classes:
        _need(name in allowed, "data.classes", name,
              f"{d.source} data has classes: {', '.join(allowed)}")
    if d.source == "lasot" and d.root:
        # An explicit LaSOT folder must exist unless the download is going to create it.
        _need(Path(d.root).expanduser().parent.exists(), "data.root", d.root,
              "its parent folder must exist")
    _need(d.max_class_bytes >= 1, "data.max_class_bytes", d.max_class_bytes, "use >= 1 (bytes)")
    _need(d.samples_per_epoch >= 1, "data.samples_per_epoch", d.samples_per_epoch, "use >= 1")
    _need(d.max_gap >= 1, "data.max_gap", d.max_gap, "use >= 1")
    _need(d.template_factor > 0, "data.template_factor", d.template_factor, "use > 0")
    _need(d.search_factor > 0, "data.search_factor", d.search_factor, "use > 0")
    _need(d.center_jitter >= 0, "data.center_jitter", d.center_jitter, "use >= 0")
    _need(d.scale_jitter >= 0, "data.scale_jitter", d.scale_jitter, "use >= 0")
    for key in ("grayscale_prob", "flip_prob"):
        p = getattr(d, key)
        _need(0.0 <= p <= 1.0, f"data.{key}", p, "use a probability in [0, 1]")
    _need(0.0 <= d.brightness_jitter < 1.0, "data.brightness_jitter", d.brightness_jitter,
          "use a value in [0, 1)")
    _need(d.val_samples >= 0, "data.val_samples", d.val_samples, "use >= 0")

    _need(m.patch_size >= 1, "model.patch_size", m.patch_size, "use >= 1")
    for key in ("template_size", "search_size"):
        size = getattr(m, key)
        _need(size >= 1 and size % m.patch_size == 0, f"model.{key}", size,
              f"use a positive multiple of model.patch_size={m.patch_size}")
    _need(m.num_templates >= 1, "model.num_templates", m.num_templates, "use >= 1")
    _need(m.depth >= 1, "model.depth", m.depth, "use >= 1")
    _need(m.num_heads >= 1 and m.embed_dim % m.num_heads == 0, "model.num_heads", m.num_heads,
          f"use a divisor of model.embed_dim={m.embed_dim}")
    _need(m.mlp_ratio > 0, "model.mlp_ratio", m.mlp_ratio, "use > 0")
    _need(0.0 <= m.drop_path < 1.0, "model.drop_path", m.drop_path, "use a value in [0, 1)")
    _need(m.bins >= 2, "model.bins", m.bins, "use >= 2")
    _need(m.decoder_layers >= 1, "model.decoder_layers", m.decoder_layers, "use >= 1")
    _need(m.decoder_heads >= 1 and m.decoder_dim % m.decoder_heads == 0, "model.decoder_heads",
          m.decoder_heads, f"use a divisor of model.decoder_dim={m.decoder_dim}")
    _need(m.decoder_ffn >= 1, "model.decoder_ffn", m.decoder_ffn, "use >= 1")
    _need(0.0 <= m.dropout < 1.0, "model.dropout", m.dropout, "use a value in [0, 1)")
    _need(not m.pretrained or Path(m.pretrained).expanduser().is_file(), "model.pretrained",
          m.pretrained, "give the path of an existing weights file, or ''")

    _need(t.epochs >= 1, "train.epochs", t.epochs, "use an integer >= 1")
    _need(t.batch_size >= 1, "train.batch_size", t.batch_size, "use an integer >= 1")
    _need(t.workers >= 0, "train.workers", t.workers, "use an integer >= 0")
    _need(t.nproc >= 1, "train.nproc", t.nproc, "use an integer >= 1")
    _need(t.batch_size % t.nproc == 0 and d.samples_per_epoch % t.nproc == 0, "train.nproc", t.nproc,
          f"train.batch_size ({t.batch_size}) and data.samples_per_epoch ({d.samples_per_epoch}) "
          "must be divisible by it")
    _need(re.fullmatch(r"auto|cpu|cuda(:\d+)?", t.device) is not None, "train.device", t.device,
          "use auto, cpu, cuda or cuda:N")
    _need(t.precision in PRECISIONS, "train.precision", t.precision,
          f"use one of {', '.join(PRECISIONS)}")
    _need(t.lr > 0, "train.lr", t.lr, "use > 0")
    _need(t.encoder_lr_mult >= 0, "train.encoder_lr_mult", t.encoder_lr_mult, "use >= 0")
    _need(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "use >= 0")
    _need(t.lr_drop_epoch >= 1, "train.lr_drop_epoch", t.lr_drop_epoch, "use >= 1")
    _need(0 < t.lr_drop_factor <= 1, "train.lr_drop_factor", t.lr_drop_factor, "use a value in (0, 1]")
    _need(t.grad_clip >= 0, "train.grad_clip", t.grad_clip, "use >= 0 (0 = no clipping)")
    _need(t.log_every >= 1, "train.log_every", t.log_every, "use >= 1")
    _need(bool(t.output_dir), "train.output_dir", t.output_dir, "name a folder")

"""The rules a config must meet: allowed values, ranges and cross-field checks, in one place.

`validate` reads a built config (see config.py) section by section; the allowed-value tuples
below are the ones its error messages list.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

from seqtrack_mlflow.errors import ConfigError
from seqtrack_mlflow.geometry import EXACT_CORNER_GEOMETRY, GEOMETRIES, OFFICIAL_GEOMETRY
from seqtrack_mlflow.lasot_classes import LASOT_CLASSES, SAMPLE_CLASSES

DATA_SOURCES = ("sample", "lasot")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
SCHEDULES = ("step", "cosine")
LABEL_ROUNDINGS = ("floor", "nearest")
VAL_TRACKING = ("auto", "always", "never")
LOG_MODELS = ("all", "best", "last")
# Bounds on values that are legal in type but absurd in practice (they would overflow or run
# for years); each error message names the bound.
MAX_EPOCHS = 100_000
MAX_SEED = 2**32 - 1  # PYTHONHASHSEED and numpy seeds are 32-bit
# Upper bounds on every size that allocates memory, checked before anything is built: a config
# read from outside (a logged model's config.json, a Hub folder, a checkpoint, --init, a YAML
# file) could otherwise ask for a network or a crop of any size. Each is several times the
# largest official SeqTrack (L384: ViT-L, 384 px crops, 4000 bins).
MAX_PATCH_SIZE = 64
MAX_CROP_SIZE = 1024          # template and search crop side, pixels
MAX_TEMPLATES = 8
MAX_EMBED_DIM = 2048          # ViT-L: 1024
MAX_DEPTH = 64                # ViT-L: 24
MAX_HEADS = 64
MAX_MLP_RATIO = 16.0
MAX_BINS = 16384              # official 4000
MAX_DECODER_DIM = 2048
MAX_DECODER_LAYERS = 32
MAX_DECODER_FFN = 16384
MAX_CROP_FACTOR = 16.0        # crop side / target side (official 4.0 / 5.0)
MAX_SAMPLES_PER_EPOCH = 100_000_000
MAX_BATCH_SIZE = 4096
MAX_WORKERS = 256
MAX_NPROC = 1024
MAX_VAL_SAMPLES = 1_000_000
MAX_GAP = 1_000_000
MAX_JITTER = 16.0
MAX_LOG_EVERY = 10**9
MAX_UPDATE_INTERVAL = 10**9


def check_upper(key: str, value: Any, bound: Any) -> None:
    """ConfigError when `value` exceeds `bound` (the message names both)."""
    _need(value <= bound, key, value, f"use <= {bound} (bound on sizes that allocate memory)")


def _need(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {value!r} is not allowed; {allowed}")


def validate(cfg: Any) -> None:
    """Every range and cross-field rule of a `config.Config`, checked once before any work starts.
    (One rule a line, section by section: long, but it reads as the table of allowed values.)"""
    d, m, t = cfg.data, cfg.model, cfg.train
    for part in dataclasses.fields(cfg):  # NaN and inf pass every range check below: refuse them first
        section = getattr(cfg, part.name)
        if not dataclasses.is_dataclass(section):
            continue
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if isinstance(value, float):
                _need(math.isfinite(value), f"{part.name}.{f.name}", value, "use a finite number")
    _need(0 <= cfg.seed <= MAX_SEED, "seed", cfg.seed, f"use an integer in [0, {MAX_SEED}]")
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
    for key, bound in (("samples_per_epoch", MAX_SAMPLES_PER_EPOCH), ("max_gap", MAX_GAP),
                       ("template_factor", MAX_CROP_FACTOR), ("search_factor", MAX_CROP_FACTOR),
                       ("center_jitter", MAX_JITTER), ("scale_jitter", MAX_JITTER),
                       ("val_samples", MAX_VAL_SAMPLES)):
        check_upper(f"data.{key}", getattr(d, key), bound)
    for key, bound in (("patch_size", MAX_PATCH_SIZE), ("template_size", MAX_CROP_SIZE),
                       ("search_size", MAX_CROP_SIZE), ("num_templates", MAX_TEMPLATES),
                       ("embed_dim", MAX_EMBED_DIM), ("depth", MAX_DEPTH), ("num_heads", MAX_HEADS),
                       ("mlp_ratio", MAX_MLP_RATIO), ("bins", MAX_BINS), ("decoder_dim", MAX_DECODER_DIM),
                       ("decoder_layers", MAX_DECODER_LAYERS), ("decoder_heads", MAX_HEADS),
                       ("decoder_ffn", MAX_DECODER_FFN)):
        check_upper(f"model.{key}", getattr(cfg.model, key), bound)
    for key, bound in (("batch_size", MAX_BATCH_SIZE), ("workers", MAX_WORKERS), ("nproc", MAX_NPROC),
                       ("log_every", MAX_LOG_EVERY)):
        check_upper(f"train.{key}", getattr(cfg.train, key), bound)
    check_upper("track.update_interval", cfg.track.update_interval, MAX_UPDATE_INTERVAL)
    _need(d.max_class_bytes >= 1, "data.max_class_bytes", d.max_class_bytes, "use >= 1 (bytes)")
    _need(d.frame_cache_mb >= 0, "data.frame_cache_mb", d.frame_cache_mb, "use >= 0 (MiB; 0 = no cache)")
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
    _need(d.val_tracking in VAL_TRACKING, "data.val_tracking", d.val_tracking,
          f"use one of {', '.join(VAL_TRACKING)}")
    _need(d.crop_geometry in GEOMETRIES, "data.crop_geometry", d.crop_geometry,
          f"use {EXACT_CORNER_GEOMETRY} or {OFFICIAL_GEOMETRY}")
    _need(d.augment_on in ("crops", "frames"), "data.augment_on", d.augment_on, "use crops or frames")

    _need(m.patch_size >= 1, "model.patch_size", m.patch_size, "use >= 1")
    for key in ("template_size", "search_size"):
        size = getattr(m, key)
        _need(size >= 1 and size % m.patch_size == 0, f"model.{key}", size,
              f"use a positive multiple of model.patch_size={m.patch_size}")
    _need(m.num_templates >= 1, "model.num_templates", m.num_templates, "use >= 1")
    _need(m.embed_dim >= 1, "model.embed_dim", m.embed_dim, "use >= 1")
    _need(m.depth >= 1, "model.depth", m.depth, "use >= 1")
    _need(m.num_heads >= 1 and m.embed_dim % m.num_heads == 0, "model.num_heads", m.num_heads,
          f"use a divisor of model.embed_dim={m.embed_dim}")
    _need(int(m.embed_dim * m.mlp_ratio) >= 1, "model.mlp_ratio", m.mlp_ratio,
          f"use a ratio that gives an MLP of >= 1 unit (model.embed_dim={m.embed_dim})")
    _need(0.0 <= m.drop_path < 1.0, "model.drop_path", m.drop_path, "use a value in [0, 1)")
    _need(m.bins >= 2, "model.bins", m.bins, "use >= 2")
    _need(m.decoder_dim >= 1, "model.decoder_dim", m.decoder_dim, "use >= 1")
    _need(m.decoder_layers >= 1, "model.decoder_layers", m.decoder_layers, "use >= 1")
    _need(m.decoder_heads >= 1 and m.decoder_dim % m.decoder_heads == 0, "model.decoder_heads",
          m.decoder_heads, f"use a divisor of model.decoder_dim={m.decoder_dim}")
    _need(m.decoder_ffn >= 1, "model.decoder_ffn", m.decoder_ffn, "use >= 1")
    _need(0.0 <= m.dropout < 1.0, "model.dropout", m.dropout, "use a value in [0, 1)")
    _need(not m.pretrained or Path(m.pretrained).expanduser().is_file(), "model.pretrained",
          m.pretrained, "give the path of an existing weights file, or ''")

    _need(1 <= t.epochs <= MAX_EPOCHS, "train.epochs", t.epochs, f"use an integer >= 1 and <= {MAX_EPOCHS}")
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
    _need(t.schedule in SCHEDULES, "train.schedule", t.schedule, f"use one of {', '.join(SCHEDULES)}")
    _need(t.warmup_steps >= 0, "train.warmup_steps", t.warmup_steps, "use an integer >= 0")
    _need(t.warmup_steps == 0 or t.schedule == "cosine", "train.warmup_steps", t.warmup_steps,
          "warm-up needs train.schedule=cosine; use 0 with the step schedule")
    _need(t.lr_drop_epoch >= 1, "train.lr_drop_epoch", t.lr_drop_epoch, "use >= 1")
    _need(0 < t.lr_drop_factor <= 1, "train.lr_drop_factor", t.lr_drop_factor, "use a value in (0, 1]")
    _need(t.grad_clip >= 0, "train.grad_clip", t.grad_clip, "use >= 0 (0 = no clipping)")
    _need(0 <= t.ema_decay < 1, "train.ema_decay", t.ema_decay, "use a value in [0, 1) (0 = no averaging)")
    _need(t.label_rounding in LABEL_ROUNDINGS, "train.label_rounding", t.label_rounding,
          f"use one of {', '.join(LABEL_ROUNDINGS)}")
    _need(t.log_every >= 1, "train.log_every", t.log_every, "use >= 1")
    _need(bool(t.output_dir), "train.output_dir", t.output_dir, "name a folder")
    _need(cfg.hub.repo_id.count("/") == 1 and all(cfg.hub.repo_id.split("/")), "hub.repo_id",
          cfg.hub.repo_id, "use 'namespace/name'")

    m = cfg.mlflow
    _need(m.log_models in LOG_MODELS, "mlflow.log_models", m.log_models, f"use one of {', '.join(LOG_MODELS)}")
    # Registry names and aliases: no '/', '@' or ':' (they delimit models:/<name>@<alias>).
    _need(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*|", m.registered_model) is not None, "mlflow.registered_model",
          m.registered_model, "use letters, digits, '-', '_' and '.' ('' = do not register)")
    _need(re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", m.alias) is not None, "mlflow.alias", m.alias,
          "use letters, digits, '-' and '_', starting with a letter (not v<N>: that names a version)")
    _need(re.fullmatch(r"v\d+", m.alias) is None, "mlflow.alias", m.alias, "v<N> names a version; pick another")

    k = cfg.track
    _need(k.geometry in GEOMETRIES, "track.geometry", k.geometry,
          f"use one of {', '.join(GEOMETRIES)}")
    _need(k.update_interval >= 1, "track.update_interval", k.update_interval, "use an integer >= 1")
    _need(k.clip_margin >= 1, "track.clip_margin", k.clip_margin,
          "use >= 1 (px), else a box can collapse to a point")

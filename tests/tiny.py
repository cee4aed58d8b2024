"""A tiny but complete training config for tests: seconds per epoch on a CPU."""

from __future__ import annotations

from pathlib import Path

import yaml

TINY = {
    "seed": 8,
    "data": {"source": "sample", "classes": ["airplane", "bicycle"], "samples_per_epoch": 40,
             "max_gap": 50, "template_factor": 2.0, "search_factor": 4.0, "val_samples": 8,
             "val_tracking": "never"},
    "model": {"patch_size": 8, "template_size": 32, "search_size": 64, "num_templates": 2,
              "embed_dim": 32, "depth": 1, "num_heads": 2, "bins": 64, "decoder_dim": 32,
              "decoder_layers": 1, "decoder_heads": 2, "decoder_ffn": 64, "dropout": 0.1},
    "train": {"epochs": 3, "batch_size": 8, "workers": 0, "lr": 5.0e-4, "encoder_lr_mult": 1.0,
              "schedule": "step", "warmup_steps": 0, "lr_drop_epoch": 2, "log_every": 16, "precision": "fp32"},
}


def write_tiny_config(folder: Path, **sections) -> Path:
    """configs-style YAML of TINY with per-section overrides, e.g. train={"epochs": 2}."""
    tree = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY.items()}
    for section, values in sections.items():
        if not isinstance(values, dict):  # a top-level key such as seed=9
            tree[section] = values
            continue
        tree.setdefault(section, {}).update(values)
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / "tiny.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path

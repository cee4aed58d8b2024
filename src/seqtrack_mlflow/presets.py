"""The presets shipped in the package and the reading of YAML config files.

The presets live in `seqtrack_mlflow/configs/*.yaml` (read with importlib.resources; the
top-level `configs/` is a link to them). `default.yaml` holds every key; config.py builds each
config over its tree.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

import yaml

from seqtrack_mlflow.errors import ConfigError

PRESETS = ("default", "seqtrack_b256")


def preset_path(name: str) -> Path:
    """A preset shipped in the package, by name ('default', 'seqtrack_b256')."""
    if name not in PRESETS:
        raise ConfigError(f"config: unknown preset {name!r}; use one of {', '.join(PRESETS)} "
                          "or the path of a YAML file")
    return Path(str(importlib.resources.files("seqtrack_mlflow") / "configs" / f"{name}.yaml"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a tree; ConfigError for a missing, undecodable or invalid file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config: file {str(path)!r} not found; give a YAML file or a preset name "
                          f"({', '.join(PRESETS)})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {path} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


_DEFAULT: dict[str, Any] | None = None


def default_tree() -> dict[str, Any]:
    """A copy of the default preset's tree (read once), the base every config is built on."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = read_yaml(preset_path("default"))
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in _DEFAULT.items()}


def resolve_config_source(source: str | Path | None) -> Path:
    """None/"" = the default preset; a preset name; otherwise a file path."""
    text = str(source).strip() if source is not None else ""
    if not text:
        return preset_path("default")
    if text in PRESETS and not Path(text).is_file():
        return preset_path(text)
    return Path(text).expanduser()

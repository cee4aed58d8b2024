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
# A config is a few hundred values: bounds on the file and on the tree its YAML aliases expand
# to, checked before any value is built or formatted (a 1 KB file of nested aliases can
# stand for billions of values).
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 10_000


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
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config: {path} is larger than {MAX_CONFIG_BYTES} bytes; a config is a few KB")
        raw = safe_load_bounded(path.read_text(encoding="utf-8"), str(path)) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {path} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def expanded_nodes(node: yaml.Node, limit: int) -> int:
    """Nodes of a composed YAML document with every alias expanded (shared nodes counted each
    time they are referenced), counted without expanding anything; stops past `limit`."""
    sizes: dict[int, int] = {}

    def size(n: yaml.Node, depth: int) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if depth > 100:
            return limit + 1  # nesting this deep is no config
        sizes[id(n)] = limit + 1  # a node that contains itself (recursive alias) is over any limit
        total = 1
        if isinstance(n, yaml.SequenceNode):
            children = n.value
        elif isinstance(n, yaml.MappingNode):
            children = [x for pair in n.value for x in pair]
        else:
            children = []
        for child in children:
            total += size(child, depth + 1)
            if total > limit:
                break
        sizes[id(n)] = min(total, limit + 1)
        return sizes[id(n)]

    return size(node, 0)


def safe_load_bounded(text: str, source: str = "YAML", limit: int = MAX_CONFIG_NODES) -> Any:
    """yaml.safe_load, refusing a document whose aliases expand past `limit` nodes before any
    value is constructed (ConfigError that does not show the expansion)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if expanded_nodes(node, limit) > limit:
            raise ConfigError(f"config: {source} expands to more than {limit} values (YAML aliases); "
                              "a config is a few hundred values: write it out without nested aliases")
        return loader.construct_document(node)
    finally:
        loader.dispose()


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

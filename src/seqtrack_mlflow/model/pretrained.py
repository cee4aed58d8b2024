"""The exported weights layout of `SeqTrack` (a `PyTorchModelHubMixin`): `config.json` +
`model.safetensors`, read from a local folder or a Hub repo.

config.json holds the ModelConfig fields at the top level (as the mixin stores a dataclass
`config` init argument), `tracker` (the crop factors the weights were trained with) and
`seqtrack_mlflow` (provenance: epoch, run id, data); keys that are not ModelConfig fields are
ignored when the network is built.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seqtrack_mlflow.config import Config, ModelConfig
from seqtrack_mlflow.errors import CheckpointError, ConfigError
from seqtrack_mlflow.model.weights import check_shapes, check_weights_digest, safetensors_shapes
from seqtrack_mlflow.names import WEIGHTS_CONFIG, WEIGHTS_FILE

MAX_CONFIG_JSON_BYTES = 1 << 20  # a config.json is a few hundred bytes; anything this big is not one

# ModelConfig keys that only matter while training: never part of an exported config.json.
TRAIN_ONLY_KEYS = ("pretrained",)


def config_fields(config: ModelConfig) -> dict[str, Any]:
    """ModelConfig as the flat JSON dict config.json holds (training-only keys left out)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in TRAIN_ONLY_KEYS}


def model_config(document: dict[str, Any], origin: str = "config.json") -> ModelConfig:
    """The validated ModelConfig of a config.json document (other keys ignored); missing
    fields come from the default preset. Raises ConfigError."""
    if not isinstance(document, dict):
        raise ConfigError(f"{origin} must hold a JSON object, got {type(document).__name__}")
    known = {f.name for f in dataclasses.fields(ModelConfig)} - set(TRAIN_ONLY_KEYS)
    return Config.from_dict({"model": {k: v for k, v in document.items() if k in known}}, origin=origin).model


def read_pretrained(repo_id_or_path: str | Path, shapes_of: Callable[[ModelConfig], dict[str, tuple[int, ...]]],
                    revision: str | None = None, subfolder: str = "", token: str | None = None,
                    endpoint: str | None = None,
                    **download: Any) -> tuple[ModelConfig, dict[str, Any], dict[str, Any], str]:
    """(ModelConfig, config.json document, state dict on the CPU, source name) of a folder or a
    Hub repo (`download`: cache_dir, force_download, local_files_only, as hf_hub_download).

    Before a tensor is read: config.json's size, the validated config (bounded sizes), the
    sha256 it records for the weights (`seqtrack_mlflow.weights_sha256`), and the safetensors
    header's names and shapes against `shapes_of(config)` (the network's, built on "meta") and
    the parameter bound. Raises CheckpointError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    names = [f"{subfolder.strip('/')}/{n}" if subfolder.strip("/") else n for n in (WEIGHTS_CONFIG, WEIGHTS_FILE)]
    local = Path(repo_id_or_path)
    if local.is_dir():
        config_path, weights_path = (local / n for n in names)
        for path in (config_path, weights_path):
            if not path.is_file():
                raise CheckpointError(f"{path} does not exist; a pretrained folder holds "
                                      f"{WEIGHTS_CONFIG} and {WEIGHTS_FILE}")
    else:
        from seqtrack_mlflow import hub

        config_path, weights_path = (hub.cached_file(str(repo_id_or_path), n, revision=revision, token=token,
                                                     endpoint=endpoint, **download) for n in names)
    source = f"{repo_id_or_path}: {names[1]}"
    try:
        if Path(config_path).stat().st_size > MAX_CONFIG_JSON_BYTES:
            raise CheckpointError(f"{repo_id_or_path}: {names[0]} is larger than {MAX_CONFIG_JSON_BYTES} bytes")
        document = json.loads(Path(config_path).read_text(encoding="utf-8"))
        cfg = model_config(document, origin=f"{repo_id_or_path}: {names[0]}")
        block = document.get("seqtrack_mlflow")
        check_weights_digest(weights_path, block.get("weights_sha256") if isinstance(block, dict) else None, source)
        check_shapes(shapes_of(cfg), safetensors_shapes(weights_path, source), source)
        state = load_file(str(weights_path), device="cpu")
    except (ValueError, OSError, SafetensorError) as exc:
        raise CheckpointError(f"{source} cannot be read with {names[0]}: {exc}") from None
    except ConfigError as exc:
        raise CheckpointError(f"{repo_id_or_path}: {names[0]}: {exc}") from None
    return cfg, document, state, source

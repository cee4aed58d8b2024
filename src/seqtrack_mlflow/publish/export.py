"""A checkpoint's weights in the exported layout: config.json + model.safetensors, the format
of a LoggedModel's weights/, a Hub repo's root and its checkpoints/epoch_N/ folders, written
by `SeqTrack.save_pretrained` (PyTorchModelHubMixin)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from seqtrack_mlflow.errors import StorageError, first_line
from seqtrack_mlflow.fsutil import sha256_file
from seqtrack_mlflow.hub_repo import MANIFEST_FORMAT
from seqtrack_mlflow.model.pretrained import config_fields, model_config
from seqtrack_mlflow.model.seqtrack import SeqTrack
from seqtrack_mlflow.names import WEIGHTS_CONFIG, WEIGHTS_FILE

_CARD = "README.md"  # what save_pretrained adds beside the weights; the mirror writes its own


def export_pretrained(state: dict[str, Any], folder: Path, run_id: str = "") -> list[Path]:
    """Write `config.json` + `model.safetensors` of a checkpoint state into `folder` through
    `SeqTrack.save_pretrained`.

    config.json: the run's ModelConfig fields at the top level (as the mixin stores its
    `config`), `tracker` (the crop factors the weights were trained with) and provenance, with
    the sha256 of model.safetensors (`seqtrack_mlflow.weights_sha256`) that loading checks.
    The bytes depend only on the checkpoint, so re-exporting gives identical files.
    """
    from safetensors import SafetensorError

    config = state.get("config") if isinstance(state.get("config"), dict) else {}
    cfg = model_config(dict(config.get("model") or {}), origin="the checkpoint's model config")
    data_cfg = dict(config.get("data") or {})
    document = {
        **config_fields(cfg),
        "tracker": {k: data_cfg[k] for k in ("template_factor", "search_factor") if k in data_cfg},
        "seqtrack_mlflow": {"format": MANIFEST_FORMAT, "epoch": int(state["epoch"]), "seed": state.get("seed"),
                            "mlflow_run_id": run_id or state.get("run_id", ""),
                            "data_source": data_cfg.get("source", ""),
                            "classes": data_cfg.get("classes", [])},
    }
    # Built on the meta device (no memory, no random init: the trainer's RNG streams are left
    # alone), then the checkpoint's tensors are assigned as they are (strict: every key).
    with torch.device("meta"):
        model = SeqTrack(cfg)
    model.load_state_dict({k: v.detach().cpu() for k, v in state["model_state_dict"].items()},
                          strict=True, assign=True)
    folder.mkdir(parents=True, exist_ok=True)
    had_card = (folder / _CARD).exists()
    # save_model_as_safetensor: shared tensors de-duplicated, metadata {"format": "pt"} only (a
    # multi-key map would be written in random order and change the bytes at every export).
    try:
        model.save_pretrained(folder, config=document)
    except SafetensorError as exc:  # e.g. no space left in TMPDIR while a LoggedModel is staged
        raise StorageError(f"cannot write {folder / WEIGHTS_FILE}: {first_line(exc)}") from None
    if not had_card:
        (folder / _CARD).unlink(missing_ok=True)
    # Checked by SeqTrack.from_pretrained before the weights are used (a swapped file is named).
    document["seqtrack_mlflow"]["weights_sha256"] = sha256_file(folder / WEIGHTS_FILE)
    (folder / WEIGHTS_CONFIG).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return [folder / WEIGHTS_CONFIG, folder / WEIGHTS_FILE]

"""A checkpoint's weights in the exported layout: config.json + model.safetensors, the format
of a LoggedModel's weights/, a Hub repo's root and its checkpoints/epoch_N/ folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from seqtrack_mlflow.errors import StorageError, first_line
from seqtrack_mlflow.fsutil import sha256_file
from seqtrack_mlflow.hub_repo import MANIFEST_FORMAT
from seqtrack_mlflow.names import WEIGHTS_CONFIG, WEIGHTS_FILE

# ModelConfig keys that only matter while training: not part of an exported config.json.
_TRAIN_ONLY_MODEL_KEYS = ("pretrained",)


def export_pretrained(state: dict[str, Any], folder: Path, run_id: str = "") -> list[Path]:
    """Write `config.json` + `model.safetensors` of a checkpoint state into `folder`.

    config.json: the run's ModelConfig fields at the top level (as PyTorchModelHubMixin stores
    init kwargs), `tracker` (the crop factors the weights were trained with) and provenance,
    with the sha256 of model.safetensors (`seqtrack_mlflow.weights_sha256`) that loading checks.
    The bytes depend only on the checkpoint, so re-exporting gives identical files.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    config = state.get("config") if isinstance(state.get("config"), dict) else {}
    model_cfg = {k: v for k, v in dict(config.get("model") or {}).items() if k not in _TRAIN_ONLY_MODEL_KEYS}
    data_cfg = dict(config.get("data") or {})
    document = {
        **model_cfg,
        "tracker": {k: data_cfg[k] for k in ("template_factor", "search_factor") if k in data_cfg},
        "seqtrack_mlflow": {"format": MANIFEST_FORMAT, "epoch": int(state["epoch"]), "seed": state.get("seed"),
                            "mlflow_run_id": run_id or state.get("run_id", ""),
                            "data_source": data_cfg.get("source", ""),
                            "classes": data_cfg.get("classes", [])},
    }
    # clone(): safetensors refuses tensors that share storage; contiguous() its layout rule.
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in state["model_state_dict"].items()}
    folder.mkdir(parents=True, exist_ok=True)
    # One metadata key only: safetensors writes a multi-key metadata map in random (hash map)
    # order, which would change the file's bytes, and so re-upload it, at every mirror.
    # Epoch and run id are in config.json.
    try:
        save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    except SafetensorError as exc:  # e.g. no space left in TMPDIR while a LoggedModel is staged
        raise StorageError(f"cannot write {folder / WEIGHTS_FILE}: {first_line(exc)}") from None
    # Checked by SeqTrack.from_pretrained before the weights are used (a swapped file is named).
    document["seqtrack_mlflow"]["weights_sha256"] = sha256_file(folder / WEIGHTS_FILE)
    (folder / WEIGHTS_CONFIG).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return [folder / WEIGHTS_CONFIG, folder / WEIGHTS_FILE]

"""The model card (README.md) of a mirrored training run.

The card is a pure function of the run (config, dataset summary, per-epoch metrics, checkpoint
manifest, run id): it holds no timestamps of the mirroring itself, so mirroring the same run
twice yields byte-identical cards and the second upload is a no-op.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

PAPER = ("Xin Chen, Houwen Peng, Dong Wang, Huchuan Lu, Han Hu. *SeqTrack: Sequence to Sequence "
         "Learning for Visual Object Tracking*. CVPR 2023. [arXiv:2304.14394]"
         "(https://arxiv.org/abs/2304.14394)")
OFFICIAL_REPO = "https://github.com/microsoft/VideoX/tree/master/SeqTrack"
LASOT_PAPER = ("Heng Fan et al. *LaSOT: A High-quality Benchmark for Large-scale Single Object "
               "Tracking*. CVPR 2019. <http://vision.cs.stonybrook.edu/~lasot/>")
BIBTEX = """@inproceedings{chen2023seqtrack,
  title     = {SeqTrack: Sequence to Sequence Learning for Visual Object Tracking},
  author    = {Chen, Xin and Peng, Houwen and Wang, Dong and Lu, Huchuan and Hu, Han},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2023}
}"""


@dataclass(frozen=True)
class EpochRow:
    epoch: int
    train_loss: float | None = None
    val_iou: float | None = None
    best_val_iou: float | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class CardInputs:
    repo_id: str
    run_id: str
    experiment: str = ""
    run_name: str = ""
    git_commit: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    """The resolved (nested) config of the run, from its config.yaml."""
    dataset_summary: dict[str, Any] | list | None = None
    epochs: list[EpochRow] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    """The manifest entries: file, epoch, sha256, bytes."""
    files: list[str] = field(default_factory=list)
    """Other files uploaded next to the card."""


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        value = ", ".join(str(v) for v in value)
    elif isinstance(value, dict):
        value = json.dumps(value, sort_keys=True)
    return str(value).replace("|", "\\|").replace("\n", " ")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _summary_section(summary: Any) -> list[str]:
    if summary is None:
        return ["No `dataset_summary.json` was logged with this run."]
    flat = flatten(summary) if isinstance(summary, dict) else {"summary": summary}
    rows = [(k, v) for k, v in flat.items() if not (isinstance(v, (list, dict)) and len(str(v)) > 200)]
    lines = _table(("field", "value"), rows[:60])
    if len(rows) < len(flat) or len(rows) > 60:
        lines.append("")
        lines.append("(Longer fields are in `dataset_summary.json` in this repo.)")
    return lines


def build_model_card(inputs: CardInputs) -> str:
    cfg = inputs.config
    flat_cfg = flatten(cfg)
    classes = flat_cfg.get("data.classes") or []
    classes_text = ", ".join(classes) if isinstance(classes, (list, tuple)) else str(classes)
    source = flat_cfg.get("data.source", "")
    tags = ["visual-object-tracking", "single-object-tracking", "seqtrack", "lasot", "pytorch", "mlflow"]
    front = {"library_name": "pytorch", "license": "mit", "tags": tags, "datasets": ["l-lt/LaSOT"]}
    n_epochs = len(inputs.checkpoints)
    last = inputs.checkpoints[-1]["epoch"] if inputs.checkpoints else 1
    best = max((r for r in inputs.epochs if r.val_iou is not None), key=lambda r: r.val_iou, default=None)

    out: list[str] = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", ""]
    out += [f"# SeqTrack trained with seqtrack-mlflow ({inputs.repo_id})", ""]
    out += [
        "SeqTrack casts visual object tracking as sequence generation: a ViT encoder reads two "
        "template crops and a search crop, and a transformer decoder predicts the target box as "
        "four quantised coordinate tokens, autoregressively. These checkpoints come from a "
        "deterministic re-implementation trained with MLflow tracking "
        f"(MLflow run `{inputs.run_id}`"
        + (f", experiment `{inputs.experiment}`" if inputs.experiment else "")
        + (f", run name `{inputs.run_name}`" if inputs.run_name else "") + ").",
        "",
        f"- Paper: {PAPER}",
        f"- Official code: <{OFFICIAL_REPO}>",
        f"- Training data: LaSOT classes {classes_text or '?'}"
        + (f" (data source `{source}`" + (": the bundled procedural sample in LaSOT format, not real "
                                           "LaSOT video" if source == "sample" else "") + ")"
           if source else ""),
        f"- Checkpoints: {n_epochs} (one per epoch)"
        + (f"; best validation IoU {_fmt(best.val_iou)} at epoch {best.epoch}" if best else ""),
        "",
    ]

    out += ["## Per-epoch metrics", ""]
    if inputs.epochs:
        out += _table(("epoch", "train loss", "val IoU", "best val IoU", "seconds"),
                      [(r.epoch, _fmt(r.train_loss), _fmt(r.val_iou), _fmt(r.best_val_iou),
                        _fmt(r.seconds, 1)) for r in inputs.epochs])
    else:
        out.append("No epoch metrics were logged with this run.")
    out += ["", "Train loss: mean cross entropy over the epoch's samples. Val IoU: mean IoU of the "
            "autoregressively decoded boxes on held-out samples.", ""]

    out += ["## Checkpoints", ""]
    out += _table(("file", "epoch", "bytes", "sha256"),
                  [(f"`checkpoints/{c['file']}`", c["epoch"], c.get("bytes", ""), f"`{c['sha256']}`")
                   for c in inputs.checkpoints])
    out += ["", "Each checkpoint is a plain dict (tensors, numbers, strings): `model_state_dict`, "
            "`optimizer_state_dict`, `epoch`, `seed`, `config`, `metrics`, and the RNG state for "
            "an exact resume. It loads with `torch.load(..., weights_only=True)`.", ""]

    out += ["## Download and load a checkpoint", "", "```bash",
            f"python -m seqtrack_mlflow fetch-hub --repo-id {inputs.repo_id} --epoch {last}",
            "```", "", "or in Python:", "", "```python",
            "import torch",
            "from huggingface_hub import hf_hub_download",
            f'path = hf_hub_download("{inputs.repo_id}", "checkpoints/epoch_{last}.ckpt")',
            'ckpt = torch.load(path, map_location="cpu", weights_only=True)',
            'print(ckpt["epoch"], ckpt["metrics"])  # ckpt["model_state_dict"] holds the weights',
            "```", ""]

    out += ["## Reproduce", "",
            "`config.yaml` in this repo is the run's resolved configuration. With the "
            "seqtrack-mlflow code" + (f" at commit `{inputs.git_commit}`" if inputs.git_commit else "")
            + ":", "", "```bash",
            f"hf download {inputs.repo_id} config.yaml --local-dir .",
            "python -m seqtrack_mlflow train --config config.yaml",
            "```", "",
            "Training is deterministic (seed " + _fmt(flat_cfg.get("seed", "?")) + "): the same "
            "command on the same hardware and software reproduces these checkpoints.", ""]

    out += ["## Training configuration", ""]
    out += _table(("key", "value"), sorted(flat_cfg.items())) if flat_cfg else ["(no config.yaml)"]
    out += ["", "## Dataset summary", ""]
    out += _summary_section(inputs.dataset_summary)
    out += [""]

    if inputs.files:
        out += ["## Files", ""] + [f"- `{f}`" for f in inputs.files] + [""]

    out += ["## License", "",
            "The code and these weights are released under the MIT license. The weights were "
            "trained on LaSOT data (or a synthetic stand-in in its format), which is distributed "
            "under its own terms by its authors: " + LASOT_PAPER + ". Check those terms before "
            "using the weights.", ""]
    out += ["## Citation", "", "```bibtex", BIBTEX, "```", ""]
    return "\n".join(out)

"""The model card (README.md) of a mirrored training run.

The card is a pure function of the run (config, dataset summary, per-epoch metrics, the repo
manifest, the latest evaluation, run id): it holds no timestamps of the mirroring itself, so
mirroring the same run twice yields byte-identical cards and the second upload is a no-op.

Its YAML front matter is built with huggingface_hub's `ModelCardData` (`render_model_card`):
- `license`, `tags`: the model's own (visual-object-tracking, seqtrack, mlflow, ...) and the two
  that `PyTorchModelHubMixin` gives every model it saves (model_hub_mixin,
  pytorch_model_hub_mixin), as the card `SeqTrack.save_pretrained` writes; no `library_name`
  (the Hub knows mixin models by those tags, and "pytorch" is not one of its libraries);
- `datasets: [l-lt/LaSOT]` only when the run trained on LaSOT; the bundled procedural sample
  is said to be what it is in the text and in `dataset_revision`;
- `model-index` with LaSOT success AUC, precision and normalised precision (in %) of the run's
  latest evaluation, when there is one (named after the data that evaluation used);
- `mlflow_run_id`, `dataset_revision`, `best_epoch` as extra keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from seqtrack_mlflow.names import HUB_TAGS

PAPER = ("Xin Chen, Houwen Peng, Dong Wang, Huchuan Lu, Han Hu. *SeqTrack: Sequence to Sequence "
         "Learning for Visual Object Tracking*. CVPR 2023. [arXiv:2304.14394]"
         "(https://arxiv.org/abs/2304.14394)")
OFFICIAL_REPO = "https://github.com/microsoft/VideoX/tree/master/SeqTrack"
LASOT_PAPER = ("Heng Fan et al. *LaSOT: A High-quality Benchmark for Large-scale Single Object "
               "Tracking*. CVPR 2019. <http://vision.cs.stonybrook.edu/~lasot/>")
LASOT_DATASET = "l-lt/LaSOT"
SAMPLE_DATASET = "seqtrack-mlflow/procedural-sample"  # not a Hub dataset: generated locally
MIXIN_TAGS = ("model_hub_mixin", "pytorch_model_hub_mixin")  # what the mixin adds to a model's card
TAGS = sorted({*HUB_TAGS, *MIXIN_TAGS})
BIBTEX = """@inproceedings{chen2023seqtrack,
  title     = {SeqTrack: Sequence to Sequence Learning for Visual Object Tracking},
  author    = {Chen, Xin and Peng, Houwen and Wang, Dong and Lu, Huchuan and Hu, Han},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2023}
}"""
# model-index metric type -> (evaluation key, display name). LaSOT/OTB protocol (DESIGN 5).
EVAL_METRICS = {"auc": ("auc", "Success AUC (%)"),
                "precision": ("precision", "Precision @20px (%)"),
                "norm_precision": ("norm_precision", "Normalized precision @0.2 (%)")}


@dataclass(frozen=True)
class EpochRow:
    epoch: int
    train_loss: float | None = None
    val_iou: float | None = None
    best_val_iou: float | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class Evaluation:
    """The latest evaluation run of the training run (metrics as fractions in [0, 1])."""

    run_id: str
    epoch: int | None
    data_source: str
    """'lasot' or 'sample': which test sequences were tracked."""
    classes: str = ""
    sequences: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    """auc, precision, norm_precision."""


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
    dataset_revision: str = ""
    epochs: list[EpochRow] = field(default_factory=list)
    best_epoch: int | None = None
    """The epoch whose weights are the repo's root model.safetensors."""
    best_reason: str = ""
    checkpoint_epochs: list[int] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The repo manifest's files: path -> {sha256, bytes}."""
    evaluation: Evaluation | None = None


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


def data_source(config: dict[str, Any]) -> str:
    return str(flatten(config).get("data.source", "") or "")


def _dataset_words(source: str) -> tuple[str, str]:
    """(dataset type, dataset name) for the model-index of an evaluation on `source`."""
    if source == "lasot":
        return LASOT_DATASET, "LaSOT (test split)"
    return SAMPLE_DATASET, "Procedural sample in LaSOT format (not real LaSOT video)"


def metadata(inputs: CardInputs) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(front matter keys, model-index results as EvalResult fields)."""
    front: dict[str, Any] = {"license": "mit", "tags": list(TAGS)}
    if data_source(inputs.config) == "lasot":
        front["datasets"] = [LASOT_DATASET]
    front["mlflow_run_id"] = inputs.run_id
    if inputs.dataset_revision:
        front["dataset_revision"] = inputs.dataset_revision
    if inputs.best_epoch is not None:
        front["best_epoch"] = inputs.best_epoch
    results: list[dict[str, Any]] = []
    ev = inputs.evaluation
    if ev is not None:
        dataset_type, dataset_name = _dataset_words(ev.data_source)
        for metric_type, (key, name) in EVAL_METRICS.items():
            if key in ev.metrics:
                results.append({
                    "task_type": "visual-object-tracking", "task_name": "Visual object tracking",
                    "dataset_type": dataset_type, "dataset_name": dataset_name, "dataset_split": "test",
                    "dataset_revision": inputs.dataset_revision if ev.data_source == data_source(
                        inputs.config) and inputs.dataset_revision else None,
                    "metric_type": metric_type, "metric_name": name,
                    "metric_value": round(100.0 * float(ev.metrics[key]), 2)})
    return front, results


def _usage(inputs: CardInputs) -> list[str]:
    repo = inputs.repo_id
    tag = f"run-{inputs.run_id[:8]}"
    return [
        "## Use it", "",
        "With the seqtrack-mlflow package installed (`pip install -e .` in its repository, at the "
        "commit under Reproduce), load the best epoch in one call and track a video:", "",
        "```python",
        "import glob, numpy as np",
        "from seqtrack_mlflow.data.frames import read_frame",
        "from seqtrack_mlflow.model import SeqTrack",
        "from seqtrack_mlflow.track.tracker import SeqTrackTracker, TrackerConfig",
        f'model = SeqTrack.from_pretrained("{repo}", revision="{tag}")  # this run; or an epoch:'
        ' subfolder="checkpoints/epoch_N"',
        "tracker = SeqTrackTracker(model, TrackerConfig(**model.tracker_settings))",
        'frames = sorted(glob.glob("airplane-1/img/*.jpg"))',
        "tracker.initialize(read_frame(frames[0]), np.array([367.0, 101.0, 41.0, 16.0]))  # x, y, w, h",
        "for path in frames[1:]:",
        "    print(tracker.track(read_frame(path)))  # x, y, w, h in pixels",
        "```", "",
        f"The tag `{tag}` pins this MLflow run; `main` holds whichever run was mirrored last. "
        "The full training state of an epoch (optimizer, scheduler, RNG: what `--resume` needs) "
        "is `resume/epoch_N.ckpt`; download and verify it against `manifest.json` with", "",
        "```bash",
        f"python -m seqtrack_mlflow fetch-hub --repo-id {repo} --revision {tag} --epoch "
        f"{inputs.checkpoint_epochs[-1] if inputs.checkpoint_epochs else 1}",
        "```", "",
        "It is a plain dict (tensors, numbers, strings) and loads with "
        "`torch.load(path, weights_only=True)`.", ""]


def body(inputs: CardInputs) -> str:
    # The card's text, section after section as the reader sees it: long, but linear.
    cfg = inputs.config
    flat_cfg = flatten(cfg)
    classes = flat_cfg.get("data.classes") or []
    classes_text = ", ".join(classes) if isinstance(classes, (list, tuple)) else str(classes)
    source = data_source(cfg)
    best = next((r for r in inputs.epochs if r.epoch == inputs.best_epoch), None)

    out: list[str] = [f"# SeqTrack trained with seqtrack-mlflow ({inputs.repo_id})", ""]
    out += [
        "SeqTrack casts visual object tracking as sequence generation: a ViT encoder reads two "
        "template crops and a search crop, and a transformer decoder predicts the target box as "
        "four quantised coordinate tokens, autoregressively. These weights come from a "
        "deterministic re-implementation trained with MLflow tracking "
        f"(MLflow run `{inputs.run_id}`"
        + (f", experiment `{inputs.experiment}`" if inputs.experiment else "")
        + (f", run name `{inputs.run_name}`" if inputs.run_name else "") + ").",
        "",
        f"- Paper: {PAPER}",
        f"- Official code: <{OFFICIAL_REPO}>",
    ]
    if source == "lasot":
        out.append(f"- Training data: LaSOT (`{LASOT_DATASET}`) classes {classes_text or '?'}"
                   + (f", dataset revision `{inputs.dataset_revision}`" if inputs.dataset_revision else ""))
    else:
        out.append(f"- Training data: the procedural sample bundled with seqtrack-mlflow "
                   f"({inputs.dataset_revision or 'sample'}), synthetic videos in LaSOT format with "
                   f"class names {classes_text or '?'}; not real LaSOT video. The weights only show "
                   "that the pipeline works.")
    out.append(f"- Epochs: {len(inputs.checkpoint_epochs)}; root `model.safetensors` is epoch "
               f"{inputs.best_epoch}" + (f" ({inputs.best_reason})" if inputs.best_reason else "")
               + (f", validation IoU {_fmt(best.val_iou)}" if best and best.val_iou is not None else ""))
    out.append("")
    out += _usage(inputs)

    ev = inputs.evaluation
    out += ["## Evaluation", ""]
    if ev is None:
        out += ["This run has not been evaluated yet (`mlflow run . -e evaluate -P run_id=...`), so "
                "the card has no model-index results.", ""]
    else:
        _, dataset_name = _dataset_words(ev.data_source)
        out += [f"Latest evaluation: MLflow run `{ev.run_id}`, epoch {_fmt(ev.epoch)}, "
                f"{dataset_name}" + (f", classes {ev.classes}" if ev.classes else "")
                + (f", {ev.sequences} sequences" if ev.sequences else "") + ".", ""]
        out += _table(("metric", "value"),
                      [(name, f"{100.0 * ev.metrics[key]:.2f}") for key, name in EVAL_METRICS.values()
                       if key in ev.metrics])
        out += ["", "One-pass evaluation, LaSOT/OTB convention: success AUC over IoU thresholds "
                "0:0.05:1, precision at 20 px centre error, normalised precision at 0.2.", ""]

    out += ["## Per-epoch metrics", ""]
    if inputs.epochs:
        out += _table(("epoch", "train loss", "val IoU", "best val IoU", "seconds"),
                      [(r.epoch, _fmt(r.train_loss), _fmt(r.val_iou), _fmt(r.best_val_iou),
                        _fmt(r.seconds, 1)) for r in inputs.epochs])
    else:
        out.append("No epoch metrics were logged with this run.")
    out += ["", "Train loss: mean cross entropy over the epoch's samples. Val IoU: mean IoU of the "
            "autoregressively decoded boxes on held-out samples.", ""]

    out += ["## Files", "",
            "`manifest.json` lists every file below with its sha256; `fetch-hub` refuses a file "
            "that is not listed there or whose hash differs.", ""]
    out += _table(("file", "bytes", "sha256"),
                  [(f"`{path}`", meta.get("bytes", ""), f"`{meta['sha256'][:16]}…`")
                   for path, meta in sorted(inputs.files.items())])
    out += [""]

    out += ["## Reproduce", "",
            "`config.yaml` in this repo is the run's resolved configuration. With the "
            "seqtrack-mlflow code" + (f" at commit `{inputs.git_commit}`" if inputs.git_commit else "")
            + ":", "", "```bash",
            f"hf download {inputs.repo_id} config.yaml --local-dir .",
            "python -m seqtrack_mlflow train --config config.yaml",
            "```", "",
            "Training is deterministic (seed " + _fmt(flat_cfg.get("seed", "?")) + "): the same "
            "command on the same hardware and software reproduces these weights.", ""]

    out += ["## Training configuration", ""]
    out += _table(("key", "value"), sorted(flat_cfg.items())) if flat_cfg else ["(no config.yaml)"]
    out += ["", "## Dataset summary", ""]
    out += _summary_section(inputs.dataset_summary)
    out += [""]

    out += ["## License", "",
            "The code and these weights are released under the MIT license. "
            + ("The weights were trained on LaSOT, which is distributed under its own terms by its "
               "authors: " + LASOT_PAPER + ". Check those terms before using the weights."
               if source == "lasot" else
               "The training data was generated procedurally by seqtrack-mlflow; LaSOT itself "
               "(" + LASOT_PAPER + ") was not used for training."), ""]
    out += ["## Citation", "", "```bibtex", BIBTEX, "```", ""]
    return "\n".join(out)


def build_model_card(inputs: CardInputs) -> str:
    """README.md text: ModelCardData front matter + the body above."""
    front, results = metadata(inputs)
    model_name = inputs.repo_id.split("/")[-1]
    return render_model_card(front, body(inputs), model_name=model_name, eval_results=results)


def render_model_card(metadata: dict[str, Any], body: str, model_name: str = "",
                      eval_results: list[dict[str, Any]] | None = None) -> str:
    """README.md text: YAML front matter from `ModelCardData` (metadata keys as the Hub names
    them, plus extra keys kept as is) and `body` below it. `eval_results`: dicts of
    `EvalResult` fields; they become the card's model-index under `model_name`."""
    results = [EvalResult(**r) for r in (eval_results or [])]
    data = ModelCardData(**metadata, model_name=model_name or None, eval_results=results or None)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body.lstrip()}", ignore_metadata_errors=False)
    return str(card)

"""`python -m seqtrack_mlflow evaluate`: track the test sequences with a checkpoint, score them
with the LaSOT metrics and log everything to MLflow.

Which checkpoint:
- `--run-id R --epoch best|last|N`: the artifact `checkpoints/epoch_N.ckpt` of training run R.
  best = the epoch with the highest `epoch/val_auc` (tracking the held-out sequences after each
  epoch, data.val_tracking), else `epoch/val_iou` (seqtrack_mlflow.epoch_ranking; if the run logged
  neither, the `metrics` history stored in its last checkpoint); ties go to the earliest epoch.
- `--checkpoint PATH`: a checkpoint file (its `epoch` is reported).
- neither: the newest FINISHED training run (with checkpoints) of the active experiment.
The checkpoint is verified against its run's manifest. The model is rebuilt from the
checkpoint's own `config` (model section and the crop factors it was trained with); `--device`
chooses where to run.

Which data: the test split of the data the model was trained on, read from its run's logged
config (or the checkpoint's stored config), see eval_data.py; `--data`, `--classes` and
`--data-dir` change it. Another source or class set than the trained one needs `--other-data`
and is then a cross-data evaluation: tagged as such (names.CROSS_DATA_TAG, TRAINED_ON_TAG,
EVALUATED_ON_TAG), never logged as the training run's eval/* nor picked for its model card.

Where results go:
- local: `<train.output_dir>/evaluation/<key>/` with `results/{seq}.txt` + `{seq}_time.txt`
  (LaSOT/pytracking format; finished sequences are not tracked again when the command is
  repeated), `metrics.json`, `success_plot.png`, `precision_plot.png`,
  `norm_precision_plot.png` and `<first test sequence>.gif`. key = `<run id>_epoch<N>_<data>`
  or `ckpt-<sha256 prefix>_<data>`, then `_<track.geometry>`, then `-<hash>` when another
  `track.*` setting differs from its default.
- MLflow: a run nested under the training run (tag `mlflow.parentRunId`, same experiment;
  standalone for a checkpoint file; the project's own run under `mlflow run -e evaluate`) with
  metrics `eval/auc`, `eval/precision` (P@20 px), `eval/norm_precision` (Pnorm@0.2),
  `eval/mean_iou`, `eval/fps` and the same per sequence as `eval/<seq>/<name>`, all at
  step = the evaluated epoch, and that folder as artifacts under `evaluation/`. The overall
  metrics also go on the training run and the epoch's LoggedModel, unless cross-data.

Metric conventions (see metrics.py): pytracking's LaSOT protocol, invisible frames count as
failures; overall = mean of the per-sequence curves. FPS = frames / tracking seconds (frame
decoding excluded), overall over all frames of all sequences.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqtrack_mlflow import epoch_ranking, experiment, names
from seqtrack_mlflow.config import Config, load_config
from seqtrack_mlflow.data.frames import read_frame
from seqtrack_mlflow.errors import CheckpointError, ConfigError, DataError, TrackingError
from seqtrack_mlflow.fsutil import sha256_file
from seqtrack_mlflow.geometry import OFFICIAL_GEOMETRY
from seqtrack_mlflow.model.load import model_from_checkpoint
from seqtrack_mlflow.names import checkpoint_name
from seqtrack_mlflow.track import metrics as M
from seqtrack_mlflow.track.eval_data import evaluation_data, trained_data
from seqtrack_mlflow.track.plots import save_plots, write_tracking_gif
from seqtrack_mlflow.track.scoring import score_sequences, tracker_config
from seqtrack_mlflow.track.tracker import (
    SeqTrackTracker,
    SequenceResult,
    TrackerConfig,
    run_sequence,
)
from seqtrack_mlflow.train.checkpoint import download_checkpoint, load_checkpoint
from seqtrack_mlflow.train.device import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointChoice:
    """The checkpoint an evaluation uses and why."""

    path: Path
    epoch: int
    run_id: str = ""  # the training run, '' for a checkpoint file
    reason: str = ""  # 'best epoch/val_iou=0.61', 'last', 'asked', 'file', 'models:/...'
    model_id: str = ""  # the epoch's MLflow LoggedModel, '' when it has none


def parse_epoch(spec: str) -> str | int:
    spec = str(spec).strip().lower()
    if spec in ("best", "last", "all"):
        return spec
    if spec.isdigit() and int(spec) >= 1:
        return int(spec)
    raise ConfigError(f"--epoch {spec!r}: use a number >= 1, 'last', 'best' or 'all'")


def choose_checkpoint(run_id: str, checkpoint: str, epoch_spec: str, dest: Path,
                      experiment_name: str = "") -> CheckpointChoice:
    """Resolve the flags to a local checkpoint file (downloaded into dest for a run)."""
    if run_id and checkpoint:
        raise ConfigError("give either --run-id or --checkpoint, not both")
    uri = next((x for x in (run_id, checkpoint) if experiment.is_model_uri(x)), "")
    if uri:  # a registered or logged model: the checkpoint of its run and epoch
        run_id, model_epoch, _ = experiment.resolve_model_uri(uri)
        choice = choose_checkpoint(run_id, "", str(model_epoch), dest, experiment_name)
        return dataclasses.replace(choice, reason=uri)
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        return CheckpointChoice(path, epoch=-1, reason="file")
    spec = parse_epoch(epoch_spec)
    if run_id:
        experiment.training_run(run_id, experiment_name)  # exists, is a training run, right experiment
    else:
        run_id = experiment.latest_training_run(experiment_name)
    epochs = experiment.checkpoint_epochs(run_id)
    if not epochs:
        raise TrackingError(f"run {run_id} has no checkpoints/epoch_N.ckpt artifacts")

    def fetch(epoch: int) -> Path:
        return download_checkpoint(run_id, epoch, dest)

    if spec == "all":
        raise ConfigError("--epoch all is handled by evaluate_all")
    if isinstance(spec, int):
        if spec not in epochs:
            raise TrackingError(f"run {run_id} has no checkpoint of epoch {spec} "
                                f"(epochs with checkpoints: {', '.join(map(str, epochs))})")
        return CheckpointChoice(fetch(spec), spec, run_id, "asked")
    if spec == "last":
        return CheckpointChoice(fetch(epochs[-1]), epochs[-1], run_id, "last")
    best = epoch_ranking.best_of_run(run_id, epochs, lambda: load_checkpoint(fetch(epochs[-1])).get("metrics"))
    if best is None:
        raise TrackingError(f"run {run_id} has no {names.VAL_AUC} or {names.VAL_IOU} metric (and its "
                            "last checkpoint no validation history) to pick the best epoch; pass --epoch N "
                            "or last")
    epoch, metric, value = best
    return CheckpointChoice(fetch(epoch), epoch, run_id, epoch_ranking.describe(metric, value))


def evaluate(cfg: Config, run_id: str = "", checkpoint: str = "", epoch: str = "best",
             experiment_name: str = "", data_overrides: Mapping[str, Any] | None = None,
             other_data: bool = False) -> dict[str, Any]:
    """Evaluate one checkpoint on the test split of the data it was trained on, with the data.*
    keys of `data_overrides` (the flags given) changed; `cfg` gives the tracker, device and
    output folder (its data section is not used). Returns the metrics.json content plus
    mlflow_run_id, epoch and data (a line naming the data)."""
    # One evaluation in the order a reader follows it: checkpoint, data, tracking, records.
    device = resolve_device(cfg.train.device)
    with tempfile.TemporaryDirectory(prefix="seqtrack-eval-") as tmp:
        choice = choose_checkpoint(run_id, checkpoint, epoch, Path(tmp), experiment_name)
        if choice.run_id:
            choice = dataclasses.replace(choice, model_id=experiment.epoch_models(choice.run_id).get(choice.epoch, ""))
        state = load_checkpoint(choice.path)
        model, trained = model_from_checkpoint(state, f"checkpoint {choice.path}")
        model = model.to(device)
        digest = sha256_file(choice.path)
    ckpt_epoch = int(state["epoch"])
    scored = evaluation_data(trained_data(choice.run_id, trained, str(choice.path)), data_overrides, other_data)
    cfg = dataclasses.replace(cfg, data=scored.data)
    log.info("evaluation data: %s", scored.describe())
    tcfg = tracker_config(trained, cfg.track)
    out = results_folder(cfg, choice.run_id, ckpt_epoch, digest)
    log.info("evaluating %s (epoch %d, %s) on %s into %s", choice.run_id or choice.path, ckpt_epoch,
             choice.reason, device, out)

    from seqtrack_mlflow.data.dataset import dataset_inputs, open_dataset, test_split

    dataset = open_dataset(cfg.data)
    sequences = test_split(dataset)
    if not sequences:
        raise DataError(f"no test sequences for classes {', '.join(cfg.data.classes)}")

    tags = {names.EVALUATED_RUN_TAG: choice.run_id, names.EPOCH_TAG: ckpt_epoch,
            names.CHECKPOINT_SHA256_TAG: digest, names.MODEL_ID_TAG: choice.model_id, **scored.tags()}
    run_name = f"eval-epoch{ckpt_epoch}" if choice.run_id else f"eval-{choice.path.stem}"
    with experiment.EvaluationRun(run_name, parent_run_id=choice.run_id, tags=tags) as run:
        # Namespaced: `mlflow run -e evaluate` has logged the -P values (checkpoint, epoch, ...)
        # under their bare names already, and MLflow params cannot change.
        run.log_params({"eval.checkpoint": (f"runs:/{choice.run_id}/checkpoints/{checkpoint_name(ckpt_epoch)}"
                                            if choice.run_id else str(choice.path)),
                        "eval.epoch": ckpt_epoch, "eval.epoch_choice": choice.reason,
                        "data.source": cfg.data.source, "data.classes": ",".join(cfg.data.classes),
                        "data.root": dataset.origin.root if dataset.origin else cfg.data.root,
                        "eval.sequences": ",".join(s.name for s in sequences), "resolved_device": str(device),
                        **{f"tracker.{k}": v for k, v in dataclasses.asdict(tcfg).items()}})
        inputs, data_tags = dataset_inputs(dataset, cfg.data, ("evaluation",))
        run.log_dataset(inputs[0].table, source=inputs[0].source, name=inputs[0].name,
                        context="evaluation", digest=inputs[0].digest)
        run.set_tags(data_tags)
        tracker = SeqTrackTracker(model, tcfg, device)
        results = track_with_progress(tracker, sequences, out / "results")
        report = score_sequences(results, sequences)
        title = (f"run {choice.run_id[:8]} epoch {ckpt_epoch}" if choice.run_id
                 else f"{choice.path.name} (epoch {ckpt_epoch})")
        write_outputs(out, report, choice, ckpt_epoch, tcfg, sequences, results, title)
        step = max(ckpt_epoch, 0)
        overall, metrics = eval_metrics(report)
        run.log_metrics(metrics, step=step)
        run.log_table(sequence_table(report), f"{names.EVALUATION}/sequences.json")
        run.log_artifacts(out, names.EVALUATION)
        # Where people look: the training run's charts (AUC against epoch), the model page; only
        # a result on the data the run was trained on is the run's own.
        if choice.run_id and not scored.cross:
            experiment.log_to_training_run(choice.run_id, overall, step, choice.model_id)
        report["mlflow_run_id"] = run.run_id
        report["epoch"] = ckpt_epoch
        report["data"] = scored.describe()
    return report


def results_folder(cfg: Config, run_id: str, epoch: int, digest: str) -> Path:
    """<output_dir>/evaluation/<key>: `<run id>_epoch<N>` or `ckpt-<sha256 prefix>`, then the data
    source (sample and LaSOT share sequence names) and the tracker geometry, then a hash of the
    other `track.*` settings when they differ from the defaults: finished results are only read
    back by a tracker that would have produced them."""
    key = f"{run_id}_epoch{epoch}" if run_id else f"ckpt-{digest[:12]}"
    key += f"_{cfg.data.source}_{cfg.track.geometry}"
    if dataclasses.replace(cfg.track, geometry=OFFICIAL_GEOMETRY) != load_config().track:
        key += f"-{hashlib.sha256(repr(cfg.track).encode()).hexdigest()[:8]}"
    return Path(cfg.train.output_dir) / names.EVALUATION / key


def eval_metrics(report: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """(overall eval/* metrics, those plus eval/<sequence>/* per sequence) of a scored report."""
    overall = {f"{names.EVAL_PREFIX}{k}": v for k, v in report["overall"].items() if k in names.EVAL_METRICS}
    metrics = dict(overall)
    for name, scores in report["sequences"].items():
        metrics.update({f"{names.EVAL_PREFIX}{name}/{k}": v for k, v in scores.items() if k in names.EVAL_METRICS})
    return overall, metrics


def track_with_progress(tracker: SeqTrackTracker, sequences: list, results_dir: Path) -> list[SequenceResult]:
    """run_sequence over the sequences with two progress bars (sequences, frames of the current
    one); tqdm shows them only when stderr is a terminal."""
    from tqdm import tqdm


    results = []
    with tqdm(sequences, desc="evaluate", unit="seq", disable=None) as seq_bar:
        for seq in seq_bar:
            with tqdm(total=len(seq.boxes), desc=seq.name, unit="frame", leave=False,
                      disable=None) as frame_bar:
                def reader(path, bar=frame_bar):
                    frame = read_frame(path)
                    bar.update(1)
                    return frame
                results.append(run_sequence(tracker, seq, results_dir, reader=reader))
    return results


def sequence_table(report: dict[str, Any]) -> dict[str, list]:
    """One row per sequence (mlflow.log_table): name, scores in %, fps, frames."""
    rows = report["sequences"]
    return {"sequence": list(rows),
            **{k: [round(100 * rows[n][k], 2) for n in rows] for k in ("auc", "precision", "norm_precision", "mean_iou")},
            "fps": [round(rows[n]["fps"], 2) for n in rows], "frames": [rows[n]["frames"] for n in rows],
            "visible_frames": [rows[n]["visible_frames"] for n in rows]}


def evaluate_all(cfg: Config, run_id: str = "", experiment_name: str = "",
                 data_overrides: Mapping[str, Any] | None = None, other_data: bool = False) -> list[dict[str, Any]]:
    """`--epoch all`: every checkpointed epoch of a training run in turn (an AUC-vs-epoch curve on
    the training run); one report per epoch."""
    if experiment.is_model_uri(run_id):
        run_id = experiment.resolve_model_uri(run_id)[0]
    if run_id:
        experiment.training_run(run_id, experiment_name)
    else:
        run_id = experiment.latest_training_run(experiment_name)
    return [evaluate(cfg, run_id=run_id, epoch=str(e), experiment_name=experiment_name,
                     data_overrides=data_overrides, other_data=other_data)
            for e in experiment.checkpoint_epochs(run_id)]


def write_outputs(out: Path, report: dict[str, Any], choice: CheckpointChoice, epoch: int,
                  tcfg: TrackerConfig, sequences: list[Any], results: list[SequenceResult], title: str = "") -> None:
    """metrics.json, the three plots and a GIF of every sequence (`title` names run and epoch)."""

    overall: M.Curves = report["overall_curves"]
    doc = {
        "checkpoint": {"run_id": choice.run_id, "epoch": epoch, "choice": choice.reason,
                       "file": choice.path.name},
        "tracker": dataclasses.asdict(tcfg),
        "protocol": {
            "success": "AUC = mean of the success rate (IoU > t) over t = 0:0.05:1",
            "precision": "fraction of frames with centre error <= 20 px",
            "norm_precision": "fraction of frames with centre error / gt (w, h) <= 0.2",
            "invalid_frames": "invisible or zero-size gt: failures, kept in the denominator (pytracking)",
            "overall": "mean of per-sequence curves (equal weight per sequence)",
            "fps": "frames / tracking seconds, frame decoding excluded",
            "static_*": "the same scores of a tracker that outputs the first-frame box on every frame",
        },
        "overall": report["overall"],
        "sequences": report["sequences"],
        "curves": {"overlap_thresholds": overall.overlap_thresholds.tolist(),
                   "center_thresholds": overall.center_thresholds.tolist(),
                   "norm_thresholds": overall.norm_thresholds.tolist(),
                   "success": overall.success.tolist(), "precision": overall.precision.tolist(),
                   "norm_precision": overall.norm_precision.tolist()},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(doc, indent=2) + "\n")
    save_plots(out, overall, report["curves"], title=title)
    for seq, result in zip(sequences, results):
        write_tracking_gif(out / f"{seq.name}.gif", lambda i, seq=seq: read_frame(seq.frame_path(i)),
                           seq.boxes, result.boxes, seq.visible, title=f"{seq.name}, {title}" if title else seq.name)

"""Continuing a run: resolve `--resume`, check it, and adopt the epochs it already finished.

`--resume` is a checkpoint file or an MLflow run id. A run id resumes from the newest checkpoint
that its manifest verifies, among the run's uploaded artifacts and its local folder
`<output_dir>/<id>/checkpoints` (whichever is newer: a run stopped while uploading, or whose
store was lost, still has its local files). A checkpoint whose run is not in the current
tracking store (a new or replaced store) starts a new run tagged with the old id. The data the
checkpoint was trained on must have the same fingerprint (annotations, split) unless
train.allow_data_change is set, which the new run records. The checkpoint is verified against
its manifest, must have been made with the same config (only the keys in
RESUMABLE_CHANGES may differ: they change where or how fast, not what is computed), and then
restores model, optimizer, scheduler, RNG states and the data position, so the resumed run is
bit-identical to one that never stopped. The new run adopts the earlier epochs' checkpoints,
progress-log blocks and metrics; the run it continues is tagged (and marked KILLED if it was
left RUNNING by a kill -9).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from seqtrack_mlflow import epoch_ranking, experiment, names
from seqtrack_mlflow.config import Config
from seqtrack_mlflow.errors import CheckpointError, ConfigError, DataError, TrackingError
from seqtrack_mlflow.model.load import checkpoint_config
from seqtrack_mlflow.names import checkpoint_name
from seqtrack_mlflow.train.checkpoint import (
    Manifest,
    check_restorable,
    check_resumable,
    download_checkpoints,
    load_checkpoint,
    remove_stale_temp_files,
    verify_checkpoint,
)
from seqtrack_mlflow.train.progress import BLOCK_RE

log = logging.getLogger(__name__)

# Config keys that may differ between a checkpoint and the run resuming it without changing
# the result (where outputs go, how data is loaded, how long to train; train.init: the weights
# it names are already in the checkpoint, and a resume never loads them again).
RESUMABLE_CHANGES = {"train.epochs", "train.resume", "train.init", "train.allow_data_change", "train.output_dir", "train.workers", "train.device",
                     "data.root", "data.keep_zip", "data.frame_cache_mb", "hub.push_every_epoch", "hub.repo_id", "hub.revision",
                     "hub.private", "mlflow.log_models", "mlflow.registered_model", "mlflow.alias",
                     "mlflow.force_champion",
                     "mlflow.system_metrics"}


@dataclasses.dataclass
class ResumeState:
    state: dict[str, Any]
    path: Path                   # the checkpoint file
    source_run_id: str | None    # MLflow run it came from, when known
    download_dir: Path | None = None  # temporary copy of a run's artifacts, owned by this state
    in_store: bool = True        # the source run exists in the current tracking store

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])

    def remove_download(self) -> None:
        if self.download_dir is not None:
            shutil.rmtree(self.download_dir, ignore_errors=True)
            self.download_dir = None

    def describe(self) -> str:
        return f"run {self.source_run_id} epoch {self.epoch}" if self.source_run_id else str(self.path)

    def earlier_checkpoints(self) -> list[tuple[int, Path]]:
        """(epoch, file) of the checkpoints up to the resumed one that are present."""
        folder = self.path.parent
        return [(k, folder / checkpoint_name(k)) for k in range(1, self.epoch + 1)
                if (folder / checkpoint_name(k)).is_file()]

    def progress_log(self) -> str:
        """The progress blocks of epochs 1..epoch (a killed run may have written part of the next)."""
        old_log = self.path.parent.parent / names.TRAINING_LOG
        if not old_log.is_file():
            return ""
        return "".join(m.group(0) for m in BLOCK_RE.finditer(old_log.read_text())
                       if int(m.group(1)) <= self.epoch)


def load_resume_state(cfg: Config) -> ResumeState:
    """The checkpoint `cfg.train.resume` names, checked against cfg.

    A run id's checkpoints are downloaded to a temporary folder that the returned state owns:
    call remove_download() once they are copied (this function removes it on an error)."""
    spec = cfg.train.resume
    path = Path(spec).expanduser()
    if path.is_file():
        remove_stale_temp_files(path.parent)
        state = load_checkpoint(path)
        source = str(state.get("run_id") or "") or None
        resume = ResumeState(state, path, source, in_store=bool(source) and _in_store(source))
    elif path.suffix == ".ckpt" or os.sep in spec:
        raise CheckpointError(f"resume: checkpoint {spec} does not exist")
    else:
        resume = _from_run_id(spec, cfg)
    try:
        # The new run adopts the earlier epochs' files and records their hashes: each must match
        # the manifest it comes with, or a corrupt file would be re-published as verified.
        for _, earlier in resume.earlier_checkpoints()[:-1]:
            verify_checkpoint(earlier)
        check_resumable(resume.state, spec)
        check_resume_config(cfg, resume.state, spec)
        check_restorable(cfg, resume.state, f"resume: {spec}")
        if resume.epoch > cfg.train.epochs or (resume.epoch == cfg.train.epochs
                                              and not _unfinished(resume, cfg)):
            raise ConfigError(f"train.epochs: {cfg.train.epochs} is not allowed; {spec} already finished "
                              f"epoch {resume.epoch}, ask for more epochs to continue")
        if resume.epoch == cfg.train.epochs:
            log.info("run %s trained all %d epochs but stopped before its report: finishing it (report, "
                     "plots) in a new run", resume.source_run_id, resume.epoch)
    except BaseException:
        resume.remove_download()
        raise
    return resume


def _unfinished(resume: ResumeState, cfg: Config) -> bool:
    """The run of this checkpoint trained every epoch it was asked for but never ended FINISHED
    (killed while writing its report and plots): resuming it at the same epochs finishes it."""
    if not resume.source_run_id:
        return False
    planned = resume.state["config"].get("train", {}).get("epochs")
    if planned != cfg.train.epochs:
        return False
    try:
        status = experiment.find_run(resume.source_run_id).info.status
    except TrackingError:  # a checkpoint file from another store: nothing to finish here
        return False
    return status != "FINISHED"


def _in_store(run_id: str) -> bool:
    try:
        experiment.find_run(run_id)
    except TrackingError:
        return False
    return True


def newest_verified_checkpoint(folder: Path) -> tuple[int, Path] | None:
    """(epoch, file) of the newest checkpoint in `folder` that its manifest lists with the same
    sha256; None when there is none (no manifest, no file, or none that matches)."""
    try:
        manifest = Manifest.read(folder)
    except CheckpointError as exc:
        log.warning("%s", exc)
        return None
    if manifest is None:
        return None
    for epoch in sorted(manifest.entries, reverse=True):
        path = folder / manifest.entries[epoch]["file"]
        if not path.is_file():
            continue
        try:
            manifest.verify(path)
        except CheckpointError as exc:
            log.warning("%s", exc)
            continue
        return epoch, path
    return None


def local_checkpoint_folders(run_id: str, cfg: Config, run=None) -> list[Path]:
    """Where a run's checkpoints may lie on this machine: the output folder its run records,
    and <train.output_dir>/<run id>/checkpoints."""
    folders = []
    recorded = run.data.tags.get(names.OUTPUT_DIR_TAG, "") if run is not None else ""
    if recorded:
        folders.append(Path(recorded) / names.CHECKPOINTS)
    folders.append(Path(cfg.train.output_dir).expanduser() / run_id / names.CHECKPOINTS)
    unique: list[Path] = []
    for f in folders:
        if f.resolve() not in [u.resolve() for u in unique]:
            unique.append(f)
    return unique


def _from_run_id(run_id: str, cfg: Config) -> ResumeState:
    """The newest verified checkpoint of training run `run_id`: from its artifacts or its local
    folder, whichever holds the later epoch (artifacts on a tie: they are what the run logged)."""
    try:
        run = experiment.training_run(run_id)
        uploaded = experiment.checkpoint_epochs(run_id)
    except TrackingError as exc:
        run, uploaded, missing = None, [], exc
    local = None
    for folder in local_checkpoint_folders(run_id, cfg, run):
        remove_stale_temp_files(folder)
        found = newest_verified_checkpoint(folder)
        if found is not None and (local is None or found[0] > local[0]):
            local = found
    if run is None and local is None:
        raise missing
    if uploaded and (local is None or uploaded[-1] >= local[0]):
        folder = Path(tempfile.mkdtemp(prefix="seqtrack-resume-"))
        try:
            return _download(run_id, run, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    if local is None:
        raise CheckpointError(f"resume: run {run_id} stopped before its first checkpoint: there is "
                              "nothing to resume; start a new run")
    epoch, path = local
    log.info("resume: run %s epoch %d from its local checkpoint %s%s", run_id, epoch, path,
             "" if run is not None else " (the run is not in this tracking store: a new run continues it)")
    return ResumeState(load_checkpoint(path), path, run_id, in_store=run is not None)


def _download(run_id: str, run, folder: Path) -> ResumeState:
    """The newest checkpoint of training run `run_id` (all its checkpoints land in `folder`)."""
    path = download_checkpoints(run_id, folder)
    state = load_checkpoint(path)
    for leftover in experiment.remove_upload_leftovers(run_id):
        log.info("removed %s, left by an interrupted artifact copy", leftover)
    old_outputs = run.data.tags.get(names.OUTPUT_DIR_TAG, "")
    if old_outputs and Path(old_outputs).is_dir():  # the run's own folder, on this machine
        for stale in remove_stale_temp_files(Path(old_outputs) / names.CHECKPOINTS):
            log.info("removed %s, left by an interrupted checkpoint write", stale)
        # Killed by SIGKILL, it never logged its training log: take it from its folder.
        local_log = Path(old_outputs) / names.TRAINING_LOG
        if local_log.is_file() and not (folder / names.TRAINING_LOG).is_file():
            shutil.copy2(local_log, folder / names.TRAINING_LOG)
    return ResumeState(state, path, run_id, download_dir=folder)


def check_resume_data(resume: ResumeState, fingerprint: str, cfg: Config) -> str:
    """The data now against the data the checkpoint was trained on (fingerprint of annotations
    and split). DataError (one line) when they differ, unless train.allow_data_change: then the
    '<old> -> <new>' the run records. '' when equal or the checkpoint records none."""
    saved = str(resume.state.get(names.DATA_FINGERPRINT_KEY) or "")
    if not saved or saved == fingerprint:
        return ""
    if not cfg.train.allow_data_change:
        raise DataError(f"resume: the data differs from the data {resume.describe()} was trained on "
                        f"(fingerprint {fingerprint} vs {saved} in the checkpoint: other annotations, "
                        "classes or split); resume on the same data, or pass --allow-data-change to continue "
                        "deliberately (recorded on the run)")
    log.warning("resume: continuing on other data than the checkpoint's (fingerprint %s -> %s), as "
                "train.allow_data_change asks; recorded as tag %s", saved, fingerprint, names.RESUME_DATA_CHANGED_TAG)
    return f"{saved} -> {fingerprint}"


def check_resume_config(cfg: Config, state: dict[str, Any], spec: str) -> None:
    saved = checkpoint_config(state, f"resume: {spec}").flat()
    now = cfg.flat()
    # A cosine schedule's horizon is the epoch count: more epochs would change the lr already used.
    resumable = RESUMABLE_CHANGES - ({"train.epochs"} if cfg.train.schedule == "cosine" else set())
    changed = sorted(k for k in now if now[k] != saved.get(k) and k not in resumable)
    if changed:
        diffs = ", ".join(f"{k}={saved.get(k)!r} in checkpoint vs {now[k]!r}" for k in changed)
        raise ConfigError(f"resume: the config differs from the checkpoint's ({diffs}); an exact "
                          f"resume needs the same settings")


def adopt_earlier_epochs(resume: ResumeState, run: "experiment.TrainingRun", manifest, ckpt_dir: Path,
          log_path: Path) -> dict[str, list[tuple[int, float]]]:
    """Bring the earlier epochs into the new run: checkpoints (into ckpt_dir and the manifest,
    logged as artifacts), progress-log blocks, epoch metrics, and the source run's per-block
    metrics. Returns those block metrics as {key: [(step, value)]} for the plots."""
    for k, src in resume.earlier_checkpoints():
        dst = ckpt_dir / src.name
        if src.resolve() != dst.resolve():
            shutil.copy2(src, dst)
        manifest.add(dst, k)
        run.log_artifact(dst, names.CHECKPOINTS)
        run.store_once(dst, names.CHECKPOINTS)
    run.log_artifact(manifest.path, names.CHECKPOINTS)
    log_path.write_text(resume.progress_log())
    history = resume.state["metrics"]
    for k, metrics in enumerate(history, start=1):  # the epoch rows and run-level bests, as logged then
        run.log_metrics({f"{names.EPOCH_PREFIX}{key}": v for key, v in metrics.items()}, step=k)
        run.log_metrics(epoch_ranking.run_bests(history[:k]), step=k)
    blocks: dict[str, list[tuple[int, float]]] = {names.TRAIN_LOSS: [], names.TRAIN_IOU: []}
    if resume.source_run_id and not resume.in_store:
        log.info("run %s is not in tracking store %s: its per-block metrics are not copied; the new run "
                 "is tagged %s=%s", resume.source_run_id, experiment.tracking_uri(), names.RESUMED_FROM_TAG,
                 resume.describe())
    elif resume.source_run_id:
        max_step = int(resume.state["progress"]["global_samples"])
        copied = run.copy_metrics(resume.source_run_id, names.BLOCK_METRICS, max_step=max_step)
        blocks = {key: [p for p in experiment.metric_points(resume.source_run_id, key) if p[0] <= max_step]
                  for key in (names.TRAIN_LOSS, names.TRAIN_IOU)}
        log.info("copied %d metric points of epochs 1-%d from run %s", copied, resume.epoch,
                 resume.source_run_id)
        experiment.close_resumed_run(resume.source_run_id, run.run_id)
    return blocks

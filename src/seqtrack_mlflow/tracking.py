"""Every MLflow call of the project lives here; model, data and trainer code never import mlflow.

- `TrainingRun`: one MLflow run of the trainer: params, tags, dataset input, buffered metrics
  (never blocking the training loop), artifacts, and the FINISHED / FAILED / KILLED ending.
- `download_artifacts`, `find_run`, `latest_finished_run`: reading runs back (download entry
  point, mirror step, evaluation).
Under `mlflow run`, the child process gets MLFLOW_RUN_ID and `mlflow.start_run()` attaches to
that run; run by hand, a new run is created in the current experiment.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import mlflow
from mlflow.entities import Metric, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from seqtrack_mlflow.errors import TrackingError

log = logging.getLogger(__name__)

# Params longer than this are cut by MLflow's store; list-valued configs are joined instead.
_PARAM_LIMIT = 6000
# Metrics are flushed at most this often (seconds) or when this many are buffered.
_FLUSH_SECONDS = 5.0
_FLUSH_COUNT = 200


class TrainingRun:
    """One MLflow run, opened by `start()` and always closed by `end(status)`."""

    def __init__(self, run_name: str | None = None, experiment: str | None = None):
        self.run_name = run_name
        self.experiment = experiment
        self.client = MlflowClient()
        self.run_id: str = ""
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()
        self._pending: list[Any] = []  # async operations still in flight

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "TrainingRun":
        with tracking_errors("starting a run"):
            if self.experiment:
                mlflow.set_experiment(self.experiment)
            run = mlflow.start_run(run_name=self.run_name)
        self.run_id = run.info.run_id
        return self

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        """Flush metrics, record the error (if any) as a tag, close the run with `status`.

        Closing a failed or killed run never hides the error that ended it: if the store cannot
        be reached then, a warning says so (the run may stay RUNNING there)."""
        try:
            with tracking_errors(f"closing run {self.run_id} as {status}"):
                try:
                    self.flush(wait=True)
                    if error:
                        self.client.set_tag(self.run_id, "seqtrack.error", error[:5000])
                finally:
                    mlflow.end_run(status=status)
        except TrackingError as exc:
            if status == "FINISHED":
                raise
            log.warning("%s; the run may still show as RUNNING there", exc)

    # -- params, tags, inputs ----------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        mlflow.log_params({k: _param_value(v) for k, v in params.items()})

    def set_tags(self, tags: dict[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_dataset(self, hf_dataset: Any, source: str, name: str, context: str = "training",
                    digest: str | None = None) -> None:
        log_dataset(hf_dataset, source, name, context, digest)

    # -- metrics -----------------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffer metrics; they are sent in batches, asynchronously, so training never waits."""
        now = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), now, int(step)) for k, v in metrics.items())
        if len(self._buffer) >= _FLUSH_COUNT or time.monotonic() - self._last_flush > _FLUSH_SECONDS:
            self.flush()

    def flush(self, wait: bool = False) -> None:
        while self._buffer:
            chunk, self._buffer = self._buffer[:1000], self._buffer[1000:]  # MLflow batch limit
            self._pending.append(self.client.log_batch(self.run_id, metrics=chunk, synchronous=False))
        self._last_flush = time.monotonic()
        if wait:
            pending, self._pending = self._pending, []
            with tracking_errors("logging metrics"):
                for operation in pending:
                    if operation is not None:
                        operation.wait()

    # -- artifacts ---------------------------------------------------------------------------
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        with tracking_errors(f"logging artifact {Path(path).name} (the local copy {path} is kept)"):
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def copy_metrics(self, source_run_id: str, keys: Iterable[str], max_step: int) -> int:
        """Copy metric points with step <= max_step from another run (used on resume)."""
        points = [m for key in keys for m in self.client.get_metric_history(source_run_id, key)
                  if m.step <= max_step]
        for i in range(0, len(points), 1000):
            self.client.log_batch(self.run_id, metrics=points[i:i + 1000])
        return len(points)


@contextlib.contextmanager
def tracking_errors(action: str) -> Iterator[None]:
    """A tracking store that cannot be reached (server down, network) or refuses a write: one
    TrackingError line naming the store and what was being done, instead of a traceback."""
    try:
        yield
    except (MlflowException, OSError) as exc:  # requests' ConnectionError is an OSError
        text = " ".join(str(exc).split()) or type(exc).__name__
        text = text if len(text) <= 300 else text[:300] + " ..."
        raise TrackingError(f"MLflow tracking at {mlflow.get_tracking_uri()} failed while {action}: "
                            f"{text}") from exc


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    text = str(value)
    return text if len(text) <= _PARAM_LIMIT else text[:_PARAM_LIMIT]


# -- reading runs back -------------------------------------------------------------------------
def find_run(run_id: str):
    """The MLflow run with this id, or TrackingError with a clear message."""
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException:
        raise TrackingError(f"no MLflow run with id {run_id!r} in tracking store "
                            f"{mlflow.get_tracking_uri()}") from None


def latest_finished_run(experiment: str | None = None):
    """Newest FINISHED run of the experiment (default: the current/default one)."""
    client = MlflowClient()
    name = experiment or None
    exp = client.get_experiment_by_name(name) if name else client.get_experiment_by_name("Default")
    if exp is None:
        raise TrackingError(f"experiment {name or 'Default'!r} not found in {mlflow.get_tracking_uri()}")
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise TrackingError(f"experiment {exp.name!r} has no FINISHED run; pass --run-id")
    return runs[0]


def set_run_tags(run_id: str, tags: dict[str, str]) -> None:
    client = MlflowClient()
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def download_artifacts(run_id: str, artifact_path: str, dest: str | Path) -> Path:
    """Download `artifact_path` ('' = everything) of a run into dest; clear errors."""
    find_run(run_id)
    Path(dest).mkdir(parents=True, exist_ok=True)
    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path or None,
                                                    dst_path=str(dest))
    except (MlflowException, OSError) as exc:
        listing = ", ".join(a.path for a in MlflowClient().list_artifacts(run_id)) or "nothing"
        raise TrackingError(f"run {run_id} has no artifact {artifact_path!r} (it has: {listing})"
                            f" [{type(exc).__name__}]") from None
    return Path(local)


def run_status_name(status: int | str) -> str:
    return status if isinstance(status, str) else RunStatus.to_string(status)


def cli_download(args) -> int:
    path = download_artifacts(args.run_id, args.artifact_path, args.dest)
    files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
    for f in files:
        print(f)
    log.info("downloaded %d file(s) of run %s to %s", len(files), args.run_id, path)
    return 0


# -- trainer helpers ---------------------------------------------------------------------------
# Metrics logged every progress block (step = global sample count); copied on resume.
BLOCK_METRICS = ("train/loss", "train/iou", "time/block_seconds", "time/elapsed_seconds",
                 "time/eta_epoch_seconds", "time/samples_per_second")


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def mlflow_version() -> str:
    return mlflow.__version__


def latest_checkpoint(run_id: str, folder: Path) -> Path:
    """Download a run's checkpoints (and its training log) into folder; newest epoch's path."""
    epochs = checkpoint_epochs(run_id)
    if not epochs:
        raise TrackingError(f"run {run_id} has no checkpoints/epoch_N.ckpt artifact to resume from")
    download_artifacts(run_id, "checkpoints", folder)
    with contextlib.suppress(TrackingError):  # a run killed early may not have logged it
        download_artifacts(run_id, "training_log.txt", folder)
    return folder / "checkpoints" / f"epoch_{epochs[-1]}.ckpt"


def close_resumed_run(run_id: str, resumed_by: str) -> None:
    """A run that a resume takes over: tag it, and mark it KILLED if it was left RUNNING."""
    client = MlflowClient()
    client.set_tag(run_id, "seqtrack.resumed_by", resumed_by)
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, status="KILLED")


# -- evaluation ------------------------------------------------------------------------------
# `evaluate` reads a training run (checkpoint list, epoch metrics) and writes its results to a
# run of its own: nested under the training run (tag mlflow.parentRunId, same experiment), or
# standalone for a checkpoint file. Under `mlflow run -e evaluate` that run is the project's.
EVAL_KIND_TAG = "seqtrack.kind"


def checkpoint_epochs(run_id: str) -> list[int]:
    """Epochs N of the run's `checkpoints/epoch_N.ckpt` artifacts, ascending."""
    find_run(run_id)
    names = [Path(a.path).name for a in MlflowClient().list_artifacts(run_id, "checkpoints")]
    return sorted(int(n[6:-5]) for n in names
                  if n.startswith("epoch_") and n.endswith(".ckpt") and n[6:-5].isdigit())


def metric_points(run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged point of a metric, by step (empty if never logged)."""
    return sorted((m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key))


def latest_run_with_checkpoints(experiment: str | None = None) -> str:
    """Newest FINISHED, non-evaluation run of the experiment that logged checkpoints."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment or "Default")
    if exp is None:
        raise TrackingError(f"experiment {experiment or 'Default'!r} not found in {mlflow.get_tracking_uri()}")
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=100)
    for run in runs:
        if run.data.tags.get(EVAL_KIND_TAG) != "evaluation" and checkpoint_epochs(run.info.run_id):
            return run.info.run_id
    raise TrackingError(f"experiment {exp.name!r} has no FINISHED training run with checkpoints; "
                        "pass --run-id or --checkpoint")


class EvaluationRun:
    """The MLflow run of one evaluation: `with EvaluationRun(...) as run:` ends it FINISHED,
    or FAILED (and re-raises) on an exception."""

    def __init__(self, run_name: str, parent_run_id: str = "", tags: dict[str, Any] | None = None):
        self.run_name = run_name
        self.parent_run_id = parent_run_id
        self.tags = {EVAL_KIND_TAG: "evaluation", **{k: str(v) for k, v in (tags or {}).items()}}
        self.run_id = ""

    def __enter__(self) -> "EvaluationRun":
        import os  # local: keeps this block self-contained

        tags = dict(self.tags)
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id  # what nested=True would set
        if os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run`: the project's run
            run = mlflow.start_run(tags=tags)
        else:
            exp_id = find_run(self.parent_run_id).info.experiment_id if self.parent_run_id else None
            run = mlflow.start_run(run_name=self.run_name, experiment_id=exp_id, tags=tags)
        self.run_id = run.info.run_id
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            mlflow.set_tag("seqtrack.error", f"{type(exc).__name__}: {exc}"[:5000])
        mlflow.end_run(status="FINISHED" if exc is None else "FAILED")

    def log_params(self, params: dict[str, Any]) -> None:
        mlflow.log_params({k: _param_value(v) for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=int(step))

    def log_artifacts(self, folder: str | Path, artifact_path: str = "evaluation") -> None:
        mlflow.log_artifacts(str(folder), artifact_path=artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_dataset(self, hf_dataset: Any, source: str, name: str, context: str = "evaluation",
                    digest: str | None = None) -> None:
        log_dataset(hf_dataset, source, name, context, digest)


def log_dataset(hf_dataset: Any, source: str, name: str, context: str, digest: str | None = None) -> None:
    """Log a `datasets.Dataset` (a frame index) as an input of the active run. `digest` replaces
    MLflow's own (which hashes only the first 10,000 rows); at most 36 characters fit its store."""
    dataset = mlflow.data.from_huggingface(hf_dataset, path=source, name=name, digest=digest)
    mlflow.log_input(dataset, context=context)


class NullRun:
    """What data-parallel ranks other than 0 hold instead of a run: logging does nothing."""

    run_id = ""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None

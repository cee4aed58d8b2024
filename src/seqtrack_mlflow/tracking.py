"""Every MLflow call of the project lives here; model, data and trainer code never import mlflow.

- `TrainingRun`: one MLflow run of the trainer: params, tags, dataset input, buffered metrics
  (never blocking the training loop), artifacts, and the FINISHED / FAILED / KILLED ending.
- `download_artifacts`, `find_run`, `latest_finished_run`: reading runs back (download entry
  point, mirror step, evaluation).
Under `mlflow run`, the child process gets MLFLOW_RUN_ID and `mlflow.start_run()` attaches to
that run; run by hand, a new run is created in the current experiment.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Iterable

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
        if self.experiment:
            mlflow.set_experiment(self.experiment)
        run = mlflow.start_run(run_name=self.run_name)
        self.run_id = run.info.run_id
        return self

    @property
    def artifact_uri(self) -> str:
        return mlflow.get_artifact_uri()

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        """Flush metrics, record the error (if any) as a tag, close the run with `status`."""
        try:
            self.flush(wait=True)
            if error:
                self.client.set_tag(self.run_id, "seqtrack.error", error[:5000])
        finally:
            mlflow.end_run(status=status)

    # -- params, tags, inputs ----------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        mlflow.log_params({k: _param_value(v) for k, v in params.items()})

    def set_tags(self, tags: dict[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_dataset(self, hf_dataset: Any, source: str, name: str, context: str = "training") -> None:
        """Log a `datasets.Dataset` (the frame index) as the run's input, with its digest."""
        dataset = mlflow.data.from_huggingface(hf_dataset, path=source, name=name)
        mlflow.log_input(dataset, context=context)

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
            for operation in self._pending:
                if operation is not None:
                    operation.wait()
            self._pending.clear()

    # -- artifacts ---------------------------------------------------------------------------
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        mlflow.log_text(text, artifact_file)

    def metric_history(self, run_id: str, key: str) -> list[Metric]:
        return self.client.get_metric_history(run_id, key)

    def copy_metrics(self, source_run_id: str, keys: Iterable[str], max_step: int) -> int:
        """Copy metric points with step <= max_step from another run (used on resume)."""
        points = [m for key in keys for m in self.client.get_metric_history(source_run_id, key)
                  if m.step <= max_step]
        for i in range(0, len(points), 1000):
            self.client.log_batch(self.run_id, metrics=points[i:i + 1000])
        return len(points)


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


def mark_run(run_id: str, status: str, tags: dict[str, str] | None = None) -> None:
    """Set tags on and terminate another run (e.g. a killed run that a resume takes over)."""
    client = MlflowClient()
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, status=status)


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

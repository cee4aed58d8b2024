"""MLflow runs being written: `TrainingRun` (params, tags, datasets, buffered asynchronous
metrics, artifacts), `NullRun` (what data-parallel ranks other than 0 hold), `EvaluationRun`,
`tool_run` (mirror, download). Each is always closed with FINISHED, FAILED or KILLED.

Under `mlflow run`, the child process gets MLFLOW_RUN_ID and `mlflow.start_run()` attaches to
that run; run by hand, a new run is created in the active experiment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterable, Iterator

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from seqtrack_mlflow import names, provenance
from seqtrack_mlflow.errors import TrackingError
from seqtrack_mlflow.experiment.lookup import find_run
from seqtrack_mlflow.experiment.store import (
    client,
    experiment_id,
    mark_experiment,
    prepare_store,
    retry_locked,
    tracking_errors,
)

log = logging.getLogger(__name__)

# Params longer than this are cut by MLflow's store; list-valued configs are joined instead.
_PARAM_LIMIT = 6000
# Metrics are flushed at most this often (seconds) or when this many are buffered.
_FLUSH_SECONDS = 5.0
_FLUSH_COUNT = 200


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    text = str(value)
    return text if len(text) <= _PARAM_LIMIT else text[:_PARAM_LIMIT]

class TrainingRun:
    """One MLflow run of the trainer, opened by `start()` and always closed by `end(status)`.
    Metrics are buffered and sent asynchronously in batches: training never waits on them."""

    def __init__(self, run_name: str, experiment: str = "", kind: str = "train", system_metrics: bool = False):
        self.run_name, self.experiment, self.kind = run_name, experiment, kind
        self.system_metrics = system_metrics
        self.run_id: str = ""
        self.experiment_id: str = ""
        self._datasets: dict[str, Any] = {}  # context -> the logged mlflow dataset
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()
        self._pending: list[Any] = []  # async operations still in flight

    def start(self, tags: dict[str, Any] | None = None) -> "TrainingRun":
        prepare_store()
        exp_id = experiment_id(self.experiment, create=True)  # --experiment-name creates a missing one
        attach = os.environ.get("MLFLOW_RUN_ID")  # under `mlflow run`: the project's run
        run = retry_locked("starting a run", lambda: mlflow.start_run(
            run_name=self.run_name, experiment_id=None if attach else exp_id,
            tags={names.KIND_TAG: self.kind, **{k: str(v) for k, v in (tags or {}).items()}},
            log_system_metrics=self.system_metrics))
        self.run_id = run.info.run_id
        self.experiment_id = run.info.experiment_id
        mark_experiment(self.experiment_id)
        # MLflow records the commit itself when the entry script is in a git checkout (and under
        # `mlflow run`); otherwise (pytest, a console script) the package's own checkout is asked.
        if names.GIT_COMMIT_TAG not in run.data.tags and (commit := provenance.git_commit()) != "unknown":
            self.set_tags({names.GIT_COMMIT_TAG: commit})
        return self

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        """Flush metrics, record the error (if any) as a tag, close the run with `status`.

        Closing a failed or killed run never hides the error that ended it: if the store cannot
        be reached then, a warning says so (the run may stay RUNNING there)."""
        action = f"closing run {self.run_id} as {status}"
        try:
            try:
                self.flush(wait=True)
                if error:
                    retry_locked(action, lambda: client().set_tag(self.run_id, names.ERROR_TAG, error[:5000]))
            finally:
                retry_locked(action, lambda: mlflow.end_run(status=status))
        except TrackingError as exc:
            if status == "FINISHED":
                raise
            log.warning("%s; the run may still show as RUNNING there", exc)

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params; one that the run already has (`mlflow run` logs its -P values, "" for a
        -P left out) is skipped when equal, else logged as resolved_<name>: params are immutable."""
        retry_locked("logging params", lambda: self._log_params(params))

    def _log_params(self, params: dict[str, Any]) -> None:
        existing = client().get_run(self.run_id).data.params
        values = {}
        for key, value in params.items():
            text = _param_value(value)
            if key not in existing:
                values[key] = text
            elif existing[key] != text:
                values[f"resolved_{key}"] = text
        mlflow.log_params(values)

    def set_tags(self, tags: dict[str, Any]) -> None:
        retry_locked("setting tags", lambda: mlflow.set_tags({k: str(v) for k, v in tags.items()}))

    def log_dataset(self, hf_dataset: Any, source: str, name: str, context: str = "training",
                    digest: str | None = None) -> None:
        self._datasets[context] = log_dataset(hf_dataset, source, name, context, digest)

    def log_metrics(self, metrics: dict[str, float], step: int, model_id: str = "", dataset: str = "") -> None:
        """Buffer metrics; they are sent in batches, asynchronously, so training never waits.
        `model_id`: also a metric of that LoggedModel; `dataset`: the context of a dataset
        logged with `log_dataset` that the values were measured on."""
        now = int(time.time() * 1000)
        data = self._datasets.get(dataset) if dataset else None
        self._buffer.extend(Metric(k, float(v), now, int(step), model_id=model_id or None,
                                   dataset_name=data.name if data else None,
                                   dataset_digest=data.digest if data else None) for k, v in metrics.items())
        if len(self._buffer) >= _FLUSH_COUNT or time.monotonic() - self._last_flush > _FLUSH_SECONDS:
            self.flush()

    def flush(self, wait: bool = False) -> None:
        while self._buffer:
            chunk, self._buffer = self._buffer[:1000], self._buffer[1000:]  # MLflow batch limit
            self._pending.append((chunk, client().log_batch(self.run_id, metrics=chunk, synchronous=False)))
        self._last_flush = time.monotonic()
        if wait:
            pending, self._pending = self._pending, []
            for chunk, operation in pending:
                if operation is None:
                    continue
                try:
                    with tracking_errors("logging metrics"):
                        operation.wait()
                except TrackingError as exc:
                    if "locked" not in str(exc).lower():
                        raise
                    # sent again, synchronously, while the store stays locked (bounded)
                    retry_locked("logging metrics", lambda c=chunk: client().log_batch(self.run_id, metrics=c))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        kept = f"the local copy {path} is kept" if Path(path).exists() else f"{path} no longer exists"
        retry_locked(f"logging artifact {Path(path).name} ({kept})",
                     lambda: mlflow.log_artifact(str(path), artifact_path=artifact_path))

    def store_once(self, path: Path, artifact_path: str) -> None:
        """After `log_artifact(path, artifact_path)`: keep the bytes once on this disk. On a
        local artifact store the local file becomes a hard link to the logged copy. A remote
        store's copy lives on another machine, so the local one stays: it is what a resume uses
        when the server is down (a crash must lose nothing)."""
        uri = mlflow.get_artifact_uri(f"{artifact_path}/{path.name}")
        parsed = urllib.parse.urlparse(uri)
        if parsed.scheme not in ("", "file"):
            return
        stored = Path(urllib.parse.unquote(parsed.path))
        tmp = path.with_name(f".{path.name}.link.tmp")
        try:
            os.link(stored, tmp)
            os.replace(tmp, path)
        except OSError as exc:  # another file system, or links not supported: keep both copies
            tmp.unlink(missing_ok=True)
            log.debug("keeping a separate local copy of %s: %s", path, exc)

    def copy_metrics(self, source_run_id: str, keys: Iterable[str], max_step: int) -> int:
        """Copy metric points with step <= max_step from another run (used on resume)."""
        action = f"copying metrics of run {source_run_id}"
        points = retry_locked(action, lambda: [m for key in keys for m in client().get_metric_history(source_run_id, key)
                                               if m.step <= max_step])
        for i in range(0, len(points), 1000):
            retry_locked(action, lambda i=i: client().log_batch(self.run_id, metrics=points[i:i + 1000]))
        return len(points)


class NullRun:
    """What data-parallel ranks other than 0 hold instead of a run: the same methods, no effect."""

    run_id = ""

    def end(self, status: str = "FINISHED", error: str | None = None) -> None: ...
    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_dataset(self, hf_dataset: Any, source: str, name: str, context: str = "training",
                    digest: str | None = None) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int, model_id: str = "", dataset: str = "") -> None: ...
    def flush(self, wait: bool = False) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def store_once(self, path: Path, artifact_path: str) -> None: ...
    def copy_metrics(self, source_run_id: str, keys: Iterable[str], max_step: int) -> int:
        return 0


class EvaluationRun:
    """The MLflow run of one evaluation: `with EvaluationRun(...) as run:` ends it FINISHED,
    or FAILED (and re-raises) on an exception. Nested under the training run when there is one."""

    def __init__(self, run_name: str, parent_run_id: str = "", tags: dict[str, Any] | None = None):
        self.run_name = run_name
        self.parent_run_id = parent_run_id
        self.tags = {names.KIND_TAG: "evaluate", **{k: str(v) for k, v in (tags or {}).items()}}
        self.run_id = ""

    def __enter__(self) -> "EvaluationRun":
        prepare_store()
        with tracking_errors("starting the evaluation run"):
            if os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run`: the project's run, made a child by tag
                tags = dict(self.tags)
                if self.parent_run_id:
                    tags[names.PARENT_RUN_TAG] = self.parent_run_id
                run = mlflow.start_run(run_name=self.run_name, tags=tags)
            else:
                exp_id = (find_run(self.parent_run_id).info.experiment_id if self.parent_run_id
                          else experiment_id())
                run = mlflow.start_run(run_name=self.run_name, experiment_id=exp_id, tags=self.tags,
                                       parent_run_id=self.parent_run_id or None)
        self.run_id = run.info.run_id
        mark_experiment(run.info.experiment_id)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            with contextlib.suppress(MlflowException, OSError):
                mlflow.set_tag(names.ERROR_TAG, f"{type(exc).__name__}: {exc}"[:5000])
        mlflow.end_run(status="FINISHED" if exc is None else "FAILED")

    def log_params(self, params: dict[str, Any]) -> None:
        mlflow.log_params({k: _param_value(v) for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=int(step))

    def log_artifacts(self, folder: str | Path, artifact_path: str = names.EVALUATION) -> None:
        mlflow.log_artifacts(str(folder), artifact_path=artifact_path)

    def log_table(self, columns: dict[str, list], artifact_file: str) -> None:
        """A table artifact (one row per sequence) shown in the UI's artifact and evaluation views."""
        mlflow.log_table(data=columns, artifact_file=artifact_file)

    def set_tags(self, tags: dict[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_dataset(self, hf_dataset: Any, source: str, name: str, context: str = "evaluation",
                    digest: str | None = None) -> None:
        log_dataset(hf_dataset, source, name, context, digest)


def log_dataset(hf_dataset: Any, source: str, name: str, context: str, digest: str | None = None):
    """Log a `datasets.Dataset` (a frame index) as an input of the active run. `digest` replaces
    MLflow's own (which hashes only the first 10,000 rows); at most 36 characters fit its store.

    `source` is what `mlflow.data.get_source(...).load()` gives back: hf://datasets/<repo>@<commit>
    becomes a Hugging Face source (repo, commit, the context's split); a file:// URI or a path a
    local source, whose load() returns the folder without any network."""
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

    if source.startswith(names.HF_DATASETS_SCHEME):
        repo, _, revision = source[len(names.HF_DATASETS_SCHEME):].partition("@")
        origin: Any = HuggingFaceDatasetSource(path=repo, revision=revision or None,
                                               split=names.CONTEXT_SPLITS.get(context, "train"))
    else:
        origin = source
    with tracking_errors(f"logging the {context} dataset input"):
        dataset = mlflow.data.from_huggingface(hf_dataset, name=name, digest=digest, source=origin)
        mlflow.log_input(dataset, context=context)
    return dataset


def log_to_training_run(run_id: str, metrics: dict[str, float], step: int, model_id: str = "") -> None:
    """Evaluation results on the training run at step = the evaluated epoch (charts against
    epoch) and, when the epoch is a LoggedModel, on that model's page."""
    now = int(time.time() * 1000)
    points = [Metric(k, float(v), now, int(step), model_id=model_id or None) for k, v in metrics.items()]
    with tracking_errors(f"logging evaluation metrics to training run {run_id}"):
        client().log_batch(run_id, metrics=points)


@contextlib.contextmanager
def tool_run(kind: str, run_name: str) -> Iterator[str]:
    """A run for a step that is not training or evaluation (mirror, download), so that under
    `mlflow run` the project's run is tagged with its kind and closed properly. Run by hand
    (no MLFLOW_RUN_ID), no run is made: yields ''."""
    if not os.environ.get("MLFLOW_RUN_ID"):
        yield ""
        return
    with tracking_errors(f"starting the {kind} run"):
        run = mlflow.start_run(run_name=run_name, tags={names.KIND_TAG: kind})
    try:
        mark_experiment(run.info.experiment_id)
        yield run.info.run_id
    except BaseException as exc:
        with contextlib.suppress(MlflowException, OSError):
            mlflow.set_tag(names.ERROR_TAG, f"{type(exc).__name__}: {exc}"[:5000])
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")


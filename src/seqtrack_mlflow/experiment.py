"""Every MLflow call of the project lives here; model, data, trainer and tracker code never
import mlflow. (Named `experiment`, not `tracking`: in a tracking project that word is taken.)

- `TrainingRun` / `EvaluationRun`: one MLflow run each, always closed with FINISHED, FAILED or
  KILLED; `NullRun`: what data-parallel ranks other than 0 hold (same methods, no effect).
- Lookups: `experiment_id` (the active experiment: --experiment-name, MLFLOW_EXPERIMENT_NAME,
  MLFLOW_EXPERIMENT_ID, else Default), `training_run` / `latest_training_run` (only runs tagged
  as training runs are candidates), `checkpoint_epochs`, `metric_points`, `download_artifacts`.
Under `mlflow run`, the child process gets MLFLOW_RUN_ID and `mlflow.start_run()` attaches to
that run; run by hand, a new run is created in the active experiment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

import mlflow
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from seqtrack_mlflow import names
from seqtrack_mlflow.errors import TrackingError
from seqtrack_mlflow.train.checkpoint import checkpoint_epochs as _epochs_of
from seqtrack_mlflow.train.checkpoint import checkpoint_name

log = logging.getLogger(__name__)

# Params longer than this are cut by MLflow's store; list-valued configs are joined instead.
_PARAM_LIMIT = 6000
# Metrics are flushed at most this often (seconds) or when this many are buffered.
_FLUSH_SECONDS = 5.0
_FLUSH_COUNT = 200

_CLIENTS: dict[str, MlflowClient] = {}


class _OneLineStoreErrors(logging.Filter):
    """MLflow's sqlite store logs every database error with its traceback (`_logger.exception`)
    before raising it as an MlflowException, which `tracking_errors` turns into the one line
    the user sees; keep that log record, on one line and without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            record.msg = " ".join(record.getMessage().split())
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


logging.getLogger("mlflow.store.db.utils").addFilter(_OneLineStoreErrors())


def client() -> MlflowClient:
    """The one MlflowClient of the current tracking URI (tests switch URIs between runs)."""
    uri = mlflow.get_tracking_uri()
    if uri not in _CLIENTS:
        _CLIENTS[uri] = MlflowClient(uri)
    return _CLIENTS[uri]


def tracking_uri() -> str:
    """The tracking URI as messages and logs show it: a password in it (`postgresql://user:pw@`,
    `https://user:pw@`) is replaced by `***`."""
    return redact_uri(mlflow.get_tracking_uri())


_PASSWORD_IN_URL = re.compile(r"(//[^/:@\s]+:)[^/@\s]+@")


def redact_uri(uri: str) -> str:
    parsed = urllib.parse.urlsplit(uri)
    if parsed.password is None:
        return uri
    host = parsed.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parsed._replace(netloc=f"{parsed.username}:***@{host}"))


@contextlib.contextmanager
def tracking_errors(action: str) -> Iterator[None]:
    """A tracking store that cannot be reached (server down, network) or refuses a write: one
    TrackingError line naming the store and what was being done, instead of a traceback."""
    try:
        yield
    except (MlflowException, OSError) as exc:  # requests' ConnectionError is an OSError
        denied = access_denied(exc, action)
        if denied is not None:
            raise denied from None
        text = _PASSWORD_IN_URL.sub(r"\1***@", " ".join(str(exc).split())) or type(exc).__name__
        text = text if len(text) <= 300 else text[:300] + " ..."
        raise TrackingError(f"MLflow tracking at {tracking_uri()} failed while {action}: "
                            f"{text}") from exc


def access_denied(exc: Exception, action: str) -> TrackingError | None:
    """A tracking server's HTTP 401 (no or wrong credentials) or 403 (no permission) as one
    line that says what to set; None for any other error."""
    status = exc.get_http_status_code() if isinstance(exc, MlflowException) else None
    if status == 401:
        return TrackingError(f"MLflow tracking at {tracking_uri()} refused the request while {action}: HTTP 401 "
                             "(not authenticated): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                             "to your account on that server")
    if status == 403:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME", "")
        return TrackingError(f"MLflow tracking at {tracking_uri()} refused the request while {action}: HTTP 403 "
                             f"(permission denied for user {user!r}): ask the server's admin for EDIT "
                             "permission on the experiment")
    return None


def prepare_store() -> None:
    """Create (and migrate) a new tracking database once, whichever process comes first.

    Two processes opening a brand-new database race in MLflow's schema creation (sqlite: an
    alembic CommandError; PostgreSQL: a duplicate-key error on the first CREATE TABLE). A lock
    makes the first create it and the others find it done: for sqlite a file lock beside the
    file; for PostgreSQL, whose clients may be on several machines, an advisory lock held by
    the database itself. Other stores (a tracking server, which made its schema at start) need none."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        import filelock

        db = Path(urllib.parse.unquote(uri[len("sqlite:///"):]))
        with tracking_errors("preparing the sqlite store"):
            db.parent.mkdir(parents=True, exist_ok=True)
            with filelock.FileLock(str(db.with_name(db.name + ".lock"))):
                client().search_experiments(max_results=1)
    elif uri.startswith("postgresql"):
        with tracking_errors("preparing the PostgreSQL store"), _postgres_lock(uri):
            client().search_experiments(max_results=1)


# Any fixed 64-bit number: the advisory lock that serializes MLflow's schema creation.
_SCHEMA_LOCK_KEY = 0x5E9_7AC_0001


@contextlib.contextmanager
def _postgres_lock(uri: str) -> Iterator[None]:
    """pg_advisory_lock on a connection of its own, held while the body runs."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
    try:
        try:
            conn = engine.connect()
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
        except sqlalchemy.exc.SQLAlchemyError as exc:
            reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
            raise TrackingError(f"MLflow tracking at {tracking_uri()} failed while preparing the PostgreSQL "
                                f"store: {reason}") from None
        try:
            yield
        finally:
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": _SCHEMA_LOCK_KEY})
            conn.close()
    finally:
        engine.dispose()


def experiment_id(name: str = "") -> str:
    """The experiment runs go to and lookups search: `name` if given (it must exist), else
    MLFLOW_EXPERIMENT_NAME, else MLFLOW_EXPERIMENT_ID, else Default."""
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME", "")
    with tracking_errors("looking up the experiment"):
        if name:
            exp = client().get_experiment_by_name(name)
            if exp is None:
                raise TrackingError(f"experiment {name!r} not found in {tracking_uri()}")
            return exp.experiment_id
        exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID", "")
        if exp_id:
            try:
                return client().get_experiment(exp_id).experiment_id
            except MlflowException as exc:
                if access_denied(exc, "") is not None:
                    raise  # tracking_errors says it
                raise TrackingError(f"experiment id {exp_id!r} (MLFLOW_EXPERIMENT_ID) not found in "
                                    f"{tracking_uri()}") from None
        exp = client().get_experiment_by_name("Default")
        return exp.experiment_id if exp is not None else "0"


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
        self.models: dict[int, str] = {}  # epoch -> LoggedModel id
        self._datasets: dict[str, Any] = {}  # context -> the logged mlflow dataset
        self._example: Any = None
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()
        self._pending: list[Any] = []  # async operations still in flight

    def start(self, tags: dict[str, Any] | None = None) -> "TrainingRun":
        prepare_store()
        exp_id = experiment_id(self.experiment)
        with tracking_errors("starting a run"):
            attach = os.environ.get("MLFLOW_RUN_ID")  # under `mlflow run`: the project's run
            run = mlflow.start_run(run_name=self.run_name, experiment_id=None if attach else exp_id,
                                   tags={names.KIND_TAG: self.kind, **{k: str(v) for k, v in (tags or {}).items()}},
                                   log_system_metrics=self.system_metrics)
        self.run_id = run.info.run_id
        self.experiment_id = run.info.experiment_id
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
                        client().set_tag(self.run_id, names.ERROR_TAG, error[:5000])
                finally:
                    mlflow.end_run(status=status)
        except TrackingError as exc:
            if status == "FINISHED":
                raise
            log.warning("%s; the run may still show as RUNNING there", exc)

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params; one that the run already has (`mlflow run` logs its -P values, "" for a
        -P left out) is skipped when equal, else logged as resolved_<name>: params are immutable."""
        with tracking_errors("logging params"):
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
        with tracking_errors("setting tags"):
            mlflow.set_tags({k: str(v) for k, v in tags.items()})

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
            self._pending.append(client().log_batch(self.run_id, metrics=chunk, synchronous=False))
        self._last_flush = time.monotonic()
        if wait:
            pending, self._pending = self._pending, []
            with tracking_errors("logging metrics"):
                for operation in pending:
                    if operation is not None:
                        operation.wait()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        with tracking_errors(f"logging artifact {Path(path).name} (the local copy {path} is kept)"):
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

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

    # -- the model lifecycle: one LoggedModel per chosen epoch, the best one registered ---------
    def log_epoch_model(self, epoch: int, weights_dir: Path, track: dict[str, Any]) -> str:
        """After the checkpoint of `epoch`: its weights (`weights_dir`: config.json +
        model.safetensors) become a LoggedModel of this run at step = epoch, a pyfunc model from
        code (seqtrack_mlflow/pyfunc_model.py) with signature and input example. MLflow links
        the run's metrics of that step (the epoch metrics, already flushed with the checkpoint)
        to the model, so its page shows them."""
        from seqtrack_mlflow import pyfunc_model
        from seqtrack_mlflow.train.determinism import rng_state, set_rng_state

        if self._example is None:
            self._example = pyfunc_model.sample_example()
        # log_model loads the model once to check the input example: the RNG states are put
        # back afterwards, so logging models never changes what training computes.
        saved = rng_state()
        try:
            with tracking_errors(f"logging the model of epoch {epoch}"), warnings.catch_warnings():
                # "add type hints to predict": the signature is given explicitly instead
                warnings.filterwarnings("ignore", message=".*type hints to the `predict` method")
                info = mlflow.pyfunc.log_model(
                    name=f"epoch-{epoch}", python_model=pyfunc_model.__file__,
                    artifacts={pyfunc_model.WEIGHTS_ARTIFACT: str(weights_dir)}, model_config=dict(track),
                    signature=_pyfunc_signature(), input_example=self._example,
                    pip_requirements=_pip_requirements(), step=int(epoch),
                    tags={names.EPOCH_TAG: str(epoch)}, model_type="seqtrack-tracker")
        finally:
            set_rng_state(saved)
        self.models[epoch] = info.model_id
        return info.model_id

    def register_best(self, epoch: int, name: str, alias: str, description: str = "") -> str:
        """Register the LoggedModel of `epoch` as a new version of `name` and point `alias`
        at it; returns 'name/version' ('' when that epoch has no model or name is '')."""
        model_id = self.models.get(epoch)
        if not name or not model_id:
            return ""
        with tracking_errors(f"registering the model of epoch {epoch} as {name}@{alias}"):
            version = mlflow.register_model(f"models:/{model_id}", name,
                                            tags={names.EPOCH_TAG: str(epoch), "seqtrack.run_id": self.run_id})
            if description:
                client().update_model_version(name, version.version, description=description)
            client().set_registered_model_alias(name, alias, version.version)
        return f"{name}/{version.version}"

    def copy_metrics(self, source_run_id: str, keys: Iterable[str], max_step: int) -> int:
        """Copy metric points with step <= max_step from another run (used on resume)."""
        with tracking_errors(f"copying metrics of run {source_run_id}"):
            points = [m for key in keys for m in client().get_metric_history(source_run_id, key)
                      if m.step <= max_step]
            for i in range(0, len(points), 1000):
                client().log_batch(self.run_id, metrics=points[i:i + 1000])
        return len(points)


def _pyfunc_signature():
    """frame (path, data URI or uint8 array) + the first row's box -> one box per frame."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    from seqtrack_mlflow.pyfunc_model import BOX_COLUMNS

    return ModelSignature(inputs=Schema([ColSpec(AnyType(), "frame"), *(ColSpec("double", c) for c in BOX_COLUMNS)]),
                          outputs=Schema([ColSpec("double", c) for c in BOX_COLUMNS]))


def _pip_requirements() -> list[str]:
    """Pinned as in this environment; given explicitly, because inferring them starts a
    subprocess that loads the model (seconds per epoch). seqtrack-mlflow itself must be
    installed from this repository (it is not on PyPI)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for package in ("torch", "numpy", "mlflow", "safetensors", "pillow", "pandas", "pyyaml"):
        with contextlib.suppress(PackageNotFoundError):
            out.append(f"{package}=={version(package)}")
    return out


class NullRun:
    """What data-parallel ranks other than 0 hold instead of a run: the same methods, no effect."""

    run_id = ""
    models: dict[int, str] = {}

    def end(self, status: str = "FINISHED", error: str | None = None) -> None: ...
    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_dataset(self, hf_dataset: Any, source: str, name: str, context: str = "training",
                    digest: str | None = None) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int, model_id: str = "", dataset: str = "") -> None: ...
    def flush(self, wait: bool = False) -> None: ...
    def log_epoch_model(self, epoch: int, weights_dir: Path, track: dict[str, Any]) -> str:
        return ""
    def register_best(self, epoch: int, name: str, alias: str, description: str = "") -> str:
        return ""
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
                    tags["mlflow.parentRunId"] = self.parent_run_id
                run = mlflow.start_run(run_name=self.run_name, tags=tags)
            else:
                exp_id = (find_run(self.parent_run_id).info.experiment_id if self.parent_run_id
                          else experiment_id())
                run = mlflow.start_run(run_name=self.run_name, experiment_id=exp_id, tags=self.tags,
                                       parent_run_id=self.parent_run_id or None)
        self.run_id = run.info.run_id
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
    MLflow's own (which hashes only the first 10,000 rows); at most 36 characters fit its store."""
    with tracking_errors(f"logging the {context} dataset input"):
        dataset = mlflow.data.from_huggingface(hf_dataset, path=source, name=name, digest=digest)
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
        yield run.info.run_id
    except BaseException as exc:
        with contextlib.suppress(MlflowException, OSError):
            mlflow.set_tag(names.ERROR_TAG, f"{type(exc).__name__}: {exc}"[:5000])
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")


# -- reading runs back -------------------------------------------------------------------------
def find_run(run_id: str):
    """The MLflow run with this id, or TrackingError with a clear message."""
    try:
        return client().get_run(run_id)
    except MlflowException as exc:
        denied = access_denied(exc, f"reading run {run_id}")
        if denied is not None:
            raise denied from None
        raise TrackingError(f"no MLflow run with id {run_id!r} in tracking store "
                            f"{tracking_uri()}") from None


MODELS_SCHEME = "models:/"


def is_model_uri(text: str) -> bool:
    return str(text).strip().startswith(MODELS_SCHEME)


def resolve_model_uri(uri: str) -> tuple[str, int, str]:
    """`models:/<name>@<alias>`, `models:/<name>/<version>` or `models:/<model_id>` -> (training
    run id, epoch, model id) of a LoggedModel this project logged. One TrackingError line when
    the name, alias, version or model does not exist."""
    rest = uri.strip()[len(MODELS_SCHEME):].strip("/")
    with tracking_errors(f"resolving {uri}"):
        try:
            if "@" in rest:
                name, alias = rest.split("@", 1)
                version = client().get_model_version_by_alias(name, alias)
            elif "/" in rest:
                name, number = rest.split("/", 1)
                version = client().get_model_version(name, number)
            else:
                version = None
                model = client().get_logged_model(rest)
        except MlflowException as exc:
            if access_denied(exc, "") is not None:
                raise  # tracking_errors says it
            what = ("registered model, alias or version" if "@" in rest or "/" in rest else "logged model")
            raise TrackingError(f"{uri}: no such {what} in {tracking_uri()} "
                                f"({exc.error_code})") from None
        if version is not None:
            model_id = getattr(version, "model_id", None) or str(version.source or "").removeprefix(MODELS_SCHEME)
            try:
                model = client().get_logged_model(model_id)
            except MlflowException:
                raise TrackingError(f"{uri}: version {version.version} does not come from a logged model "
                                    f"(source {version.source})") from None
    epoch = model.tags.get(names.EPOCH_TAG, "")
    if not model.source_run_id or not epoch.isdigit():
        raise TrackingError(f"{uri}: model {model.model_id} was not logged by seqtrack training "
                            f"(no source run or {names.EPOCH_TAG} tag)")
    return model.source_run_id, int(epoch), model.model_id


def epoch_models(run_id: str) -> dict[int, str]:
    """{epoch: LoggedModel id} of a training run (its models tagged with an epoch)."""
    with tracking_errors(f"searching the models of run {run_id}"):
        models = mlflow.search_logged_models(experiment_ids=[find_run(run_id).info.experiment_id],
                                             filter_string=f"source_run_id = '{run_id}'", output_format="list")
    return {int(m.tags[names.EPOCH_TAG]): m.model_id for m in models
            if str(m.tags.get(names.EPOCH_TAG, "")).isdigit()}


def training_run(run_id: str, experiment: str = ""):
    """A training run by id: TrackingError if it is missing, of another kind, or (when an
    experiment is named) in another experiment."""
    run = find_run(run_id)
    kind = run.data.tags.get(names.KIND_TAG, "")
    if kind != "train":
        raise TrackingError(f"run {run_id} is not a training run (its {names.KIND_TAG} tag is {kind!r}); "
                            "pass the id of a training run")
    if experiment:
        wanted = experiment_id(experiment)
        if run.info.experiment_id != wanted:
            raise TrackingError(f"run {run_id} belongs to experiment id {run.info.experiment_id}, "
                                f"not to {experiment!r}")
    return run


def latest_training_run(experiment: str = "") -> str:
    """The id of the newest FINISHED training run that has checkpoints, in the active experiment
    (the default of mirror, evaluate, fetch-hub and download)."""
    exp_id = experiment_id(experiment)
    with tracking_errors("searching runs"):
        runs = client().search_runs(
            [exp_id], filter_string=f"attributes.status = 'FINISHED' and tags.`{names.KIND_TAG}` = 'train'",
            order_by=["attributes.start_time DESC"], max_results=50)
    for run in runs:
        if checkpoint_epochs(run.info.run_id):
            return run.info.run_id
    exp = client().get_experiment(exp_id)
    raise TrackingError(f"experiment {exp.name!r} has no FINISHED training run with checkpoints; "
                        "pass a run id")


def checkpoint_epochs(run_id: str) -> list[int]:
    """Epochs N of the run's `checkpoints/epoch_N.ckpt` artifacts, ascending."""
    find_run(run_id)
    with tracking_errors(f"listing the checkpoints of run {run_id}"):
        return _epochs_of([a.path for a in client().list_artifacts(run_id, names.CHECKPOINTS)])


def metric_points(run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged point of a metric, by step (empty if never logged)."""
    with tracking_errors(f"reading metric {key} of run {run_id}"):
        return sorted((m.step, m.value) for m in client().get_metric_history(run_id, key))


def latest_evaluation(run_id: str) -> dict[str, Any] | None:
    """The newest FINISHED evaluation of a training run (an `EvaluationRun` whose parent it is,
    searched in the training run's experiment), or None: {run_id, epoch, data_source, classes,
    sequences, metrics: {auc, precision, norm_precision} as fractions}."""
    experiment_of_run = find_run(run_id).info.experiment_id
    with tracking_errors(f"searching the evaluations of run {run_id}"):
        runs = client().search_runs(
            [experiment_of_run], max_results=1, order_by=["attributes.start_time DESC"],
            filter_string=(f"tags.mlflow.parentRunId = '{run_id}' and tags.`{names.KIND_TAG}` = 'evaluate' "
                           "and attributes.status = 'FINISHED'"))
    if not runs:
        return None
    run = runs[0]
    metrics = {k: float(run.data.metrics[f"{names.EVAL_PREFIX}{k}"]) for k in ("auc", "precision", "norm_precision")
               if f"{names.EVAL_PREFIX}{k}" in run.data.metrics}
    if not metrics:
        return None
    epoch = run.data.tags.get("seqtrack.epoch") or run.data.params.get("eval.epoch")
    sequences = run.data.params.get("eval.sequences", "")
    return {"run_id": run.info.run_id, "epoch": int(epoch) if str(epoch or "").isdigit() else None,
            "data_source": run.data.params.get("data.source", ""),
            "classes": run.data.params.get("data.classes", ""),
            "sequences": len([s for s in sequences.split(",") if s]) or None, "metrics": metrics}


def set_run_tags(run_id: str, tags: dict[str, str]) -> None:
    with tracking_errors(f"tagging run {run_id}"):
        client().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def download_artifacts(run_id: str, artifact_path: str, dest: str | Path) -> Path:
    """Download `artifact_path` ('' = everything) of a run into dest; clear errors."""
    find_run(run_id)
    Path(dest).mkdir(parents=True, exist_ok=True)
    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path or None,
                                                    dst_path=str(dest))
    except (MlflowException, OSError) as exc:
        listing = ", ".join(a.path for a in client().list_artifacts(run_id)) or "nothing"
        raise TrackingError(f"run {run_id} has no artifact {artifact_path!r} (it has: {listing})"
                            f" [{type(exc).__name__}]") from None
    return Path(local)


def download_checkpoints(run_id: str, folder: Path) -> Path:
    """A run's checkpoints (with manifest) and training log, downloaded into folder; the
    newest checkpoint's path."""
    epochs = checkpoint_epochs(run_id)
    if not epochs:
        raise TrackingError(f"run {run_id} has no {names.CHECKPOINTS}/epoch_N.ckpt artifact")
    download_artifacts(run_id, names.CHECKPOINTS, folder)
    with contextlib.suppress(TrackingError):  # a run killed early may not have logged it
        download_artifacts(run_id, names.TRAINING_LOG, folder)
    return folder / names.CHECKPOINTS / checkpoint_name(epochs[-1])


def download_checkpoint(run_id: str, epoch: int, folder: Path) -> Path:
    """One checkpoint of a run, with the manifest that verifies it (not every epoch's file):
    folder/checkpoints/epoch_N.ckpt and folder/checkpoints/manifest.json; the checkpoint's path."""
    from seqtrack_mlflow.train.checkpoint import MANIFEST

    download_artifacts(run_id, f"{names.CHECKPOINTS}/{MANIFEST}", folder)
    return download_artifacts(run_id, f"{names.CHECKPOINTS}/{checkpoint_name(epoch)}", folder)


def experiment_of_run(run_id: str) -> str | None:
    """The experiment id of a run in this tracking store, None if the store has no such run
    (a checkpoint file made elsewhere names a run of another store)."""
    prepare_store()
    try:
        return find_run(run_id).info.experiment_id
    except TrackingError:
        return None


# What MLflow's local artifact store names a file while it copies it in (LocalArtifactRepository):
# a kill during the copy leaves it behind, beside the complete artifacts.
_UPLOAD_PREFIX = ".artifact.uploading."


def remove_upload_leftovers(run_id: str) -> list[Path]:
    """Half-copied artifact files of a run on a local artifact store (left by a kill); removed."""
    parsed = urllib.parse.urlparse(find_run(run_id).info.artifact_uri)
    if parsed.scheme not in ("", "file"):
        return []
    root = Path(urllib.parse.unquote(parsed.path))
    removed = []
    for path in root.rglob(f"{_UPLOAD_PREFIX}*") if root.is_dir() else []:
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def close_resumed_run(run_id: str, resumed_by: str) -> None:
    """A run that a resume takes over: tag it, and mark it KILLED if it was left RUNNING."""
    with tracking_errors(f"closing run {run_id}"):
        client().set_tag(run_id, "seqtrack.resumed_by", resumed_by)
        if client().get_run(run_id).info.status == "RUNNING":
            client().set_terminated(run_id, status="KILLED")

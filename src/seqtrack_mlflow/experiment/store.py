"""The MLflow tracking store: one client per URI, one-line store errors, the sqlite store's
creation lock, and the experiment runs go to."""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.parse
from pathlib import Path
from typing import Iterator

import mlflow
from filelock import FileLock
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from seqtrack_mlflow.errors import TrackingError
from seqtrack_mlflow.names import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

log = logging.getLogger(__name__)

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
    return mlflow.get_tracking_uri()


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


def prepare_store() -> None:
    """Create (and migrate) a local sqlite store under a file lock beside it.

    Two processes opening a brand-new sqlite store race in MLflow's schema creation (alembic
    CommandError); the lock makes the first create it and the second find it done."""
    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///"):
        return
    db = Path(urllib.parse.unquote(uri[len("sqlite:///"):]))
    with tracking_errors("preparing the sqlite store"):
        db.parent.mkdir(parents=True, exist_ok=True)
        # filelock: an OS lock (flock on POSIX, msvcrt on Windows) released when the holder exits
        with FileLock(db.with_name(db.name + ".lock")):
            client().search_experiments(max_results=1)


def mark_experiment(exp_id: str) -> None:
    """Tag the experiment runs are written to as model training (mlflow.experimentKind), so
    MLflow 3's UI opens its model-training pages; an experiment that has a kind keeps it."""
    with tracking_errors("tagging the experiment"):
        if EXPERIMENT_KIND_TAG not in (client().get_experiment(exp_id).tags or {}):
            client().set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def experiment_id(name: str = "") -> str:
    """The experiment runs go to and lookups search: `name` if given (it must exist), else
    MLFLOW_EXPERIMENT_NAME, else MLFLOW_EXPERIMENT_ID, else Default."""
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME", "")
    with tracking_errors("looking up the experiment"):
        if name:
            exp = client().get_experiment_by_name(name)
            if exp is None:
                raise TrackingError(f"experiment {name!r} not found in {mlflow.get_tracking_uri()}")
            return exp.experiment_id
        exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID", "")
        if exp_id:
            try:
                return client().get_experiment(exp_id).experiment_id
            except MlflowException:
                raise TrackingError(f"experiment id {exp_id!r} (MLFLOW_EXPERIMENT_ID) not found in "
                                    f"{mlflow.get_tracking_uri()}") from None
        exp = client().get_experiment_by_name("Default")
        return exp.experiment_id if exp is not None else "0"

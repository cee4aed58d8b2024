"""The MLflow tracking store: one client per URI, one-line store errors, the sqlite store's
creation lock, bounded retries while a sqlite store is locked, the HTTP timeouts of a tracking
server, and the experiment runs go to."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
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
        with tracking_errors("opening the tracking store"):  # a damaged mlflow.db fails here
            made = MlflowClient(uri)
            if uri.startswith("sqlite:"):  # the store is opened lazily: open it inside the guard
                made.search_experiments(max_results=1)
        _CLIENTS[uri] = made
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
    from sqlalchemy.exc import SQLAlchemyError  # a damaged mlflow.db raises these unwrapped

    try:
        yield
    except (MlflowException, OSError, SQLAlchemyError) as exc:  # requests' ConnectionError is an OSError
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


# Seconds a write to a locked sqlite store is retried (another process holds its write lock:
# MLflow's own busy timeout gives up after 20 s) before one error line; SEQTRACK_STORE_RETRY_SECONDS
# overrides it.
STORE_RETRY_SECONDS = 300.0
_RETRY_MAX_SLEEP = 30.0


def _locked(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


def retry_locked(action: str, fn):
    """`fn()` under `tracking_errors(action)`, retried with backoff while the sqlite store reports
    "database is locked", for at most STORE_RETRY_SECONDS; then one TrackingError line."""
    limit = float(os.environ.get("SEQTRACK_STORE_RETRY_SECONDS", STORE_RETRY_SECONDS))
    deadline, delay, warned = time.monotonic() + limit, 1.0, False
    while True:
        try:
            with tracking_errors(action):
                return fn()
        except TrackingError as exc:
            if not _locked(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise TrackingError(f"MLflow tracking at {tracking_uri()} stayed locked by another "
                                    f"process for {limit:.0f} s while {action}; stop that process (or use a "
                                    "tracking server) and resume this run") from None
            if not warned:
                log.warning("the tracking store is locked by another process while %s: retrying for up to "
                            "%.0f s", action, limit)
                warned = True
            time.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_SLEEP)


# An unreachable tracking server is reported within about a minute: MLflow's defaults (120 s a
# request, 7 retries with backoff) take minutes per call. Set unless the user set them.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "15", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}


def set_http_defaults() -> None:
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


set_http_defaults()  # every process that talks to a tracking store does so through this module


def prepare_store() -> None:
    """Create (and migrate) a new tracking database once, whichever process comes first.

    Two processes opening a brand-new database race in MLflow's schema creation (sqlite: an
    alembic CommandError; PostgreSQL: a duplicate-key error on the first CREATE TABLE). A lock
    makes the first create it and the others find it done: for sqlite a file lock beside the
    file; for PostgreSQL, whose clients may be on several machines, an advisory lock held by
    the database itself. Other stores (a tracking server, which made its schema at start) need none."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        db = Path(urllib.parse.unquote(uri[len("sqlite:///"):]))
        with tracking_errors("preparing the sqlite store"):
            db.parent.mkdir(parents=True, exist_ok=True)
            # filelock: an OS lock (flock on POSIX, msvcrt on Windows) released when the holder exits
            with FileLock(db.with_name(db.name + ".lock")):
                client().search_experiments(max_results=1)
    elif uri.startswith("postgresql"):
        with tracking_errors("preparing the PostgreSQL store"), _postgres_lock(uri):
            client().search_experiments(max_results=1)


def mark_experiment(exp_id: str) -> None:
    """Tag the experiment runs are written to as model training (mlflow.experimentKind), so
    MLflow 3's UI opens its model-training pages; an experiment that has a kind keeps it."""
    with tracking_errors("tagging the experiment"):
        if EXPERIMENT_KIND_TAG not in (client().get_experiment(exp_id).tags or {}):
            client().set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


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


def experiment_id(name: str = "", create: bool = False) -> str:
    """The experiment runs go to and lookups search: `name` if given (it must exist, or is
    created when `create`), else MLFLOW_EXPERIMENT_NAME, else MLFLOW_EXPERIMENT_ID, else Default."""
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME", "")
    with tracking_errors("looking up the experiment"):
        if name:
            exp = client().get_experiment_by_name(name)
            if exp is None and create:
                try:
                    log.info("creating MLflow experiment %r", name)
                    return client().create_experiment(name)
                except MlflowException:  # another process created it meanwhile
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

"""Every `huggingface_hub` call of the project lives here; other modules call these wrappers.

- Endpoint: the `endpoint` argument, else `SEQTRACK_HF_ENDPOINT`, else `HF_ENDPOINT`, read at
  call time (huggingface_hub itself reads HF_ENDPOINT only once, at import), else huggingface.co.
- Token: the `token` argument, else `HF_TOKEN`, else the `hf auth login` token
  (`huggingface_hub.get_token()`). Uploads check for it before sending anything.
- Errors: every client error (HTTP status, repo/revision/file not found, connection lost) is
  turned into `HubError` with one clear line that never contains the token: `_scrub` removes it
  from any text taken from the client or the server.
- Uploads are one commit (`HfApi.create_commit`), whatever the transport (Xet or plain LFS).
  The client compares its local hashes with the `oid`s the Hub reports for the same paths and
  drops unchanged files, so re-uploading identical files sends no bytes and makes no commit.
"""

from __future__ import annotations

import logging
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub import get_token as _hf_get_token
from huggingface_hub.errors import (
    EntryNotFoundError,  # RemoteEntryNotFoundError and its local twin
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from seqtrack_mlflow.errors import HubError

log = logging.getLogger(__name__)

try:  # the HTTP library under huggingface_hub 2.x (1.x used httpx, 0.x requests)
    from httpx2 import HTTPError as _TransportError
except ImportError:  # pragma: no cover - older huggingface_hub
    try:
        from httpx import HTTPError as _TransportError
    except ImportError:
        from requests import RequestException as _TransportError

DEFAULT_ENDPOINT = "https://huggingface.co"
ENDPOINT_ENV = ("SEQTRACK_HF_ENDPOINT", "HF_ENDPOINT")
_TOKEN_SHAPE = re.compile(r"\bhf_[A-Za-z0-9]{16,}")
NO_TOKEN = "no Hugging Face token: set HF_TOKEN=... or run `hf auth login`"


class RemoteFileMissing(HubError):
    """The repo and revision exist but the file does not."""


@dataclass(frozen=True)
class UploadResult:
    """What `upload_folder` did."""

    repo_url: str
    commit: str
    """The commit now at the head of the branch (the new one, or the unchanged head)."""
    commit_url: str
    changed: bool
    """False when every file was already on the Hub with the same content (no commit made)."""
    files: list[str] = field(default_factory=list)
    """Paths in the repo that were part of the upload (changed or not)."""


# -- configuration ----------------------------------------------------------------------------
def resolve_endpoint(endpoint: str | None = None) -> str:
    """The Hub base URL: argument, SEQTRACK_HF_ENDPOINT, HF_ENDPOINT, huggingface.co."""
    for value in (endpoint, *(os.environ.get(name) for name in ENDPOINT_ENV)):
        if value and value.strip():
            return value.strip().rstrip("/")
    return DEFAULT_ENDPOINT


def get_token(token: str | None = None, required: bool = True) -> str | None:
    """The token to use: argument, HF_TOKEN, or the saved login. Sends no request.

    Raises HubError (before any network call) when `required` and there is none.
    """
    token = (token or "").strip() or (_hf_get_token() or "").strip() or None
    if token is None and required:
        raise HubError(NO_TOKEN)
    return token


def repo_url(repo_id: str, endpoint: str | None = None, repo_type: str = "model") -> str:
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    return f"{resolve_endpoint(endpoint)}/{prefix}{repo_id}"


def _api(endpoint: str | None, token: str | None) -> HfApi:
    # token=False (not None) when there is none, so the client does not look one up by itself.
    return HfApi(endpoint=resolve_endpoint(endpoint), token=token or False)


# -- errors -----------------------------------------------------------------------------------
def _scrub(text: str, token: str | None) -> str:
    """`text` with the token, and anything shaped like a Hugging Face token, replaced by ***."""
    if token:
        text = text.replace(token, "***")
    return _TOKEN_SHAPE.sub("***", text)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _server_message(exc: HfHubHTTPError) -> str:
    """The server's own error text (X-Error-Message or the JSON 'error'), if any."""
    message = getattr(exc, "server_message", None) or ""
    return message.strip().splitlines()[0] if message.strip() else ""


@contextmanager
def _hub_errors(action: str, token: str | None, endpoint: str | None) -> Iterator[None]:
    """Turn any client failure inside the block into one HubError line without the token."""
    where = resolve_endpoint(endpoint)
    try:
        yield
    except HubError:
        raise
    except RepositoryNotFoundError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise HubError(_scrub(f"{action}: repository not found on {where} (HTTP {status}); check the "
                              f"repo id and that your token can see it", token)) from None
    except RevisionNotFoundError:
        raise HubError(_scrub(f"{action}: revision not found on {where}", token)) from None
    except LocalEntryNotFoundError as exc:
        # The client could not reach the Hub (offline, connection refused, HF_HUB_OFFLINE=1)
        # and has no cached copy: that is not "file not found", say what it is.
        cause = exc.__cause__ or exc
        raise HubError(_scrub(f"{action}: could not reach {where} ({type(cause).__name__}: "
                              f"{_first_line(cause)}) and the file is not in the local cache; check "
                              f"the network, HF_HUB_OFFLINE and SEQTRACK_HF_ENDPOINT", token)) from None
    except EntryNotFoundError:
        raise RemoteFileMissing(_scrub(f"{action}: file not found on {where}", token)) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        detail = _server_message(exc) or _first_line(exc)
        if status == 401:
            message = (f"{action}: the Hub at {where} rejected the token (HTTP 401: {detail}); "
                       f"set a valid HF_TOKEN or run `hf auth login`")
        elif status == 403:
            message = (f"{action}: forbidden (HTTP 403: {detail}); the token needs write access "
                       f"to this repo or namespace")
        else:
            message = f"{action}: HTTP {status} from {where}: {detail}"
        raise HubError(_scrub(message, token)) from None
    except (_TransportError, OSError, RuntimeError) as exc:
        # Transport failures (connection refused/reset, server gone mid-request). The client
        # wraps LFS upload failures in RuntimeError("Error while uploading ...") from the cause.
        cause = exc.__cause__ or exc
        raise HubError(_scrub(f"{action}: connection to {where} failed ({type(cause).__name__}: "
                              f"{_first_line(cause)}); rerun the same command: files already on "
                              f"the Hub are not sent again", token)) from None
    except ValueError as exc:  # client-side validation, e.g. README metadata refused
        raise HubError(_scrub(f"{action}: {_first_line(exc)}", token)) from None


# -- repositories -----------------------------------------------------------------------------
def create_repo(repo_id: str, token: str | None, endpoint: str | None = None, private: bool = False,
                repo_type: str = "model") -> str:
    """Create the repo if it does not exist (an existing one is kept as is). Returns its URL."""
    token = get_token(token)
    with _hub_errors(f"create repo {repo_id}", token, endpoint):
        url = _api(endpoint, token).create_repo(repo_id, repo_type=repo_type, private=private,
                                                exist_ok=True)
    return str(url)


def head_commit(repo_id: str, token: str | None = None, endpoint: str | None = None,
                revision: str | None = None, repo_type: str = "model") -> str | None:
    """The commit at `revision` (default main), or None if the repo or branch does not exist."""
    with _hub_errors(f"read {repo_id}", token, endpoint):
        try:
            info = _api(endpoint, token).repo_info(repo_id, repo_type=repo_type, revision=revision)
        except (RepositoryNotFoundError, RevisionNotFoundError):
            return None
    return info.sha


def list_repo_files(repo_id: str, token: str | None = None, endpoint: str | None = None,
                    revision: str | None = None, repo_type: str = "model") -> list[str]:
    """Paths of all files of the repo at `revision`."""
    with _hub_errors(f"list files of {repo_id}", token, endpoint):
        return sorted(_api(endpoint, token).list_repo_files(repo_id, repo_type=repo_type,
                                                            revision=revision))


def remote_sha256(repo_id: str, token: str | None = None, endpoint: str | None = None,
                  revision: str | None = None, repo_type: str = "model") -> dict[str, str | None]:
    """{path: sha256 of an LFS file, None for a regular (git) file} at `revision`."""
    with _hub_errors(f"list files of {repo_id}", token, endpoint):
        items = _api(endpoint, token).list_repo_tree(repo_id, repo_type=repo_type, revision=revision,
                                                     recursive=True)
        return {item.path: (item.lfs.sha256 if item.lfs else None)
                for item in items if hasattr(item, "blob_id")}


def upload_folder(repo_id: str, folder: str | Path, token: str | None, endpoint: str | None = None,
                  private: bool = False, revision: str | None = None,
                  commit_message: str = "Upload with seqtrack-mlflow",
                  commit_description: str | None = None, create: bool = True) -> UploadResult:
    """Upload every file under `folder` (paths kept) in ONE commit to `revision` (default main).

    Creates the repo (and the branch) if needed. Files already on the Hub with identical content
    are skipped by the client; when nothing changed no commit is made and `changed` is False.
    """
    token = get_token(token)
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise HubError(f"nothing to upload: {folder} holds no files")
    url = repo_url(repo_id, endpoint)
    api = _api(endpoint, token)
    action = f"upload to {repo_id}"
    with _hub_errors(action, token, endpoint):
        if create:
            url = str(api.create_repo(repo_id, private=private, exist_ok=True))
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        before = head_commit(repo_id, token, endpoint, revision)
        operations = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(),
                                         path_or_fileobj=str(p)) for p in files]
        started = time.monotonic()
        info = api.create_commit(repo_id, operations, commit_message=commit_message,
                                 commit_description=commit_description, revision=revision)
    changed = info.oid != before
    log.debug("commit %s after %.1f s (changed: %s)", info.oid, time.monotonic() - started, changed)
    return UploadResult(repo_url=url, commit=info.oid, commit_url=str(info.commit_url),
                        changed=changed, files=[op.path_in_repo for op in operations])


# -- downloads --------------------------------------------------------------------------------
def download_file(repo_id: str, filename: str, repo_type: str, dest_dir: str | Path,
                  token: str | None = None, endpoint: str | None = None,
                  revision: str | None = None) -> Path:
    """Download one file to `dest_dir/filename` (hf_hub_download into a local folder).

    A progress bar is shown; an interrupted download is resumed (the partial file waits under
    `dest_dir/.cache/huggingface/`); a file already there at the same commit is not re-fetched.
    Never downloads anything but `filename`.
    """
    if not filename or filename.endswith("/"):
        raise HubError(f"download from {repo_id}: an explicit file name is required, got {filename!r}")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    action = f"download {filename} from {repo_url(repo_id, endpoint, repo_type)}" + (
        f" at {revision}" if revision else "")
    with _hub_errors(action, token, endpoint):
        path = hf_hub_download(repo_id, filename, repo_type=repo_type, revision=revision,
                               local_dir=str(dest_dir), endpoint=resolve_endpoint(endpoint),
                               token=token or False)
    return Path(path)


def resolve_commit(repo_id: str, revision: str | None = None, repo_type: str = "model",
                   token: str | None = None, endpoint: str | None = None) -> str:
    """The commit sha that `revision` (branch, tag or sha; default main) names now: one request.

    Downloads then ask for that sha, so every file of one download comes from the same commit
    even if the branch moves meanwhile.
    """
    rev = revision or "main"
    with _hub_errors(f"resolve {rev} of {repo_url(repo_id, endpoint, repo_type)}", token, endpoint):
        info = _api(endpoint, token).repo_info(repo_id, repo_type=repo_type, revision=rev)
    if not info.sha:
        raise HubError(f"resolve {rev} of {repo_id}: the Hub reported no commit")
    return info.sha


def offline() -> bool:
    """True under HF_HUB_OFFLINE=1: the client then answers from its local files only."""
    from huggingface_hub import constants
    return bool(constants.HF_HUB_OFFLINE)

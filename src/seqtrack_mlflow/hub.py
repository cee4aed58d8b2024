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
  `upload_folder(..., delete_others=True)` also deletes, in that same commit, every file of the
  branch that the folder does not hold (except .gitattributes): the branch then holds exactly
  the folder.
- Transport: the client uploads through Xet (hf-xet) when it is installed. A Hub that refuses
  Xet (its xet-write-token endpoint answers 4xx/5xx, as self-hosted or older Hubs and the test
  fake do) makes `upload_folder` log one warning and redo the same commit over plain LFS
  (huggingface_hub 2.4 itself has no such fallback). HF_HUB_DISABLE_XET=1 goes to LFS directly.
The model card is rendered with huggingface_hub's `ModelCard` in `publish.card`; the Hub checks
its metadata (POST /api/validate-yaml) in the commit that uploads README.md.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import huggingface_hub.constants as _hf_constants
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
)
from huggingface_hub import get_token as _hf_get_token
from huggingface_hub.errors import (
    EntryNotFoundError,  # RemoteEntryNotFoundError and its local twin
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from seqtrack_mlflow.errors import HubError, first_line

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
    deleted: list[str] = field(default_factory=list)
    """Paths deleted in the same commit (delete_others=True): files the folder did not hold."""
    transport: str = "xet"
    """'xet', or 'lfs' when Xet was disabled or refused by the Hub."""


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
                              f"{first_line(cause)}) and the file is not in the local cache; check "
                              f"the network, HF_HUB_OFFLINE and SEQTRACK_HF_ENDPOINT", token)) from None
    except EntryNotFoundError:
        raise RemoteFileMissing(_scrub(f"{action}: file not found on {where}", token)) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        detail = _server_message(exc) or first_line(exc)
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
                              f"{first_line(cause)}); rerun the same command: files already on "
                              f"the Hub are not sent again", token)) from None
    except ValueError as exc:  # client-side validation, e.g. README metadata refused
        # The Hub's reasons follow on "- ..." lines: keep them, on the one line.
        text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise HubError(_scrub(f"{action}: {text or type(exc).__name__}", token)) from None


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
                  commit_description: str | None = None, create: bool = True,
                  delete_others: bool = False, keep: tuple[str, ...] = (".gitattributes",)) -> UploadResult:
    """Upload every file under `folder` (paths kept) in ONE commit to `revision` (default main).

    Creates the repo (and the branch) if needed. Files already on the Hub with identical content
    are skipped by the client; when nothing changed (and nothing is deleted) no commit is made
    and `changed` is False. `delete_others`: the same commit deletes every file of the branch
    that `folder` does not hold, except the paths in `keep`.
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
        paths = [p.relative_to(folder).as_posix() for p in files]
        deleted: list[str] = []
        if delete_others and before is not None:
            remote = api.list_repo_files(repo_id, revision=before)
            deleted = sorted(set(remote) - set(paths) - set(keep))

        def operations() -> list:
            # Fresh objects per attempt: the client records upload state on them.
            return ([CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(p)) for rel, p in zip(paths, files)]
                    + [CommitOperationDelete(path_in_repo=rel) for rel in deleted])

        started = time.monotonic()
        # parent_commit: if someone else committed since `before`, fail instead of deleting
        # files we never saw.
        kwargs = {"commit_message": commit_message, "commit_description": commit_description,
                  "revision": revision, "parent_commit": before if deleted else None}
        transport = "lfs" if not _xet_enabled() else "xet"
        try:
            info = api.create_commit(repo_id, operations(), **kwargs)
        except OSError as exc:  # hf-xet raises ConnectionError (an OSError)
            if transport != "xet" or not _is_xet_refusal(exc):
                raise
            log.warning("the Hub at %s refused Xet storage (%s); uploading over plain LFS instead",
                        resolve_endpoint(endpoint), _scrub(first_line(exc), token))
            transport = "lfs"
            with _xet_disabled():
                info = api.create_commit(repo_id, operations(), **kwargs)
    changed = info.oid != before
    log.debug("commit %s after %.1f s (changed: %s, transport %s)", info.oid,
              time.monotonic() - started, changed, transport)
    return UploadResult(repo_url=url, commit=info.oid, commit_url=str(info.commit_url),
                        changed=changed, files=paths, deleted=deleted, transport=transport)


# -- Xet -> LFS fallback ----------------------------------------------------------------------
_XET_LOCK = threading.Lock()


def _xet_enabled() -> bool:
    from huggingface_hub.utils import is_package_available

    return not _hf_constants.HF_HUB_DISABLE_XET and is_package_available("hf_xet")


def _is_xet_refusal(exc: BaseException) -> bool:
    """hf-xet reports a refused token request as ConnectionError('... xet-write-token ...');
    the client has no fallback of its own (huggingface_hub 2.4 _commit_api._upload_files)."""
    seen: BaseException | None = exc
    while seen is not None:
        if "xet-write-token" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def _xet_disabled() -> Iterator[None]:
    """The client reads constants.HF_HUB_DISABLE_XET at every upload; flip it for one call.
    The lock keeps a concurrent background upload from restoring it half way."""
    with _XET_LOCK:
        previous = _hf_constants.HF_HUB_DISABLE_XET
        _hf_constants.HF_HUB_DISABLE_XET = True
        try:
            yield
        finally:
            _hf_constants.HF_HUB_DISABLE_XET = previous


# -- tags -------------------------------------------------------------------------------------
def tag_commit(repo_id: str, tag: str, commit: str, token: str | None, endpoint: str | None = None,
               message: str | None = None) -> bool:
    """Point git tag `tag` at `commit` (created, or moved when it points elsewhere).

    Returns True when the tag was created or moved, False when it already pointed there.
    """
    token = get_token(token)
    api = _api(endpoint, token)
    with _hub_errors(f"tag {repo_id} {tag}", token, endpoint):
        current = {t.name: t.target_commit for t in api.list_repo_refs(repo_id).tags}
        if current.get(tag) == commit:
            return False
        if tag in current:
            api.delete_tag(repo_id, tag=tag)
        api.create_tag(repo_id, tag=tag, revision=commit, tag_message=message)
    return True


def list_tags(repo_id: str, token: str | None = None, endpoint: str | None = None) -> dict[str, str]:
    """{tag: commit} of the repo."""
    with _hub_errors(f"list tags of {repo_id}", token, endpoint):
        return {t.name: t.target_commit for t in _api(endpoint, token).list_repo_refs(repo_id).tags}


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


def cached_file(repo_id: str, filename: str, revision: str | None = None, token: str | None = None,
                endpoint: str | None = None, repo_type: str = "model", cache_dir: str | Path | None = None,
                force_download: bool = False, local_files_only: bool = False) -> Path:
    """One file of a repo in the Hugging Face cache (HF_HOME, or `cache_dir`), downloaded if
    needed: what `from_pretrained` reads. A missing file raises RemoteFileMissing."""
    token = get_token(token, required=False)
    action = f"download {filename} from {repo_url(repo_id, endpoint, repo_type)}" + (
        f" at {revision}" if revision else "")
    with _hub_errors(action, token, endpoint):
        return Path(hf_hub_download(repo_id, filename, repo_type=repo_type, revision=revision,
                                    endpoint=resolve_endpoint(endpoint), token=token or False,
                                    cache_dir=cache_dir, force_download=force_download,
                                    local_files_only=local_files_only))


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

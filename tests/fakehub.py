"""A fake Hugging Face Hub on 127.0.0.1 that the real `huggingface_hub` client can talk to.

Tests run the real client (HfApi / hf_hub_download, huggingface_hub 2.x, plain-LFS path, i.e.
HF_HUB_DISABLE_XET=1) against this server by passing `endpoint=hub.url`. No test reaches the
internet. It implements the requests the client actually sends (read from its source:
hf_api.py, _commit_api.py, lfs.py, file_download.py):

    POST /api/repos/create                          409 + {"url"} when it exists (exist_ok)
    POST /api/validate-yaml                         README.md front matter check before a commit:
                                                    YAML mapping, and the Hub's rules for license,
                                                    tags, datasets, library_name and model-index
    GET  /api/{models|datasets}/{id}/refs           branches and tags
    POST /api/{models|datasets}/{id}/tag/{rev}      create a tag (409 when it exists)
    DELETE /api/{models|datasets}/{id}/tag/{tag}    delete a tag
    GET  /api/{models|datasets}/{id}/xet-write-token/{rev}   refused (404, "Xet storage is not
                                                    enabled"): this fake serves no Xet CAS, so a
                                                    client with hf-xet must fall back to LFS
    GET  /api/{models|datasets}/{id}[/revision/{rev}]   repo info: sha, siblings, private
    GET  /api/{models|datasets}/{id}/tree/{rev}[/{path}]  listing (?recursive=1), one page
    POST /api/{models|datasets}/{id}/preupload/{rev}    uploadMode lfs|regular + remote oid
    POST /api/{models|datasets}/{id}/branch/{branch}    create a branch (409 when it exists)
    POST /api/{models|datasets}/{id}/commit/{rev}       NDJSON header/file/lfsFile/deleted*
    POST /[datasets/]{id}.git/info/lfs/objects/batch    LFS batch: upload + verify actions
    PUT  /_lfs/upload/...?sig=...                       the bytes (a "presigned URL": no token)
    POST /_lfs/verify/...                               LFS verify
    HEAD/GET /[datasets/]{id}/resolve/{rev}/{path}      X-Repo-Commit, ETag, X-Linked-Etag,
                                                        X-Linked-Size, Content-Length, Range

Errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound) like the real Hub,
so the client raises its own typed errors. A wrong token gets 401 with X-Error-Message
"Invalid credentials in Authorization header" (as the real Hub answers); a missing token is
allowed for public reads only. Every request is recorded (method, path, whether an
Authorization header was sent) so a test can assert that no request was made.

Fault injection: `hub.drop("lfs_put" | "commit" | "download", times=N)` closes the socket in
the middle of the next N such requests (half the upload read, the commit body read but not
applied, or half the file sent).

Empty commits: the real Hub creates a commit even when the tree does not change (see
huggingface/huggingface_hub#1411); the client avoids that itself by comparing the `oid`s the
preupload endpoint returns with its local hashes. This fake does the same as the Hub, so a test
of "nothing changed" really tests the client-side no-op detection.

Every README.md front matter that passed /api/validate-yaml is kept in `hub.validated`
(parsed), so a test can check what the Hub was shown.

Repository state (branches, tags, commits, trees) lives in memory; file bytes live in a temp folder,
content-addressed by sha256.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import secrets
import socket
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

ACCEPTED_TOKEN = "hf_FAKEtokenACCEPTED0123456789abcdef"
LASOT_REPO = "l-lt/LaSOT"
LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub stores files >= 10 MiB in LFS
# The Hub's default .gitattributes (abridged): these suffixes always go to LFS.
LFS_SUFFIXES = (".7z", ".arrow", ".bin", ".bz2", ".ckpt", ".gz", ".h5", ".joblib", ".model",
                ".msgpack", ".npy", ".npz", ".onnx", ".parquet", ".pb", ".pickle", ".pkl", ".pt",
                ".pth", ".rar", ".safetensors", ".tar", ".tflite", ".tgz", ".xz", ".zip", ".zst")
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports for regular files)."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class Entry:
    """A file in a commit's tree."""
    sha256: str
    size: int
    lfs: bool
    git_oid: str  # blob oid (regular) or the oid of the LFS pointer file


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    tree: dict[str, Entry]
    date: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    lfs_objects: set[str] = field(default_factory=set)  # sha256 uploaded through LFS


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    auth: bool  # an Authorization header was sent


class HubHTTPError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class FakeHub:
    """The server and its state. Use the `fake_hub` fixture, or `start()` / `stop()`."""

    def __init__(self, storage: Path, token: str | None = ACCEPTED_TOKEN):
        self.storage = Path(storage)
        (self.storage / "blobs").mkdir(parents=True, exist_ok=True)
        self.token = token  # None: any token is accepted
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[Request] = []
        self.validated: list[dict] = []  # front matter of every README.md that passed validation
        self.drops: dict[str, int] = {"lfs_put": 0, "commit": 0, "download": 0}
        self.lock = threading.RLock()
        self._sig = secrets.token_hex(8)
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            pass
        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- test helpers ---------------------------------------------------------------------------
    def drop(self, what: str, times: int = 1) -> None:
        """Cut the connection during the next `times` requests of kind `what`."""
        assert what in self.drops, f"unknown drop kind {what!r}, expected one of {list(self.drops)}"
        self.drops[what] = times

    def clear_requests(self) -> None:
        with self.lock:
            self.requests.clear()

    def requests_to(self, method: str | None = None, contains: str = "") -> list[Request]:
        return [r for r in self.requests
                if (method is None or r.method == method) and contains in r.path]

    def create(self, repo_id: str, repo_type: str = "model", private: bool = False) -> Repo:
        with self.lock:
            key = (repo_type, repo_id)
            if key in self.repos:
                return self.repos[key]
            repo = self.repos[key] = Repo(repo_type, repo_id, private)
            # Like the Hub, a new repo starts with a commit holding .gitattributes.
            self._commit(repo, "main", {".gitattributes": self._entry(GITATTRIBUTES, lfs=False)},
                         "initial commit")
            return repo

    def add_files(self, repo_id: str, files: dict[str, bytes], repo_type: str = "model",
                  message: str = "add files") -> str:
        """Commit files directly (no HTTP); LFS by the Hub's rules. Returns the commit oid."""
        with self.lock:
            repo = self.create(repo_id, repo_type)
            tree = dict(self.tree(repo_id, repo_type))
            for path, data in files.items():
                tree[path] = self._entry(data, lfs=self.is_lfs(path, len(data), data[:512]))
                if tree[path].lfs:
                    repo.lfs_objects.add(tree[path].sha256)
            return self._commit(repo, "main", tree, message).oid

    def head(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> str:
        return self._resolve(self._repo(repo_type, repo_id), revision).oid

    def tags(self, repo_id: str, repo_type: str = "model") -> dict[str, str]:
        """{tag: commit oid}."""
        return dict(self._repo(repo_type, repo_id).tags)

    def tree(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, Entry]:
        return self._resolve(self._repo(repo_type, repo_id), revision).tree

    def read(self, repo_id: str, path: str, repo_type: str = "model", revision: str = "main") -> bytes:
        return self.blob_path(self.tree(repo_id, repo_type, revision)[path].sha256).read_bytes()

    def history(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[Commit]:
        """Commits from the head back to the first."""
        repo = self._repo(repo_type, repo_id)
        commit, out = self._resolve(repo, revision), []
        while commit is not None:
            out.append(commit)
            commit = repo.commits.get(commit.parent) if commit.parent else None
        return out

    def blob_path(self, sha256: str) -> Path:
        return self.storage / "blobs" / sha256

    @staticmethod
    def is_lfs(path: str, size: int, sample: bytes) -> bool:
        """The Hub's rule, simplified: .gitattributes suffixes, binary content, or >= 10 MiB."""
        return size > 0 and (path.endswith(LFS_SUFFIXES) or size >= LFS_THRESHOLD or b"\x00" in sample)

    # -- internals ------------------------------------------------------------------------------
    def _entry(self, data: bytes, lfs: bool) -> Entry:
        sha = hashlib.sha256(data).hexdigest()
        target = self.blob_path(sha)
        if not target.exists():
            tmp = target.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(data)
            tmp.replace(target)
        oid = git_blob_oid(lfs_pointer(sha, len(data))) if lfs else git_blob_oid(data)
        return Entry(sha, len(data), lfs, oid)

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubHTTPError(404, "Repository not found", "RepoNotFound")
        return repo

    def _resolve(self, repo: Repo, revision: str) -> Commit:
        revision = unquote(revision)
        oid = (repo.branches.get(revision) or repo.tags.get(revision)
               or (revision if revision in repo.commits else None))
        if oid is None:
            raise HubHTTPError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[oid]

    def _commit(self, repo: Repo, branch: str, tree: dict[str, Entry], message: str) -> Commit:
        self._counter += 1
        parent = repo.branches.get(branch)
        digest = hashlib.sha1(json.dumps([parent, message, self._counter, time.time(),
                                          sorted((p, e.git_oid) for p, e in tree.items())]).encode())
        commit = Commit(digest.hexdigest(), parent, message, tree,
                        time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()))
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit


class _Handler(BaseHTTPRequestHandler):
    """One request. Routes are (method, regex) -> method name; see the module docstring."""

    hub: FakeHub
    protocol_version = "HTTP/1.1"
    REPO = r"(?P<ns>[^/]+)/(?P<name>[^/]+?)"
    ROUTES = [
        ("POST", r"/api/repos/create", "create_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", rf"/api/(?P<kind>models|datasets)/{REPO}/refs", "list_refs"),
        ("POST", rf"/api/(?P<kind>models|datasets)/{REPO}/tag/(?P<rev>[^/]+)", "create_tag"),
        ("DELETE", rf"/api/(?P<kind>models|datasets)/{REPO}/tag/(?P<tag>[^/]+)", "delete_tag"),
        ("GET", rf"/api/(?P<kind>models|datasets)/{REPO}/xet-(?P<which>read|write)-token(?:/(?P<rev>[^/]+))?",
         "xet_token"),
        ("GET", rf"/api/(?P<kind>models|datasets)/{REPO}(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
        ("GET", rf"/api/(?P<kind>models|datasets)/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?",
         "list_tree"),
        ("POST", rf"/api/(?P<kind>models|datasets)/{REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", rf"/api/(?P<kind>models|datasets)/{REPO}/branch/(?P<branch>[^/]+)", "create_branch"),
        ("POST", rf"/api/(?P<kind>models|datasets)/{REPO}/commit/(?P<rev>[^/]+)", "commit"),
        ("POST", rf"/(?P<prefix>datasets/)?{REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", r"/_lfs/upload/(?P<kind>models|datasets)/(?P<ns>[^/]+)/(?P<name>[^/]+)/(?P<oid>[0-9a-f]{64})",
         "lfs_put"),
        ("POST", r"/_lfs/verify/(?P<kind>models|datasets)/(?P<ns>[^/]+)/(?P<name>[^/]+)", "lfs_verify"),
        ("GET", rf"/(?P<prefix>datasets/)?{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
        ("HEAD", rf"/(?P<prefix>datasets/)?{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ]

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature; keep test output quiet
        pass

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    # -- plumbing -------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        auth = self.headers.get("Authorization")
        with self.hub.lock:
            self.hub.requests.append(Request(self.command, unquote(url.path), auth is not None))
        self._body: bytes | None = None
        try:
            for method, pattern, name in self.ROUTES:
                match = re.fullmatch(pattern, url.path)
                if method == self.command and match:
                    args = {k: unquote(v) if v is not None else None for k, v in match.groupdict().items()}
                    if name != "lfs_put":  # a dropped upload must not be read in full first
                        self._read_body()
                    getattr(self, "h_" + name)(**args)
                    return
            self._read_body()
            raise HubHTTPError(404, f"no route for {self.command} {url.path}")
        except HubHTTPError as exc:
            self._json({"error": exc.message}, exc.status,
                       {"X-Error-Code": exc.code, "X-Error-Message": exc.message})
        except _Dropped:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _read_body(self, limit: int | None = None) -> bytes:
        """The request body (Content-Length or chunked); at most `limit` bytes when given."""
        if self._body is not None:
            return self._body
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
                if limit is not None and sum(map(len, parts)) >= limit:
                    return b"".join(parts)
            data = b"".join(parts)
        else:
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length if limit is None else min(length, limit))
            if limit is not None:
                return data
        self._body = data
        return data

    def _json(self, obj, status: int = 200, headers: dict | None = None,
              content_type: str = "application/json") -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            if value is not None:
                self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _auth(self, required: bool) -> bool:
        """True when a valid token was sent. Wrong token: 401; none and required: 401."""
        header = self.headers.get("Authorization")
        if header is None:
            if required:
                raise HubHTTPError(401, "Invalid username or password.")
            return False
        token = header.removeprefix("Bearer ").strip()
        if self.hub.token is not None and token != self.hub.token:
            raise HubHTTPError(401, "Invalid credentials in Authorization header")
        return True

    def _repo(self, kind: str, ns: str, name: str, write: bool = False) -> Repo:
        authed = self._auth(required=write)
        repo = self.hub._repo(kind.rstrip("s"), f"{ns}/{name}")
        if repo.private and not authed:
            raise HubHTTPError(404, "Repository not found", "RepoNotFound")
        return repo

    def _take_drop(self, what: str) -> bool:
        with self.hub.lock:
            if self.hub.drops[what] > 0:
                self.hub.drops[what] -= 1
                return True
        return False

    # -- handlers -------------------------------------------------------------------------------
    def h_create_repo(self) -> None:
        self._auth(required=True)
        payload = json.loads(self._read_body() or b"{}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or 'fake-user'}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.hub.url}/{prefix}{repo_id}"
        with self.hub.lock:
            if (repo_type, repo_id) in self.hub.repos:
                raise_409 = {"error": f"You already created this {repo_type} repo", "url": url}
                self._json(raise_409, 409)
                return
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            self.hub.create(repo_id, repo_type, private=private)
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def h_validate_yaml(self) -> None:
        content = json.loads(self._read_body() or b"{}").get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.S)
        if match:
            try:
                meta = yaml.safe_load(match.group(1))
                if meta is not None and not isinstance(meta, dict):
                    raise yaml.YAMLError("metadata must be a mapping")
            except yaml.YAMLError as exc:
                self._json({"errors": [{"message": f"Invalid YAML: {exc}"}]}, 400)
                return
            errors = metadata_errors(meta or {})
            if errors:
                self._json({"errors": [{"message": e} for e in errors]}, 400)
                return
            with self.hub.lock:
                self.hub.validated.append(meta or {})
        self._json({"warnings": [], "errors": []})

    def h_list_refs(self, kind, ns, name) -> None:
        repo = self._repo(kind, ns, name)

        def ref(name: str, kind_: str, oid: str) -> dict:
            return {"name": name, "ref": f"refs/{kind_}/{name}", "targetCommit": oid}
        self._json({"branches": [ref(b, "heads", o) for b, o in sorted(repo.branches.items())],
                    "converts": [], "tags": [ref(t, "tags", o) for t, o in sorted(repo.tags.items())]})

    def h_create_tag(self, kind, ns, name, rev) -> None:
        repo = self._repo(kind, ns, name, write=True)
        tag = json.loads(self._read_body() or b"{}").get("tag", "")
        with self.hub.lock:
            if not tag:
                raise HubHTTPError(400, "tag name is required")
            if tag in repo.tags:
                raise HubHTTPError(409, f"Tag {tag} already exists")
            repo.tags[tag] = self.hub._resolve(repo, rev).oid
        self._json({})

    def h_delete_tag(self, kind, ns, name, tag) -> None:
        repo = self._repo(kind, ns, name, write=True)
        with self.hub.lock:
            if repo.tags.pop(tag, None) is None:
                raise HubHTTPError(404, f"Invalid rev id: {tag}", "RevisionNotFound")
        self._json({})

    def h_xet_token(self, kind, ns, name, which, rev=None) -> None:
        self._repo(kind, ns, name, write=which == "write")
        raise HubHTTPError(404, "Xet storage is not enabled on this Hub")

    def h_repo_info(self, kind, ns, name, rev=None) -> None:
        repo = self._repo(kind, ns, name)
        commit = self.hub._resolve(repo, rev or "main")
        siblings = [{"rfilename": p} for p in sorted(commit.tree)]
        info = {"id": repo.repo_id, "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
                "author": ns, "sha": commit.oid, "private": repo.private, "gated": False,
                "disabled": False, "lastModified": commit.date, "tags": [], "downloads": 0,
                "likes": 0, "siblings": siblings}
        if kind == "models":
            info["modelId"] = repo.repo_id
        self._json(info)

    def h_list_tree(self, kind, ns, name, rev, path=None) -> None:
        repo = self._repo(kind, ns, name)
        commit = self.hub._resolve(repo, rev)
        prefix = f"{path.strip('/')}/" if path else ""
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        files = {p: e for p, e in commit.tree.items() if p.startswith(prefix)}
        if path and not files:
            raise HubHTTPError(404, f"{path} does not exist at {rev}", "EntryNotFound")
        items, folders = [], set()
        for p, e in sorted(files.items()):
            rest = p[len(prefix):].split("/")
            for depth in range(1, len(rest)):
                folders.add(prefix + "/".join(rest[:depth]))
            if recursive or len(rest) == 1:
                item = {"type": "file", "oid": e.git_oid, "size": e.size, "path": p}
                if e.lfs:
                    item["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": 134}
                items.append(item)
        for folder in sorted(folders):
            if recursive or "/" not in folder[len(prefix):]:
                items.append({"type": "directory", "oid": git_blob_oid(folder.encode()), "path": folder})
        self._json(items)

    def h_preupload(self, kind, ns, name, rev) -> None:
        repo = self._repo(kind, ns, name, write=True)
        tree = self.hub._resolve(repo, rev).tree
        out = []
        for f in json.loads(self._read_body())["files"]:
            sample = base64.b64decode(f.get("sample", ""))
            lfs = FakeHub.is_lfs(f["path"], int(f.get("size", 0)), sample)
            remote = tree.get(f["path"])
            oid = None if remote is None else (remote.sha256 if remote.lfs else remote.git_oid)
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": False, "oid": oid})
        self._json({"files": out, "commitOid": self.hub._resolve(repo, rev).oid})

    def h_create_branch(self, kind, ns, name, branch) -> None:
        repo = self._repo(kind, ns, name, write=True)
        start = json.loads(self._read_body() or b"{}").get("startingPoint") or "main"
        with self.hub.lock:
            if branch in repo.branches:
                raise HubHTTPError(409, f"Reference already exists: refs/heads/{branch}")
            repo.branches[branch] = self.hub._resolve(repo, start).oid
        self._json({})

    def h_commit(self, kind, ns, name, rev) -> None:
        repo = self._repo(kind, ns, name, write=True)
        lines = [json.loads(line) for line in self._read_body().splitlines() if line.strip()]
        if self._take_drop("commit"):
            raise _Dropped()  # body received, connection lost before the commit is applied
        with self.hub.lock:
            head = self.hub._resolve(repo, rev)
            if rev not in repo.branches:
                raise HubHTTPError(400, f"Cannot commit to {rev}: not a branch")
            tree, message = dict(head.tree), "commit"
            for item in lines:
                key, value = item["key"], item["value"]
                if key == "header":
                    message = value.get("summary") or message
                    parent = value.get("parentCommit")
                    if parent and parent != head.oid:
                        raise HubHTTPError(412, "A commit has happened since. Please refresh and try again.")
                elif key == "file":
                    data = base64.b64decode(value["content"])
                    tree[value["path"]] = self.hub._entry(data, lfs=False)
                elif key == "lfsFile":
                    oid = value["oid"]
                    blob = self.hub.blob_path(oid)
                    if oid not in repo.lfs_objects or not blob.exists():
                        raise HubHTTPError(422, f"Your push was rejected because an LFS pointer pointed to "
                                                f"a file that does not exist ({value['path']})")
                    size = blob.stat().st_size
                    tree[value["path"]] = Entry(oid, size, True, git_blob_oid(lfs_pointer(oid, size)))
                elif key == "deletedFile":
                    if tree.pop(value["path"], None) is None:
                        raise HubHTTPError(404, f"A file with this name doesn't exist ({value['path']})",
                                           "EntryNotFound")
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    tree = {p: e for p, e in tree.items() if not p.startswith(folder)}
                else:
                    raise HubHTTPError(400, f"unknown commit operation {key!r}")
            commit = self.hub._commit(repo, rev, tree, message)  # an unchanged tree still commits
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        self._json({"success": True, "commitOid": commit.oid, "pullRequestUrl": None,
                    "commitUrl": f"{self.hub.url}/{prefix}{repo.repo_id}/commit/{commit.oid}"})

    def h_lfs_batch(self, ns, name, prefix=None) -> None:
        kind = "datasets" if prefix else "models"
        repo = self._repo(kind, ns, name, write=True)
        request = json.loads(self._read_body())
        if request.get("operation") != "upload":
            raise HubHTTPError(400, "only the upload operation is implemented")
        objects = []
        for obj in request["objects"]:
            oid, size = obj["oid"], int(obj["size"])
            item = {"oid": oid, "size": size}
            if oid not in repo.lfs_objects:  # already stored objects get no actions (no re-upload)
                base = f"{self.hub.url}/_lfs/%s/{kind}/{repo.repo_id}"
                item["authenticated"] = True
                item["actions"] = {
                    "upload": {"href": f"{base % 'upload'}/{oid}?sig={self.hub._sig}&size={size}"},
                    "verify": {"href": base % "verify", "header": {}},
                }
            objects.append(item)
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   content_type="application/vnd.git-lfs+json")

    def h_lfs_put(self, kind, ns, name, oid) -> None:
        if self._take_drop("lfs_put"):
            self._read_body(limit=max(1, int(self.query.get("size", "2")) // 2))
            raise _Dropped()  # half the bytes received, then the connection is lost
        data = self._read_body()
        if self.query.get("sig") != self.hub._sig:
            raise HubHTTPError(403, "Request has expired or signature does not match")
        repo = self.hub._repo(kind.rstrip("s"), f"{ns}/{name}")
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubHTTPError(400, "uploaded bytes do not match the announced sha256")
        with self.hub.lock:
            self.hub._entry(data, lfs=True)
            repo.lfs_objects.add(oid)
        self.send_response(200)
        self.send_header("ETag", f'"{hashlib.md5(data).hexdigest()}"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def h_lfs_verify(self, kind, ns, name) -> None:
        repo = self._repo(kind, ns, name, write=True)
        obj = json.loads(self._read_body())
        blob = self.hub.blob_path(obj["oid"])
        if obj["oid"] not in repo.lfs_objects or blob.stat().st_size != int(obj["size"]):
            raise HubHTTPError(404, f"object {obj['oid']} not found")
        self._json({"success": True})

    def h_resolve(self, ns, name, rev, path, prefix=None) -> None:
        repo = self._repo("datasets" if prefix else "models", ns, name)
        commit = self.hub._resolve(repo, rev)
        entry = commit.tree.get(path)
        if entry is None:
            self._json({"error": "Entry not found"}, 404,
                       {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found",
                        "X-Repo-Commit": commit.oid})
            return
        data = self.hub.blob_path(entry.sha256).read_bytes()
        start, end, status = 0, len(data) - 1, 200
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if rng:
            start = int(rng.group(1))
            end = min(int(rng.group(2)) if rng.group(2) else end, len(data) - 1)
            if start >= len(data):
                self._json({"error": "Requested Range Not Satisfiable"}, 416,
                           {"Content-Range": f"bytes */{len(data)}"})
                return
            status = 206
        body = data[start:end + 1]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("X-Repo-Commit", commit.oid)
        self.send_header("ETag", f'"{entry.sha256 if entry.lfs else entry.git_oid}"')
        if entry.lfs:
            self.send_header("X-Linked-Etag", f'"{entry.sha256}"')
            self.send_header("X-Linked-Size", str(entry.size))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if self.command == "HEAD":
            return
        if len(body) > 1 and self._take_drop("download"):
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            raise _Dropped()
        self.wfile.write(body)


# The Hub's metadata rules that the cards of this project touch (huggingface.co/docs/hub/model-cards,
# and the errors the Hub answers for them): a subset of its license ids, types of the list keys,
# and the shape of model-index (the Hub rejects a card whose model-index it cannot parse).
KNOWN_LICENSES = {"mit", "apache-2.0", "bsd-3-clause", "cc-by-4.0", "cc-by-nc-4.0", "openrail", "other"}


def _str_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def metadata_errors(meta: dict) -> list[str]:
    """Why the Hub would refuse this README front matter ([] when it would accept it)."""
    errors = []
    if "license" in meta and meta["license"] not in KNOWN_LICENSES:
        errors.append(f'"license" must be one of the Hub license identifiers, got {meta["license"]!r}')
    for key in ("tags", "datasets"):
        if key in meta and not _str_list(meta[key]):
            errors.append(f'"{key}" must be an array of non-empty strings')
    if "library_name" in meta and not (isinstance(meta["library_name"], str) and meta["library_name"]):
        errors.append('"library_name" must be a string')
    if "model-index" in meta:
        errors += [f'"model-index" {e}' for e in _model_index_errors(meta["model-index"])]
    return errors


def _model_index_errors(index) -> list[str]:
    if not isinstance(index, list) or not index:
        return ["must be a non-empty array"]
    errors = []
    for i, model in enumerate(index):
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            errors.append(f"[{i}].name must be a string")
            continue
        results = model.get("results")
        if not isinstance(results, list) or not results:
            errors.append(f"[{i}].results must be a non-empty array")
            continue
        for j, result in enumerate(results):
            where = f"[{i}].results[{j}]"
            task, dataset, metrics = (result.get(k) if isinstance(result, dict) else None
                                      for k in ("task", "dataset", "metrics"))
            if not isinstance(task, dict) or not isinstance(task.get("type"), str):
                errors.append(f"{where}.task.type must be a string")
            if not isinstance(dataset, dict) or not all(isinstance(dataset.get(k), str) for k in ("type", "name")):
                errors.append(f"{where}.dataset needs string type and name")
            if not isinstance(metrics, list) or not metrics:
                errors.append(f"{where}.metrics must be a non-empty array")
                continue
            for k, metric in enumerate(metrics):
                if not (isinstance(metric, dict) and isinstance(metric.get("type"), str)
                        and isinstance(metric.get("value"), (int, float, str))
                        and not isinstance(metric.get("value"), bool)):
                    errors.append(f"{where}.metrics[{k}] needs a string type and a value")
    return errors


class _Dropped(Exception):
    """Raised by a handler to cut the connection without a (complete) response."""


# -- LaSOT test data ---------------------------------------------------------------------------
def _tiny_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (90, 140, 200)).save(buf, format="JPEG")
    return buf.getvalue()


def lasot_sequence_files(name: str, frames: int = 3) -> dict[str, bytes]:
    """The files of one tiny LaSOT sequence `<class>-<n>/` (relative paths -> bytes)."""
    jpeg = _tiny_jpeg()
    files = {f"{name}/img/{i:08d}.jpg": jpeg for i in range(1, frames + 1)}
    files[f"{name}/groundtruth.txt"] = "".join(f"{2 + i},3,6,5\n" for i in range(frames)).encode()
    files[f"{name}/full_occlusion.txt"] = ",".join("0" * frames).encode() + b"\n"
    files[f"{name}/out_of_view.txt"] = ",".join("0" * frames).encode() + b"\n"
    files[f"{name}/nlp.txt"] = f"a tiny {name.rsplit('-', 1)[0]}\n".encode()
    return files


def make_class_zip(cls: str, numbers=(1, 2, 3), nested: bool = False,
                   extra: dict[str, bytes] | None = None) -> bytes:
    """A LaSOT class zip: `<class>-N/...` at the root (flat) or `<class>/<class>-N/...` (nested)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for n in numbers:
            for rel, data in lasot_sequence_files(f"{cls}-{n}").items():
                zf.writestr(f"{cls}/{rel}" if nested else rel, data)
        for rel, data in (extra or {}).items():
            zf.writestr(rel, data)
    return buf.getvalue()


def split_file(names: list[str]) -> bytes:
    """A split file as real ones may come: UTF-8 BOM and CRLF line ends."""
    return b"\xef\xbb\xbf" + "".join(f"{n}\r\n" for n in names).encode()


LASOT_TRAIN = ["airplane-2", "airplane-3", "bicycle-1", "bicycle-3"]
LASOT_TEST = ["airplane-1", "bicycle-2"]


def populate_lasot(hub: FakeHub) -> None:
    """`l-lt/LaSOT` (dataset): airplane.zip (flat), bicycle.zip (nested) and the split files."""
    hub.add_files(LASOT_REPO, {
        "airplane.zip": make_class_zip("airplane", nested=False),
        "bicycle.zip": make_class_zip("bicycle", nested=True),
        "training_set.txt": split_file(LASOT_TRAIN),
        "testing_set.txt": split_file(LASOT_TEST),
    }, repo_type="dataset", message="LaSOT (tiny fake)")


@pytest.fixture
def fake_hub(tmp_path_factory):
    """A started FakeHub (accepted token `ACCEPTED_TOKEN`) with the fake `l-lt/LaSOT` in it."""
    hub = FakeHub(tmp_path_factory.mktemp("fakehub")).start()
    populate_lasot(hub)
    try:
        yield hub
    finally:
        hub.stop()

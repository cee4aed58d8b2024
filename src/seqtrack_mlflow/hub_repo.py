"""The layout of a mirrored Hugging Face model repo and verified reads from it.

    README.md                               model card
    config.json, model.safetensors          the best epoch (PyTorchModelHubMixin's layout)
    checkpoints/epoch_N/config.json         every epoch's weights, same format
    checkpoints/epoch_N/model.safetensors
    resume/epoch_N.ckpt                     the full training state: what `train --resume` takes
    manifest.json                           every other file with its sha256 and size
    config.yaml, training_log.txt, report.md, dataset_summary.json   the run's own files

`fetch_file` downloads only files the repo's manifest lists and checks their sha256; warm start
(`--init owner/name`), `fetch-hub` and the mirror read repos through it.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from seqtrack_mlflow import hub
from seqtrack_mlflow.errors import CheckpointError
from seqtrack_mlflow.fsutil import sha256_file
from seqtrack_mlflow.names import CHECKPOINTS, MANIFEST, checkpoint_name

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "seqtrack-mlflow-hub/1"


def run_tag(run_id: str) -> str:
    """The git tag of a mirrored run: `run-<first 8 characters of the MLflow run id>`."""
    return f"run-{run_id[:8]}"


def weights_dir(epoch: int) -> str:
    return f"{CHECKPOINTS}/epoch_{epoch}"


def resume_path(epoch: int) -> str:
    return f"resume/{checkpoint_name(epoch)}"


@contextmanager
def timed(what: str) -> Iterator[None]:
    """Log `what` with the seconds it took, once it is done."""
    started = time.monotonic()
    yield
    log.info("%s (%.2f s)", what, time.monotonic() - started)


def write_manifest(stage: Path, run_id: str, best_epoch: int | None, epochs: list[int],
                   known: dict[str, str] | None = None) -> dict[str, Any]:
    """manifest.json at the root of `stage`: every other file with sha256 and size.

    `known`: sha256 already computed for some paths (the verified resume checkpoints), so a
    1 GB file is not hashed twice.
    """
    known = known or {}
    files = {}
    for path in sorted(p for p in stage.rglob("*") if p.is_file()):
        rel = path.relative_to(stage).as_posix()
        if rel == MANIFEST:
            continue
        files[rel] = {"sha256": known.get(rel) or sha256_file(path), "bytes": path.stat().st_size}
    document = {"format": MANIFEST_FORMAT, "mlflow_run_id": run_id, "best_epoch": best_epoch,
                "epochs": sorted(epochs), "files": files}
    (stage / MANIFEST).write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return document


def manifest_run(repo_id: str, commit: str, token: str | None, endpoint: str | None) -> str:
    """The MLflow run id recorded in the repo's manifest.json at `commit` ('' if none)."""
    with tempfile.TemporaryDirectory(prefix="seqtrack-head-") as tmp:
        try:
            path = hub.download_file(repo_id, MANIFEST, "model", tmp, token=token, endpoint=endpoint,
                                     revision=commit)
            return str(json.loads(path.read_text(encoding="utf-8")).get("mlflow_run_id", ""))
        except (hub.RemoteFileMissing, ValueError, AttributeError):
            return ""


# -- fetch back -------------------------------------------------------------------------------
def fetch_file(repo_id: str, filename: str, dest: str | Path = ".", revision: str | None = None,
               token: str | None = None, endpoint: str | None = None) -> Path:
    """Download `filename` into dest after checking it is listed in the repo's manifest.json,
    and check its sha256 against that listing. An unlisted file is refused before it is
    downloaded; an altered one is deleted and refused (CheckpointError, one line)."""
    token = hub.get_token(token, required=False)  # public repos need none
    at = revision or "main"
    dest = Path(dest)
    try:
        manifest_path = hub.download_file(repo_id, MANIFEST, "model", dest, token=token, endpoint=endpoint,
                                          revision=revision)
    except hub.RemoteFileMissing:
        raise CheckpointError(f"{repo_id}@{at} has no {MANIFEST}: its files cannot be verified; mirror "
                              f"the run again with this version") from None
    try:
        listing = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
        expected = {str(k): str(v["sha256"]).lower() for k, v in listing.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{repo_id}@{at}: {MANIFEST} is not a seqtrack-mlflow manifest "
                              f"({type(exc).__name__})") from None
    if filename not in expected:
        raise CheckpointError(f"{repo_id}@{at}: {filename} is not listed in {MANIFEST}; refusing an "
                              f"unverified file (listed: {_listed_summary(expected)})")
    with timed(f"downloaded {filename} from {hub.repo_url(repo_id, endpoint)}@{at}"):
        path = hub.download_file(repo_id, filename, "model", dest, token=token, endpoint=endpoint,
                                 revision=revision)
    digest = sha256_file(path)
    if digest != expected[filename]:
        path.unlink(missing_ok=True)
        raise CheckpointError(f"{repo_id}@{at}: {filename} has sha256 {digest[:16]}… but {MANIFEST} "
                              f"lists {expected[filename][:16]}…; the file was altered; deleted it")
    return path


def _listed_summary(expected: dict[str, str]) -> str:
    epochs = sorted(int(m.group(1)) for f in expected if (m := re.fullmatch(r"resume/epoch_(\d+)\.ckpt", f)))
    return f"resume epochs {', '.join(map(str, epochs)) or 'none'}, {len(expected)} files in all"

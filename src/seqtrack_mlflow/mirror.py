"""Mirror a training run to a Hugging Face model repo (`mirror`), and fetch a checkpoint back
(`fetch-hub`).

`mirror`, step by step (each step logs one line with its duration):
1. token: HF_TOKEN or the `hf auth login` token; none -> HubError before any request.
2. run: `--run-id`, or the newest FINISHED training run of the active experiment.
3. artifacts: downloaded through MLflow into a temporary folder.
4. verify: every `checkpoints/epoch_N.ckpt` is listed in `checkpoints/manifest.json`, has the
   sha256 and size the trainer recorded there, and loads with the safe loader
   (`load_checkpoint`, weights only) holding the same epoch. Anything else is refused before a
   single byte is sent.
5. model card: README.md built from the run (model_card.py).
6. upload: checkpoints/ (with manifest.json), training_log.txt, report.md, config.yaml,
   dataset_summary.json and README.md in ONE commit; the repo is created if needed. Files the
   Hub already has with the same content are skipped by the client, so mirroring the same run
   again uploads nothing and makes no commit ("already up to date at commit ...").
7. tags: the MLflow run gets `hub.repo_url`, `hub.repo_id`, `hub.revision`, `hub.commit`.
`--dry-run` stops after step 5 and lists what would be uploaded; it sends nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from seqtrack_mlflow import experiment, hub
from seqtrack_mlflow.errors import CheckpointError, HubError, TrackingError
from seqtrack_mlflow.model_card import CardInputs, EpochRow, build_model_card
from seqtrack_mlflow.fsutil import sha256_file
from seqtrack_mlflow.train.checkpoint import checkpoint_name, load_checkpoint

log = logging.getLogger(__name__)

MANIFEST = "checkpoints/manifest.json"
# Run artifacts uploaded next to the checkpoints (a missing one is reported, not fatal).
RUN_FILES = ("training_log.txt", "report.md", "config.yaml", "dataset_summary.json")
# Model card column -> MLflow metric (logged once per epoch with step = epoch).
EPOCH_METRICS = {"train_loss": "epoch/train_loss", "val_iou": "epoch/val_iou",
                 "best_val_iou": "epoch/best_val_iou", "seconds": "epoch/seconds"}


@dataclass(frozen=True)
class MirrorResult:
    run_id: str
    repo_url: str
    commit: str | None  # None for a dry run
    changed: bool
    files: list[str]


@contextmanager
def _step(what: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    log.info("%s (%.2f s)", what, time.monotonic() - started)


# -- verification -----------------------------------------------------------------------------
def read_manifest(folder: Path) -> list[dict[str, Any]]:
    """The trainer's checkpoint manifest under `folder` (a run's artifact root), validated."""
    path = folder / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{MANIFEST} is missing from the run's artifacts: without the trainer's "
                              f"sha256 list the checkpoints cannot be verified")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["checkpoints"]
        entries = [{"file": str(e["file"]), "epoch": int(e["epoch"]), "sha256": str(e["sha256"]).lower(),
                    "bytes": int(e["bytes"]) if e.get("bytes") is not None else None} for e in entries]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{MANIFEST}: not a checkpoint manifest ({type(exc).__name__}: {exc}); "
                              'expected {"checkpoints": [{"file", "epoch", "sha256", "bytes"}]}') from None
    if not entries:
        raise CheckpointError(f"{MANIFEST} lists no checkpoints")
    return sorted(entries, key=lambda e: e["epoch"])


def verify_checkpoints(folder: Path) -> list[dict[str, Any]]:
    """Check every checkpoint under folder/checkpoints against the manifest; the entries.

    Refused (CheckpointError naming the file): a checkpoint not in the manifest, a manifest entry
    without its file, a size or sha256 different from the manifest's, a file that does not load
    with the safe loader, or one holding another epoch than its name says.
    """
    entries = read_manifest(folder)
    ckpt_dir = folder / "checkpoints"
    present = {p.name for p in ckpt_dir.glob("*.ckpt")}
    listed = {e["file"] for e in entries}
    if present - listed:
        raise CheckpointError(f"checkpoints/{sorted(present - listed)[0]} is not listed in {MANIFEST}; "
                              f"refusing to upload an unverified checkpoint")
    for entry in entries:
        path = ckpt_dir / entry["file"]
        name = f"checkpoints/{entry['file']}"
        if entry["file"] != checkpoint_name(entry["epoch"]):
            raise CheckpointError(f"{MANIFEST}: {entry['file']!r} should be named "
                                  f"{checkpoint_name(entry['epoch'])!r} for epoch {entry['epoch']}")
        if not path.is_file():
            raise CheckpointError(f"{name} is listed in {MANIFEST} but missing from the run's artifacts")
        size = path.stat().st_size
        if entry["bytes"] is not None and size != entry["bytes"]:
            raise CheckpointError(f"{name}: {size} bytes but the manifest records {entry['bytes']}; "
                                  f"the file is truncated or was replaced; refusing to upload")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise CheckpointError(f"{name}: sha256 {digest} does not match the manifest's "
                                  f"{entry['sha256']}; refusing to upload")
        state = load_checkpoint(path)
        if int(state["epoch"]) != entry["epoch"]:
            raise CheckpointError(f"{name} holds epoch {state['epoch']}, not {entry['epoch']}")
        entry["bytes"] = size
    return entries


# -- run -> upload folder ---------------------------------------------------------------------
def _resolve_run(run_id: str, experiment_name: str):
    run = experiment.training_run(run_id or experiment.latest_training_run(experiment_name), experiment_name)
    status = run.info.status
    if status != "FINISHED":
        log.warning("run %s is %s, not FINISHED: mirroring the checkpoints it has", run.info.run_id, status)
    return run


def epoch_rows(run_id: str) -> list[EpochRow]:
    """Per-epoch metrics of the run (step = epoch), one row per epoch seen in any of them."""
    values: dict[int, dict[str, float]] = {}
    for column, key in EPOCH_METRICS.items():
        for step, value in experiment.metric_points(run_id, key):
            values.setdefault(int(step), {})[column] = float(value)
    return [EpochRow(epoch=e, **values[e]) for e in sorted(values)]


def _load_optional(path: Path, parse) -> Any:
    if not path.is_file():
        return None
    try:
        return parse(path.read_text(encoding="utf-8"))
    except (ValueError, yaml.YAMLError) as exc:
        log.warning("%s could not be parsed for the model card (%s); left out", path.name, exc)
        return None


def prepare_upload(run, repo_id: str, workdir: Path) -> tuple[Path, list[dict[str, Any]]]:
    """Download the run's artifacts, verify them, and lay out the upload folder with README.md."""
    run_id = run.info.run_id
    artifacts = workdir / "artifacts"
    with _step(f"downloaded the artifacts of run {run_id} (checkpoints/ and {', '.join(RUN_FILES)})"):
        try:
            experiment.download_artifacts(run_id, "checkpoints", artifacts)
        except TrackingError as exc:
            raise CheckpointError(f"nothing to mirror: {exc}") from None
        for name in RUN_FILES:
            try:
                experiment.download_artifacts(run_id, name, artifacts)
            except TrackingError:
                pass  # reported below
    with _step("verified checkpoints against the manifest (sha256, size, safe load)"):
        entries = verify_checkpoints(artifacts)
    stage = workdir / "upload"
    (stage / "checkpoints").mkdir(parents=True)
    for entry in entries:
        shutil.move(artifacts / "checkpoints" / entry["file"], stage / "checkpoints" / entry["file"])
    shutil.move(artifacts / MANIFEST, stage / MANIFEST)
    present = []
    for name in RUN_FILES:
        if (artifacts / name).is_file():
            shutil.move(artifacts / name, stage / name)
            present.append(name)
        else:
            log.warning("run %s has no %s artifact; mirroring without it", run_id, name)
    config = _load_optional(stage / "config.yaml", yaml.safe_load)
    if not isinstance(config, dict):
        config = dict(run.data.params)  # flat keys such as train.epochs: still a usable table
    inputs = CardInputs(
        repo_id=repo_id, run_id=run_id, run_name=run.info.run_name or "",
        git_commit=run.data.tags.get("mlflow.source.git.commit", ""),
        config=config, dataset_summary=_load_optional(stage / "dataset_summary.json", json.loads),
        epochs=epoch_rows(run_id), checkpoints=entries,
        files=[MANIFEST] + present)
    (stage / "README.md").write_text(build_model_card(inputs), encoding="utf-8")
    return stage, entries


def mirror_run(run_id: str = "", repo_id: str = "", experiment_name: str = "", revision: str | None = None,
               private: bool = False, dry_run: bool = False, token: str | None = None,
               endpoint: str | None = None) -> MirrorResult:
    """Verify a run's checkpoints and upload them with the model card in one commit."""
    started = time.monotonic()
    if not repo_id or "/" not in repo_id:
        raise HubError(f"--repo-id must be 'namespace/name', got {repo_id!r}")
    if not dry_run:
        token = hub.get_token(token)  # fail fast: no token, no request
    run = _resolve_run(run_id, experiment_name)
    run_id = run.info.run_id
    url = hub.repo_url(repo_id, endpoint)
    log.info("mirroring run %s (%s) to %s", run_id, run.info.run_name or "unnamed", url)
    with tempfile.TemporaryDirectory(prefix="seqtrack-mirror-") as tmp:
        stage, entries = prepare_upload(run, repo_id, Path(tmp))
        files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
        total = sum((stage / f).stat().st_size for f in files)
        if dry_run:
            for f in files:
                log.info("would upload %-34s %12d bytes", f, (stage / f).stat().st_size)
            log.info("dry run: %d files (%.1f MB) verified for %s@%s; nothing was sent",
                     len(files), total / 1e6, url, revision or "main")
            return MirrorResult(run_id, url, None, False, files)
        message = f"Mirror MLflow run {run_id}: {len(entries)} checkpoint(s)"
        with _step(f"upload of {len(files)} files ({total / 1e6:.1f} MB) to {url} finished"):
            result = hub.upload_folder(repo_id, stage, token, endpoint=endpoint, private=private,
                                       revision=revision, commit_message=message,
                                       commit_description=f"MLflow run id: {run_id}")
    if result.changed:
        log.info("uploaded run %s to %s in one commit %s (%.1f s in all)", run_id, result.repo_url,
                 result.commit, time.monotonic() - started)
    else:
        log.info("already up to date at commit %s: %s holds every file of run %s; nothing uploaded",
                 result.commit, result.repo_url, run_id)
    experiment.set_run_tags(run_id, {"hub.repo_url": result.repo_url, "hub.repo_id": repo_id,
                                   "hub.revision": revision or "main", "hub.commit": result.commit})
    log.info("tagged MLflow run %s with hub.repo_url and hub.commit", run_id)
    return MirrorResult(run_id, result.repo_url, result.commit, result.changed, result.files)


# -- fetch back -------------------------------------------------------------------------------
def fetch_checkpoint(repo_id: str, epoch: int, dest: str | Path = ".", revision: str | None = None,
                     token: str | None = None, endpoint: str | None = None) -> Path:
    """Download checkpoints/epoch_N.ckpt from the Hub into dest, check it against the repo's
    manifest (when there is one) and load it with the safe loader. Returns its path."""
    token = hub.get_token(token, required=False)  # public repos need none
    filename = f"checkpoints/{checkpoint_name(epoch)}"
    with _step(f"downloaded {filename} from {hub.repo_url(repo_id, endpoint)}"):
        try:
            path = hub.download_file(repo_id, filename, "model", dest, token=token, endpoint=endpoint,
                                     revision=revision)
        except hub.RemoteFileMissing:
            files = hub.list_repo_files(repo_id, token=token, endpoint=endpoint, revision=revision)
            epochs = sorted(int(f[len("checkpoints/epoch_"):-5]) for f in files
                            if f.startswith("checkpoints/epoch_") and f.endswith(".ckpt"))
            raise HubError(f"{repo_id} has no {filename} at {revision or 'main'}; epochs there: "
                           f"{', '.join(map(str, epochs)) or 'none'}") from None
    try:
        manifest = hub.download_file(repo_id, MANIFEST, "model", dest, token=token, endpoint=endpoint,
                                     revision=revision)
        expected = {e["file"]: e["sha256"] for e in read_manifest(manifest.parents[1])}
    except (hub.RemoteFileMissing, CheckpointError, TrackingError) as exc:
        log.warning("no usable %s in %s (%s); skipping the sha256 check", MANIFEST, repo_id, exc)
        expected = {}
    if path.name in expected:
        digest = sha256_file(path)
        if digest != expected[path.name]:
            raise CheckpointError(f"{path}: sha256 {digest} differs from the repo manifest's "
                                  f"{expected[path.name]}")
    state = load_checkpoint(path)
    log.info("checkpoint %s loads: epoch %s, seed %s, %d tensors in model_state_dict", path,
             state["epoch"], state["seed"], len(state["model_state_dict"]))
    return path

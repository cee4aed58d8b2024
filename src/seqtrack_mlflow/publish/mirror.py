"""Mirror a training run to a Hugging Face model repo (`mirror`) and fetch a checkpoint back
(`fetch-hub`); `uploader.EpochUploader` pushes each epoch while training runs.

The repo layout (PyTorchModelHubMixin's at the root, so `SeqTrack.from_pretrained(repo_id)` and
Hub tooling find the model) is described in `hub_repo`.

Hygiene (chosen: one run per branch state, not one path per run): a mirror makes the branch hold
exactly the mirrored run; files of an earlier run that this one does not have (a 2-epoch run's
epoch 2 after a 1-epoch run) are deleted in the same commit. Each mirrored run gets the git tag
`run-<run_id[:8]>` on its commit, so `revision="run-1a2b3c4d"` keeps pinning that run after
`main` moved on to another.

`mirror`, step by step (each step logs one line with its duration):
1. token: HF_TOKEN or the `hf auth login` token; none -> HubError before any request.
2. run: `run_id`, or the newest FINISHED training run of the active experiment.
3. artifacts: downloaded through MLflow into a temporary folder.
4. verify: every `checkpoints/epoch_N.ckpt` is listed in the run's `checkpoints/manifest.json`,
   has the sha256 and size the trainer recorded there, and loads with the safe loader holding
   the same epoch. Anything else is refused before a single byte is sent.
5. export: safetensors + config.json per epoch, the best epoch at the root, manifest.json,
   model card (with model-index when the run has a FINISHED evaluation).
6. upload: ONE commit, stale files deleted in it; the repo is created if needed. Files the Hub
   already has with the same content are skipped by the client, so mirroring the same run again
   sends no bytes and makes no commit ("already up to date at commit ...").
7. tag `run-<id[:8]>` on the commit; the MLflow run gets `hub.repo_url`, `hub.repo_id`,
   `hub.revision`, `hub.commit`, `hub.tag`.
`dry_run` stops after step 5 and returns what would be uploaded; it sends nothing.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seqtrack_mlflow import epoch_ranking, experiment, hub, names
from seqtrack_mlflow.errors import CheckpointError, HubError, TrackingError
from seqtrack_mlflow.fsutil import sha256_file
from seqtrack_mlflow.hub_repo import (
    fetch_file,
    manifest_run,
    resume_path,
    run_tag,
    timed,
    weights_dir,
    write_manifest,
)
from seqtrack_mlflow.names import RUN_FILES, WEIGHTS_CONFIG, WEIGHTS_FILE, checkpoint_name
from seqtrack_mlflow.publish.card import CardInputs, EpochRow, Evaluation, build_model_card
from seqtrack_mlflow.publish.export import export_pretrained
from seqtrack_mlflow.train.checkpoint import Manifest, load_checkpoint

log = logging.getLogger(__name__)

RUN_MANIFEST = f"{names.CHECKPOINTS}/{names.MANIFEST}"  # the trainer's, in the run's artifacts
MAX_TAG_ROUNDS = 5  # re-reads of the branch head after a mirror's commit (concurrent mirrors)
# Model card column -> MLflow metric (logged once per epoch with step = epoch).
EPOCH_METRICS = {column: names.epoch_metric(column) for column in
                 (names.ROW_TRAIN_LOSS, names.ROW_VAL_IOU, names.ROW_BEST_VAL_IOU, names.ROW_SECONDS)}


@dataclass(frozen=True)
class MirrorResult:
    run_id: str
    repo_url: str
    commit: str | None  # None for a dry run
    changed: bool
    files: list[str]
    deleted: list[str] = field(default_factory=list)
    tag: str = ""
    best_epoch: int | None = None
    bytes: int = 0


# -- verification -----------------------------------------------------------------------------
def verify_checkpoints(folder: Path) -> list[dict[str, Any]]:
    """Check every checkpoint under folder/checkpoints against the manifest; the entries.

    Refused (CheckpointError naming the file): a checkpoint not in the manifest, a manifest entry
    without its file, a size or sha256 different from the manifest's, a file that does not load
    with the safe loader, or one holding another epoch than its name says.
    """
    ckpt_dir = folder / names.CHECKPOINTS
    manifest = Manifest.read(ckpt_dir)
    if manifest is None:
        raise CheckpointError(f"{RUN_MANIFEST} is missing from the run's artifacts: without the trainer's "
                              f"sha256 list the checkpoints cannot be verified")
    entries = manifest.list()
    if not entries:
        raise CheckpointError(f"{RUN_MANIFEST} lists no checkpoints")
    present = {p.name for p in ckpt_dir.glob("*.ckpt")}
    listed = {e["file"] for e in entries}
    if present - listed:
        raise CheckpointError(f"{names.CHECKPOINTS}/{sorted(present - listed)[0]} is not listed in {RUN_MANIFEST}; "
                              f"refusing to upload an unverified checkpoint")
    for entry in entries:
        path = ckpt_dir / entry["file"]
        name = f"{names.CHECKPOINTS}/{entry['file']}"
        if entry["file"] != checkpoint_name(entry["epoch"]):
            raise CheckpointError(f"{RUN_MANIFEST}: {entry['file']!r} should be named "
                                  f"{checkpoint_name(entry['epoch'])!r} for epoch {entry['epoch']}")
        if not path.is_file():
            raise CheckpointError(f"{name} is listed in {RUN_MANIFEST} but missing from the run's artifacts")
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
    if experiment.is_model_uri(run_id):  # a registered or logged model: the run that trained it
        run_id = experiment.resolve_model_uri(run_id)[0]
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


def choose_best_epoch(run_id: str, epochs: list[int], last_state: dict[str, Any] | None) -> tuple[int, str]:
    """(epoch, why) of the root weights: the best epoch among the checkpoints by the rule of
    `epoch_ranking` (as evaluate's 'best'), else the last epoch."""
    best = epoch_ranking.best_of_run(run_id, epochs, lambda: (last_state or {}).get("metrics"))
    if best is not None:
        epoch, metric, value = best
        return epoch, epoch_ranking.describe(metric, value)
    return max(epochs), "last epoch (no validation metric recorded)"


def dataset_revision(config: dict[str, Any], summary: Any) -> str:
    """What data the run saw, in one token: `sample-vN` for the bundled sample (its generator
    version, from the data folder's name), the LaSOT revision when the run recorded one, else
    'main (unpinned)' for LaSOT."""
    data = dict(config.get("data") or {}) if isinstance(config, dict) else {}
    summary = summary if isinstance(summary, dict) else {}
    for value in (data.get("revision"), summary.get("revision"), summary.get("dataset_revision")):
        if value:
            return str(value)
    source = data.get("source") or summary.get("source") or ""
    if source == "sample":
        match = re.search(r"sample-v\d+", str(summary.get("root", "")))
        return match.group(0) if match else "sample"
    if source == "lasot":
        return "main (unpinned)"
    return ""


def latest_evaluation(run_id: str) -> Evaluation | None:
    found = experiment.latest_evaluation(run_id)
    if found is None:
        return None
    return Evaluation(run_id=found["run_id"], epoch=found.get("epoch"), data_source=found.get("data_source", ""),
                      classes=found.get("classes", ""), sequences=found.get("sequences"),
                      metrics=found.get("metrics", {}))


# -- run -> upload folder ---------------------------------------------------------------------
def prepare_upload(run, repo_id: str, workdir: Path) -> tuple[Path, dict[str, Any]]:
    """Download the run's artifacts, verify them, and lay out the upload folder (see the module
    docstring). Returns (folder, its manifest)."""
    run_id = run.info.run_id
    artifacts = workdir / "artifacts"
    with timed(f"downloaded the artifacts of run {run_id} (checkpoints/ and {', '.join(RUN_FILES)})"):
        try:
            experiment.download_artifacts(run_id, names.CHECKPOINTS, artifacts)
        except TrackingError as exc:
            raise CheckpointError(f"nothing to mirror: {exc}") from None
        for name in RUN_FILES:
            try:
                experiment.download_artifacts(run_id, name, artifacts)
            except TrackingError:
                pass  # reported below
    with timed("verified checkpoints against the run's manifest (sha256, size, safe load)"):
        entries = verify_checkpoints(artifacts)
    stage = workdir / "upload"
    epochs = [e["epoch"] for e in entries]
    known: dict[str, str] = {}
    last_state: dict[str, Any] | None = None
    with timed(f"exported {len(entries)} epoch(s) to safetensors"):
        for entry in entries:
            source = artifacts / names.CHECKPOINTS / entry["file"]
            state = load_checkpoint(source)
            export_pretrained(state, stage / weights_dir(entry["epoch"]), run_id)
            target = stage / resume_path(entry["epoch"])
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
            known[resume_path(entry["epoch"])] = entry["sha256"]
            last_state = state
    best, reason = choose_best_epoch(run_id, epochs, last_state)
    for name in (WEIGHTS_CONFIG, WEIGHTS_FILE):
        shutil.copyfile(stage / weights_dir(best) / name, stage / name)
    for name in RUN_FILES:
        if (artifacts / name).is_file():
            shutil.move(artifacts / name, stage / name)
        else:
            log.warning("run %s has no %s artifact; mirroring without it", run_id, name)
    config = _load_optional(stage / names.CONFIG_FILE, yaml.safe_load)
    if not isinstance(config, dict):
        config = dict(run.data.params)  # flat keys such as train.epochs: still a usable table
    summary = _load_optional(stage / names.SUMMARY_FILE, json.loads)
    evaluation = latest_evaluation(run_id)
    # README.md is written after the manifest (it lists the manifest's files), then added to it.
    manifest = write_manifest(stage, run_id, best, epochs, known)
    inputs = CardInputs(
        repo_id=repo_id, run_id=run_id, run_name=run.info.run_name or "",
        git_commit=run.data.tags.get(names.GIT_COMMIT_TAG, ""),
        config=config, dataset_summary=summary, dataset_revision=dataset_revision(config, summary),
        epochs=epoch_rows(run_id), best_epoch=best, best_reason=reason, checkpoint_epochs=epochs,
        files=manifest["files"], evaluation=evaluation)
    (stage / "README.md").write_text(build_model_card(inputs), encoding="utf-8")
    known.update({path: meta["sha256"] for path, meta in manifest["files"].items()})
    manifest = write_manifest(stage, run_id, best, epochs, known)
    return stage, manifest


def mirror_run(run_id: str = "", repo_id: str = "", experiment_name: str = "", revision: str | None = None,
               private: bool = False, dry_run: bool = False, token: str | None = None,
               endpoint: str | None = None) -> MirrorResult:
    """Verify a run's checkpoints and make the repo branch hold exactly this run, in one commit."""
    started = time.monotonic()
    if not repo_id or "/" not in repo_id:
        raise HubError(f"--repo-id must be 'namespace/name', got {repo_id!r}")
    revision = revision or None
    if not dry_run:
        token = hub.get_token(token)  # fail fast: no token, no request
    run = _resolve_run(run_id, experiment_name)
    run_id = run.info.run_id
    url = hub.repo_url(repo_id, endpoint)
    tag = run_tag(run_id)
    log.info("mirroring run %s (%s) to %s", run_id, run.info.run_name or "unnamed", url)
    with tempfile.TemporaryDirectory(prefix="seqtrack-mirror-") as tmp:
        stage, manifest = prepare_upload(run, repo_id, Path(tmp))
        files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
        total = sum((stage / f).stat().st_size for f in files)
        if dry_run:
            for f in files:
                log.info("would upload %-44s %12d bytes", f, (stage / f).stat().st_size)
            log.info("dry run: %d files (%.1f MB) verified for %s@%s (tag %s); files of other runs "
                     "there would be deleted; nothing was sent", len(files), total / 1e6, url,
                     revision or "main", tag)
            return MirrorResult(run_id, url, None, False, files, tag=tag, best_epoch=manifest["best_epoch"],
                                bytes=total)
        message = f"Mirror MLflow run {run_id}: {len(manifest['epochs'])} epoch(s), best {manifest['best_epoch']}"
        with timed(f"upload of {len(files)} files ({total / 1e6:.1f} MB) to {url} finished"):
            result = hub.upload_folder(repo_id, stage, token, endpoint=endpoint, private=private,
                                       revision=revision, commit_message=message,
                                       commit_description=f"MLflow run id: {run_id}", delete_others=True)
    if result.deleted:
        log.info("deleted %d file(s) of another run in the same commit: %s", len(result.deleted),
                 ", ".join(result.deleted[:8]) + (" ..." if len(result.deleted) > 8 else ""))
    if result.changed:
        log.info("uploaded run %s to %s in one commit %s (%.1f s in all, over %s)", run_id, result.repo_url,
                 result.commit, time.monotonic() - started, result.transport)
    else:
        log.info("already up to date at commit %s: %s holds every file of run %s; nothing uploaded",
                 result.commit, result.repo_url, run_id)
    commit = result.commit
    # Another mirror of this run may have committed after this one (two at once): tag the
    # branch's final commit, and re-read the branch until it stays put, so whichever process
    # finishes last leaves hub.commit and the Hub tag on the final commit.
    for _ in range(MAX_TAG_ROUNDS):
        if hub.tag_commit(repo_id, tag, commit, token, endpoint=endpoint, message=f"MLflow run {run_id}"):
            log.info("tagged commit %s as %s", commit, tag)
        experiment.set_run_tags(run_id, {"hub.repo_url": result.repo_url, "hub.repo_id": repo_id,
                                         "hub.revision": revision or "main", "hub.commit": commit,
                                         "hub.tag": tag})
        head = hub.head_commit(repo_id, token, endpoint=endpoint, revision=revision)
        if head in (None, commit) or manifest_run(repo_id, head, token, endpoint) != run_id:
            break
        log.info("another mirror of run %s committed %s after %s: tagging the final commit", run_id, head, commit)
        commit = head
    log.info("tagged MLflow run %s with hub.repo_url, hub.commit and hub.tag", run_id)
    return MirrorResult(run_id, result.repo_url, commit, result.changed, result.files,
                        deleted=result.deleted, tag=tag, best_epoch=manifest["best_epoch"], bytes=total)


def fetch_checkpoint(repo_id: str, epoch: int, dest: str | Path = ".", revision: str | None = None,
                     token: str | None = None, endpoint: str | None = None) -> Path:
    """Download resume/epoch_N.ckpt, verify it against the repo's manifest.json and load it with
    the safe loader. Returns its path."""
    path = fetch_file(repo_id, resume_path(epoch), dest, revision=revision, token=token, endpoint=endpoint)
    state = load_checkpoint(path)
    log.info("checkpoint %s loads: epoch %s, seed %s, %d tensors in model_state_dict", path,
             state["epoch"], state["seed"], len(state["model_state_dict"]))
    return path

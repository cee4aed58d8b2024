"""What one finished training run holds: params, tags, metrics, artifacts, the progress log,
checkpoints (stored once) and the report. One tiny run serves every test of this file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from seqtrack_mlflow import cli, names
from seqtrack_mlflow.config import load_config
from seqtrack_mlflow.fsutil import sha256_file
from seqtrack_mlflow.train import phases
from seqtrack_mlflow.train.progress import BLOCK_RE

from .conftest import new_store, use_store
from .tiny import TINY, write_tiny_config

EPOCHS, PER_EPOCH = 3, TINY["data"]["samples_per_epoch"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, empty_tracking_db) -> Path:
    return new_store(tmp_path_factory, empty_tracking_db, "run-contents")


@pytest.fixture(autouse=True)
def tracking_uri(store, monkeypatch, tmp_path_factory) -> str:
    """Overrides conftest's per-test store: every test reads the module's one run."""
    return use_store(monkeypatch, tmp_path_factory, store)


@pytest.fixture(scope="module")
def run(store, tmp_path_factory):
    """(run, its output folder): the tiny preset for 3 epochs, trained in this process."""
    mp = pytest.MonkeyPatch()  # module fixtures are set up before the per-test environment
    use_store(mp, tmp_path_factory, store)
    mp.setenv("PYTHONHASHSEED", "8")  # no re-exec of pytest for the hash seed
    mp.setenv("SEQTRACK_HASHSEED_SET", "1")
    try:
        config = write_tiny_config(store / "cfg")
        assert cli.main(["train", "--config", str(config), "--output-dir", str(store / "outputs")]) == 0
        (only,) = MlflowClient().search_runs(["0"])
    finally:
        mp.undo()
    return only, store / "outputs" / only.info.run_id


def history(run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key)]


def test_params_hold_the_resolved_config_and_the_dataset_summary(run):
    r, _ = run
    assert r.info.status == "FINISHED"
    params = r.data.params
    assert params["seed"] == "8" and params["train.epochs"] == "3" and params["resolved_device"] == "cpu"
    assert params["train.batch_size"] == "8" and params["data.classes"] == "airplane,bicycle"
    assert params["model.patch_size"] == "8"
    assert any(k.startswith("dataset.airplane.") for k in params)


def test_tags_name_the_kind_machine_and_versions(run):
    r, out = run
    tags = r.data.tags
    assert tags["seqtrack.kind"] == "train"
    assert tags["seqtrack.device"] == "cpu" and tags["seqtrack.torch_version"] == torch.__version__
    assert tags["seqtrack.cpu"] and tags["seqtrack.cpu_flags"] and tags["seqtrack.threads"].isdigit()
    assert tags["seqtrack.output_dir"] == str(out.resolve())
    assert r.info.run_name == "tiny-seed8-e3-fp32"  # <preset file>-seed-epochs-precision
    contexts = {i.tags[0].value for i in r.inputs.dataset_inputs}
    assert {"training", "validation"} <= contexts


def test_metrics_per_block_and_per_epoch(run):
    r, _ = run
    run_id = r.info.run_id
    assert [s for s, _ in history(run_id, "epoch/val_iou")] == [1, 2, 3]
    # One block each time the count crosses a multiple of 16 (batch 8: 16, 32) plus the epoch's end.
    steps = [s for s, _ in history(run_id, "train/loss")]
    assert steps == [e * PER_EPOCH + c for e in range(EPOCHS) for c in (16, 32, 40)]
    for key in ("train/iou", "time/block_seconds", "time/elapsed_seconds", "time/eta_epoch_seconds",
                "time/samples_per_second"):
        assert len(history(run_id, key)) == len(steps), key
    # epoch/lr is the rate each epoch trained with (StepLR drops it after epoch lr_drop_epoch=2).
    lrs = [v for _, v in history(run_id, "epoch/lr")]
    assert lrs == pytest.approx([5e-4, 5e-4, 5e-4 * load_config("default").train.lr_drop_factor])
    best = [v for _, v in history(run_id, "epoch/best_val_iou")]
    assert best == sorted(best) and best[-1] == max(v for _, v in history(run_id, "epoch/val_iou"))
    (no_motion,) = history(run_id, "val/no_motion_iou")
    assert no_motion[0] == 0 and 0 < no_motion[1] < 1


def test_where_the_time_went(run):
    """Seconds per phase of every epoch, the job's training throughput and its outside share,
    consistent with each other and with the progress blocks."""
    r, out = run
    run_id, m = r.info.run_id, r.data.metrics
    per_phase = {p: [v for _, v in history(run_id, names.PHASE_PREFIX + p)] for p in phases.PHASES}
    for p, values in per_phase.items():
        assert len(values) == EPOCHS and all(v >= 0 for v in values), p
    # Every epoch trains, validates, writes and logs a checkpoint (the tiny config tracks nothing).
    for p in (phases.FORWARD_BACKWARD, phases.OPTIMIZER, phases.VALIDATION, phases.CHECKPOINT,
              phases.ARTIFACT_LOGGING):
        assert all(v > 0 for v in per_phase[p]), p
    # Nothing tracked: a skip of microseconds (tracking the held-out videos takes seconds).
    assert all(v < 1.0 for v in per_phase[phases.HELD_OUT_TRACKING])
    # Inside the training blocks: the sum of the progress blocks' own durations.
    blocks = sum(v for _, v in history(run_id, "time/block_seconds"))
    assert m[names.TRAINING_SECONDS] == pytest.approx(blocks, rel=1e-9)
    inside = sum(sum(per_phase[p]) for p in phases.IN_TRAINING)
    assert inside <= m[names.TRAINING_SECONDS]
    assert m[names.TRAIN_SAMPLES_PER_SECOND] == pytest.approx(EPOCHS * PER_EPOCH / m[names.TRAINING_SECONDS])
    assert m[names.OUTSIDE_TRAINING_FRACTION] == pytest.approx(1 - m[names.TRAINING_SECONDS] / m[names.JOB_SECONDS])
    assert 0 < m[names.STARTUP_SECONDS] < m[names.JOB_SECONDS]
    assert [s for s, _ in history(run_id, names.EPOCH_SAMPLES_PER_SECOND)] == [1, 2, 3]
    report = (out / "report.md").read_text()
    assert "## Where the time went" in report and f"{m[names.TRAIN_SAMPLES_PER_SECOND]:.1f} samples/s" in report


def test_artifacts(run):
    r, _ = run
    client = MlflowClient()
    top = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"training_log.txt", "report.md", "config.yaml", "dataset_summary.json", "checkpoints", "plots"} <= top
    ckpts = {Path(a.path).name for a in client.list_artifacts(r.info.run_id, "checkpoints")}
    assert ckpts == {"epoch_1.ckpt", "epoch_2.ckpt", "epoch_3.ckpt", "manifest.json"}
    assert {Path(a.path).name for a in client.list_artifacts(r.info.run_id, "plots")} == {"loss.png", "iou.png"}


def test_training_log_holds_only_progress_blocks_with_true_counts(run):
    _, out = run
    log_text = (out / "training_log.txt").read_text()
    blocks = list(BLOCK_RE.finditer(log_text))
    assert "".join(b.group(0) for b in blocks) == log_text, "nothing but the four-line progress blocks"
    assert [(int(b.group(1)), int(b.group(2)), int(b.group(3))) for b in blocks] == [
        (e, c, PER_EPOCH) for e in (1, 2, 3) for c in (16, 32, 40)]
    assert [int(b.group(4)) for b in blocks][:3] == [16, 16, 8]


def test_checkpoints_are_complete_listed_and_stored_once(run):
    r, out = run
    folder = out / "checkpoints"
    manifest = json.loads((folder / "manifest.json").read_text())["checkpoints"]
    assert [e["epoch"] for e in manifest] == [1, 2, 3]
    artifacts = Path(r.info.artifact_uri.removeprefix("file://")) / "checkpoints"
    for entry in manifest:
        local = folder / entry["file"]
        assert sha256_file(local) == entry["sha256"]
        # A local artifact store: the output folder's file is a hard link to the logged copy.
        assert os.path.samefile(local, artifacts / entry["file"]), entry["file"]
    state = torch.load(folder / "epoch_3.ckpt", weights_only=True)
    assert {"model_state_dict", "optimizer_state_dict", "epoch", "seed", "scheduler_state_dict", "rng",
            "config", "metrics", "versions"} <= state.keys()
    assert state["epoch"] == 3 and state["seed"] == 8 and len(state["metrics"]) == 3
    assert state["config"]["train"]["epochs"] == 3


def test_report_has_real_numbers_and_a_replayable_config(run):
    r, out = run
    report = (out / "report.md").read_text()
    assert "XXXX" not in report and "X:XX:XX" not in report
    best = max(v for _, v in history(r.info.run_id, "epoch/val_iou"))
    assert f"Best IoU: {best:.4f}" in report
    (no_motion,) = history(r.info.run_id, "val/no_motion_iou")
    assert f"No-motion baseline IoU: {no_motion[1]:.4f}" in report
    for entry in json.loads((out / "checkpoints" / "manifest.json").read_text())["checkpoints"]:
        assert entry["sha256"] in report
    assert f"mlflow artifacts download -r {r.info.run_id} -a config.yaml" in report
    logged = Path(MlflowClient().download_artifacts(r.info.run_id, "config.yaml", str(out.parent / "dl")))
    assert logged.read_text() == (out / "config.yaml").read_text()
    replayed = load_config(logged)  # what the report's command trains: the same config
    params = r.data.params
    for key, value in replayed.flat().items():
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        assert params[key] == text, key

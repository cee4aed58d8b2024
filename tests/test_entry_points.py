"""Every MLproject entry point exactly as README and docs/ show it (`mlflow run . --env-manager local -e
<entry> -P ...`), against one temporary sqlite store; run lookup; bad input; a regular install."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from seqtrack_mlflow import cli
from seqtrack_mlflow.presets import preset_path

from .conftest import REPO, new_store, use_store
from .test_evaluation_data import assert_same_test_split
from .tiny import write_tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory, empty_tracking_db) -> Path:
    return new_store(tmp_path_factory, empty_tracking_db, "entry-points")


@pytest.fixture(autouse=True)
def tracking_uri(store, monkeypatch, tmp_path_factory) -> str:
    """Overrides conftest's per-test store: the tests of this file build on one another's runs."""
    return use_store(monkeypatch, tmp_path_factory, store)


def mlflow_run(store: Path, entry: str, **params: str) -> subprocess.CompletedProcess:
    """`mlflow run <repo> --env-manager local -e entry -P k=v ...` from the store's folder."""
    argv = [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", "-e", entry]
    for key, value in params.items():
        argv += ["-P", f"{key}={value}"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
           "SEQTRACK_CACHE": str(store.parent / "seqtrack_cache"), "HF_HOME": str(store / "hf_home")}
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    return subprocess.run(argv, cwd=store, env=env, capture_output=True, text=True, timeout=900, check=False)


def runs_of_kind(kind: str) -> list:
    return MlflowClient().search_runs(["0"], filter_string=f"tags.`seqtrack.kind` = '{kind}'",
                                      order_by=["attributes.start_time DESC"])


@pytest.fixture(scope="module")
def trained(store) -> str:
    """`mlflow run . -P config=<tiny> -P epochs=2 ...`: the id of a FINISHED training run."""
    config = write_tiny_config(store / "cfg", train={"output_dir": str(store / "outputs")})
    result = mlflow_run(store, "main", config=config, epochs="2", workers="0", samples_per_epoch="24")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Epoch 2 : 24 / 24 samples , " in result.stdout
    # Module fixtures are set up before the per-test environment: name the store explicitly.
    (run,) = MlflowClient(f"sqlite:///{store / 'mlflow.db'}").search_runs(
        ["0"], filter_string="tags.`seqtrack.kind` = 'train'")
    return run.info.run_id


def test_main_logs_given_values_and_resolved_values_without_collisions(trained):
    run = MlflowClient().get_run(trained)
    assert run.info.status == "FINISHED"
    params = run.data.params
    # The -P values as mlflow run logged them ("" = not given) and the resolved config beside them.
    assert params["epochs"] == "2" and params["train.epochs"] == "2"
    assert params["seed"] == "''" and params["resolved_seed"] == "8"  # mlflow logs a '' -P shell-quoted
    assert params["data.samples_per_epoch"] == "24" and params["train.workers"] == "0"
    assert params["train.batch_size"] == "8"  # the tiny preset's own value: not masked by a default
    assert [m.step for m in MlflowClient().get_metric_history(trained, "epoch/val_iou")] == [1, 2]


def test_evaluate_entry_point(store, trained):
    result = mlflow_run(store, "evaluate", run_id=trained, epoch="best", device="cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    run = runs_of_kind("evaluate")[0]
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == trained
    assert run.data.params["epoch"] == "best" and run.data.params["eval.epoch"] in ("1", "2")
    assert "eval/auc" in run.data.metrics
    # the held-out sequences of the training run, on the sample
    assert run.data.params["data.source"] == "sample" and run.data.tags["seqtrack.cross_data"] == "false"
    assert assert_same_test_split(trained, run) == ["airplane-1", "airplane-9", "bicycle-2", "bicycle-7"]


def test_download_entry_point_defaults_to_the_latest_training_run(store, trained, tmp_path):
    result = mlflow_run(store, "download", artifact_path="checkpoints", dest=tmp_path / "dl")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "dl" / "checkpoints").iterdir()) == [
        "epoch_1.ckpt", "epoch_2.ckpt", "manifest.json"]
    assert runs_of_kind("download")[0].info.status == "FINISHED"


def test_mirror_without_run_id_after_an_evaluate_picks_the_training_run(store, trained, capsys, caplog):
    """The newest FINISHED run is an evaluation; only training runs are candidates."""
    caplog.set_level(logging.INFO)
    assert mlflow_run(store, "evaluate", run_id=trained, classes="bicycle", other_data="true").returncode == 0
    assert runs_of_kind("evaluate")[0].data.tags["seqtrack.cross_data"] == "true"
    assert runs_of_kind("evaluate")[0].info.start_time > MlflowClient().get_run(trained).info.start_time
    assert cli.main(["mirror", "--dry-run", "--repo-id", "someone/repo"]) == 0
    assert f"mirroring run {trained}" in caplog.text


@pytest.mark.parametrize("argv, words", [
    (["evaluate", "--experiment-name", "no-such-experiment"], ["experiment 'no-such-experiment' not found"]),
    (["download", "--experiment-name", "no-such-experiment"], ["experiment 'no-such-experiment' not found"]),
    (["mirror", "--dry-run", "--experiment-name", "no-such-experiment"], ["not found"]),
])
def test_unknown_experiment_is_one_line(argv, words, capsys, trained):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err


def test_a_run_of_the_wrong_kind_or_experiment_is_refused(store, trained, capsys):
    evaluation = (runs_of_kind("evaluate") or [None])[0]
    if evaluation is None:
        assert mlflow_run(store, "evaluate", run_id=trained).returncode == 0
        evaluation = runs_of_kind("evaluate")[0]
    assert cli.main(["evaluate", "--run-id", evaluation.info.run_id]) == 2
    assert "is not a training run (its seqtrack.kind tag is 'evaluate')" in capsys.readouterr().err
    MlflowClient().create_experiment("other", artifact_location=(store / "other").as_uri())
    assert cli.main(["evaluate", "--run-id", trained, "--experiment-name", "other"]) == 2
    assert "not to 'other'" in capsys.readouterr().err


def test_a_missing_config_fails_the_run_with_one_line(store):
    result = mlflow_run(store, "main", config="no/such/config.yaml", run_name="missing-config")
    assert result.returncode != 0
    assert "error: config: file 'no/such/config.yaml' not found" in result.stderr
    (run,) = MlflowClient().search_runs(["0"], filter_string="params.config = 'no/such/config.yaml'")
    assert run.info.status == "FAILED"  # never left RUNNING


def test_a_regular_install_finds_its_presets_from_any_folder(tmp_path):
    """`pip install .` (not editable) into a folder, run from elsewhere: presets are package data."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(REPO)], check=True, capture_output=True, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-m", "seqtrack_mlflow", "train", "--print-config"], cwd=elsewhere,
                         env=env, capture_output=True, text=True, check=True, timeout=120).stdout
    resolved = yaml.safe_load(out)
    assert resolved["model"]["patch_size"] == 8 and resolved["train"]["epochs"] == 5
    b256 = subprocess.run([sys.executable, "-m", "seqtrack_mlflow", "train", "--config", "seqtrack_b256",
                           "--print-config"], cwd=elsewhere, env=env, capture_output=True, text=True,
                          check=True, timeout=120).stdout
    assert yaml.safe_load(b256)["model"]["patch_size"] == 16
    imported = subprocess.run([sys.executable, "-c", "import seqtrack_mlflow; print(seqtrack_mlflow.__file__)"],
                              cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout
    assert imported.startswith(str(target))


def test_the_b256_preset_is_trained_as_it_is(store, tmp_path):
    """A copy of seqtrack_b256.yaml made cheap in data and epochs only: the model is the preset's."""
    tree = yaml.safe_load(preset_path("seqtrack_b256").read_text())
    tree["data"].update(source="sample", samples_per_epoch=2, val_samples=2)
    tree["train"].update(epochs=1, batch_size=2, workers=0, precision="bf16", output_dir=str(tmp_path / "o"))
    config = tmp_path / "b256_small.yaml"
    config.write_text(yaml.safe_dump(tree))
    result = mlflow_run(store, "main", config=config, run_name="b256-check")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = MlflowClient().search_runs(["0"], filter_string="attributes.run_name = 'b256-check'")
    params = run.data.params
    assert params["model.patch_size"] == "16" and params["model.search_size"] == "256"
    assert params["model.embed_dim"] == "768" and params["model.bins"] == "4000"


def test_main_with_init_starts_from_a_checkpoint(store, trained):
    """`mlflow run . -P init=<checkpoint>`: a new run at epoch 1, weights from the checkpoint,
    nested under the run that wrote it (same experiment). Last in this file: it adds a newer
    training run, and the tests above look up the latest one."""
    ckpt = store / "outputs" / trained / "checkpoints" / "epoch_2.ckpt"
    config = write_tiny_config(store / "cfg-init", train={"output_dir": str(store / "outputs")})
    result = mlflow_run(store, "main", config=config, init=ckpt, epochs="1", workers="0", samples_per_epoch="16",
                        run_name="warm-start")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = MlflowClient().search_runs(["0"], filter_string="attributes.run_name = 'warm-start'")
    assert run.info.status == "FINISHED"
    assert run.data.params["init"] == str(ckpt) and run.data.params["train.init"] == str(ckpt)
    tags = run.data.tags
    assert tags["seqtrack.init_source_run"] == trained == tags["mlflow.parentRunId"]
    assert tags["seqtrack.init_source_epoch"] == "2" and tags["seqtrack.init_kind"] == "file"
    assert [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "epoch/val_iou")] == [1]
    assert "warm start: " in result.stderr

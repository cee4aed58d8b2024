"""Which data `evaluate` scores: the test split of the data the model was trained on (the run's
config.yaml, its params, or the checkpoint's config), changed only by the data flags given;
other data only with --other-data, then never the run's result; a trained folder that is gone
is one error line. End to end through `mlflow run . -e evaluate` on a generated LaSOT tree."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from seqtrack_mlflow import cli, experiment
from seqtrack_mlflow.config import load_config
from seqtrack_mlflow.data.lasot import LasotDataset
from seqtrack_mlflow.data.synthetic import ensure_sample_data
from seqtrack_mlflow.errors import ConfigError, DataError
from seqtrack_mlflow.track import metrics as M
from seqtrack_mlflow.track.eval_data import TrainedData, evaluation_data, trained_data
from seqtrack_mlflow.track.tracker import result_paths

from .conftest import REPO
from .datatrees import make_lasot_tree, tree_snapshot
from .test_evaluate import fake_training_run, tiny_config
from .tiny import write_tiny_config

PROTOCOL_II = ["airplane-1", "airplane-9", "airplane-13", "airplane-15",
               "bicycle-2", "bicycle-7", "bicycle-9", "bicycle-18"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch-1 tracking of a tiny model: one thread is fastest
    yield
    torch.set_num_threads(threads)


def error_lines(err: str) -> list[str]:
    """stderr without MLflow's artifact download progress bars."""
    return [line for line in re.split(r"[\r\n]", err) if line.strip() and not line.startswith("Downloading artifacts")]


def dataset_inputs(run_id: str) -> dict[str, tuple[str, str]]:
    """{context: (dataset name, digest)} of a run's MLflow dataset inputs."""
    out = {}
    for item in MlflowClient().get_run(run_id).inputs.dataset_inputs:
        context = {t.key: t.value for t in item.tags}["mlflow.data.context"]
        out[context] = (item.dataset.name, item.dataset.digest)
    return out


def assert_same_test_split(train_run_id: str, eval_run) -> list[str]:
    """The trainer's held-out sequences (dataset_summary.json, validation input) are the ones the
    evaluation scored (eval.sequences, evaluation input): the same names and the same rows."""
    summary = json.loads(mlflow.artifacts.load_text(f"runs:/{train_run_id}/dataset_summary.json"))
    held_out = [name for row in summary["classes"].values() for name in row["test_names"]]
    scored = eval_run.data.params["eval.sequences"].split(",")
    assert scored == held_out
    name, digest = dataset_inputs(train_run_id)["validation"]
    assert dataset_inputs(eval_run.info.run_id)["evaluation"] == (name, digest)
    return scored


# -- where the trained data is read, and the rules on top -----------------------------------------
def test_the_trained_data_is_the_runs_config_yaml_then_its_params_then_the_checkpoints(tmp_path):
    stored = load_config(None, {"data.classes": "airplane"})  # the checkpoint's config
    with mlflow.start_run(tags={"seqtrack.kind": "train", "seqtrack.data_root": "/abs/lasot"}) as run:
        mlflow.log_text("data:\n  source: lasot\n  classes: [bicycle]\n  root: rel/lasot\n  gone_key: 1\n",
                        "config.yaml")
        mlflow.log_params({"data.source": "sample", "data.classes": "airplane", "data.root": ""})
    found = trained_data(run.info.run_id, stored)
    assert (found.data["source"], found.data["classes"], found.data["root"]) == ("lasot", ["bicycle"], "rel/lasot")
    assert "gone_key" not in found.data and found.data["val_samples"] == stored.data.val_samples
    assert found.origin == f"run {run.info.run_id}'s config.yaml" and found.root_read == "/abs/lasot"
    with mlflow.start_run(tags={"seqtrack.kind": "train"}) as run:
        mlflow.log_params({"data.source": "lasot", "data.classes": "bicycle,airplane", "data.root": "/x"})
    found = trained_data(run.info.run_id, stored)
    assert (found.data["source"], found.data["classes"], found.data["root"]) == ("lasot", "bicycle,airplane", "/x")
    assert found.label == "lasot:bicycle,airplane" and found.origin.endswith("'s params")
    with mlflow.start_run(tags={"seqtrack.kind": "train"}) as run:
        pass
    found = trained_data(run.info.run_id, stored)
    assert found.origin == "the checkpoint's config" and found.label == "sample:airplane"
    found = trained_data("", stored, "/ckpts/epoch_3.ckpt")
    assert found.what == "checkpoint /ckpts/epoch_3.ckpt" and found.data == stored.to_dict()["data"]


def test_flags_change_single_keys_and_other_data_needs_asking(tmp_path):
    lasot = make_lasot_tree(tmp_path / "lasot", seqs_per_class=1, frames=5)
    base = {**load_config(None).to_dict()["data"], "source": "lasot", "classes": ["airplane", "bicycle"]}

    def trained(**data) -> TrainedData:
        return TrainedData({**base, **data}, "run r1", "run r1's config.yaml")

    got = evaluation_data(trained(root=str(lasot)))
    assert (got.data.source, got.data.classes, got.data.root, got.cross) == (
        "lasot", ("airplane", "bicycle"), str(lasot), False)
    assert got.tags() == {"seqtrack.trained_on": "lasot:airplane,bicycle",
                          "seqtrack.evaluated_on": "lasot:airplane,bicycle", "seqtrack.cross_data": "false"}
    # "" is "not given" (MLproject passes it for every -P left out); another order is the same set
    got = evaluation_data(trained(root=str(lasot)), {"data.source": "", "data.classes": "bicycle,airplane",
                                                     "data.root": " "})
    assert got.data.root == str(lasot) and not got.cross and got.changed == ("data.classes",)
    # a relative folder is the absolute one the run read
    got = evaluation_data(TrainedData({**base, "root": "rel/lasot"}, "run r1", "x", root_read=str(lasot)))
    assert got.data.root == str(lasot)
    # a folder that is gone: one line naming it and the flag; --data-dir overrides it
    with pytest.raises(DataError) as caught:
        evaluation_data(trained(root=str(tmp_path / "gone")))
    assert str(tmp_path / "gone") in str(caught.value) and "--data-dir (MLflow: -P data_dir=" in str(caught.value)
    assert evaluation_data(trained(root=str(tmp_path / "gone")), {"data.root": str(lasot)}).data.root == str(lasot)
    # another class set or source: refused, unless asked for; the trained folder is not reused
    # for another source
    for given, words in (({"data.classes": "airplane"}, "--classes asks for lasot:airplane"),
                         ({"data.source": "sample"}, "--data asks for sample:airplane,bicycle"),
                         ({"data.source": "sample", "data.classes": "bicycle"}, "--data and --classes ask for")):
        with pytest.raises(ConfigError, match="add --other-data") as caught:
            evaluation_data(trained(root=str(lasot)), given)
        assert "run r1 was trained on lasot:airplane,bicycle" in str(caught.value) and words in str(caught.value)
    got = evaluation_data(trained(root=str(tmp_path / "gone")), {"data.source": "sample"}, other_data=True)
    assert got.cross and got.data.root == "" and got.tags()["seqtrack.cross_data"] == "true"
    assert "other data than trained on (lasot:airplane,bicycle)" in got.describe()
    assert not evaluation_data(trained(root=str(lasot)), other_data=True).cross  # own data: a regular evaluation


def test_a_cross_data_evaluation_is_never_the_runs_result(tmp_path, capsys):
    sample = ensure_sample_data()
    run_id = fake_training_run(tmp_path, params={"data.source": "sample", "data.classes": "airplane"})
    argv = ["evaluate", "--run-id", run_id, "--data-dir", str(sample), "--output-dir", str(tmp_path / "out"),
            "--device", "cpu", "--epoch", "1"]
    assert cli.main([*argv, "--classes", "bicycle", "--other-data"]) == 0
    assert "other data than trained on (sample:airplane)" in capsys.readouterr().out
    client = MlflowClient()
    (cross,) = client.search_runs(["0"], filter_string="tags.`seqtrack.kind` = 'evaluate'")
    assert cross.data.tags["mlflow.parentRunId"] == run_id  # listed under the run in the UI ...
    assert cross.data.tags["seqtrack.cross_data"] == "true" and "eval/auc" in cross.data.metrics
    assert cross.data.params["eval.sequences"] == "bicycle-2,bicycle-7"
    assert client.get_metric_history(run_id, "eval/auc") == []  # ... but not on its charts
    assert experiment.latest_evaluation(run_id) is None  # nor in its model card

    # a regular evaluation is the run's result; a later cross-data one does not replace it, nor
    # does an evaluation on other data recorded without the tag
    assert cli.main(argv) == 0
    (own,) = client.search_runs(["0"], filter_string="tags.`seqtrack.cross_data` = 'false'")
    [point] = client.get_metric_history(run_id, "eval/auc")
    assert point.value == own.data.metrics["eval/auc"]
    assert cli.main([*argv, "--classes", "airplane,bicycle", "--other-data", "true"]) == 0
    with experiment.EvaluationRun("eval-epoch1", parent_run_id=run_id, tags={"seqtrack.epoch": 1}) as untagged:
        untagged.log_params({"eval.epoch": 1, "data.source": "sample", "data.classes": "bicycle"})
        untagged.log_metrics({"eval/auc": 0.99}, step=1)
    assert len(client.get_metric_history(run_id, "eval/auc")) == 1
    found = experiment.latest_evaluation(run_id)
    assert found["run_id"] == own.info.run_id and found["metrics"]["auc"] == own.data.metrics["eval/auc"]


def test_a_run_whose_data_folder_is_gone_stops_with_one_line(tmp_path, capsys):
    gone = tmp_path / "moved-away"
    cfg = tiny_config(root=str(gone))
    run_id = fake_training_run(tmp_path, cfg=tiny_config(), logged_config=cfg.to_dict())  # config.yaml wins
    out = tmp_path / "out"
    assert cli.main(["evaluate", "--run-id", run_id, "--output-dir", str(out), "--device", "cpu"]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line == (f"error: run {run_id} was trained on sample data in {gone}, which no longer exists; give "
                    "--data-dir (MLflow: -P data_dir=...) with the folder that holds it now")
    assert not gone.exists() and not out.exists()  # nothing generated, nothing tracked
    assert [r.info.status for r in MlflowClient().search_runs(["0"])] == ["FINISHED"]  # no evaluation run


# -- end to end: `mlflow run . -e evaluate` of a run trained on a local LaSOT copy -----------------
def mlflow_run(store: Path, entry: str, **params) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", "-e", entry]
    for key, value in params.items():
        argv += ["-P", f"{key}={value}"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
           "SEQTRACK_CACHE": str(store / "cache"), "HF_HOME": str(store / "hf_home"), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    return subprocess.run(argv, cwd=store, env=env, capture_output=True, text=True, timeout=900, check=False)


def evaluations() -> list:
    return MlflowClient().search_runs(["0"], filter_string="tags.`seqtrack.kind` = 'evaluate'",
                                      order_by=["attributes.start_time DESC"])


def rescored_auc(run_id: str, root: Path, folder: Path) -> float:
    """The overall AUC computed again from the evaluation run's result files."""
    results = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="evaluation/results",
                                                       dst_path=str(folder)))
    curves = []
    for seq in LasotDataset(root, ("airplane", "bicycle")).test:
        box_path, _ = result_paths(results, seq.name)
        curves.append(M.sequence_curves(np.loadtxt(box_path, delimiter=","), seq.boxes, seq.visible))
    return M.average_curves(curves).auc


@pytest.mark.slow
def test_mlflow_run_evaluate_of_a_lasot_run_scores_its_own_test_split(tmp_path):
    store = Path(os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")).parent  # this test's own
    # 18 sequences per class: the 8 protocol-II test sequences (built-in list, no split file) and 28 train
    root = make_lasot_tree(tmp_path / "my-lasot", seqs_per_class=18, frames=20)
    before = tree_snapshot(root)
    config = write_tiny_config(tmp_path / "cfg", train={"output_dir": str(store / "outputs")})
    done = mlflow_run(store, "main", config=config, data="lasot", data_dir=root, epochs="1",
                      samples_per_epoch="16", workers="0")
    assert done.returncode == 0, done.stderr[-3000:]
    (train,) = MlflowClient().search_runs(["0"], filter_string="tags.`seqtrack.kind` = 'train'")
    run_id = train.info.run_id
    # Training wrote the sample for its LoggedModels' input example (publish/pyfunc_model.py);
    # removed, so that an evaluation opening the sample would have to generate it again.
    shutil.rmtree(store / "cache" / "sample-v1", ignore_errors=True)

    done = mlflow_run(store, "evaluate", run_id=run_id, device="cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"data: lasot data, classes airplane,bicycle, in {root} (from run {run_id}'s config.yaml)" in done.stdout
    (ev,) = evaluations()
    assert ev.info.status == "FINISHED" and ev.data.tags["mlflow.parentRunId"] == run_id
    assert ev.data.params["data.source"] == "lasot" and ev.data.params["data.root"] == str(root)
    assert (ev.data.tags["seqtrack.trained_on"], ev.data.tags["seqtrack.evaluated_on"],
            ev.data.tags["seqtrack.cross_data"]) == ("lasot:airplane,bicycle", "lasot:airplane,bicycle", "false")
    assert assert_same_test_split(run_id, ev) == PROTOCOL_II  # every test sequence, and only those
    auc = ev.data.metrics["eval/auc"]
    assert auc == pytest.approx(rescored_auc(ev.info.run_id, root, tmp_path / "dl"), abs=1e-12)
    assert [m.value for m in MlflowClient().get_metric_history(run_id, "eval/auc")] == [auc]
    assert experiment.latest_evaluation(run_id)["run_id"] == ev.info.run_id

    # no run id: the newest training run, with the same data
    done = mlflow_run(store, "evaluate", device="cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    assert evaluations()[0].data.params["eval.sequences"] == ",".join(PROTOCOL_II)

    # the sample was never opened, the copy never written
    assert not (store / "cache" / "sample-v1").exists()
    assert tree_snapshot(root) == before

    # other data: refused unless asked for, then tagged and kept off the training run
    done = mlflow_run(store, "evaluate", run_id=run_id, classes="bicycle", device="cpu")
    assert done.returncode != 0
    assert (f"error: run {run_id} was trained on lasot:airplane,bicycle; --classes asks for lasot:bicycle: "
            "add --other-data (MLflow: -P other_data=true)") in done.stderr
    done = mlflow_run(store, "evaluate", run_id=run_id, classes="bicycle", other_data="true", device="cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    cross = evaluations()[0]
    assert cross.data.tags["seqtrack.cross_data"] == "true"
    assert cross.data.params["eval.sequences"] == "bicycle-2,bicycle-7,bicycle-9,bicycle-18"
    assert len(MlflowClient().get_metric_history(run_id, "eval/auc")) == 2  # the two own evaluations only
    assert experiment.latest_evaluation(run_id)["run_id"] != cross.info.run_id

    # the copy moved: one line naming the folder and the flag; the flag points at the new place
    moved = root.rename(tmp_path / "moved-lasot")
    done = mlflow_run(store, "evaluate", run_id=run_id, device="cpu")
    assert done.returncode != 0
    assert (f"error: run {run_id} was trained on lasot data in {root}, which no longer exists; give --data-dir "
            "(MLflow: -P data_dir=...) with the folder that holds it now") in done.stderr
    done = mlflow_run(store, "evaluate", run_id=run_id, data_dir=moved, device="cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    ev = evaluations()[0]
    assert ev.data.params["data.root"] == str(moved) and ev.data.tags["seqtrack.cross_data"] == "false"
    assert assert_same_test_split(run_id, ev) == PROTOCOL_II

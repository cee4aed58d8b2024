"""MLflow 3 model lifecycle on a tiny training run: a LoggedModel per epoch with its metrics,
the best epoch registered with an alias, pyfunc loading in a fresh process without pickle,
system metrics, and evaluation results on the training run."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from seqtrack_mlflow import cli
from seqtrack_mlflow.data.lasot import LasotDataset
from seqtrack_mlflow.data.synthetic import ensure_sample_data
from seqtrack_mlflow.publish.models import should_log_model
from seqtrack_mlflow.torchfile import read_torch_file
from tests.tiny import write_tiny_config

REPO = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter: pickle is made to fail, so loading must not need it.
LOAD_AND_PREDICT = r"""
import json, pickle, sys
def refuse(*a, **k):
    raise AssertionError("pickle used while loading the model")
pickle.load = pickle.loads = refuse
import cloudpickle
cloudpickle.load = cloudpickle.loads = refuse
import mlflow.pyfunc
from seqtrack_mlflow.publish.pyfunc_model import tracking_input
from seqtrack_mlflow.data.frames import read_frame
uri, box, paths = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
model = mlflow.pyfunc.load_model(uri)
by_path = model.predict(tracking_input(paths, box))
by_array = model.predict(tracking_input([read_frame(p) for p in paths], box))
example = model.predict(model.input_example)
print(json.dumps({"path": by_path.values.tolist(), "array": by_array.values.tolist(),
                  "example_rows": len(example), "example_in": len(model.input_example)}))
"""


@pytest.fixture(autouse=True)
def in_process(monkeypatch):
    """In-process training must not re-exec pytest to set PYTHONHASHSEED (as test_trainer)."""
    monkeypatch.setenv("PYTHONHASHSEED", "8")
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def train(tmp_path: Path, *extra: str, **sections) -> str:
    config = write_tiny_config(tmp_path, **sections)
    assert cli.main(["train", "--config", str(config), "--output-dir", str(tmp_path / "out"),
                     "--device", "cpu", *extra]) == 0
    [run] = MlflowClient().search_runs([mlflow.get_experiment_by_name("Default").experiment_id],
                                       filter_string="tags.`seqtrack.kind` = 'train'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
    return run.info.run_id


def test_epoch_models_alias_pyfunc_system_metrics_and_evaluation(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # the tiny run takes seconds
    torch.set_num_threads(1)
    run_id = train(tmp_path, train={"epochs": 2})
    client = MlflowClient()
    run = client.get_run(run_id)

    # every epoch a LoggedModel of the run, at step = epoch, with that epoch's metrics and the
    # held-out dataset
    models = mlflow.search_logged_models(filter_string=f"source_run_id = '{run_id}'", output_format="list")
    by_epoch = {int(m.tags["seqtrack.epoch"]): m for m in models}
    assert sorted(by_epoch) == [1, 2]
    assert sorted((o.step, o.model_id) for o in run.outputs.model_outputs) == \
        sorted((e, m.model_id) for e, m in by_epoch.items())
    val = {m.step: m.value for m in client.get_metric_history(run_id, "epoch/val_iou")}
    for epoch, model in by_epoch.items():
        points = {m.key: m for m in model.metrics if m.key.startswith("epoch/")}
        assert points["epoch/val_iou"].step == epoch and points["epoch/val_iou"].value == val[epoch]
        assert points["epoch/train_loss"].step == epoch
        assert points["epoch/val_iou"].dataset_name.endswith("/test")  # the validation input: the held-out (test) rows
        assert {"MLmodel", "artifacts", "pyfunc_model.py", "input_example.json"} <= \
            {Path(a.path).name for a in client.list_logged_model_artifacts(model.model_id)}
        assert {Path(a.path).name for a in client.list_logged_model_artifacts(model.model_id, "artifacts/weights")} \
            == {"config.json", "model.safetensors"}

    # the alias points at the best epoch (highest val IoU, earliest on ties); the first version
    # of the name takes it, and `newest` too; the version records its score and held-out digest
    best = max(val, key=lambda e: (val[e], -e))
    version = client.get_model_version_by_alias("seqtrack-lasot", "champion")
    assert version.tags["seqtrack.epoch"] == str(best) and version.run_id == run_id
    assert client.get_model_version_by_alias("seqtrack-lasot", "newest").version == version.version
    [validation] = [d.dataset for d in run.inputs.dataset_inputs
                    if {t.key: t.value for t in d.tags}.get("mlflow.data.context") == "validation"]
    assert version.tags["seqtrack.validation_digest"] == validation.digest
    assert version.tags["seqtrack.ranking_metric"] == "epoch/val_iou"
    assert float(version.tags["seqtrack.ranking_value"]) == val[best]
    assert version.tags["seqtrack.champion_decision"].startswith("champion: no version held the alias")

    # the experiment opens as model training in MLflow 3's UI
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    # run-level bests: search_runs ranks runs by them (the last value of each)
    assert run.data.metrics["epoch/best_epoch"] == best
    assert run.data.metrics["epoch/best_val_iou"] == max(val.values())
    assert "epoch/best_val_auc" not in run.data.metrics  # the tiny run does not track (val_tracking never)
    assert client.search_runs([run.info.experiment_id], order_by=["metrics.`epoch/best_val_iou` DESC"])[0] \
        .info.run_id == run_id

    # the model rebuilds anywhere: requirements without local version labels, the package
    # shipped beside it, input examples in strict JSON (missing boxes as null)
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{by_epoch[best].model_id}", dst_path=str(tmp_path / "m")))
    requirements = (folder / "requirements.txt").read_text().split()
    # everything the model's code imports when it loads and predicts (cv2: the crops)
    assert {r.split("==")[0] for r in requirements} >= {"torch", "mlflow", "huggingface_hub", "safetensors", "numpy",
                                                        "pandas", "pillow", "pyyaml", "opencv-python-headless"}
    assert all("==" in r and "+" not in r for r in requirements), requirements
    assert (folder / "code" / "seqtrack_mlflow" / "model" / "seqtrack.py").is_file()
    assert (folder / "code" / "seqtrack_mlflow" / "model" / "official_keys.txt").is_file()
    assert not list((folder / "code").rglob("__pycache__"))
    for name in ("input_example.json", "serving_input_example.json"):
        text = (folder / name).read_text()
        json.loads(text, parse_constant=lambda c: pytest.fail(f"{name} holds {c}: not strict JSON"))
        assert "null" in text
    assert '"type": "string", "name": "frame"' in (folder / "MLmodel").read_text().replace("\\", "")

    # system metrics beside the training curves
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics)

    # pyfunc: a fresh process, pickle disabled, with MLFLOW_ALLOW_PICKLE_DESERIALIZATION unset and false
    seq = LasotDataset(ensure_sample_data(), ("airplane",)).test[0]
    paths = [str(seq.frame_path(i)) for i in range(4)]
    box = [float(v) for v in seq.boxes[0]]
    for allow in (None, "false"):
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"}
        if allow is not None:
            env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = allow
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
        done = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, "models:/seqtrack-lasot@champion",
                               json.dumps(box), json.dumps(paths)], env=env, capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert len(result["path"]) == len(paths) and all(len(b) == 4 for b in result["path"])
        assert result["path"][0] == pytest.approx(box)
        assert result["array"] == result["path"]
        assert result["example_rows"] == result["example_in"] == 3

    # evaluate a registered model: AUC on the training run at the evaluated step, and on the model
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--run-id", "models:/seqtrack-lasot@champion",
                     "--data-dir", str(ensure_sample_data()), "--output-dir", str(out), "--device", "cpu"]) == 0
    [auc] = client.get_metric_history(run_id, "eval/auc")
    assert auc.step == best and 0 <= auc.value <= 1
    model = client.get_logged_model(by_epoch[best].model_id)
    assert [(m.step, m.value) for m in model.metrics if m.key == "eval/auc"] == [(best, auc.value)]
    [child] = client.search_runs([run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    assert child.data.metrics["eval/auc"] == auc.value
    listed = {Path(a.path).name for a in client.list_artifacts(child.info.run_id, "evaluation")}
    assert {"sequences.json", *(f"{s.name}.gif" for s in LasotDataset(ensure_sample_data(), ("airplane",)).test)} <= listed

    # an unknown alias or name: one line, exit 2
    capsys.readouterr()
    for uri in ("models:/seqtrack-lasot@nope", "models:/no-such-model@champion", "models:/m-0000"):
        assert cli.main(["evaluate", "--run-id", uri, "--output-dir", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {uri}: no such") and "\n" not in err


def test_logging_models_changes_no_training_bits(tmp_path):
    """Epoch 2's checkpoint is the same whether epoch 1 was logged as a model or not: logging
    models consumes no random numbers and changes nothing the trainer computes."""
    states = {}
    for mode in ("all", "last"):
        run_id = train(tmp_path / mode, "--no-system-metrics", train={"epochs": 2})
        states[mode] = read_torch_file(tmp_path / mode / "out" / run_id / "checkpoints" / "epoch_2.ckpt")
        assert not any(k.startswith("system/") for k in MlflowClient().get_run(run_id).data.metrics)
    a, b = states["all"], states["last"]
    assert a["model_state_dict"].keys() == b["model_state_dict"].keys()
    assert all(torch.equal(a["model_state_dict"][k], b["model_state_dict"][k]) for k in a["model_state_dict"])
    assert [h["val_iou"] for h in a["metrics"]] == [h["val_iou"] for h in b["metrics"]]
    assert [h["train_loss"] for h in a["metrics"]] == [h["train_loss"] for h in b["metrics"]]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"]) if "torch" in a["rng"] else True


def test_which_epochs_become_models():
    history = [{"val_iou": 0.3}, {"val_iou": 0.5}]
    assert should_log_model("all", 3, 5, {"val_iou": 0.1}, history)
    assert not should_log_model("last", 3, 5, {"val_iou": 0.9}, history)
    assert should_log_model("last", 5, 5, {"val_iou": 0.1}, history)
    assert should_log_model("best", 1, 5, {"val_iou": 0.1}, [])
    assert should_log_model("best", 3, 5, {"val_iou": 0.6}, history)
    assert not should_log_model("best", 3, 5, {"val_iou": 0.5}, history)  # a tie is no improvement
    # With per-epoch tracking, AUC decides: a higher val IoU with a lower AUC is no improvement.
    history = [{"val_iou": 0.65, "val_auc": 0.05}, {"val_iou": 0.30, "val_auc": 0.20}]
    assert should_log_model("best", 3, 5, {"val_iou": 0.40, "val_auc": 0.25}, history)
    assert not should_log_model("best", 3, 5, {"val_iou": 0.70, "val_auc": 0.10}, history)


def _registered(name: str, alias: str) -> str:
    return MlflowClient().get_model_version_by_alias(name, alias).version


@pytest.mark.slow
def test_champion_moves_only_to_a_better_version_on_the_same_data(tmp_path, caplog, monkeypatch):
    """One-epoch runs of three seeds (the same held-out rows, so one validation digest), their
    scores read first from runs that register nothing. Then, registered in this order: the
    middle seed takes champion (no champion yet); the worst takes only `newest`; the middle
    seed again (bit-identical: a tie) keeps the champion; the best takes both; the worst,
    forced, takes both. Each decision is a version tag and one log line."""
    torch.set_num_threads(1)
    caplog.set_level(logging.INFO, logger="seqtrack_mlflow")
    client = MlflowClient()
    score = {}
    for seed in (8, 9, 10):
        monkeypatch.setenv("PYTHONHASHSEED", str(seed))  # else the trainer re-executes itself to set it
        probe = train(tmp_path / f"probe{seed}", "--no-system-metrics", seed=seed, train={"epochs": 1},
                      mlflow={"registered_model": ""})
        score[seed] = client.get_run(probe).data.metrics["epoch/val_iou"]
    low, mid, high = sorted(score, key=score.get)
    assert score[low] < score[mid] < score[high], f"two seeds tie ({score}); pick other seeds"
    name = "champion-test"

    def run(folder: str, seed: int, *extra: str) -> tuple[str, str]:
        caplog.clear()
        monkeypatch.setenv("PYTHONHASHSEED", str(seed))
        run_id = train(tmp_path / folder, "--no-system-metrics", *extra, seed=seed, train={"epochs": 1},
                       mlflow={"registered_model": name})
        [version] = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        assert float(version.tags["seqtrack.ranking_value"]) == score[seed]
        [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("registered epoch")]
        assert version.tags["seqtrack.champion_decision"] in line
        assert _registered(name, "newest") == version.version
        return version.version, version.tags["seqtrack.champion_decision"]

    first, why = run("first", mid)
    assert _registered(name, "champion") == first and why.startswith("champion: no version")
    worse, why = run("worse", low)
    assert _registered(name, "champion") == first and why.startswith("not champion:") and "does not beat" in why
    same, why = run("same", mid)
    assert _registered(name, "champion") == first and "does not beat" in why
    better, why = run("better", high)
    assert _registered(name, "champion") == better and why.startswith("champion:") and "beats" in why
    forced, why = run("forced", low, "--set", "mlflow.force_champion=true")
    assert _registered(name, "champion") == forced and "forced" in why

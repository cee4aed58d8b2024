"""`evaluate` end to end on a tiny logged training run, plus the GIF and the epoch choice."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from seqtrack_mlflow import cli
from seqtrack_mlflow.config import load_config
from seqtrack_mlflow.data.lasot import LasotDataset
from seqtrack_mlflow.data.synthetic import ensure_sample_data
from seqtrack_mlflow.epoch_ranking import best_epoch, best_in_history, history_points, row_score
from seqtrack_mlflow.model import build_seqtrack
from seqtrack_mlflow.track import metrics as M
from seqtrack_mlflow.track.evaluate import parse_epoch
from seqtrack_mlflow.track.plots import (
    GT_COLOR,
    LEGEND_HEIGHT,
    PRED_COLOR,
    gif_frame_indices,
    write_tracking_gif,
)
from seqtrack_mlflow.track.tracker import result_paths
from seqtrack_mlflow.train.checkpoint import save_checkpoint

from .tiny import write_tiny_config

TINY_MODEL = {"patch_size": 8, "template_size": 32, "search_size": 64, "num_templates": 2,
              "embed_dim": 32, "depth": 1, "num_heads": 2, "bins": 64, "decoder_dim": 32,
              "decoder_layers": 1, "decoder_heads": 2, "decoder_ffn": 64}
VAL_IOU = {1: 0.2, 2: 0.5, 3: 0.4}  # best = epoch 2


@pytest.fixture(autouse=True)
def one_thread():
    """Batch-1 tracking of a tiny model is latency-bound: on shared CI cores one intra-op
    thread is ~7x faster than two (measured: 245 vs 35 fps) and keeps this file quick."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def sample_root() -> Path:
    """The bundled sample tree in the test run's cache (conftest sets SEQTRACK_CACHE)."""
    return ensure_sample_data()


def tiny_config(**data):
    """The tiny model, trained on the sample's airplane class (2 test sequences, 345 frames:
    quick to track), data.* keys changed by `data`."""
    overrides = {f"model.{k}": v for k, v in TINY_MODEL.items()}
    return load_config(None, {**overrides, "data.template_factor": 2.0, "data.classes": "airplane",
                              **{f"data.{k}": v for k, v in data.items()}})


def fake_training_run(folder: Path, cfg=None, logged_config=None, params=None, tags=None) -> str:
    """A FINISHED training run with 3 epoch checkpoints of a random tiny model (their stored
    config: cfg) and epoch/val_iou; logged_config (a config tree) becomes its config.yaml."""
    cfg = cfg or tiny_config()
    torch.manual_seed(0)
    model = build_seqtrack(cfg.model)
    history = []
    with mlflow.start_run(run_name="train", tags={"seqtrack.kind": "train", **(tags or {})}) as run:
        if params:
            mlflow.log_params(params)
        if logged_config is not None:
            mlflow.log_text(yaml.safe_dump(logged_config), "config.yaml")
        for epoch, iou in VAL_IOU.items():
            history.append({"train_loss": 1.0, "val_iou": iou})
            state = {"model_state_dict": model.state_dict(), "optimizer_state_dict": {}, "epoch": epoch,
                     "seed": cfg.seed, "config": cfg.to_dict(), "metrics": list(history)}
            path = save_checkpoint(folder / "ckpt" / f"epoch_{epoch}.ckpt", state)
            mlflow.log_artifact(str(path), "checkpoints")
            mlflow.log_metric("epoch/val_iou", iou, step=epoch)
    return run.info.run_id


@pytest.fixture
def training_run(tmp_path) -> str:
    """A training run of the tiny model on the sample's airplane class, data root '' (the cache)."""
    return fake_training_run(tmp_path)


def run_cli(*argv, sample_root: Path, out: Path) -> int:
    return cli.main(["evaluate", *argv, "--data-dir", str(sample_root), "--output-dir", str(out),
                     "--device", "cpu"])


def test_evaluate_run_end_to_end(training_run, sample_root, tmp_path, capsys):
    out = tmp_path / "out"
    # the run's own classes (airplane); --data-dir points at the same sample elsewhere: not other data
    assert run_cli("--run-id", training_run, sample_root=sample_root, out=out) == 0
    client = MlflowClient()
    parent = client.get_run(training_run)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{training_run}'")
    assert len(children) == 1
    child = children[0]
    assert child.info.status == "FINISHED"
    assert child.data.tags["seqtrack.kind"] == "evaluate"
    assert child.data.tags["seqtrack.cross_data"] == "false"
    assert child.data.tags["seqtrack.trained_on"] == child.data.tags["seqtrack.evaluated_on"] == "sample:airplane"
    assert child.data.params["data.root"] == str(sample_root)
    [on_run] = client.get_metric_history(training_run, "eval/auc")  # the run's own result
    assert on_run.step == 2 and on_run.value == child.data.metrics["eval/auc"]
    assert child.data.params["eval.epoch"] == "2" and "best" in child.data.params["eval.epoch_choice"]
    for key in ("eval/auc", "eval/precision", "eval/norm_precision", "eval/mean_iou", "eval/fps",
                "eval/static_auc", "eval/static_precision", "eval/static_norm_precision"):
        [point] = client.get_metric_history(child.info.run_id, key)
        assert point.step == 2 and np.isfinite(point.value)
    assert client.get_metric_history(child.info.run_id, "eval/airplane-1/auc")

    def listing(path):
        return {Path(a.path).name for a in client.list_artifacts(child.info.run_id, path)}
    top = listing("evaluation")
    assert {"metrics.json", "success_plot.png", "precision_plot.png", "norm_precision_plot.png",
            "airplane-1.gif", "results"} <= top
    test_names = [s.name for s in LasotDataset(sample_root, ("airplane",)).test]
    assert listing("evaluation/results") == {f"{n}{s}.txt" for n in test_names for s in ("", "_time")}

    # metrics.json agrees with the result files scored again from scratch
    folder = next((out / "evaluation").iterdir())
    doc = json.loads((folder / "metrics.json").read_text())
    seqs = LasotDataset(sample_root, ("airplane",)).test
    curves = []
    for seq in seqs:
        box_path, _ = result_paths(folder / "results", seq.name)
        pred = np.loadtxt(box_path, delimiter=",")
        c = M.sequence_curves(pred, seq.boxes, seq.visible)
        curves.append(c)
        assert doc["sequences"][seq.name]["auc"] == pytest.approx(c.auc, abs=1e-9)
        assert doc["sequences"][seq.name]["skipped"] is False
    assert doc["overall"]["auc"] == pytest.approx(M.average_curves(curves).auc, abs=1e-9)
    static = M.average_curves([M.sequence_curves(np.repeat(s.boxes[:1], len(s.boxes), axis=0), s.boxes,
                                                 s.visible) for s in seqs])
    for name, value in static.scores().items():
        assert doc["overall"][f"static_{name}"] == pytest.approx(value, abs=1e-12)
    assert doc["overall"]["frames"] == sum(len(s) for s in seqs) and doc["overall"]["fps"] > 0
    [auc] = client.get_metric_history(child.info.run_id, "eval/auc")
    assert auc.value == pytest.approx(doc["overall"]["auc"])
    with Image.open(folder / "airplane-1.gif") as gif:
        assert gif.n_frames == len(gif_frame_indices(len(seqs[0]), 40))
    printed = capsys.readouterr().out
    assert "overall: AUC" in printed and "static box: AUC" in printed
    assert f"data: sample data, classes airplane, in {sample_root} (from the checkpoint's config; changed by " \
           "--data-dir)" in printed

    # a second evaluation of the same checkpoint reuses the finished result files
    assert run_cli("--run-id", training_run, "--epoch", "2", sample_root=sample_root, out=out) == 0
    doc2 = json.loads((folder / "metrics.json").read_text())
    assert all(s["skipped"] for s in doc2["sequences"].values())
    assert doc2["overall"]["auc"] == doc["overall"]["auc"]


def test_evaluate_checkpoint_file_is_a_standalone_run(training_run, sample_root, tmp_path):
    path = mlflow.artifacts.download_artifacts(run_id=training_run, artifact_path="checkpoints/epoch_3.ckpt",
                                               dst_path=str(tmp_path / "dl"))
    # trained on airplane: bicycle is other data, scored only when asked for
    assert run_cli("--checkpoint", path, "--classes", "bicycle", "--other-data", sample_root=sample_root,
                   out=tmp_path / "out") == 0
    runs = MlflowClient().search_runs([MlflowClient().get_run(training_run).info.experiment_id],
                                      filter_string="tags.`seqtrack.kind` = 'evaluate'")
    assert len(runs) == 1 and "mlflow.parentRunId" not in runs[0].data.tags
    assert runs[0].data.params["eval.epoch"] == "3"
    assert runs[0].data.params["eval.sequences"] == "bicycle-2,bicycle-7"
    tags = runs[0].data.tags
    assert (tags["seqtrack.cross_data"], tags["seqtrack.trained_on"], tags["seqtrack.evaluated_on"]) == (
        "true", "sample:airplane", "sample:bicycle")


BAD_INPUT = [  # one run for all cases: each fresh tracking store costs seconds
    (["--run-id", "0123456789abcdef0123456789abcdef"], "no MLflow run"),
    (["--run-id", "{run}", "--epoch", "7"], "no checkpoint of epoch 7 (epochs with checkpoints: 1, 2, 3)"),
    (["--run-id", "{run}", "--epoch", "soon"], "--epoch 'soon'"),
    (["--checkpoint", "/nonexistent/epoch_1.ckpt"], "does not exist"),
    (["--checkpoint", "{bad}"], "bad.ckpt"),
    (["--run-id", "{run}", "--checkpoint", "x.ckpt"], "either --run-id or --checkpoint"),
    (["--run-id", "{run}", "--classes", "bicycle"], "trained on sample:airplane; --classes asks for "
     "sample:bicycle: add --other-data (MLflow: -P other_data=true)"),
    (["--run-id", "{run}", "--data", "lasot"], "--data asks for lasot:airplane: add --other-data"),
    (["--checkpoint", "{ckpt}", "--classes", "airplane,bicycle"], "add --other-data"),
]


def test_bad_input_is_one_line_and_exit_2(training_run, sample_root, tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    ckpt = mlflow.artifacts.download_artifacts(run_id=training_run, artifact_path="checkpoints/epoch_1.ckpt",
                                               dst_path=str(tmp_path / "dl"))
    capsys.readouterr()  # the download's progress bar
    for argv, message in BAD_INPUT:
        argv = [a.replace("{run}", training_run).replace("{bad}", str(bad)).replace("{ckpt}", ckpt) for a in argv]
        assert run_cli(*argv, sample_root=sample_root, out=tmp_path / "out") == 2, argv
        # MLflow's own download progress bars aside (the checkpoint, the run's config.yaml)
        lines = [line for line in re.split(r"[\r\n]", capsys.readouterr().err)
                 if line.strip() and not line.startswith("Downloading artifacts")]
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (argv, lines)
    assert not (tmp_path / "out").exists()  # nothing tracked


def test_best_epoch_choice():
    assert parse_epoch("best") == "best" and parse_epoch(" LAST ") == "last" and parse_epoch("3") == 3
    points = [(1, 0.2), (2, 0.5), (3, 0.5), (4, 0.9)]
    assert best_epoch(points, [1, 2, 3]) == (2, 0.5)  # epoch 4 has no checkpoint; ties -> earliest
    assert best_epoch([(1, float("nan"))], [1]) is None
    assert best_epoch([], [1]) is None
    # fallback when the run has no epoch/* metric: the last checkpoint's history
    history = [{"train_loss": 1.0, "val_iou": 0.1}, {"train_loss": 0.9, "val_iou": 0.3}]
    assert history_points(history, "val_iou") == [(1, 0.1), (2, 0.3)]
    assert best_in_history(history, [1, 2]) == (2, "epoch/val_iou", 0.3)
    assert history_points(None, "val_iou") == [] and best_in_history(None, [1]) is None
    # A run that tracked its held-out sequences each epoch selects by AUC, not by val IoU: the
    # sample data's epoch 1 has the best val IoU and tracks worst (benchmarks/results/learning.md).
    history = [{"val_iou": 0.65, "val_auc": 0.05}, {"val_iou": 0.30, "val_auc": 0.20},
               {"val_iou": 0.62, "val_auc": 0.25}]
    assert best_in_history(history, [1, 2, 3]) == (3, "epoch/val_auc", 0.25)
    assert [row_score(h) for h in history] == [0.05, 0.20, 0.25]
    assert row_score({"val_iou": 0.4}) == 0.4 and math.isnan(row_score({"val_iou": float("nan")}))


def test_val_tracking_logs_the_auc_evaluate_finds_and_picks_best_by_it(tmp_path, sample_root, monkeypatch):
    """data.val_tracking=always: each epoch tracks the held-out sequences; the logged
    epoch/val_auc is exactly what `evaluate` of that epoch's checkpoint measures (same tracker,
    frames and scoring, fp32), and 'best' (evaluate, registry) follows it."""
    monkeypatch.setenv("PYTHONHASHSEED", "8")  # no re-exec for the hash seed
    monkeypatch.setenv("SEQTRACK_HASHSEED_SET", "1")
    config = write_tiny_config(tmp_path / "cfg", data={"val_tracking": "always", "classes": ["airplane"]},
                               train={"epochs": 2})
    assert cli.main(["train", "--config", str(config), "--output-dir", str(tmp_path / "train"),
                     "--data-dir", str(sample_root), "--no-system-metrics"]) == 0
    client = MlflowClient()
    (run,) = client.search_runs(["0"], filter_string="tags.`seqtrack.kind` = 'train'")
    run_id = run.info.run_id
    auc = {m.step: m.value for m in client.get_metric_history(run_id, "epoch/val_auc")}
    assert sorted(auc) == [1, 2] and all(0.0 <= v <= 1.0 for v in auc.values())
    for key in ("epoch/val_precision", "epoch/val_norm_precision"):
        assert len(client.get_metric_history(run_id, key)) == 2
    best = max(auc, key=lambda e: (auc[e], -e))
    assert run_cli("--run-id", run_id, sample_root=sample_root, out=tmp_path / "ev") == 0
    (ev,) = client.search_runs(["0"], filter_string="tags.`seqtrack.kind` = 'evaluate'")
    assert ev.data.params["eval.epoch"] == str(best)
    assert ev.data.params["eval.epoch_choice"] == f"best epoch/val_auc={auc[best]:.4f}"
    assert ev.data.metrics["eval/auc"] == auc[best]  # bit-equal: the same computation
    version = client.get_model_version_by_alias("seqtrack-lasot", "champion")
    assert "epoch/val_auc" in version.description and f"epoch {best} " in version.description


def test_gif_has_the_subsampled_frames(tmp_path):
    n = 23
    gt = np.tile([60.0, 40.0, 20.0, 15.0], (n, 1)) + np.arange(n)[:, None] * [2, 1, 0, 0]
    pred = gt + 3
    visible = np.ones(n, bool)
    visible[5] = False
    frames = {}

    def frame_at(i):
        frames[i] = True
        return np.full((120, 400, 3), 40, np.uint8)

    count = write_tracking_gif(tmp_path / "s.gif", frame_at, gt, pred, visible, max_frames=10, max_side=200)
    assert gif_frame_indices(n, 10) == list(range(0, 23, 3)) and count == 8
    assert sorted(frames) == list(range(0, 23, 3))  # only the kept frames were decoded
    with Image.open(tmp_path / "s.gif") as gif:
        assert gif.n_frames == 8 and gif.size == (200, 60 + LEGEND_HEIGHT)  # legend band below
        gif.seek(1)  # frame 3: truth (cyan) and prediction (magenta) drawn at half scale
        rgb = np.asarray(gif.convert("RGB")).astype(int)
    x, y = (gt[3, :2] * 0.5).astype(int)
    assert rgb[y, x, 1] > 150 and rgb[y, x, 2] > 150 and rgb[y, x, 0] < 100
    px, py = (pred[3, :2] * 0.5 + 0.5).astype(int)
    assert rgb[py, px, 0] > 150 and rgb[py, px, 2] > 150 and rgb[py, px, 1] < 100
    legend = rgb[60:]
    for color in (GT_COLOR, PRED_COLOR):  # the legend names both colours
        assert (np.abs(legend - np.array(color)).sum(axis=2) < 60).any()

    # with a title: a band above the frame too
    write_tracking_gif(tmp_path / "t.gif", frame_at, gt, pred, visible, max_frames=10, max_side=200,
                       title="airplane-1, run 1a2b3c4d epoch 3")
    with Image.open(tmp_path / "t.gif") as gif:
        assert gif.size == (200, 60 + 2 * LEGEND_HEIGHT)

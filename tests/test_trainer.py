"""The trainer end to end: run contents, determinism, exact resume, CPU fallback."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from seqtrack_mlflow import cli
from seqtrack_mlflow.config import load_config
from seqtrack_mlflow.errors import ConfigError
from seqtrack_mlflow.train.checkpoint import load_checkpoint
from seqtrack_mlflow.train.device import resolve_device, resolve_precision
from seqtrack_mlflow.train.optim import cosine_factor
from seqtrack_mlflow.train.progress import BLOCK_RE
from seqtrack_mlflow.train.resume import load_resume_state

from .conftest import REPO
from .tiny import write_tiny_config

DETERMINISTIC_METRICS = ("train/loss", "train/iou", "epoch/train_loss", "epoch/val_iou", "epoch/best_val_iou")


def train(tmp_path: Path, *args: str, **sections) -> str:
    """Train in this process (PYTHONHASHSEED preset so no re-exec); return the run id."""
    config = write_tiny_config(tmp_path, **sections)
    client = MlflowClient()
    before = {r.info.run_id for r in client.search_runs(["0"])}
    assert cli.main(["train", "--config", str(config), "--output-dir", str(tmp_path / "outputs"), *args]) == 0
    (run_id,) = {r.info.run_id for r in client.search_runs(["0"])} - before
    return run_id


def metrics(run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient()
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in DETERMINISTIC_METRICS}


def checkpoint(tmp_path: Path, run_id: str, epoch: int) -> dict:
    """A checkpoint without its wall-clock entries (the only parts that may differ)."""
    state = load_checkpoint(tmp_path / "outputs" / run_id / "checkpoints" / f"epoch_{epoch}.ckpt")
    state["metrics"] = [{k: v for k, v in m.items() if k != "seconds"} for m in state["metrics"]]
    return state


def assert_same_tensors(a, b, path="") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_tensors(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.fixture(autouse=True)
def no_reexec(monkeypatch):
    """In-process training must not re-exec pytest to set PYTHONHASHSEED (nothing here hashes
    strings into results; the subprocess test below covers the real entry point)."""
    monkeypatch.setenv("PYTHONHASHSEED", "8")
    monkeypatch.setenv("SEQTRACK_HASHSEED_SET", "1")


def test_same_seed_is_bit_identical_whatever_the_worker_count_and_another_seed_differs(tmp_path):
    a = train(tmp_path / "a", train={"epochs": 2, "workers": 0})
    b = train(tmp_path / "b", train={"epochs": 2, "workers": 1})
    c = train(tmp_path / "c", "--seed", "9", train={"epochs": 2})
    assert metrics(a) == metrics(b)
    assert_same_tensors(checkpoint(tmp_path / "a", a, 2)["model_state_dict"],
                        checkpoint(tmp_path / "b", b, 2)["model_state_dict"])
    assert_same_tensors(checkpoint(tmp_path / "a", a, 2)["optimizer_state_dict"],
                        checkpoint(tmp_path / "b", b, 2)["optimizer_state_dict"])
    assert metrics(a)["train/loss"] != metrics(c)["train/loss"]
    wa, wc = checkpoint(tmp_path / "a", a, 2)["model_state_dict"], checkpoint(tmp_path / "c", c, 2)["model_state_dict"]
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


@pytest.mark.parametrize("resume_by", ["run_id", "path"])
def test_resume_after_epoch_k_is_bit_identical_to_never_stopping(tmp_path, resume_by, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a run id's checkpoints are fetched
    full = train(tmp_path / "full")
    first = train(tmp_path / "part", train={"epochs": 1})
    source = first if resume_by == "run_id" else str(tmp_path / "part" / "outputs" / first / "checkpoints" / "epoch_1.ckpt")
    resumed = train(tmp_path / "part", "--resume", source)

    assert metrics(resumed) == metrics(full)
    for epoch in (1, 2, 3):
        a, b = checkpoint(tmp_path / "full", full, epoch), checkpoint(tmp_path / "part", resumed, epoch)
        for key in ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "rng", "metrics"):
            assert_same_tensors(a[key], b[key], key)
    client = MlflowClient()
    assert {Path(x.path).name for x in client.list_artifacts(resumed, "checkpoints")} >= {
        "epoch_1.ckpt", "epoch_2.ckpt", "epoch_3.ckpt"}
    tags = client.get_run(resumed).data.tags
    assert tags["seqtrack.resumed_from_epoch"] == "1"
    log_text = (tmp_path / "part" / "outputs" / resumed / "training_log.txt").read_text()
    assert [int(b.group(1)) for b in BLOCK_RE.finditer(log_text)] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert not list(tmp_path.glob("seqtrack-resume-*")), "the downloaded checkpoints were left behind"


def test_cosine_schedule_warms_up_then_decays_to_zero():
    assert [cosine_factor(s, warmup=4, total=12) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cosine_factor(4, warmup=4, total=12) == 1.0
    assert cosine_factor(8, warmup=4, total=12) == pytest.approx(0.5, abs=1e-12)
    assert cosine_factor(12, warmup=4, total=12) == pytest.approx(0.0, abs=1e-12)
    values = [cosine_factor(s, warmup=4, total=12) for s in range(4, 13)]
    assert values == sorted(values, reverse=True)


def test_cosine_lr_reaches_zero_at_the_last_step_and_resume_is_bit_identical(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    cosine = {"schedule": "cosine", "warmup_steps": 2}
    full = train(tmp_path / "full", train=cosine)
    # The schedule is stepped after every optimizer step (TINY: 40 samples / batch 8 = 5 steps
    # per epoch): after 3 epochs x 5 steps the lr is at 0.
    state = checkpoint(tmp_path / "full", full, 3)["scheduler_state_dict"]
    assert state["last_epoch"] == 15 and state["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)
    # The horizon is train.epochs, so a cosine resume keeps it: continue from the full run's epoch 1.
    ckpt = tmp_path / "full" / "outputs" / full / "checkpoints" / "epoch_1.ckpt"
    resumed = train(tmp_path / "part", "--resume", str(ckpt), train=cosine)
    with pytest.raises(ConfigError, match="train.epochs"):
        load_resume_state(load_config(write_tiny_config(tmp_path / "other", train={**cosine, "epochs": 4}),
                                      {"train.resume": str(ckpt)}))
    assert metrics(resumed) == metrics(full)
    a, b = checkpoint(tmp_path / "full", full, 3), checkpoint(tmp_path / "part", resumed, 3)
    for key in ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "rng", "metrics"):
        assert_same_tensors(a[key], b[key], key)


def test_weight_averaging_is_what_a_checkpoint_holds_and_resume_is_bit_identical(tmp_path, monkeypatch):
    """train.ema_decay: model_state_dict (what validation, evaluate and the Hub read) is the
    average, the raw weights are kept beside it, and a resume continues both exactly."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ema = {"ema_decay": 0.9}
    full = train(tmp_path / "full", train=ema)
    plain = train(tmp_path / "plain")
    ckpt = tmp_path / "full" / "outputs" / full / "checkpoints" / "epoch_1.ckpt"
    resumed = train(tmp_path / "part", "--resume", str(ckpt), train=ema)
    assert metrics(resumed) == metrics(full)
    a, b = checkpoint(tmp_path / "full", full, 3), checkpoint(tmp_path / "part", resumed, 3)
    for key in ("model_state_dict", "training_weights", "ema_updates", "optimizer_state_dict", "rng", "metrics"):
        assert_same_tensors(a[key], b[key], key)
    # 3 epochs x 5 steps, one update each; the raw weights are those of the run without averaging.
    assert a["ema_updates"] == 15
    assert_same_tensors(a["training_weights"], checkpoint(tmp_path / "plain", plain, 3)["model_state_dict"])
    assert all(not torch.equal(a["model_state_dict"][k], a["training_weights"][k]) for k in a["model_state_dict"])
    assert metrics(full)["train/loss"] == metrics(plain)["train/loss"]  # averaging never touches training


def test_precision_auto_picks_bf16_only_with_native_bf16(monkeypatch):
    from seqtrack_mlflow.train import device as device_module

    cfg = load_config(None, {"train.precision": "auto"})
    cpu = torch.device("cpu")
    monkeypatch.setattr(device_module, "native_bf16", lambda device: True)
    assert resolve_precision(cfg, cpu).train.precision == "bf16"
    monkeypatch.setattr(device_module, "native_bf16", lambda device: False)
    assert resolve_precision(cfg, cpu).train.precision == "fp32"
    fixed = load_config(None, {"train.precision": "fp32"})
    assert resolve_precision(fixed, cpu) is fixed


def test_resume_refuses_a_different_config(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    first = train(tmp_path, train={"epochs": 1})
    other = write_tiny_config(tmp_path / "other", train={"lr": 1e-3})
    with pytest.raises(ConfigError, match="train.lr"):
        load_resume_state(load_config(other, {"train.resume": first}))
    with pytest.raises(ConfigError, match="already finished epoch 1"):
        load_resume_state(load_config(write_tiny_config(tmp_path / "other", train={"epochs": 1}),
                                      {"train.resume": first}))
    assert not list(tmp_path.glob("seqtrack-resume-*")), "a refused resume left its download behind"


def test_cpu_fallback_when_cuda_is_absent(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")


def _train_subprocess(tmp_path: Path, name: str, *args: str) -> str:
    """Train through the real CLI in a subprocess; return the new run's id."""
    client = MlflowClient()
    before = {r.info.run_id for r in client.search_runs(["0"])}
    config = write_tiny_config(tmp_path / name, model={"dropout": 0.0}, train={"epochs": 2})
    result = subprocess.run([sys.executable, "-m", "seqtrack_mlflow", "train", "--config", str(config),
                             "--output-dir", str(tmp_path / name / "outputs"), *args],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")})
    assert result.returncode == 0, result.stderr[-3000:]
    (run_id,) = {r.info.run_id for r in client.search_runs(["0"])} - before
    return run_id


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_and_is_deterministic(tmp_path):
    """2 gloo processes, same global batch: the same samples per step, gradients averaged.

    Exactly reproducible, so compared exactly: the steps, and two 2-process runs (bit-identical).
    One process against two differs only by float summation order (the all-reduce adds the two
    shards' gradients in another order than one process's batch reduction), a few ulp per
    gradient. AdamW then divides by sqrt(v): on a coordinate whose gradient is near zero the
    reordering can change the step by up to ~2 lr, whatever its size in ulp, so no absolute
    tolerance is safe (1e-5 once failed by 1.12e-05). The bound that holds is relative to what
    training moved: over S steps a weight moves up to ~S lr and one flipped step moves it 2 lr,
    so each tensor's difference stays below 2/S of its largest change (0.4 at S = 10 steps
    here); a wrong shard or a missing all-reduce changes the samples or the gradients
    themselves and shows at the size of the change itself (ratio ~1). Losses agree to 1e-4."""
    from seqtrack_mlflow.model import build_seqtrack

    one = _train_subprocess(tmp_path, "one")
    two = _train_subprocess(tmp_path, "two", "--nproc", "2")
    again = _train_subprocess(tmp_path, "again", "--nproc", "2")
    assert MlflowClient().get_run(two).data.params["train.nproc"] == "2"
    m1, m2 = metrics(one), metrics(two)
    assert [s for s, _ in m1["train/loss"]] == [s for s, _ in m2["train/loss"]]
    for (_, a), (_, b) in zip(m1["epoch/train_loss"], m2["epoch/train_loss"]):
        assert b == pytest.approx(a, rel=1e-4)
    state = checkpoint(tmp_path / "one", one, 2)
    w1, w2 = state["model_state_dict"], checkpoint(tmp_path / "two", two, 2)["model_state_dict"]
    cfg = load_config(tmp_path / "one" / "tiny.yaml")
    torch.manual_seed(cfg.seed)  # the trainer's init: a function of the seed alone
    w0 = build_seqtrack(cfg.model).state_dict()
    steps = state["progress"]["global_samples"] // cfg.train.batch_size
    for key in w1:
        change = (w1[key] - w0[key]).abs().max().item()
        if change == 0:  # untouched by training (e.g. no gradient): must match exactly
            assert torch.equal(w1[key], w2[key]), key
            continue
        ratio = (w2[key] - w1[key]).abs().max().item() / change
        assert ratio <= 2 / steps, f"{key}: 1 vs 2 processes differ by {ratio:.3g} of the training change"
    assert metrics(two) == metrics(again)
    assert_same_tensors(w2, checkpoint(tmp_path / "again", again, 2)["model_state_dict"])

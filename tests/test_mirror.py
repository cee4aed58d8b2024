"""The mirror step and fetch-hub, end to end through the CLI, against the fake Hub.

A run following the trainer's artifact contract is built here with mlflow directly (small
real checkpoints of a torch.nn.Linear, the manifest, metrics, config, summary, log, report).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from seqtrack_mlflow import experiment
from seqtrack_mlflow.cli import main
from seqtrack_mlflow.fsutil import sha256_file
from seqtrack_mlflow.train.checkpoint import load_checkpoint, save_checkpoint
from tests.fakehub import ACCEPTED_TOKEN, fake_hub  # noqa: F401 - fixture

REPO = "tester/seqtrack-mirror"
CONFIG = {"seed": 8, "data": {"source": "sample", "classes": ["airplane", "bicycle"]},
          "model": {"patch_size": 8, "embed_dim": 16}, "train": {"epochs": 2, "batch_size": 4}}
LOSSES = {1: 5.123456, 2: 3.987654}
IOUS = {1: 0.213579, 2: 0.345678}


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlflow-mirror")


@pytest.fixture(autouse=True)
def tracking_uri(shared_store, monkeypatch, tmp_path) -> str:
    """Overrides conftest's per-test store: creating a fresh sqlite store costs ~5-7 s here (schema
    migrations), so this module's tests share one; each test uses its own experiment."""
    uri = f"sqlite:///{shared_store / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    return uri


def use_experiment(folder: Path, name: str) -> str:
    """Create (once) and select an experiment whose artifacts live under `folder`."""
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        name, artifact_location=(folder / "mlartifacts").as_uri())
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def make_run(folder: Path, epochs: int = 2, bad_sha_epoch: int | None = None,
             experiment: str | None = None) -> tuple[str, Path]:
    """An MLflow run with the trainer's artifacts; returns (run id, the local artifact folder)."""
    use_experiment(folder, experiment or f"mirror-{folder.name}")
    out = folder / "run_artifacts"
    (out / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    entries = []
    for epoch in range(1, epochs + 1):
        with torch.no_grad():
            model.weight.add_(0.1)
        state = {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                 "epoch": epoch, "seed": 8, "config": CONFIG,
                 "metrics": {"train_loss": [LOSSES[e] for e in range(1, epoch + 1)]}}
        path = save_checkpoint(out / "checkpoints" / f"epoch_{epoch}.ckpt", state)
        digest = "0" * 64 if epoch == bad_sha_epoch else sha256_file(path)
        entries.append({"file": path.name, "epoch": epoch, "sha256": digest, "bytes": path.stat().st_size})
    (out / "checkpoints" / "manifest.json").write_text(json.dumps({"checkpoints": entries}, indent=1))
    (out / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    (out / "dataset_summary.json").write_text(json.dumps({"classes": ["airplane", "bicycle"],
                                                          "train_sequences": 32, "test_sequences": 8}))
    (out / "training_log.txt").write_text("epoch 1 ...\nepoch 2 ...\n")
    (out / "report.md").write_text("# Report\n\nBest IoU: 0.3457\n")
    (out / "plots").mkdir()
    (out / "plots" / "loss.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32)
    with mlflow.start_run(run_name="tiny", tags={"seqtrack.kind": "train"}) as run:
        mlflow.log_params({"seed": 8, "train.epochs": epochs, "data.classes": "airplane,bicycle"})
        for epoch in range(1, epochs + 1):
            mlflow.log_metrics({"epoch/train_loss": LOSSES[epoch], "epoch/val_iou": IOUS[epoch],
                                "epoch/best_val_iou": max(IOUS[e] for e in range(1, epoch + 1)),
                                "epoch/seconds": 12.5 * epoch}, step=epoch)
        mlflow.log_artifacts(str(out))
    return run.info.run_id, out


@pytest.fixture
def hub_env(fake_hub, monkeypatch):  # noqa: F811
    monkeypatch.setenv("SEQTRACK_HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("HF_TOKEN", ACCEPTED_TOKEN)
    return fake_hub


def mirror(run_id: str, *extra: str) -> int:
    return main(["mirror", "--run-id", run_id, "--repo-id", REPO, *extra])


def test_mirror_uploads_run_byte_identical_in_one_commit(hub_env, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    run_id, out = make_run(tmp_path)
    assert mirror(run_id) == 0
    history = hub_env.history(REPO)
    assert len(history) == 2  # the repo's initial commit + ONE mirror commit
    tree = hub_env.tree(REPO)
    expected = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"plots/loss.png"}
    assert set(tree) == expected | {"README.md", ".gitattributes"}
    for rel in expected:
        assert hub_env.read(REPO, rel) == (out / rel).read_bytes(), rel
    assert tree["checkpoints/epoch_1.ckpt"].lfs  # checkpoints went through LFS
    tags = experiment.find_run(run_id).data.tags
    assert tags["hub.commit"] == hub_env.head(REPO)
    assert tags["hub.repo_url"] == f"{hub_env.url}/{REPO}"
    assert capsys.readouterr().out.strip() == f"{hub_env.url}/{REPO} {hub_env.head(REPO)}"
    assert "uploaded run" in caplog.text


def test_model_card_has_metrics_usage_and_license(hub_env, tmp_path):
    run_id, _ = make_run(tmp_path)
    assert mirror(run_id) == 0
    card = hub_env.read(REPO, "README.md").decode()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "mit" and front["library_name"] == "pytorch" and "seqtrack" in front["tags"]
    for epoch in (1, 2):
        row = next(line for line in card.splitlines() if line.startswith(f"| {epoch} | "))
        assert f"{LOSSES[epoch]:.4f}" in row and f"{IOUS[epoch]:.4f}" in row
    assert run_id in card
    assert f"fetch-hub --repo-id {REPO} --epoch 2" in card
    assert "weights_only=True" in card and "hf_hub_download" in card
    assert "arxiv.org/abs/2304.14394" in card and "microsoft/VideoX" in card
    assert "LaSOT" in card and "MIT" in card
    assert "| train.batch_size | 4 |" in card
    assert "| train_sequences | 32 |" in card


def test_second_mirror_changes_nothing(hub_env, tmp_path, capsys, caplog):
    run_id, _ = make_run(tmp_path)
    assert mirror(run_id) == 0
    head = hub_env.head(REPO)
    capsys.readouterr()
    hub_env.clear_requests()
    caplog.set_level(logging.INFO)
    assert mirror(run_id) == 0
    assert hub_env.head(REPO) == head and len(hub_env.history(REPO)) == 2
    assert not hub_env.requests_to("PUT") and not hub_env.requests_to("POST", "/commit/")
    assert f"already up to date at commit {head}" in caplog.text
    assert "already up to date" in capsys.readouterr().out


def test_missing_token_fails_before_any_request(fake_hub, tmp_path, monkeypatch, capsys):  # noqa: F811
    import huggingface_hub.constants as hf_constants
    run_id, _ = make_run(tmp_path)
    monkeypatch.setenv("SEQTRACK_HF_ENDPOINT", fake_hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    fake_hub.clear_requests()
    assert mirror(run_id) == 2
    err = capsys.readouterr().err
    assert "no Hugging Face token" in err and "HF_TOKEN" in err and "hf auth login" in err
    assert fake_hub.requests == []


def test_rejected_token_is_a_clear_error_without_the_token(hub_env, tmp_path, monkeypatch, capsys, caplog):
    wrong = "hf_WRONGtokenRECOGNISABLE42xyz"
    monkeypatch.setenv("HF_TOKEN", wrong)
    run_id, _ = make_run(tmp_path)
    assert mirror(run_id) == 2
    err = capsys.readouterr().err
    assert "rejected the token" in err and "401" in err
    assert wrong not in err and wrong not in caplog.text
    assert "hub.commit" not in experiment.find_run(run_id).data.tags


def test_connection_lost_mid_upload_then_rerun_completes(hub_env, tmp_path, capsys):
    run_id, out = make_run(tmp_path)
    hub_env.drop("commit", times=1)  # bytes uploaded, connection lost while committing
    assert mirror(run_id) == 2
    err = capsys.readouterr().err
    assert "connection to" in err and "rerun" in err
    assert "checkpoints/epoch_1.ckpt" not in hub_env.tree(REPO)
    hub_env.clear_requests()
    assert mirror(run_id) == 0
    assert not hub_env.requests_to("PUT")  # LFS objects of the first attempt were kept
    assert hub_env.read(REPO, "checkpoints/epoch_2.ckpt") == (out / "checkpoints/epoch_2.ckpt").read_bytes()


def test_lfs_upload_drop_is_retried_by_the_client(hub_env, tmp_path):
    run_id, out = make_run(tmp_path, epochs=1)
    hub_env.drop("lfs_put", times=1)  # half the bytes, then the socket closes (client retries ~1 s)
    assert mirror(run_id) == 0
    assert len(hub_env.requests_to("PUT")) == 2
    assert hub_env.read(REPO, "checkpoints/epoch_1.ckpt") == (out / "checkpoints/epoch_1.ckpt").read_bytes()


def test_fetch_hub_downloads_and_loads(hub_env, tmp_path, capsys):
    run_id, out = make_run(tmp_path)
    assert mirror(run_id) == 0
    capsys.readouterr()
    dest = tmp_path / "fetched"
    assert main(["fetch-hub", "--repo-id", REPO, "--epoch", "2", "--dest", str(dest)]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == dest / "checkpoints" / "epoch_2.ckpt"
    assert path.read_bytes() == (out / "checkpoints/epoch_2.ckpt").read_bytes()
    assert load_checkpoint(path)["epoch"] == 2
    assert main(["fetch-hub", "--repo-id", REPO, "--epoch", "7", "--dest", str(dest)]) == 2
    assert "epochs there: 1, 2" in capsys.readouterr().err


def test_sha256_mismatch_is_refused_before_upload(hub_env, tmp_path, capsys):
    run_id, _ = make_run(tmp_path, bad_sha_epoch=2)
    hub_env.clear_requests()
    assert mirror(run_id) == 2
    err = capsys.readouterr().err
    assert "checkpoints/epoch_2.ckpt" in err and "does not match the manifest" in err
    assert hub_env.requests == []


def test_unlisted_or_corrupt_checkpoint_is_refused(hub_env, tmp_path, capsys):
    run_id, out = make_run(tmp_path, epochs=1)
    with mlflow.start_run(run_id=run_id):
        extra = tmp_path / "epoch_9.ckpt"
        extra.write_bytes(b"not a checkpoint")
        mlflow.log_artifact(str(extra), "checkpoints")
    hub_env.clear_requests()
    assert mirror(run_id) == 2
    assert "epoch_9.ckpt is not listed" in capsys.readouterr().err
    assert hub_env.requests == []


def test_dry_run_verifies_and_sends_nothing(fake_hub, tmp_path, monkeypatch, caplog):  # noqa: F811
    monkeypatch.setenv("SEQTRACK_HF_ENDPOINT", fake_hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    caplog.set_level(logging.INFO)
    run_id, _ = make_run(tmp_path)
    fake_hub.clear_requests()
    assert mirror(run_id, "--dry-run") == 0
    assert fake_hub.requests == []
    assert "would upload checkpoints/epoch_2.ckpt" in caplog.text and "README.md" in caplog.text
    assert "nothing was sent" in caplog.text


def test_default_run_is_latest_finished(hub_env, tmp_path):
    make_run(tmp_path / "a", experiment="latest")
    newest, _ = make_run(tmp_path / "b", experiment="latest")
    exp_id = use_experiment(tmp_path, "latest")
    mlflow.MlflowClient().create_run(exp_id)  # newer, still RUNNING: not picked
    assert main(["mirror", "--repo-id", REPO, "--experiment", "latest"]) == 0
    assert newest in hub_env.read(REPO, "README.md").decode()


def test_token_appears_nowhere(hub_env, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    run_id, _ = make_run(tmp_path)
    assert mirror(run_id) == 0
    assert mirror(run_id) == 0
    assert main(["fetch-hub", "--repo-id", REPO, "--epoch", "1", "--dest", str(tmp_path / "f")]) == 0
    hub_env.drop("commit", times=1)
    run2, _ = make_run(tmp_path / "second")
    assert mirror(run2) == 2
    captured = capsys.readouterr()
    run = experiment.find_run(run_id)
    texts = [captured.out, captured.err, caplog.text, hub_env.read(REPO, "README.md").decode(),
             json.dumps(run.data.tags), json.dumps(run.data.params)]
    for text in texts:
        assert ACCEPTED_TOKEN not in text
    assert any(r.auth for r in hub_env.requests)  # it was sent, as a header only

"""The mirror step and fetch-hub, end to end through the CLI, against the fake Hub.

A run following the trainer's artifact contract is built here with mlflow directly: real
checkpoints of a tiny SeqTrack (tests/tiny.py), the trainer's manifest, epoch metrics, config,
summary, log, report. Evaluations are real `experiment.EvaluationRun`s with the metrics evaluate logs.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from safetensors.torch import load_file

from seqtrack_mlflow import experiment, hub
from seqtrack_mlflow.cli import main
from seqtrack_mlflow.config import Config
from seqtrack_mlflow.errors import CheckpointError
from seqtrack_mlflow.fsutil import sha256_file
from seqtrack_mlflow.model import SeqTrack, build_seqtrack
from seqtrack_mlflow.publish import export
from seqtrack_mlflow.publish.uploader import EpochUploader
from seqtrack_mlflow.train.checkpoint import load_checkpoint, save_checkpoint
from tests.fakehub import ACCEPTED_TOKEN, fake_hub  # noqa: F401 - fixture
from tests.tiny import TINY

from .conftest import REPO as PROJECT

REPO = "tester/seqtrack-mirror"
CONFIG = {"seed": 8, "data": {**TINY["data"], "classes": ["airplane", "bicycle"]},
          "model": dict(TINY["model"]), "train": {**TINY["train"], "epochs": 2}}
LOSSES = {1: 5.123456, 2: 3.987654, 3: 3.5}
IOUS = {1: 0.345678, 2: 0.213579, 3: 0.2}  # epoch 1 is the best: the root must not be the last


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlflow-mirror")


@pytest.fixture(autouse=True)
def tracking_uri(shared_store, monkeypatch, tmp_path, tmp_path_factory) -> str:
    """Overrides conftest's per-test store: creating a fresh sqlite store costs ~5-7 s here (schema
    migrations), so this module's tests share one; each test uses its own experiment."""
    uri = f"sqlite:///{shared_store / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("SEQTRACK_CACHE", str(tmp_path_factory.getbasetemp() / "seqtrack_cache"))
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
             experiment: str | None = None, source: str = "sample") -> tuple[str, Path]:
    """An MLflow run with the trainer's artifacts; returns (run id, the local artifact folder)."""
    use_experiment(folder, experiment or f"mirror-{folder.name}")
    out = folder / "run_artifacts"
    (out / "checkpoints").mkdir(parents=True)
    config = {**CONFIG, "data": {**CONFIG["data"], "source": source}}
    torch.manual_seed(0)
    model = build_seqtrack(Config.from_dict(TINY).model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    entries = []
    for epoch in range(1, epochs + 1):
        with torch.no_grad():
            model.bottleneck.weight.add_(0.1)  # each epoch's weights differ
        state = {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                 "epoch": epoch, "seed": 8, "config": config,
                 "metrics": [{"train_loss": LOSSES[e], "val_iou": IOUS[e]} for e in range(1, epoch + 1)]}
        path = save_checkpoint(out / "checkpoints" / f"epoch_{epoch}.ckpt", state)
        digest = "0" * 64 if epoch == bad_sha_epoch else sha256_file(path)
        entries.append({"file": path.name, "epoch": epoch, "sha256": digest, "bytes": path.stat().st_size})
    (out / "checkpoints" / "manifest.json").write_text(json.dumps({"checkpoints": entries}, indent=1))
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    (out / "dataset_summary.json").write_text(json.dumps({
        "source": source, "root": "/cache/seqtrack_mlflow/sample-v1", "classes": ["airplane", "bicycle"],
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


def add_evaluation(run_id: str, auc: float, precision: float, norm_precision: float,
                   source: str = "sample") -> str:
    """A finished evaluation run of `run_id`, as track/evaluate.py records it."""
    with experiment.EvaluationRun("eval-epoch1", parent_run_id=run_id, tags={"seqtrack.epoch": 1}) as ev:
        ev.log_params({"eval.epoch": 1, "data.source": source, "data.classes": "airplane,bicycle",
                       "eval.sequences": "airplane-1,bicycle-2"})
        ev.log_metrics({"eval/auc": auc, "eval/precision": precision,
                        "eval/norm_precision": norm_precision}, step=1)
    return ev.run_id


@pytest.fixture
def hub_env(fake_hub, monkeypatch):  # noqa: F811
    monkeypatch.setenv("SEQTRACK_HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("HF_TOKEN", ACCEPTED_TOKEN)
    return fake_hub


def mirror_cli(run_id: str, *extra: str) -> int:
    return main(["mirror", "--run-id", run_id, "--repo-id", REPO, *extra])


def front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


# -- layout ----------------------------------------------------------------------------------------
def test_layout_safetensors_round_trip_manifest_and_tag(hub_env, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    run_id, out = make_run(tmp_path)
    assert mirror_cli(run_id) == 0
    assert len(hub_env.history(REPO)) == 2  # the repo's initial commit + ONE mirror commit
    tree = hub_env.tree(REPO)
    assert set(tree) == {
        ".gitattributes", "README.md", "manifest.json", "config.json", "model.safetensors",
        "checkpoints/epoch_1/config.json", "checkpoints/epoch_1/model.safetensors",
        "checkpoints/epoch_2/config.json", "checkpoints/epoch_2/model.safetensors",
        "resume/epoch_1.ckpt", "resume/epoch_2.ckpt",
        "config.yaml", "dataset_summary.json", "training_log.txt", "report.md"}
    for epoch in (1, 2):
        ckpt = out / "checkpoints" / f"epoch_{epoch}.ckpt"
        assert hub_env.read(REPO, f"resume/epoch_{epoch}.ckpt") == ckpt.read_bytes()
        weights = tmp_path / f"w{epoch}.safetensors"
        weights.write_bytes(hub_env.read(REPO, f"checkpoints/epoch_{epoch}/model.safetensors"))
        expected = load_checkpoint(ckpt)["model_state_dict"]
        got = load_file(str(weights))
        assert set(got) == set(expected)
        assert all(torch.equal(got[k], expected[k]) for k in expected)
        config = json.loads(hub_env.read(REPO, f"checkpoints/epoch_{epoch}/config.json"))
        assert config["embed_dim"] == TINY["model"]["embed_dim"] and config["seqtrack_mlflow"]["epoch"] == epoch
    # The root is the best epoch (val IoU of epoch 1 > epoch 2), not the last one.
    assert hub_env.read(REPO, "model.safetensors") == hub_env.read(REPO, "checkpoints/epoch_1/model.safetensors")
    assert tree["model.safetensors"].lfs and tree["resume/epoch_1.ckpt"].lfs
    manifest = json.loads(hub_env.read(REPO, "manifest.json"))
    assert manifest["best_epoch"] == 1 and manifest["epochs"] == [1, 2]
    assert set(manifest["files"]) == set(tree) - {".gitattributes", "manifest.json"}
    for path, meta in manifest["files"].items():
        assert meta["sha256"] == tree[path].sha256 and meta["bytes"] == tree[path].size, path
    tag = f"run-{run_id[:8]}"
    assert hub_env.tags(REPO) == {tag: hub_env.head(REPO)}
    tags = experiment.find_run(run_id).data.tags
    assert tags["hub.commit"] == hub_env.head(REPO) and tags["hub.tag"] == tag
    assert tags["hub.repo_url"] == f"{hub_env.url}/{REPO}"
    assert capsys.readouterr().out.strip() == f"{hub_env.url}/{REPO} {hub_env.head(REPO)} {tag}"
    assert "uploaded run" in caplog.text


def test_from_pretrained_in_a_fresh_process(hub_env, tmp_path):
    run_id, out = make_run(tmp_path)
    assert mirror_cli(run_id) == 0
    script = tmp_path / "load.py"
    script.write_text(
        "import sys, torch\n"
        "from seqtrack_mlflow.model import SeqTrack\n"
        f"best = SeqTrack.from_pretrained({REPO!r}, revision={'run-' + run_id[:8]!r})\n"
        f"second = SeqTrack.from_pretrained({REPO!r}, subfolder='checkpoints/epoch_2')\n"
        "assert not best.training and best.tracker_settings['search_factor'] > 0\n"
        "torch.save({'best': best.state_dict(), 'second': second.state_dict(),\n"
        "            'tracker': best.tracker_settings}, sys.argv[1])\n")
    env = {**os.environ, "PYTHONPATH": str(PROJECT / "src"), "HF_HOME": str(tmp_path / "fresh-hf")}
    subprocess.run([sys.executable, str(script), str(tmp_path / "loaded.pt")], check=True, env=env,
                   cwd=tmp_path, timeout=300)
    loaded = torch.load(tmp_path / "loaded.pt", weights_only=True)
    for key, epoch in (("best", 1), ("second", 2)):
        expected = load_checkpoint(out / "checkpoints" / f"epoch_{epoch}.ckpt")["model_state_dict"]
        assert all(torch.equal(loaded[key][k], expected[k]) for k in expected), key
    assert loaded["tracker"]["search_factor"] == CONFIG["data"]["search_factor"]


def test_from_pretrained_reads_a_local_folder(tmp_path):
    state = {"model_state_dict": build_seqtrack(Config.from_dict(TINY).model).state_dict(),
             "epoch": 3, "seed": 8, "config": CONFIG}
    export.export_pretrained(state, tmp_path / "m", run_id="abc")
    model = SeqTrack.from_pretrained(tmp_path / "m")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state["model_state_dict"].items())
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        SeqTrack.from_pretrained(tmp_path / "m")


def test_seqtrack_is_a_pytorch_model_hub_mixin(hub_env, tmp_path, monkeypatch):
    """save_pretrained -> from_pretrained is bit-equal; push_to_hub uploads the same two files
    (plus the mixin's card) and from_pretrained reads them back; the mixin's own loader and a
    config given as a dict build the same network."""
    import huggingface_hub.constants as hf_constants
    from huggingface_hub import ModelHubMixin, PyTorchModelHubMixin

    assert issubclass(SeqTrack, PyTorchModelHubMixin)
    torch.manual_seed(3)
    model = SeqTrack(Config.from_dict(TINY).model)
    model.save_pretrained(tmp_path / "saved")
    assert {p.name for p in (tmp_path / "saved").iterdir()} == {"config.json", "model.safetensors", "README.md"}
    document = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert "pretrained" not in document and document["embed_dim"] == TINY["model"]["embed_dim"]
    for loaded in (SeqTrack.from_pretrained(tmp_path / "saved"),
                   ModelHubMixin.from_pretrained.__func__(SeqTrack, str(tmp_path / "saved"))):  # the mixin's own path
        assert not loaded.training and loaded.state_dict().keys() == model.state_dict().keys()
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert SeqTrack(document).cfg == model.cfg

    # push_to_hub talks to huggingface_hub's endpoint (read at import): point it at the fake Hub
    # (only for the push: the download URL template keeps the import-time endpoint)
    with monkeypatch.context() as patch:
        patch.setattr(hf_constants, "ENDPOINT", hub_env.url)
        patch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
        model.push_to_hub("someone/mixin", token=ACCEPTED_TOKEN)
    assert {"config.json", "model.safetensors", "README.md"} <= set(hub_env.tree("someone/mixin"))
    assert hub_env.read("someone/mixin", "model.safetensors") == (tmp_path / "saved" / "model.safetensors").read_bytes()
    pulled = SeqTrack.from_pretrained("someone/mixin", cache_dir=tmp_path / "cache")
    assert all(torch.equal(pulled.state_dict()[k], v) for k, v in model.state_dict().items())


# -- model card ------------------------------------------------------------------------------------
def test_card_metadata_and_model_index_after_an_evaluate(hub_env, tmp_path):
    run_id, _ = make_run(tmp_path)
    assert mirror_cli(run_id) == 0
    before = front_matter(hub_env.read(REPO, "README.md").decode())
    assert "model-index" not in before and "datasets" not in before  # sample data: no LaSOT claim
    assert before["license"] == "mit" and "library_name" not in before
    # the tags of the card SeqTrack.save_pretrained writes (the mixin's among them), and ours
    SeqTrack(Config.from_dict(TINY).model).save_pretrained(tmp_path / "mixin")
    mixin = front_matter((tmp_path / "mixin" / "README.md").read_text())
    assert set(mixin["tags"]) <= set(before["tags"]) and "pytorch_model_hub_mixin" in mixin["tags"]
    assert {"visual-object-tracking", "seqtrack", "mlflow"} <= set(before["tags"])
    assert before["mlflow_run_id"] == run_id and before["dataset_revision"] == "sample-v1"

    eval_id = add_evaluation(run_id, auc=0.16912, precision=0.1234, norm_precision=0.2001)
    assert mirror_cli(run_id) == 0  # the card changed: a new commit, the run tag moves to it
    card = hub_env.read(REPO, "README.md").decode()
    front = front_matter(card)
    (model,) = front["model-index"]
    metrics = {m["type"]: m["value"] for m in model["results"][0]["metrics"]} | {
        r["metrics"][0]["type"]: r["metrics"][0]["value"] for r in model["results"]}
    assert metrics == {"auc": 16.91, "precision": 12.34, "norm_precision": 20.01}
    assert model["results"][0]["dataset"]["type"] != "l-lt/LaSOT"  # evaluated on the sample
    assert front in hub_env.validated  # the Hub's metadata check saw (and passed) this card
    assert eval_id in card and "SeqTrack.from_pretrained(" in card and "fetch-hub" in card
    assert hub_env.tags(REPO)[f"run-{run_id[:8]}"] == hub_env.head(REPO)
    for epoch in (1, 2):
        row = next(line for line in card.splitlines() if line.startswith(f"| {epoch} | "))
        assert f"{LOSSES[epoch]:.4f}" in row and f"{IOUS[epoch]:.4f}" in row


def test_lasot_run_card_lists_the_dataset(hub_env, tmp_path):
    run_id, _ = make_run(tmp_path, source="lasot")
    add_evaluation(run_id, auc=0.5, precision=0.4, norm_precision=0.45, source="lasot")
    assert mirror_cli(run_id) == 0
    front = front_matter(hub_env.read(REPO, "README.md").decode())
    assert front["datasets"] == ["l-lt/LaSOT"]
    assert {r["dataset"]["type"] for r in front["model-index"][0]["results"]} == {"l-lt/LaSOT"}


def test_the_fake_hub_refuses_a_broken_model_index(fake_hub, tmp_path):  # noqa: F811
    (tmp_path / "README.md").write_text("---\nlicense: mit\nmodel-index:\n- name: x\n  results: []\n---\n# x\n")
    with pytest.raises(hub.HubError, match="model-index"):
        hub.upload_folder("me/broken", tmp_path, ACCEPTED_TOKEN, endpoint=fake_hub.url)


# -- hygiene ---------------------------------------------------------------------------------------
def test_one_epoch_run_after_a_two_epoch_run_leaves_no_epoch_2_file(hub_env, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    first, _ = make_run(tmp_path / "a", epochs=2)
    second, _ = make_run(tmp_path / "b", epochs=1)
    assert mirror_cli(first) == 0
    commits = len(hub_env.history(REPO))
    assert mirror_cli(second) == 0
    assert len(hub_env.history(REPO)) == commits + 1  # deletions and additions in ONE commit
    tree = hub_env.tree(REPO)
    assert not [p for p in tree if "epoch_2" in p], sorted(tree)
    assert json.loads(hub_env.read(REPO, "manifest.json"))["mlflow_run_id"] == second
    assert second in hub_env.read(REPO, "README.md").decode() and first not in hub_env.read(REPO, "README.md").decode()
    assert "deleted 3 file(s) of another run" in caplog.text  # epoch 2: weights, config, resume
    # A tag per run; the first run's tag still pins its 2-epoch state.
    tags = hub_env.tags(REPO)
    assert set(tags) == {f"run-{first[:8]}", f"run-{second[:8]}"}
    assert "resume/epoch_2.ckpt" in hub_env.tree(REPO, revision=f"run-{first[:8]}")
    assert tags[f"run-{second[:8]}"] == hub_env.head(REPO)


def test_second_mirror_changes_nothing(hub_env, tmp_path, capsys, caplog):
    run_id, _ = make_run(tmp_path)
    assert mirror_cli(run_id) == 0
    head = hub_env.head(REPO)
    capsys.readouterr()
    hub_env.clear_requests()
    caplog.set_level(logging.INFO)
    assert mirror_cli(run_id) == 0
    assert hub_env.head(REPO) == head and len(hub_env.history(REPO)) == 2
    assert not hub_env.requests_to("PUT") and not hub_env.requests_to("POST", "/commit/")
    assert not hub_env.requests_to("POST", "/tag/")
    assert f"already up to date at commit {head}" in caplog.text
    assert "already up to date" in capsys.readouterr().out


# -- fetch-hub -------------------------------------------------------------------------------------
def test_fetch_hub_downloads_verifies_and_loads(hub_env, tmp_path, capsys):
    run_id, out = make_run(tmp_path)
    assert mirror_cli(run_id) == 0
    capsys.readouterr()
    dest = tmp_path / "fetched"
    assert main(["fetch-hub", "--repo-id", REPO, "--epoch", "2", "--dest", str(dest),
                 "--revision", f"run-{run_id[:8]}"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == dest / "resume" / "epoch_2.ckpt"
    assert path.read_bytes() == (out / "checkpoints/epoch_2.ckpt").read_bytes()
    assert main(["fetch-hub", "--repo-id", REPO, "--file", "model.safetensors", "--dest", str(dest)]) == 0
    assert main(["fetch-hub", "--repo-id", REPO, "--epoch", "7", "--dest", str(dest)]) == 2
    assert "not listed in manifest.json" in capsys.readouterr().err


def test_fetch_hub_refuses_an_unlisted_or_altered_file(hub_env, tmp_path, capsys):
    run_id, _ = make_run(tmp_path)
    assert mirror_cli(run_id) == 0
    extra = save_checkpoint(tmp_path / "x.ckpt", {"model_state_dict": {}, "optimizer_state_dict": {},
                                                   "epoch": 9, "seed": 8})
    hub_env.add_files(REPO, {"resume/epoch_9.ckpt": extra.read_bytes(),  # unlisted
                             "resume/epoch_1.ckpt": extra.read_bytes()})  # altered
    capsys.readouterr()
    dest = tmp_path / "fetched"
    hub_env.clear_requests()
    assert main(["fetch-hub", "--repo-id", REPO, "--epoch", "9", "--dest", str(dest)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "resume/epoch_9.ckpt is not listed in manifest.json" in err
    assert not hub_env.requests_to("GET", "epoch_9")  # refused before downloading it
    assert main(["fetch-hub", "--repo-id", REPO, "--epoch", "1", "--dest", str(dest)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "altered" in err and "resume/epoch_1.ckpt" in err
    assert not (dest / "resume" / "epoch_1.ckpt").exists()
    # The run's tag still points at the untouched commit: fetching there works.
    assert main(["fetch-hub", "--repo-id", REPO, "--epoch", "1", "--dest", str(dest),
                 "--revision", f"run-{run_id[:8]}"]) == 0


# -- refusals and failures -------------------------------------------------------------------------
def test_missing_token_fails_before_any_request(fake_hub, tmp_path, monkeypatch, capsys):  # noqa: F811
    import huggingface_hub.constants as hf_constants
    run_id, _ = make_run(tmp_path)
    monkeypatch.setenv("SEQTRACK_HF_ENDPOINT", fake_hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    fake_hub.clear_requests()
    assert mirror_cli(run_id) == 2
    err = capsys.readouterr().err
    assert "no Hugging Face token" in err and "HF_TOKEN" in err and "hf auth login" in err
    assert fake_hub.requests == []


def test_rejected_token_is_a_clear_error_without_the_token(hub_env, tmp_path, monkeypatch, capsys, caplog):
    wrong = "hf_WRONGtokenRECOGNISABLE42xyz"
    monkeypatch.setenv("HF_TOKEN", wrong)
    run_id, _ = make_run(tmp_path)
    assert mirror_cli(run_id) == 2
    err = capsys.readouterr().err
    assert "rejected the token" in err and "401" in err
    assert wrong not in err and wrong not in caplog.text
    assert "hub.commit" not in experiment.find_run(run_id).data.tags


def test_connection_lost_mid_upload_then_rerun_completes(hub_env, tmp_path, capsys):
    run_id, out = make_run(tmp_path)
    hub_env.drop("commit", times=1)  # bytes uploaded, connection lost while committing
    assert mirror_cli(run_id) == 2
    err = capsys.readouterr().err
    assert "connection to" in err and "rerun" in err
    assert "resume/epoch_1.ckpt" not in hub_env.tree(REPO)
    hub_env.clear_requests()
    assert mirror_cli(run_id) == 0
    assert not hub_env.requests_to("PUT")  # LFS objects of the first attempt were kept
    assert hub_env.read(REPO, "resume/epoch_2.ckpt") == (out / "checkpoints/epoch_2.ckpt").read_bytes()


def test_lfs_upload_drop_is_retried_by_the_client(hub_env, tmp_path):
    run_id, out = make_run(tmp_path, epochs=1)
    hub_env.drop("lfs_put", times=1)  # half the bytes, then the socket closes (client retries ~1 s)
    assert mirror_cli(run_id) == 0
    puts = [r.path for r in hub_env.requests_to("PUT")]
    assert len(set(puts)) == 2 and len(puts) >= 3  # 2 LFS objects (weights, resume), one sent twice
    assert hub_env.read(REPO, "resume/epoch_1.ckpt") == (out / "checkpoints/epoch_1.ckpt").read_bytes()


def test_sha256_mismatch_is_refused_before_upload(hub_env, tmp_path, capsys):
    run_id, _ = make_run(tmp_path, bad_sha_epoch=2)
    hub_env.clear_requests()
    assert mirror_cli(run_id) == 2
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
    assert mirror_cli(run_id) == 2
    assert "epoch_9.ckpt is not listed" in capsys.readouterr().err
    assert hub_env.requests == []


def test_dry_run_verifies_and_sends_nothing(fake_hub, tmp_path, monkeypatch, caplog):  # noqa: F811
    monkeypatch.setenv("SEQTRACK_HF_ENDPOINT", fake_hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    caplog.set_level(logging.INFO)
    run_id, _ = make_run(tmp_path)
    fake_hub.clear_requests()
    assert mirror_cli(run_id, "--dry-run", "true") == 0
    assert fake_hub.requests == []
    assert "would upload resume/epoch_2.ckpt" in caplog.text and "README.md" in caplog.text
    assert "model.safetensors" in caplog.text and "nothing was sent" in caplog.text


def test_default_run_is_latest_finished(hub_env, tmp_path):
    make_run(tmp_path / "a", experiment="latest")
    newest, _ = make_run(tmp_path / "b", experiment="latest")
    exp_id = use_experiment(tmp_path, "latest")
    mlflow.MlflowClient().create_run(exp_id)  # newer, still RUNNING: not picked
    assert main(["mirror", "--repo-id", REPO, "--experiment-name", "latest"]) == 0
    assert newest in hub_env.read(REPO, "README.md").decode()


def test_token_appears_nowhere(hub_env, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    run_id, _ = make_run(tmp_path)
    add_evaluation(run_id, 0.1, 0.1, 0.1)
    assert mirror_cli(run_id) == 0
    assert mirror_cli(run_id) == 0
    dest = tmp_path / "f"
    assert main(["fetch-hub", "--repo-id", REPO, "--epoch", "1", "--dest", str(dest)]) == 0
    hub_env.drop("commit", times=1)
    run2, _ = make_run(tmp_path / "second")
    assert mirror_cli(run2) == 2
    captured = capsys.readouterr()
    run = experiment.find_run(run_id)
    texts = [captured.out, captured.err, caplog.text, json.dumps(run.data.tags), json.dumps(run.data.params)]
    texts += [hub_env.read(REPO, p).decode("latin-1") for p in hub_env.tree(REPO)]
    texts += [p.read_bytes().decode("latin-1") for p in dest.rglob("*") if p.is_file()]
    texts += [json.dumps(tags) for tags in [hub_env.tags(REPO)]]
    for text in texts:
        assert ACCEPTED_TOKEN not in text
    assert any(r.auth for r in hub_env.requests)  # it was sent, as a header only


# -- push every epoch in the background --------------------------------------------------------------
def test_epoch_uploader_never_blocks_and_retries_a_failed_epoch(hub_env, tmp_path, monkeypatch):
    _, out = make_run(tmp_path, epochs=3)
    hub_env.add_files(REPO, {"resume/epoch_7.ckpt": b"\x00 another run's file"})
    ckpts = {e: out / "checkpoints" / f"epoch_{e}.ckpt" for e in (1, 2, 3)}
    uploader = EpochUploader(REPO, "run0000000abc")
    # Epoch 1: the Hub stalls; the hook must return while the upload hangs.
    gate, real_upload = threading.Event(), hub.upload_folder

    def stalled(*args, **kwargs):
        assert gate.wait(60)
        return real_upload(*args, **kwargs)
    monkeypatch.setattr(hub, "upload_folder", stalled)
    uploader.on_checkpoint(1, ckpts[1], IOUS[1])  # returns at once though the upload is stalled
    assert not uploader.wait(timeout=0.2)
    hub_env.drop("commit", times=1)  # ... and then the connection drops: epoch 1 fails
    gate.set()
    assert uploader.wait(timeout=120)
    assert uploader.last_error and "resume/epoch_1.ckpt" not in hub_env.tree(REPO)
    # Epoch 2 carries epoch 1 along in one commit; the other run's file goes in that commit.
    commits = len(hub_env.history(REPO))
    uploader.on_checkpoint(2, ckpts[2], IOUS[2])
    assert uploader.wait(timeout=120) and not uploader.last_error
    assert len(hub_env.history(REPO)) == commits + 1
    tree = hub_env.tree(REPO)
    assert {"resume/epoch_1.ckpt", "resume/epoch_2.ckpt", "checkpoints/epoch_2/model.safetensors"} <= set(tree)
    assert "resume/epoch_7.ckpt" not in tree
    uploader.on_checkpoint(3, ckpts[3], IOUS[3])
    assert uploader.close(timeout=120) == []
    manifest = json.loads(hub_env.read(REPO, "manifest.json"))
    assert manifest["epochs"] == [1, 2, 3] and manifest["best_epoch"] == 1
    for path, meta in manifest["files"].items():
        assert hub_env.tree(REPO)[path].sha256 == meta["sha256"], path
    assert hub_env.read(REPO, "model.safetensors") == hub_env.read(REPO, "checkpoints/epoch_1/model.safetensors")


# -- the MLproject entry point -----------------------------------------------------------------------
@pytest.mark.slow
def test_mlflow_run_mirror_entry_point_end_to_end(hub_env, tmp_path, tracking_uri):
    run_id, _ = make_run(tmp_path)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "SEQTRACK_HF_ENDPOINT": hub_env.url,
           "HF_TOKEN": ACCEPTED_TOKEN, "HF_HUB_DISABLE_XET": "1", "MLFLOW_EXPERIMENT_ID": ""}
    env.pop("MLFLOW_EXPERIMENT_ID")
    base = ["mlflow", "run", str(PROJECT), "--env-manager", "local", "-e", "mirror",
            "-P", f"run_id={run_id}", "-P", f"repo_id={REPO}"]
    dry = subprocess.run(base + ["-P", "dry_run=true"], check=False, env=env, capture_output=True, text=True, timeout=600)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert REPO not in {r[1] for r in hub_env.repos}
    done = subprocess.run(base + ["-P", "private=true", "-P", "revision=published"], check=False, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert hub_env.repos[("model", REPO)].private
    assert "resume/epoch_2.ckpt" in hub_env.tree(REPO, revision="published")
    assert "resume/epoch_2.ckpt" not in hub_env.tree(REPO)  # main untouched
    assert hub_env.tags(REPO) == {f"run-{run_id[:8]}": hub_env.head(REPO, revision="published")}


@pytest.mark.slow
def test_training_with_push_every_epoch_then_mirror(hub_env, tmp_path, monkeypatch):
    """A real tiny training run pushes each epoch during training; `mirror` then adds the card and
    the tag without sending any weights again."""
    from tests.tiny import write_tiny_config

    monkeypatch.setenv("PYTHONHASHSEED", "8")  # no re-exec of pytest for the hash seed
    monkeypatch.setenv("SEQTRACK_HASHSEED_SET", "1")
    use_experiment(tmp_path, "push")
    config = write_tiny_config(tmp_path, train={"epochs": 2}, data={"samples_per_epoch": 16})
    assert main(["train", "--config", str(config), "--output-dir", str(tmp_path / "outputs"),
                 "--set", "hub.push_every_epoch=true", "--set", f"hub.repo_id={REPO}"]) == 0
    run_id = experiment.latest_training_run("push")
    tree = hub_env.tree(REPO)
    assert {"resume/epoch_1.ckpt", "resume/epoch_2.ckpt", "checkpoints/epoch_2/model.safetensors",
            "model.safetensors", "manifest.json"} <= set(tree)
    assert len(hub_env.history(REPO)) >= 2  # at least one commit during training
    hub_env.clear_requests()
    assert mirror_cli(run_id) == 0
    assert not hub_env.requests_to("PUT")  # every weight was already there
    assert f"run-{run_id[:8]}" in hub_env.tags(REPO) and "README.md" in hub_env.tree(REPO)
    model = SeqTrack.from_pretrained(REPO, revision=f"run-{run_id[:8]}")
    assert model.cfg.embed_dim == TINY["model"]["embed_dim"]


# -- two mirrors of one run at once --------------------------------------------------------------------
def test_a_mirror_overtaken_by_another_of_the_same_run_tags_the_final_commit(hub_env, tmp_path, monkeypatch):
    """Interleaving of two concurrent mirrors, made deterministic: right after this mirror's
    commit, the other one commits too (same run, so the same manifest). The one that finishes
    last must leave hub.commit and the run tag on the branch's final commit, not its own."""
    run_id, _ = make_run(tmp_path)
    real_upload = hub.upload_folder

    def overtaken(*args, **kwargs):
        result = real_upload(*args, **kwargs)
        hub_env.add_files(REPO, {"notes/other-mirror.txt": b"committed by the other mirror\n"},
                          message="the other mirror's commit")
        return result

    monkeypatch.setattr(hub, "upload_folder", overtaken)
    assert mirror_cli(run_id) == 0
    final = hub_env.head(REPO)
    assert experiment.find_run(run_id).data.tags["hub.commit"] == final
    assert hub_env.tags(REPO)[f"run-{run_id[:8]}"] == final


def test_a_later_commit_of_another_run_is_not_claimed(hub_env, tmp_path, monkeypatch):
    run_id, _ = make_run(tmp_path)
    real_upload = hub.upload_folder
    own = {}

    def overtaken(*args, **kwargs):
        result = real_upload(*args, **kwargs)
        own["commit"] = result.commit
        hub_env.add_files(REPO, {"manifest.json": json.dumps({"mlflow_run_id": "someone-else"}).encode()})
        return result

    monkeypatch.setattr(hub, "upload_folder", overtaken)
    assert mirror_cli(run_id) == 0
    assert experiment.find_run(run_id).data.tags["hub.commit"] == own["commit"] != hub_env.head(REPO)

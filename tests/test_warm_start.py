"""Warm start (`train --init <source>`): every source kind, the refusals, and that only the
weights are taken (fresh optimizer, epoch 1), deterministically, with an exact resume after it.

One tiny training run (tests/tiny.py, one epoch) is the source of this module's tests; they
share its tracking store.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from seqtrack_mlflow import cli, experiment, names
from seqtrack_mlflow.config import load_config
from seqtrack_mlflow.errors import CheckpointError, ConfigError, SeqTrackError, TrackingError
from seqtrack_mlflow.model import build_seqtrack
from seqtrack_mlflow.publish import export, mirror
from seqtrack_mlflow.train import loop as trainer_module
from seqtrack_mlflow.train.checkpoint import load_checkpoint
from seqtrack_mlflow.train.warm_start import load_init
from tests.fakehub import ACCEPTED_TOKEN, fake_hub  # noqa: F401 - fixture

from .conftest import new_store, reset_active_experiment, use_store
from .test_trainer import assert_same_tensors, checkpoint, metrics
from .tiny import write_tiny_config


def _no_reexec(mp) -> None:
    """In-process training must not re-exec pytest to set PYTHONHASHSEED (as in test_trainer)."""
    mp.setenv("PYTHONHASHSEED", "8")
    mp.setenv("SEQTRACK_HASHSEED_SET", "1")


@pytest.fixture(scope="module")
def store(tmp_path_factory, empty_tracking_db) -> Path:
    return new_store(tmp_path_factory, empty_tracking_db, "warm-start")


@pytest.fixture(autouse=True)
def tracking_uri(store, monkeypatch, tmp_path_factory) -> str:
    """Overrides conftest's per-test store: the tests share the source run."""
    uri = use_store(monkeypatch, tmp_path_factory, store)
    reset_active_experiment(monkeypatch)
    _no_reexec(monkeypatch)
    return uri


def train(folder: Path, *args: str, **sections) -> str:
    """Train the tiny config in this process (--output-dir folder/outputs); the new run's id."""
    config = write_tiny_config(folder, **sections)
    client = MlflowClient()
    before = {r.info.run_id for r in client.search_runs(["0"])}
    assert cli.main(["train", "--config", str(config), "--output-dir", str(folder / "outputs"),
                     "--no-system-metrics", *args]) == 0
    (run_id,) = {r.info.run_id for r in client.search_runs(["0"])} - before
    return run_id


class Source:
    def __init__(self, folder: Path, run_id: str):
        self.folder, self.run_id = folder, run_id
        self.ckpt = folder / "outputs" / run_id / "checkpoints" / "epoch_1.ckpt"
        self.weights = load_checkpoint(self.ckpt)["model_state_dict"]


@pytest.fixture(scope="module")
def source(store, tmp_path_factory) -> Source:
    """A FINISHED tiny training run of one epoch, with its LoggedModel registered as
    seqtrack-lasot@champion (the default mlflow settings)."""
    folder = store / "source"
    with pytest.MonkeyPatch.context() as mp:
        use_store(mp, tmp_path_factory, store)
        reset_active_experiment(mp)
        _no_reexec(mp)
        return Source(folder, train(folder, train={"epochs": 1}))


def cfg_with(init: str, **sections):
    """The tiny config (model as the source's unless `model=` overrides) with train.init."""
    folder = Path(tempfile.mkdtemp(prefix="cfg-"))
    return load_config(write_tiny_config(folder, **sections), {"train.init": init})


def assert_weights(init, weights) -> None:
    assert init.state.keys() == weights.keys()
    for k, v in weights.items():
        assert torch.equal(init.state[k], v), k


def new_runs(before: set[str]) -> set[str]:
    return {r.info.run_id for r in MlflowClient().search_runs(["0"])} - before


def all_runs() -> set[str]:
    return {r.info.run_id for r in MlflowClient().search_runs(["0"])}


# -- each source kind ---------------------------------------------------------------------------
def test_checkpoint_file_is_verified_and_linked_to_its_run(source):
    init = load_init(cfg_with(str(source.ckpt)))
    assert_weights(init, source.weights)
    assert init.kind == "file" and init.epoch == 1
    tags = init.tags("0")
    assert tags[names.INIT_RUN_TAG] == source.run_id and tags[names.PARENT_RUN_TAG] == source.run_id
    assert tags[names.INIT_SHA256_TAG] == json.loads((source.ckpt.parent / "manifest.json").read_text())[
        "checkpoints"][0]["sha256"]
    assert names.PARENT_RUN_TAG not in init.tags("another-experiment")  # MLflow nests within one only


def test_an_altered_checkpoint_is_refused_by_its_manifest(source, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(source.ckpt.parent, folder)
    with open(folder / "epoch_1.ckpt", "ab") as f:
        f.write(b"x")
    with pytest.raises(CheckpointError, match="does not match"):
        load_init(cfg_with(str(folder / "epoch_1.ckpt")))


@pytest.mark.parametrize("form", ["{id}", "{id}:1", "runs:/{id}", "runs:/{id}/checkpoints/epoch_1.ckpt"])
def test_mlflow_run_id_forms(source, form):
    init = load_init(cfg_with(form.format(id=source.run_id)))
    assert_weights(init, source.weights)
    assert (init.kind, init.run_id, init.epoch) == ("run", source.run_id, 1)
    assert init.tags("0")[names.PARENT_RUN_TAG] == source.run_id


@pytest.mark.parametrize("form", ["models:/seqtrack-lasot@champion", "models:/seqtrack-lasot/1", "models:/{model}"])
def test_models_uri(source, form):
    model_id = experiment.epoch_models(source.run_id)[1]
    init = load_init(cfg_with(form.format(model=model_id)))
    assert_weights(init, source.weights)
    assert (init.kind, init.model_id, init.run_id) == ("model", model_id, source.run_id)
    assert init.tags("0")[names.INIT_MODEL_TAG] == model_id


def test_mirrored_hub_repo_with_and_without_revision(source, fake_hub, monkeypatch):  # noqa: F811
    monkeypatch.setenv("SEQTRACK_HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("HF_TOKEN", ACCEPTED_TOKEN)
    repo = "tester/warm-start"
    result = mirror.mirror_run(run_id=source.run_id, repo_id=repo)
    monkeypatch.delenv("HF_TOKEN")  # a public repo: reading it needs no token
    for spec in (repo, f"{repo}@{result.tag}", f"{repo}@main"):
        init = load_init(cfg_with(spec))
        assert_weights(init, source.weights)  # one epoch: the root weights are epoch 1's
        assert init.kind == "hub" and init.hub_commit == fake_hub.head(repo) == result.commit
        assert init.tags("0")[names.INIT_HUB_COMMIT_TAG] == result.commit
    with pytest.raises(SeqTrackError, match=r"^--init tester/warm-start@nope: ") as err:
        load_init(cfg_with(f"{repo}@nope"))
    assert "\n" not in str(err.value)


def test_official_release_layout_and_its_position_embeddings_resampled(tmp_path):
    """Official key names are this project's (official_keys.txt): the stand-in is a tiny model's
    state dict under 'net', beside the official trainer's other entries."""
    cfg = load_config(write_tiny_config(tmp_path))
    torch.manual_seed(3)
    donor = build_seqtrack(cfg.model).state_dict()
    path = tmp_path / "SEQTRACK_ep0500.pth.tar"
    torch.save({"net": donor, "epoch": 500, "net_type": "SEQTRACK"}, path)
    init = load_init(cfg_with(str(path)))
    assert init.official and init.run_id == ""
    assert_weights(init, donor)
    # Another search size: the official path resamples the position grids as load_official does ...
    bigger = cfg_with(str(path), model={"search_size": 96})
    assert load_init(bigger).state["pos_embed"].shape == (1, 144, 32)
    # ... a project checkpoint of another shape is refused with one line.
    weights = tmp_path / "weights.pth"
    torch.save(donor, weights)
    with pytest.raises(CheckpointError) as err:
        load_init(cfg_with(str(weights), model={"search_size": 96}))
    assert str(err.value) == (f"--init {weights}: pos_embed has shape (1, 64, 32) in the source, "
                              "(1, 144, 32) in this config's model")  # the first in state-dict order


def test_safetensors_file_and_pretrained_folder(source, tmp_path):
    export.export_pretrained(load_checkpoint(source.ckpt), tmp_path / "exported")
    for spec in (tmp_path / "exported" / "model.safetensors", tmp_path / "exported"):
        init = load_init(cfg_with(str(spec)))
        assert_weights(init, source.weights)
        assert init.kind == "file" and init.run_id == ""


# -- refusals: one line, exit 2, no run ------------------------------------------------------------
def test_shape_mismatch_through_the_cli_is_one_line_and_makes_no_run(source, tmp_path, capsys):
    config = write_tiny_config(tmp_path, model={"embed_dim": 64})
    before = all_runs()
    assert cli.main(["train", "--config", str(config), "--init", str(source.ckpt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [(f"error: --init {source.ckpt}: encoder.body.pos_embed has shape (1, 80, 32) in the source, "
                    "(1, 80, 64) in this config's model")]
    assert not new_runs(before)


@pytest.mark.parametrize("depth, words", [(2, "the source has no encoder.body.blocks.1."),
                                          (None, "the source has encoder.body.blocks.1.")])
def test_missing_and_unexpected_keys(tmp_path, depth, words):
    if depth is None:  # a depth-2 source into the depth-1 tiny model
        cfg = load_config(write_tiny_config(tmp_path / "deep", model={"depth": 2}))
        torch.save({"net": build_seqtrack(cfg.model).state_dict()}, tmp_path / "deep.pth")
        spec, model = tmp_path / "deep.pth", {}
    else:
        torch.save({"net": build_seqtrack(load_config(write_tiny_config(tmp_path)).model).state_dict()},
                   tmp_path / "shallow.pth")
        spec, model = tmp_path / "shallow.pth", {"depth": depth}
    with pytest.raises(CheckpointError) as err:
        load_init(cfg_with(str(spec), model=model))
    assert str(err.value).startswith(f"--init {spec}: {words}"), err.value


@pytest.mark.parametrize("spec, error, words", [
    ("what is this", ConfigError, "not a file, an MLflow run id"),
    ("no/such/file.ckpt", ConfigError, "no such file"),
    ("weights.safetensors", ConfigError, "no such file"),
    ("0123456789abcdef0123456789abcdef", TrackingError, "no MLflow run with id"),
    ("models:/no-such-model@champion", TrackingError, "no such registered model"),
    ("runs:/0123456789abcdef0123456789abcdef/report.md", ConfigError, "is not a checkpoint of the run"),
])
def test_unknown_sources(spec, error, words):
    with pytest.raises(error) as err:
        load_init(cfg_with(spec))
    assert str(err.value).startswith(f"--init {spec}: ") and words in str(err.value), err.value


def test_a_missing_epoch_of_a_run_names_the_ones_it_has(source):
    with pytest.raises(ConfigError, match="has no checkpoint of epoch 4; it has epochs 1"):
        load_init(cfg_with(f"{source.run_id}:4"))


def test_init_with_resume_or_pretrained_is_refused_before_anything(source, tmp_path, capsys):
    config = write_tiny_config(tmp_path)
    before = all_runs()
    assert cli.main(["train", "--config", str(config), "--init", str(source.ckpt), "--resume", source.run_id]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--init" in err[0] and "drop --init" in err[0], err
    assert not new_runs(before)
    weights = tmp_path / "mae.pth"
    torch.save({}, weights)
    with pytest.raises(ConfigError, match="model.pretrained"):
        load_init(cfg_with(str(source.ckpt), model={"pretrained": str(weights)}))


def test_print_config_shows_the_source(capsys):
    assert cli.main(["train", "--print-config", "--init", "someone/seqtrack@run-1a2b3c4d"]) == 0
    assert "  init: someone/seqtrack@run-1a2b3c4d\n" in capsys.readouterr().out


# -- training from it ---------------------------------------------------------------------------------
def test_weights_only_deterministic_and_resume_exact_without_the_source(source, tmp_path, monkeypatch):
    """Three runs from a copy of the source checkpoint: `full` (2 epochs), `part` (1 epoch, with
    the first step observed), then `part` resumed to 2 epochs after the copy is deleted."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a run id's checkpoints are fetched
    copy = tmp_path / "copy"
    shutil.copytree(source.ckpt.parent, copy)
    spec = str(copy / "epoch_1.ckpt")
    seen = []
    real_step = trainer_module.train_step

    def first_step(actor, model, optimizer, scheduler_free, *rest):
        if not seen:
            seen.append(({k: v.detach().clone() for k, v in model.state_dict().items()},
                         len(optimizer.state)))
        return real_step(actor, model, optimizer, scheduler_free, *rest)

    full = train(tmp_path / "full", "--init", spec, train={"epochs": 2})
    monkeypatch.setattr(trainer_module, "train_step", first_step)
    part = train(tmp_path / "part", "--init", spec, train={"epochs": 1})
    monkeypatch.setattr(trainer_module, "train_step", real_step)

    # The weights, and only the weights: the first step starts from the source's model with an
    # empty optimizer; the epoch-1 checkpoint holds one epoch of steps (40 samples / batch 8).
    weights, optimizer_entries = seen[0]
    assert_same_tensors(weights, source.weights)
    assert optimizer_entries == 0
    state = checkpoint(tmp_path / "part", part, 1)
    assert state["epoch"] == 1 and state["progress"]["global_samples"] == 40
    assert {int(s["step"]) for s in state["optimizer_state_dict"]["state"].values()} == {5}
    assert state["config"]["train"]["init"] == spec
    # Two runs with the same --init are bit-identical (the step schedule does not depend on epochs).
    assert_same_tensors(state["model_state_dict"], checkpoint(tmp_path / "full", full, 1)["model_state_dict"])
    run = MlflowClient().get_run(part)
    assert run.data.params["train.init"] == spec
    assert run.data.tags[names.INIT_RUN_TAG] == source.run_id == run.data.tags[names.PARENT_RUN_TAG]
    assert run.data.tags[names.INIT_KIND_TAG] == "file" and run.info.run_name.endswith("-init")

    # The resume needs its own checkpoint only: the init source is gone.
    shutil.rmtree(copy)
    resumed = train(tmp_path / "part", "--resume", part, train={"epochs": 2})
    assert metrics(resumed) == metrics(full)
    for epoch in (1, 2):
        a, b = checkpoint(tmp_path / "full", full, epoch), checkpoint(tmp_path / "part", resumed, epoch)
        for key in ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "rng", "metrics"):
            assert_same_tensors(a[key], b[key], key)
    tags = MlflowClient().get_run(resumed).data.tags
    assert tags[names.INIT_SOURCE_TAG] == spec and names.INIT_RUN_TAG not in tags


@pytest.mark.slow
def test_fine_tuning_from_a_trained_model_beats_the_same_training_from_scratch(tmp_path):
    """Pretrain the tiny model for 2 x 1600 samples, then train 320 samples from it and from
    scratch. Measured (AMD EPYC, 2 cores, shared): warm start val IoU 0.403 / loss 3.07, from
    scratch 0.174 / 4.07 (64 held-out samples). The margins below are under half of those gaps;
    each run is deterministic, so the comparison cannot flake on one machine, and half the
    measured gap leaves room for another CPU's last-bit differences."""
    recipe = {"lr": 1.0e-3}
    data = {"val_samples": 64}
    pretrained = train(tmp_path / "pre", "--samples-per-epoch", "1600", train={**recipe, "epochs": 2}, data=data)
    results = {}
    for name, extra in (("scratch", ()), ("warm", ("--init", pretrained))):
        run_id = train(tmp_path / name, "--samples-per-epoch", "320", *extra, train={**recipe, "epochs": 1},
                       data=data)
        m = MlflowClient().get_run(run_id).data.metrics
        results[name] = (m[names.VAL_IOU], m[names.EPOCH_TRAIN_LOSS])
    (warm_iou, warm_loss), (scratch_iou, scratch_loss) = results["warm"], results["scratch"]
    assert warm_iou > scratch_iou + 0.1, results
    assert warm_loss < scratch_loss - 0.4, results

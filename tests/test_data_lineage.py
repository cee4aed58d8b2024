"""What a run records about its data: the l-lt/LaSOT commit (tag and dataset source), the full
frame-index fingerprint, training / validation / evaluation as separate dataset inputs whose
digests cover every row."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from seqtrack_mlflow import cli
from seqtrack_mlflow.config import load_config
from seqtrack_mlflow.data.dataset import open_dataset
from seqtrack_mlflow.data.index import DIGEST_CHARS, frame_index, index_digest, split_index
from tests.datatrees import make_lasot_tree
from tests.fakehub import LASOT_REPO, fake_hub  # noqa: F401 - fixture
from tests.tiny import write_tiny_config


@pytest.fixture(autouse=True)
def no_reexec(monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "8")
    monkeypatch.setenv("SEQTRACK_HASHSEED_SET", "1")


def _zip_class(class_dir: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(class_dir.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(class_dir).as_posix())
    return buf.getvalue()


@pytest.fixture
def hub_with_trainable_lasot(fake_hub, tmp_path):  # noqa: F811
    """The fake l-lt/LaSOT with airplane/bicycle zips of 3 sequences x 30 frames (64x48)."""
    src = make_lasot_tree(tmp_path / "src", seqs_per_class=3, frames=30)
    fake_hub.add_files(LASOT_REPO, {f"{c}.zip": _zip_class(src / c) for c in ("airplane", "bicycle")},
                       repo_type="dataset")
    return fake_hub


def _inputs(run_id: str) -> dict[str, tuple[str, str, str]]:
    """{context: (dataset name, digest, source json)} of a run's dataset inputs."""
    out = {}
    for item in MlflowClient().get_run(run_id).inputs.dataset_inputs:
        context = {t.key: t.value for t in item.tags}["mlflow.data.context"]
        out[context] = (item.dataset.name, item.dataset.digest, item.dataset.source)
    return out


def test_revision_and_lineage_are_logged_for_training_and_evaluation(hub_with_trainable_lasot, tmp_path,
                                                                     monkeypatch):
    hub = hub_with_trainable_lasot
    monkeypatch.setenv("SEQTRACK_HF_ENDPOINT", hub.url)
    head = hub.head(LASOT_REPO, "dataset")
    root = tmp_path / "lasot"
    config = write_tiny_config(tmp_path, data={"source": "lasot"}, train={"epochs": 1})
    assert cli.main(["train", "--config", str(config), "--data-dir", str(root),
                     "--output-dir", str(tmp_path / "out")]) == 0
    [run] = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("Default").experiment_id])
    tags = run.data.tags
    assert tags["seqtrack.data_revision"] == head
    assert tags["seqtrack.data_source"] == f"hf://datasets/l-lt/LaSOT@{head}"
    assert tags["seqtrack.data_origin"] == "hub" and tags["seqtrack.data_root"] == str(root)

    cfg = load_config(config, {"data.root": str(root)})
    index = frame_index(open_dataset(cfg.data))
    assert tags["seqtrack.data_fingerprint"] == index_digest(index)
    inputs = _inputs(run.info.run_id)
    assert set(inputs) == {"training", "validation"}
    assert inputs["training"][0] == "lasot:airplane,bicycle/train"
    assert inputs["training"][1] == index_digest(split_index(index, "train"))[:DIGEST_CHARS]
    assert inputs["validation"][1] == index_digest(split_index(index, "test"))[:DIGEST_CHARS]
    # a Hugging Face source: the repo, its commit and the rows' split, no "None" strings
    for context, split in (("training", "train"), ("validation", "test")):
        source = json.loads(inputs[context][2])
        assert (source["path"], source["revision"], source["split"]) == ("l-lt/LaSOT", head, split)
        assert "None" not in source.values()

    # evaluation of that run: its test sequences as an input with context `evaluation`, no request
    hub.clear_requests()
    assert cli.main(["evaluate", "--run-id", run.info.run_id, "--config", str(config), "--data-dir",
                     str(root), "--output-dir", str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert hub.requests == []
    [child] = MlflowClient().search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert set(_inputs(child.info.run_id)) == {"evaluation"}
    assert _inputs(child.info.run_id)["evaluation"][1] == inputs["validation"][1]
    assert child.data.tags["seqtrack.data_revision"] == head


def _sources(run_id: str) -> dict[str, object]:
    """{context: the dataset input's source, as mlflow.data.get_source rebuilds it}."""
    import mlflow.data

    return {{t.key: t.value for t in item.tags}["mlflow.data.context"]: mlflow.data.get_source(item.dataset)
            for item in MlflowClient().get_run(run_id).inputs.dataset_inputs}


def test_local_dataset_sources_reload_with_the_network_blocked(tmp_path, monkeypatch):
    """The bundled sample and a LaSOT copy on disk are logged as local sources: load() gives the
    folder back with every connection refused."""
    import socket

    from seqtrack_mlflow.data.synthetic import ensure_sample_data

    local = make_lasot_tree(tmp_path / "copy", seqs_per_class=3, frames=30)
    roots = {"sample": Path(ensure_sample_data()), "lasot": local}
    runs = {}
    for source in roots:
        config = write_tiny_config(tmp_path / source, data={"source": source}, train={"epochs": 1})
        extra = ["--data-dir", str(local)] if source == "lasot" else []
        assert cli.main(["train", "--config", str(config), *extra, "--output-dir", str(tmp_path / source / "out"),
                         "--device", "cpu", "--no-system-metrics"]) == 0
        runs[source] = MlflowClient().search_runs(
            [MlflowClient().get_experiment_by_name("Default").experiment_id],
            filter_string=f"params.`data.source` = '{source}'")[0].info.run_id

    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for source, run_id in runs.items():
        sources = _sources(run_id)
        assert set(sources) == {"training", "validation"}
        for item in sources.values():
            assert item._get_source_type() == "local"
            assert Path(item.load()).resolve() == roots[source].resolve()
            assert "None" not in json.dumps(item.to_dict())

"""Dataset summary numbers, the summary/debug-samples commands, and the Arrow frame index."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from seqtrack_mlflow.cli import main
from seqtrack_mlflow.config import load_config
from seqtrack_mlflow.data.index import (
    _columns,
    _features,
    fingerprint,
    frame_index,
    index_digest,
    split_index,
)
from seqtrack_mlflow.data.lasot import LasotDataset, Sequence
from seqtrack_mlflow.data.summary import dataset_summary, format_summary
from seqtrack_mlflow.data.synthetic import cache_dir
from tests.datatrees import make_lasot_tree


@pytest.fixture
def tree(tmp_path):
    root = make_lasot_tree(tmp_path / "lasot", seqs_per_class=3, frames=30)
    # one bad sequence, skipped and counted
    (root / "bicycle" / "bicycle-3" / "groundtruth.txt").write_text("1,2,3\n")
    return root


def test_summary_numbers(tree):
    ds = LasotDataset(tree, ("airplane", "bicycle"), skip_bad=True)
    cfg = load_config(overrides={"data.samples_per_epoch": "101"})
    s = dataset_summary(ds, cfg)
    assert list(s) == ["source", "root", "classes", "total", "skipped", "samples_per_epoch_rule",
                       "val_samples"]
    a, b = s["classes"]["airplane"], s["classes"]["bicycle"]
    assert (a["train_sequences"], a["test_sequences"], a["frames"], a["visible_frames"]) == (2, 1, 90, 84)
    assert (b["train_sequences"], b["test_sequences"], b["frames"], b["visible_frames"]) == (1, 1, 60, 56)
    assert a["test_names"] == ["airplane-1"] and b["test_names"] == ["bicycle-2"]
    assert (a["samples_per_epoch"], b["samples_per_epoch"]) == (67, 34)  # 2:1 eligible sequences
    assert (a["skipped_sequences"], b["skipped_sequences"]) == (0, 1)
    t = s["total"]
    assert (t["train_sequences"], t["test_sequences"], t["frames"], t["visible_frames"]) == (3, 2, 150, 140)
    assert t["samples_per_epoch"] == 101 and t["skipped_sequences"] == 1
    assert s["skipped"][0]["sequence"] == "bicycle-3" and "groundtruth.txt:1" in s["skipped"][0]["reason"]
    json.dumps(s)  # JSON-ready
    table = format_summary(s)
    assert "airplane" in table and "total" in table and "skipped bicycle-3" in table


def test_summary_and_debug_commands_on_sample_data(tmp_path, capsys):
    # SEQTRACK_CACHE points at a per-session cache (conftest), so the sample tree is made once
    assert main(["summary", "--out", str(tmp_path / "s.json")]) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    default = load_config("default")
    assert s["total"]["train_sequences"] == 16
    assert s["total"]["samples_per_epoch"] == default.data.samples_per_epoch
    png = tmp_path / "samples.png"
    assert main(["debug-samples", "--count", "3", "--out", str(png)]) == 0
    img = Image.open(png)
    assert img.size[1] > 3 * default.model.search_size  # one row per sample


def test_frame_index(tree, tmp_path):
    ds = LasotDataset(tree, ("airplane", "bicycle"), skip_bad=True)
    index = frame_index(ds)
    assert index.column_names == ["sequence", "class", "frame", "path", "x", "y", "w", "h", "visible",
                                  "split"]
    assert len(index) == 150
    row = index[0]
    assert row["sequence"] == "airplane-1" and row["frame"] == 0 and row["split"] == "test"
    assert row["path"] == "airplane/airplane-1/img/00000001.jpg"
    seq = ds.sequences[0]
    assert np.array_equal(np.array(index["visible"][:30]), seq.visible)
    assert not (tree / ".seqtrack_index").exists()  # never written into the dataset tree
    assert (cache_dir() / "index" / fingerprint(ds)).is_dir()
    again = frame_index(ds)  # cached, same content
    assert again["x"] == index["x"]
    # annotations change -> new fingerprint -> rebuilt
    gt = tree / "airplane" / "airplane-2" / "groundtruth.txt"
    lines = gt.read_text().splitlines()
    lines[0] = "1,1,5,5"
    gt.write_text("\n".join(lines) + "\n")
    ds2 = LasotDataset(tree, ("airplane", "bicycle"), skip_bad=True)
    assert fingerprint(ds2) != fingerprint(ds)
    assert frame_index(ds2)[30]["w"] == 5.0


class _Boxes:
    """A dataset-shaped object of synthetic sequences (no images): enough for the index."""

    def __init__(self, root, sequences):
        self.root, self.sequences = root, sequences


def _big_index(tmp_path, edit=None):
    """A frame index of 3 sequences x 5000 frames (15,000 rows); `edit(boxes, visible)` changes
    the last sequence's arrays before the table is built."""
    from datasets import Dataset

    rng = np.random.default_rng(0)
    seqs = []
    for n in (1, 2, 3):
        boxes = np.round(rng.uniform(1, 300, size=(5000, 4)), 2)
        visible = np.ones(5000, dtype=bool)
        if n == 3 and edit is not None:
            edit(boxes, visible)
        seqs.append(Sequence(f"zebra-{n}", "zebra", tmp_path / "zebra" / f"zebra-{n}", boxes, visible,
                             split="test" if n == 1 else "train"))
    return Dataset.from_dict(_columns(_Boxes(tmp_path, seqs)), features=_features())


def test_index_digest_sees_every_row_and_column(tmp_path):
    import mlflow.data

    base = _big_index(tmp_path)
    assert len(base) == 15_000
    digest = index_digest(base)
    assert len(digest) == 64 and index_digest(_big_index(tmp_path)) == digest  # deterministic

    def gt_edit(boxes, visible):  # one groundtruth value, row 14,000 (past MLflow's 10,000)
        boxes[4000, 2] += 1.0

    def visible_edit(boxes, visible):  # one boolean, row 14,999
        visible[4999] = False

    for edit in (gt_edit, visible_edit):
        changed = _big_index(tmp_path, edit)
        assert index_digest(changed) != digest
        # what MLflow would have logged by itself: blind to both edits
        assert (mlflow.data.from_huggingface(changed).digest == mlflow.data.from_huggingface(base).digest)
        assert mlflow.data.from_huggingface(changed, digest=index_digest(changed)[:32]).digest != \
            mlflow.data.from_huggingface(base, digest=digest[:32]).digest
    # splits: train and test rows, each with its own digest
    train, test = split_index(base, "train"), split_index(base, "test")
    assert (len(train), len(test)) == (10_000, 5_000)
    assert set(test["sequence"]) == {"zebra-1"}
    assert len({index_digest(train), index_digest(test), digest}) == 3

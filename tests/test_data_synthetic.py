"""Bundled sample data: byte-identical tree, protocol-II names, atomic generation."""

from __future__ import annotations

import pytest

from seqtrack_mlflow.config import load_config
from seqtrack_mlflow.data import synthetic
from seqtrack_mlflow.data.lasot import LasotDataset
from seqtrack_mlflow.data.summary import dataset_summary
from seqtrack_mlflow.errors import DataError

# sha256 of the sample-v1 tree (synthetic.tree_sha256: annotation bytes and decoded JPEG pixels, so
# a Pillow release with another JPEG encoder does not change it). A change here means every
# user's training data changes: bump SAMPLE_VERSION together with it.
SAMPLE_V1_SHA256 = "bcc43dc1f2320f8c77212403493e4a49aa8780f176dc570503a25eb1e8e08390"


@pytest.fixture
def sample_root():
    # the default cache root: conftest points SEQTRACK_CACHE at one folder per test session,
    # so the tree is generated once and shared with every other test that uses sample data
    root = synthetic.ensure_sample_data()
    assert root == synthetic.default_sample_root()
    return root


def test_tree_is_byte_identical(sample_root):
    assert synthetic.tree_sha256(sample_root) == SAMPLE_V1_SHA256


def test_split_and_contents(sample_root):
    ds = LasotDataset(sample_root, synthetic.SAMPLE_CLASSES)
    assert sorted(s.name for s in ds.test) == ["airplane-1", "airplane-9", "bicycle-2", "bicycle-7"]
    assert len(ds.train) == 16 and not ds.skipped
    for s in ds.sequences:
        assert synthetic.MIN_FRAMES <= len(s) <= synthetic.MAX_FRAMES
        assert s.visible.mean() > 0.75
    # both kinds of events, in train and in test
    for group in (ds.train, ds.test):
        assert any((s.boxes[:, 2] == 0).any() for s in group)  # out of view (box 0,0,0,0)
    flagged = sum(int((~s.visible & (s.boxes[:, 2] > 0)).sum()) for s in ds.sequences)
    assert flagged > 0  # fully occluded frames keep a box but are not visible
    summary = dataset_summary(ds, load_config())
    assert summary["total"]["train_sequences"] == 16 and summary["total"]["test_sequences"] == 4


def test_cached_tree_is_reused_and_checked(sample_root, tmp_path):
    assert synthetic.ensure_sample_data(sample_root) == sample_root  # marker present: no work
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("user data")
    with pytest.raises(DataError, match="not a complete sample tree"):
        synthetic.ensure_sample_data(tmp_path / "full")


def test_killed_generation_leaves_no_tree(tmp_path, monkeypatch):
    def boom(root):
        (root / "airplane").mkdir()
        raise OSError("disk full")
    monkeypatch.setattr(synthetic, "write_sample_tree", boom)
    with pytest.raises(OSError):
        synthetic.ensure_sample_data(tmp_path / "sample-v1")
    assert not (tmp_path / "sample-v1").exists()


def test_default_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SEQTRACK_CACHE", str(tmp_path / "c"))
    assert synthetic.default_sample_root() == tmp_path / "c" / f"sample-v{synthetic.SAMPLE_VERSION}"

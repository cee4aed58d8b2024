"""LaSOT reader: parsing, visibility, bad data (file and line named), skip_bad, split rules."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqtrack_mlflow.data.frames import read_frame
from seqtrack_mlflow.data.lasot import (
    LasotDataset,
    parse_flags,
    parse_groundtruth,
    protocol_ii_test,
    read_sequence,
    read_split_file,
)
from seqtrack_mlflow.errors import DataError
from seqtrack_mlflow.lasot_classes import LASOT_CLASSES
from tests.datatrees import OCCLUDED_FRAME, OUT_OF_VIEW_FRAME, make_lasot_tree, make_sequence, target_box


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_lasot_tree(tmp_path / "lasot", seqs_per_class=3, frames=12)


def test_read_sequence(tree):
    seq = read_sequence(tree / "airplane" / "airplane-2")
    assert seq.name == "airplane-2" and seq.class_name == "airplane" and len(seq) == 12
    assert seq.boxes.dtype == np.float64 and seq.boxes.shape == (12, 4)
    assert tuple(seq.boxes[0]) == target_box(0, (64, 48))
    expected = np.ones(12, bool)
    expected[[OCCLUDED_FRAME, OUT_OF_VIEW_FRAME]] = False
    assert (seq.visible == expected).all()
    assert seq.frame_path(0).name == "00000001.jpg" and seq.frame_path(11).name == "00000012.jpg"
    assert seq.nlp == "a red square moving right"
    with pytest.raises(ValueError):
        seq.boxes[0, 0] = 1  # read-only
    assert read_frame(seq.frame_path(0)).shape == (48, 64, 3)


def test_zero_size_box_is_not_visible(tree):
    gt = tree / "airplane" / "airplane-2" / "groundtruth.txt"
    lines = gt.read_text().splitlines()
    lines[6] = "5,5,0,10"
    gt.write_text("\n".join(lines))
    assert not read_sequence(gt.parent).visible[6]


def _rewrite_line(path: Path, line_no: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("bad", ["1,2,3", "1,2,3,4,5", "1,2,x,4", "1,2,nan,4", "1,2,inf,4", ""])
def test_bad_groundtruth_line_names_file_and_line(tree, bad):
    gt = tree / "airplane" / "airplane-2" / "groundtruth.txt"
    _rewrite_line(gt, 5, bad)
    with pytest.raises(DataError, match=r"groundtruth\.txt:5: "):
        read_sequence(gt.parent)


@pytest.mark.parametrize("name", ["full_occlusion.txt", "out_of_view.txt"])
def test_bad_flags(tree, name):
    path = tree / "airplane" / "airplane-2" / name
    path.write_text("0,1,2" + ",0" * 9)
    with pytest.raises(DataError, match=rf"{name}:1: flag 3 is '2'"):
        read_sequence(path.parent)
    path.write_text("0,1")
    with pytest.raises(DataError, match=rf"{name}:1: 2 flags but groundtruth.txt has 12 frames"):
        read_sequence(path.parent)
    path.unlink()
    with pytest.raises(DataError, match=rf"{name}: file not found"):
        read_sequence(path.parent)


def test_frame_count_mismatch(tree):
    seq = tree / "airplane" / "airplane-2"
    (seq / "img" / "00000007.jpg").unlink()
    with pytest.raises(DataError, match=r"groundtruth\.txt: 12 annotations but img/ holds 11 frames "
                                        r"\(frame .*00000007\.jpg is missing\)"):
        read_sequence(seq)
    (seq / "img" / "00000007.jpg").write_bytes((seq / "img" / "00000001.jpg").read_bytes())
    (seq / "img" / "00000013.jpg").write_bytes((seq / "img" / "00000001.jpg").read_bytes())
    with pytest.raises(DataError, match="extra frames"):
        read_sequence(seq)


def test_missing_files_and_folders(tree):
    seq = tree / "airplane" / "airplane-2"
    (seq / "groundtruth.txt").unlink()
    with pytest.raises(DataError, match=r"airplane-2/groundtruth\.txt: file not found"):
        read_sequence(seq)
    seq3 = tree / "airplane" / "airplane-3"
    for f in (seq3 / "img").iterdir():
        f.unlink()
    (seq3 / "img").rmdir()
    with pytest.raises(DataError, match=r"airplane-3/img: frame folder not found"):
        read_sequence(seq3)
    with pytest.raises(DataError, match=r"bear: class folder not found"):
        LasotDataset(tree, ("airplane", "bear"))
    with pytest.raises(DataError, match="dataset folder not found"):
        LasotDataset(tree / "nowhere", ("airplane",))


def test_bad_jpeg_checked_at_load_for_first_and_last_frame(tree):
    seq = tree / "airplane" / "airplane-2"
    last = seq / "img" / "00000012.jpg"
    last.write_bytes(last.read_bytes()[:200])  # truncated download
    with pytest.raises(DataError, match=r"00000012\.jpg: truncated JPEG"):
        read_sequence(seq)
    (seq / "img" / "00000001.jpg").write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match=r"00000001\.jpg: not a JPEG"):
        read_sequence(seq)


def test_bad_jpeg_in_the_middle_raises_when_decoded(tree):
    seq_dir = tree / "airplane" / "airplane-2"
    mid = seq_dir / "img" / "00000006.jpg"
    data = mid.read_bytes()
    mid.write_bytes(data[:100] + b"\x00" * 50 + data[-2:])  # corrupt, keeps SOI/EOI markers
    seq = read_sequence(seq_dir)  # cheap load check passes
    with pytest.raises(DataError, match=r"00000006\.jpg: unreadable JPEG"):
        read_frame(seq.frame_path(5))
    mid.write_bytes(data[:300])  # truncated: only the deep load check sees it
    read_sequence(seq_dir)
    with pytest.raises(DataError, match=r"00000006\.jpg: truncated JPEG"):
        read_sequence(seq_dir, deep=True)


def test_skip_bad_counts_and_warns(tree, caplog):
    _rewrite_line(tree / "bicycle" / "bicycle-3" / "groundtruth.txt", 2, "a,b,c,d")
    with pytest.raises(DataError, match=r"bicycle-3/groundtruth\.txt:2"):
        LasotDataset(tree, ("airplane", "bicycle"))
    with caplog.at_level(logging.WARNING):
        ds = LasotDataset(tree, ("airplane", "bicycle"), skip_bad=True)
    assert [name for name, _ in ds.skipped] == ["bicycle-3"]
    assert "groundtruth.txt:2" in ds.skipped[0][1]
    assert "skipping bad sequence bicycle-3" in caplog.text
    assert len(ds.sequences) == 5


def test_protocol_ii_split(tmp_path):
    root = make_lasot_tree(tmp_path / "l", seqs_per_class=10, frames=6)
    ds = LasotDataset(root, ("airplane", "bicycle"))
    assert sorted(s.name for s in ds.test) == ["airplane-1", "airplane-9", "bicycle-2", "bicycle-7",
                                               "bicycle-9"]
    assert len(ds.train) == 15
    assert ds.split_rules == {"airplane": "protocol-II built-in", "bicycle": "protocol-II built-in"}
    # numeric, not lexical, order
    assert [s.name for s in ds.sequences[:3]] == ["airplane-1", "airplane-2", "airplane-3"]


def test_split_files_with_bom_crlf_whitespace(tmp_path):
    root = make_lasot_tree(tmp_path / "l", classes=("airplane", "bicycle", "bear"), seqs_per_class=4,
                           frames=6, split_files=True,
                           test_ids={"airplane": (2,), "bicycle": (3, 4), "bear": (1,)})
    assert read_split_file(root / "testing_set.txt") == {"airplane-2", "bicycle-3", "bicycle-4", "bear-1"}
    ds = LasotDataset(root, ("airplane", "bicycle", "bear"))
    assert sorted(s.name for s in ds.test) == ["airplane-2", "bear-1", "bicycle-3", "bicycle-4"]
    assert set(ds.split_rules.values()) == {"testing_set.txt"}
    (root / "testing_set.txt").unlink()  # only the training list: the rest is test
    ds = LasotDataset(root, ("bear",))
    assert [s.name for s in ds.test] == ["bear-1"] and ds.split_rules["bear"] == "training_set.txt"


def test_every_class_gets_its_protocol_ii_split_offline(tmp_path):
    # no split file: zebra (not one of the two default classes) uses the shipped official list
    root = make_lasot_tree(tmp_path / "l", classes=("zebra", "bear"), seqs_per_class=18, frames=5)
    ds = LasotDataset(root, ("zebra", "bear"))
    assert [s.name for s in ds.test] == ["zebra-10", "zebra-14", "zebra-16", "zebra-17",
                                         "bear-2", "bear-4", "bear-6", "bear-17"]
    assert set(ds.split_rules.values()) == {"protocol-II built-in"}
    table = protocol_ii_test()
    assert len(table) == 70 and set(table) == set(LASOT_CLASSES)
    assert all(len(set(v)) == 4 for v in table.values())
    assert table["zebra"] == (10, 14, 16, 17)


def test_fallback_split_rule_for_a_class_lasot_does_not_have(tmp_path):
    root = make_lasot_tree(tmp_path / "l", classes=("unicorn",), seqs_per_class=11, frames=6)
    ds = LasotDataset(root, ("unicorn",))
    assert [s.name for s in ds.test] == ["unicorn-1", "unicorn-6", "unicorn-11"]
    assert "every 5th" in ds.split_rules["unicorn"]


def test_ignores_non_sequence_entries(tree):
    (tree / "airplane" / "__MACOSX").mkdir()
    (tree / "airplane" / "notes.txt").write_text("x")
    assert len(LasotDataset(tree, ("airplane",)).sequences) == 3


def test_real_size_parse_is_fast(tmp_path):
    import time
    gt = tmp_path / "groundtruth.txt"
    gt.write_text("\n".join(f"{i},{i + 1},{30 + i % 7},{40}" for i in range(2500)) + "\n")
    t0 = time.perf_counter()
    boxes = parse_groundtruth(gt)
    assert boxes.shape == (2500, 4)
    assert time.perf_counter() - t0 < 0.1


# --- fuzzing: any file content yields an array or a DataError, never another exception -------

_line = st.one_of(
    st.text(alphabet="0123456789,.-+eEnaif \t", max_size=24),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=6).map(
        lambda v: ",".join(map(str, v))),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.lists(_line, max_size=6).map("\n".join), st.binary(max_size=64).map(
    lambda b: b.decode("latin-1"))))
def test_fuzz_groundtruth(text):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "groundtruth.txt"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            boxes = parse_groundtruth(path)
        except DataError as exc:
            assert "groundtruth.txt" in str(exc)
        else:
            assert boxes.ndim == 2 and boxes.shape[1] == 4 and np.isfinite(boxes).all()


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="01,\r\n 2x", max_size=30), st.integers(0, 12))
def test_fuzz_flags(text, count):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "out_of_view.txt"
        path.write_text(text)
        try:
            flags = parse_flags(path, count)
        except DataError as exc:
            assert "out_of_view.txt" in str(exc)
        else:
            assert flags.dtype == bool and flags.shape == (count,)


def test_make_sequence_helper(tmp_path):
    seq = read_sequence(make_sequence(tmp_path / "cat-1", frames=8))
    assert len(seq) == 8 and seq.class_name == "cat"


def test_symlinks_leading_outside_are_logged_or_refused(tmp_path, caplog):
    root = make_lasot_tree(tmp_path / "l", classes=("airplane",), seqs_per_class=2, frames=6)
    elsewhere = make_lasot_tree(tmp_path / "elsewhere", classes=("airplane",), seqs_per_class=1, frames=6)
    frame = root / "airplane" / "airplane-2" / "img" / "00000003.jpg"
    frame.unlink()
    frame.symlink_to(elsewhere / "airplane" / "airplane-1" / "img" / "00000003.jpg")
    inside = root / "airplane" / "airplane-2" / "img" / "00000004.jpg"  # a link within the tree: fine
    inside.unlink()
    inside.symlink_to(root / "airplane" / "airplane-1" / "img" / "00000004.jpg")
    with caplog.at_level(logging.WARNING):
        ds = LasotDataset(root, ("airplane",))
    assert [link for link, _ in ds.outside_links] == [str(frame)]
    assert str(frame) in caplog.text and "follow_symlinks=false" in caplog.text
    with pytest.raises(DataError, match="symlink to .* outside the dataset folder") as info:
        LasotDataset(root, ("airplane",), follow_symlinks=False)
    assert str(frame) in str(info.value) and "\n" not in str(info.value)
    # a whole class folder linked in from elsewhere
    (tmp_path / "l2").mkdir()
    (tmp_path / "l2" / "airplane").symlink_to(elsewhere / "airplane")
    with pytest.raises(DataError, match="l2/airplane: symlink to"):
        LasotDataset(tmp_path / "l2", ("airplane",), follow_symlinks=False)
    assert len(LasotDataset(tmp_path / "l2", ("airplane",)).outside_links) == 1

"""LaSOT class download from the (fake) `l-lt/LaSOT` dataset repo: layouts, split files,
safe extraction, markers that make a second call free."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest

from seqtrack_mlflow.data.download import MARKER, ensure_lasot, extract_class_zip
from seqtrack_mlflow.data.lasot import LasotDataset, read_split_file
from seqtrack_mlflow.errors import DataError
from tests.fakehub import LASOT_REPO, LASOT_TEST, LASOT_TRAIN, fake_hub, make_class_zip  # noqa: F401


def _zip_with(cls: str, name: str, data: bytes = b"x", mode: int | None = None) -> bytes:
    """A valid class zip plus one extra member `name` (optionally with unix mode bits)."""
    buf = io.BytesIO(make_class_zip(cls, numbers=(1,)))
    with zipfile.ZipFile(buf, "a") as zf:
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.external_attr = mode << 16
        zf.writestr(info, data)
    return buf.getvalue()


def test_flat_and_nested_zips_and_split_files(fake_hub, tmp_path):  # noqa: F811
    root = tmp_path / "lasot"
    assert ensure_lasot(root, ["airplane", "bicycle"], endpoint=fake_hub.url) == root
    for cls in ("airplane", "bicycle"):  # airplane.zip is flat, bicycle.zip nested
        folders = sorted(p.name for p in (root / cls).iterdir() if p.is_dir())
        assert folders == [f"{cls}-{n}" for n in (1, 2, 3)]
        assert (root / cls / MARKER).is_file()
        assert (root / cls / f"{cls}-1" / "img" / "00000003.jpg").is_file()
    assert not (root / "bicycle" / "bicycle").exists()
    # split files copied as they are (BOM, CRLF); read back clean
    assert (root / "testing_set.txt").read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_split_file(root / "testing_set.txt") == set(LASOT_TEST)
    assert read_split_file(root / "training_set.txt") == set(LASOT_TRAIN)
    data = LasotDataset(root, ["airplane", "bicycle"])
    assert sorted(s.name for s in data.test) == sorted(LASOT_TEST)
    assert sorted(s.name for s in data.train) == sorted(LASOT_TRAIN)
    # zips deleted, no temp folders left behind, only the named files were requested
    assert not list((root / ".downloads").glob("*.zip"))
    assert not [p for p in root.iterdir() if p.name.startswith((".extract-", ".old-"))]
    asked = {r.path.rsplit("/", 1)[-1] for r in fake_hub.requests_to(contains="/resolve/")}
    assert asked == {"airplane.zip", "bicycle.zip", "training_set.txt", "testing_set.txt"}


def test_second_call_makes_no_request(fake_hub, tmp_path):  # noqa: F811
    root = tmp_path / "lasot"
    ensure_lasot(root, ["airplane"], endpoint=fake_hub.url, keep_zip=True)
    assert (root / ".downloads" / "airplane.zip").is_file()
    fake_hub.clear_requests()
    ensure_lasot(root, ["airplane"], endpoint=fake_hub.url)
    assert fake_hub.requests == []


def test_incomplete_class_folder_is_replaced(fake_hub, tmp_path):  # noqa: F811
    root = tmp_path / "lasot"
    (root / "airplane" / "airplane-1").mkdir(parents=True)  # e.g. an interrupted earlier attempt
    ensure_lasot(root, ["airplane"], endpoint=fake_hub.url)
    assert (root / "airplane" / "airplane-1" / "groundtruth.txt").is_file()
    assert (root / "airplane" / MARKER).is_file()


@pytest.mark.parametrize("member, mode, why", [
    ("../evil.txt", None, "outside the folder"),
    ("cat-1/../../evil.txt", None, "outside the folder"),
    ("/tmp/evil-absolute.txt", None, "absolute path"),
    ("cat-1/link", stat.S_IFLNK | 0o777, "symlink"),
    ("cat-1/fifo", stat.S_IFIFO | 0o644, "special file"),
])
def test_malicious_members_are_refused(fake_hub, tmp_path, member, mode, why):  # noqa: F811
    fake_hub.add_files(LASOT_REPO, {"cat.zip": _zip_with("cat", member, b"/etc/passwd", mode)},
                       repo_type="dataset")
    root = tmp_path / "data" / "lasot"
    with pytest.raises(DataError, match=why) as info:
        ensure_lasot(root, ["cat"], endpoint=fake_hub.url)
    assert member in str(info.value)
    assert not (root / "cat").exists()
    assert not list(tmp_path.rglob("evil*")) and not Path("/tmp/evil-absolute.txt").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".extract-")]


def test_zip_missing_a_split_sequence_is_refused(fake_hub, tmp_path):  # noqa: F811
    fake_hub.add_files(LASOT_REPO, {"airplane.zip": make_class_zip("airplane", numbers=(1, 2))},
                       repo_type="dataset")
    with pytest.raises(DataError, match="airplane-3"):
        ensure_lasot(tmp_path / "lasot", ["airplane"], endpoint=fake_hub.url)


def test_unexpected_layout_and_unknown_class(fake_hub, tmp_path):  # noqa: F811
    zip_path = tmp_path / "dog.zip"
    zip_path.write_bytes(make_class_zip("cat", numbers=(1,)))
    with pytest.raises(DataError, match="unexpected layout"):
        extract_class_zip(zip_path, tmp_path / "out", "dog")
    fake_hub.clear_requests()
    with pytest.raises(DataError, match="unknown LaSOT class 'unicorn'"):
        ensure_lasot(tmp_path / "lasot", ["unicorn"], endpoint=fake_hub.url)
    assert fake_hub.requests == []


def test_damaged_sequence_is_kept_and_left_to_the_reader(fake_hub, tmp_path, caplog):  # noqa: F811
    damaged = make_class_zip("airplane", extra={"airplane-4/groundtruth.txt": b"1,2,3,4\n"})
    fake_hub.add_files(LASOT_REPO, {"airplane.zip": damaged}, repo_type="dataset")
    root = tmp_path / "lasot"
    ensure_lasot(root, ["airplane"], endpoint=fake_hub.url)  # the download is not thrown away
    assert "airplane-4 is damaged" in caplog.text
    with pytest.raises(DataError, match="airplane-4"):
        LasotDataset(root, ["airplane"])
    assert [name for name, _ in LasotDataset(root, ["airplane"], skip_bad=True).skipped] == ["airplane-4"]

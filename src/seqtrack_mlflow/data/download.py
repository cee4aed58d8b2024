"""Download chosen LaSOT classes from the Hugging Face dataset repo `l-lt/LaSOT`.

The repo holds one `<class>.zip` per class (multi-GB each, ~250 GB for all 70) plus
`training_set.txt` / `testing_set.txt` at its root. Only the named files are ever requested;
nothing lists or snapshots the repo.

`ensure_lasot(root, classes)`, per class:
1. `root/<class>/.seqtrack-complete.json` exists and names sequences that are all there:
   nothing to do, no request (a second call is instant).
2. Otherwise download `<class>.zip` into `root/.downloads/` (resumable: an interrupted download
   continues where it stopped), extract it SAFELY into a temporary folder next to root (absolute
   paths, `..` components, symlinks and any other non-regular member are refused, naming the
   member), accept both layouts (`<class>-N/` at the zip root, or `<class>/<class>-N/`), check
   every sequence the split files name for the class is there, read the tree with the LaSOT
   reader (a damaged sequence is logged, not fatal: the caller's reader decides, see skip_bad),
   write the marker, and rename the folder to `root/<class>` (atomic on one file system).
3. Delete the zip unless keep_zip.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
from pathlib import Path

from seqtrack_mlflow import hub
from seqtrack_mlflow.config import LASOT_CLASSES
from seqtrack_mlflow.data.lasot import (TEST_SPLIT_FILE, TRAIN_SPLIT_FILE, LasotDataset,
                                        read_split_file)
from seqtrack_mlflow.errors import DataError

log = logging.getLogger(__name__)

LASOT_REPO = "l-lt/LaSOT"
SPLIT_FILES = (TRAIN_SPLIT_FILE, TEST_SPLIT_FILE)
MARKER = ".seqtrack-complete.json"
DOWNLOADS = ".downloads"
_CHUNK = 1 << 20


def ensure_lasot(root: str | Path, classes, token: str | None = None, endpoint: str | None = None,
                 keep_zip: bool = False, revision: str | None = None) -> Path:
    """Make sure `root/<class>/` holds each chosen LaSOT class; download what is missing."""
    root = Path(root).expanduser()
    classes = tuple(classes)
    unknown = [c for c in classes if c not in LASOT_CLASSES]
    if unknown:
        raise DataError(f"unknown LaSOT class {unknown[0]!r}; expected one of: {', '.join(LASOT_CLASSES)}")
    root.mkdir(parents=True, exist_ok=True)
    token = hub.get_token(token, required=False)  # the dataset is public; a token only helps limits
    todo = [c for c in classes if not is_complete(root, c)]
    for cls in classes:
        if cls not in todo:
            log.info("LaSOT class %s already complete in %s", cls, root / cls)
    if todo or not all((root / name).is_file() for name in SPLIT_FILES):
        _fetch_split_files(root, token, endpoint, revision)
    for cls in todo:
        started = time.monotonic()
        log.info("downloading LaSOT class %s (%s.zip from %s; multi-GB for real LaSOT)",
                 cls, cls, hub.repo_url(LASOT_REPO, endpoint, "dataset"))
        zip_path = hub.download_file(LASOT_REPO, f"{cls}.zip", "dataset", root / DOWNLOADS,
                                     token=token, endpoint=endpoint, revision=revision)
        log.info("downloaded %s (%.1f MB, %.1f s); extracting", zip_path.name,
                 zip_path.stat().st_size / 1e6, time.monotonic() - started)
        install_class_zip(zip_path, root, cls)
        if not keep_zip:
            zip_path.unlink(missing_ok=True)
        log.info("LaSOT class %s ready in %s (%.1f s)", cls, root / cls, time.monotonic() - started)
    return root


def _fetch_split_files(root: Path, token, endpoint, revision) -> None:
    for name in SPLIT_FILES:
        if (root / name).is_file():
            continue
        path = hub.download_file(LASOT_REPO, name, "dataset", root / DOWNLOADS, token=token,
                                 endpoint=endpoint, revision=revision)
        tmp = root / f".{name}.tmp"
        shutil.copyfile(path, tmp)
        os.replace(tmp, root / name)
        log.info("%s: %d sequences listed", root / name, len(read_split_file(root / name)))


def split_names(root: Path, cls: str) -> set[str]:
    """Sequences of `cls` named by the split files in root (BOM/CRLF/blanks tolerated)."""
    names: set[str] = set()
    for name in SPLIT_FILES:
        if (root / name).is_file():
            names |= {n for n in read_split_file(root / name) if n.rsplit("-", 1)[0] == cls}
    return names


def is_complete(root: Path, cls: str) -> bool:
    """The class folder carries our marker and every sequence the marker names is there."""
    marker = root / cls / MARKER
    try:
        sequences = json.loads(marker.read_text(encoding="utf-8"))["sequences"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(sequences) and all((root / cls / s / "groundtruth.txt").is_file() for s in sequences)


# -- safe extraction --------------------------------------------------------------------------
def _member_parts(info: zipfile.ZipInfo, zip_path: Path) -> tuple[str, ...]:
    """The member's path components, or DataError if it could escape the target folder."""
    name = info.filename
    file_type = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip records no unix mode
    if file_type and file_type not in (stat.S_IFREG, stat.S_IFDIR):
        kind = "symlink" if file_type == stat.S_IFLNK else "special file (link, device or fifo)"
        raise DataError(f"{zip_path}: member {name!r} is a {kind}; refusing to extract")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise DataError(f"{zip_path}: member {name!r} has an absolute path; refusing to extract")
    parts = tuple(p for p in re.split(r"[/\\]+", name) if p not in ("", "."))
    if ".." in parts:
        raise DataError(f"{zip_path}: member {name!r} points outside the folder ('..'); "
                        f"refusing to extract")
    return parts


def _layout_prefix(members: list[tuple[zipfile.ZipInfo, tuple[str, ...]]], cls: str,
                   zip_path: Path) -> int:
    """How many leading components to drop: 0 for `<class>-N/...`, 1 for `<class>/<class>-N/...`."""
    tops = {parts[0] for _, parts in members if parts}
    seq = re.compile(rf"^{re.escape(cls)}-\d+$")
    if tops == {cls}:
        return 1
    if tops and all(seq.match(t) for t in tops):
        return 0
    raise DataError(f"{zip_path}: unexpected layout, top-level entries {sorted(tops)[:5]}; expected "
                    f"'{cls}-N/' folders or one '{cls}/' folder holding them")


def extract_class_zip(zip_path: Path, dest: Path, cls: str) -> list[str]:
    """Extract a class zip into `dest/<class>/<class>-N/...`; returns the sequence names.

    Every member is checked before anything is written (so a bad zip leaves nothing behind), and
    each file is written by us under `dest` (never `ZipFile.extract`), without permissions or
    links from the archive.
    """
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{zip_path}: not a readable zip ({exc}); delete it and download again") from None
    with zf:
        members = [(info, _member_parts(info, zip_path)) for info in zf.infolist()]
        members = [(i, p) for i, p in members if p and p[0] != "__MACOSX"]
        drop = _layout_prefix(members, cls, zip_path)
        base = (dest / cls).resolve()
        names = set()
        for info, parts in members:
            rel = parts[drop:]
            if not rel:
                continue
            target = base.joinpath(*rel)
            if os.path.commonpath([base, target.resolve()]) != str(base):  # belt and braces
                raise DataError(f"{zip_path}: member {info.filename!r} resolves outside {base}")
            names.add(rel[0])
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise DataError(f"{zip_path}: member {info.filename!r} is damaged ({exc}); delete the "
                                f"zip and download again") from None
    return sorted(n for n in names if re.fullmatch(rf"{re.escape(cls)}-\d+", n))


def install_class_zip(zip_path: Path, root: Path, cls: str) -> list[str]:
    """Extract into a temp folder beside root/<class>, verify, mark complete, rename into place."""
    root = Path(root)
    tmp_root = Path(tempfile.mkdtemp(prefix=f".extract-{cls}-", dir=root))
    try:
        sequences = extract_class_zip(Path(zip_path), tmp_root, cls)
        if not sequences:
            raise DataError(f"{zip_path}: holds no '{cls}-N/' sequence folders")
        missing = sorted(split_names(root, cls) - set(sequences))
        if missing:
            raise DataError(f"{zip_path}: sequence {missing[0]} (listed in the split files) is not in "
                            f"the zip ({len(missing)} missing); delete the zip and download again")
        for name in SPLIT_FILES:  # read the extracted tree with the same split as the real root
            if (root / name).is_file():
                shutil.copyfile(root / name, tmp_root / name)
        # Read it like training will. A damaged sequence is reported but does not throw away a
        # multi-GB download: the caller's reader then fails on it or skips it (skip_bad).
        dataset = LasotDataset(tmp_root, [cls], skip_bad=True)
        if not dataset.sequences:
            raise DataError(f"{zip_path}: no readable sequence ({dataset.skipped[0][1]})")
        for name, why in dataset.skipped:
            log.warning("%s: sequence %s is damaged in the download: %s", zip_path.name, name, why)
        log.info("%s: %d train / %d test sequences read back", cls, len(dataset.train), len(dataset.test))
        (tmp_root / cls / MARKER).write_text(json.dumps(
            {"class": cls, "source": f"{LASOT_REPO}/{zip_path.name}", "sequences": sequences},
            indent=1) + "\n", encoding="utf-8")
        final = root / cls
        if final.exists():  # an earlier, incomplete attempt: move it aside, then delete it
            old = Path(tempfile.mkdtemp(prefix=f".old-{cls}-", dir=root))
            os.replace(final, old / cls)
            shutil.rmtree(old)
        os.replace(tmp_root / cls, final)
        return sequences
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)

"""LaSOT classes for a run: a copy already on disk, used in place, or a download of the chosen
classes from the Hugging Face dataset repo `l-lt/LaSOT`.

The repo holds one `<class>.zip` per class (multi-GB each, ~250 GB for all 70) plus
`training_set.txt` / `testing_set.txt` at its root. Only the named files are ever requested;
nothing lists or snapshots the repo.

`ensure_lasot(root, classes)` looks at each `root/<class>` first, without any request:
- carries the project's marker `.seqtrack-complete.json` and every sequence it names: done;
- a folder the project did not make whose `<class>-N/` folders all hold `groundtruth.txt` and
  `img/` (a LaSOT copy of the user's, complete or a subset): used in place. Nothing is ever
  written, moved or deleted inside it, and no request is made for it (not even split files:
  the official test list ships with the package);
- any other folder the project did not make (e.g. a partial copy) stops the run with one line
  naming it; nothing in it is changed;
- missing, or ours but unfinished (marker present, sequences gone): downloaded.

A download resolves the repo's revision (`data.revision`, default main) to a commit ONCE, then
fetches the split files (only those missing at root) and each class zip at that commit into
`root/.downloads/` (resumable). Each zip is extracted into a temporary folder of our own
(`.extract-<class>-*`, holding `.seqtrack-extracting`), with bounds (archive.py): bytes
actually written per class, compression ratio per member, member count, free disk space, and
no absolute paths, `..`, symlinks or special files. A breach stops with one line naming the
member; the partial extraction is removed and the zip is flagged (`<class>.zip.rejected` beside
it), so a rerun says so instead of extracting it again. The tree is then read back with the
LaSOT reader, the marker (class, commit, sequences) is written and the folder is renamed to
`root/<class>`. The zip is deleted unless keep_zip.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from seqtrack_mlflow import hub
from seqtrack_mlflow.data import archive
from seqtrack_mlflow.data.archive import ExtractionRefused, ExtractLimits
from seqtrack_mlflow.data.lasot import (
    TEST_SPLIT_FILE,
    TRAIN_SPLIT_FILE,
    LasotDataset,
    read_split_file,
    sequence_folders,
)
from seqtrack_mlflow.errors import DataError
from seqtrack_mlflow.lasot_classes import LASOT_CLASSES

log = logging.getLogger(__name__)

LASOT_REPO = "l-lt/LaSOT"
SPLIT_FILES = (TRAIN_SPLIT_FILE, TEST_SPLIT_FILE)
MARKER = ".seqtrack-complete.json"
EXTRACTING = ".seqtrack-extracting"  # first file of every temporary folder we make: marks it ours
DOWNLOADS = ".downloads"
REJECTED = ".rejected"  # `<class>.zip.rejected` beside a zip whose content was refused
_TEMP_PREFIXES = (".extract-", ".old-")
_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class ClassOrigin:
    """Where one class of a run comes from."""

    name: str
    kind: str
    """'download' (made by this project from l-lt/LaSOT) or 'local' (a copy it did not make)."""
    path: Path
    revision: str | None = None
    """The l-lt/LaSOT commit of a download (None for a local copy or a marker that records none)."""


@dataclass(frozen=True)
class LasotInstall:
    """What `ensure_lasot` found or made: the root and each class's origin."""

    root: Path
    classes: dict[str, ClassOrigin] = field(default_factory=dict)
    requests_made: bool = False
    """True when the Hub was contacted (something had to be downloaded)."""

    @property
    def revisions(self) -> dict[str, str]:
        """{class: commit sha, or 'local'} ('unknown' for a download without a recorded commit)."""
        return {c: (o.revision or "unknown") if o.kind == "download" else "local"
                for c, o in self.classes.items()}


def _is_sha(revision: str | None) -> bool:
    return bool(revision) and bool(_SHA.match(revision.lower()))


def ensure_lasot(root: str | Path, classes, token: str | None = None, endpoint: str | None = None,
                 keep_zip: bool = False, revision: str | None = None,
                 limits: ExtractLimits | None = None) -> LasotInstall:
    """Use or download each chosen class under `root` (see the module docstring). One function:
    the per-class steps (use in place, reuse a kept zip, download, install) share their state."""
    root = Path(root).expanduser()
    classes = tuple(classes)
    limits = limits or ExtractLimits()
    unknown = [c for c in classes if c not in LASOT_CLASSES]
    if unknown:
        raise DataError(f"unknown LaSOT class {unknown[0]!r}; expected one of: {', '.join(LASOT_CLASSES)}")
    origins: dict[str, ClassOrigin] = {}
    todo: list[str] = []
    for cls in classes:  # look at every class before any request or write
        state, detail = class_state(root, cls)
        if state == "foreign":
            raise DataError(f"{root / cls}: {detail}, and seqtrack-mlflow did not make this folder, so it "
                            f"is left untouched: complete it (each {cls}-N/ needs groundtruth.txt and "
                            f"img/), move it away to download the class, or set data.root elsewhere")
        if state == "local":
            log.info("LaSOT class %s: using your copy in place (%s); nothing in it is changed",
                     cls, detail)
            origins[cls] = ClassOrigin(cls, "local", root / cls)
        elif state == "ours":
            rev = marker_revision(root, cls)
            if _is_sha(revision) and rev != revision.lower():
                raise DataError(f"{root / cls}: downloaded at l-lt/LaSOT commit {rev or 'unknown'}, but "
                                f"data.revision pins {revision}; use another data.root or drop the pin")
            log.info("LaSOT class %s already complete in %s (commit %s)", cls, root / cls, rev or "unknown")
            origins[cls] = ClassOrigin(cls, "download", root / cls, rev)
        else:
            todo.append(cls)
    if not todo:
        return LasotInstall(root, {c: origins[c] for c in classes})

    # Something must be downloaded: from here on the Hub is contacted and root is written.
    root.mkdir(parents=True, exist_ok=True)
    if not os.access(root, os.W_OK):
        raise DataError(f"{root}: not writable, so class {todo[0]} cannot be downloaded there; set "
                        f"data.root to a writable folder (classes already there are read in place)")
    for cls in todo:
        _check_not_rejected(root, cls)
    _remove_stale_temp(root)
    token = hub.get_token(token, required=False)  # the dataset is public; a token only helps limits
    if _is_sha(revision):
        commit = revision.lower()
    elif hub.offline():  # only files already fetched can be used; their commit is not known
        commit = None
        log.warning("HF_HUB_OFFLINE is set: l-lt/LaSOT %s is not resolved to a commit; the "
                    "classes installed now record no revision", revision or "main")
    else:
        commit = hub.resolve_commit(LASOT_REPO, revision or None, "dataset", token=token,
                                    endpoint=endpoint)
        log.info("l-lt/LaSOT %s is commit %s", revision or "main", commit)
    _fetch_split_files(root, token, endpoint, commit)
    for cls in todo:
        started = time.monotonic()
        log.info("downloading LaSOT class %s (%s.zip from %s at %s; multi-GB for real LaSOT)",
                 cls, cls, hub.repo_url(LASOT_REPO, endpoint, "dataset"), (commit or "main")[:12])
        zip_path = hub.download_file(LASOT_REPO, f"{cls}.zip", "dataset", root / DOWNLOADS,
                                     token=token, endpoint=endpoint, revision=commit)
        log.info("downloaded %s (%.1f MB, %.1f s); extracting", zip_path.name,
                 zip_path.stat().st_size / 1e6, time.monotonic() - started)
        install_class_zip(zip_path, root, cls, revision=commit, limits=limits)
        if not keep_zip:
            zip_path.unlink(missing_ok=True)
        log.info("LaSOT class %s ready in %s (%.1f s)", cls, root / cls, time.monotonic() - started)
        origins[cls] = ClassOrigin(cls, "download", root / cls, commit)
    return LasotInstall(root, {c: origins[c] for c in classes}, requests_made=True)


def class_state(root: Path, cls: str) -> tuple[str, str]:
    """('missing' | 'ours' | 'ours-unfinished' | 'local' | 'foreign', detail). Reads only."""
    folder = root / cls
    if not os.path.lexists(folder):
        return "missing", ""
    if not folder.is_dir():
        return "foreign", "is not a folder"
    if (folder / MARKER).is_file():
        return ("ours", "") if is_complete(root, cls) else ("ours-unfinished", "")
    sequences = sequence_folders(folder)
    if not sequences:
        return "foreign", f"holds no {cls}-N/ sequence folders"
    for seq in sequences:
        for need, ok in (("groundtruth.txt", (seq / "groundtruth.txt").is_file()),
                         ("img/", (seq / "img").is_dir())):
            if not ok and os.path.lexists(seq / need):  # e.g. a FIFO: never opened
                return "foreign", f"{seq.name}/{need} is not a {'folder' if need.endswith('/') else 'regular file'}"
            if not ok:
                return "foreign", f"{seq.name}/ has no {need}"
    return "local", f"{len(sequences)} sequences"


def marker_revision(root: Path, cls: str) -> str | None:
    """The commit recorded in the class's marker (None if the marker records none)."""
    try:
        value = json.loads((root / cls / MARKER).read_text(encoding="utf-8")).get("revision")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def _fetch_split_files(root: Path, token, endpoint, revision) -> None:
    for name in SPLIT_FILES:
        if os.path.lexists(root / name):  # never replace a file that is already there
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


def _rejected_flag(zip_path: Path) -> Path:
    return zip_path.with_name(zip_path.name + REJECTED)


def _check_not_rejected(root: Path, cls: str) -> None:
    zip_path = root / DOWNLOADS / f"{cls}.zip"
    flag = _rejected_flag(zip_path)
    if flag.is_file():
        reason = flag.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        raise DataError(f"{zip_path} was refused before ({reason[0] if reason else 'no reason recorded'}); "
                        f"delete it and {flag.name} to download it again")


def _remove_stale_temp(root: Path) -> None:
    """Remove temporary folders a killed run of ours left in root (only those marked ours)."""
    for entry in os.scandir(root):
        if (entry.name.startswith(_TEMP_PREFIXES) and entry.is_dir(follow_symlinks=False)
                and os.path.isfile(os.path.join(entry.path, EXTRACTING))):
            log.info("removing %s, left by an interrupted extraction", entry.path)
            shutil.rmtree(entry.path, ignore_errors=True)


def _own_temp_dir(root: Path, prefix: str) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    (tmp / EXTRACTING).write_text("seqtrack-mlflow temporary folder; safe to delete\n")
    return tmp


def _layout_prefix(members: list[tuple[zipfile.ZipInfo, tuple[str, ...]]], cls: str,
                   zip_path: Path) -> int:
    """How many leading components to drop: 0 for `<class>-N/...`, 1 for `<class>/<class>-N/...`."""
    tops = {parts[0] for _, parts in members if parts}
    seq = re.compile(rf"^{re.escape(cls)}-\d+$")
    if tops == {cls}:
        return 1
    if tops and all(seq.match(t) for t in tops):
        return 0
    raise ExtractionRefused(f"{zip_path}: unexpected layout, top-level entries {sorted(tops)[:5]}; "
                            f"expected '{cls}-N/' folders or one '{cls}/' folder holding them")


def extract_class_zip(zip_path: Path, dest: Path, cls: str,
                      limits: ExtractLimits | None = None) -> list[str]:
    """Extract a class zip into `dest/<class>/<class>-N/...`; returns the sequence names.

    Every member's path is checked before anything is written, and the bytes written are
    counted against `limits` (see `archive.extract_bounded`).
    """
    limits = limits or ExtractLimits()
    with archive.open_zip(zip_path) as zf:
        infos = zf.infolist()
        members = archive.checked_members(infos, zip_path, limits)
        members = [(i, p) for i, p in members if p and p[0] != "__MACOSX"]
        drop = _layout_prefix(members, cls, zip_path)
        declared = archive.check_declared(infos, zip_path, dest, limits)
        names = archive.extract_bounded(zf, members, dest / cls, drop, declared, zip_path, limits,
                                        desc=f"extract {cls}")
    return sorted(n for n in names if re.fullmatch(rf"{re.escape(cls)}-\d+", n))


def install_class_zip(zip_path: Path, root: Path, cls: str, revision: str | None = None,
                      limits: ExtractLimits | None = None) -> list[str]:
    """Extract into a temp folder of ours beside root/<class>, verify, mark complete, rename into
    place. root/<class> may only be absent or ours (our marker); anything else is refused."""
    root, zip_path = Path(root), Path(zip_path)
    tmp_root = _own_temp_dir(root, f".extract-{cls}-")
    try:
        try:
            sequences = extract_class_zip(zip_path, tmp_root, cls, limits)
        except ExtractionRefused as exc:
            _rejected_flag(zip_path).write_text(f"{exc}\n", encoding="utf-8")
            raise
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
            {"class": cls, "source": f"{LASOT_REPO}/{zip_path.name}", "revision": revision,
             "sequences": sequences}, indent=1) + "\n", encoding="utf-8")
        final = root / cls
        if os.path.lexists(final):
            if not (final / MARKER).is_file():  # re-checked here: never replace a folder not ours
                raise DataError(f"{final}: appeared during the download and was not made by "
                                f"seqtrack-mlflow; left untouched, the extracted class was discarded")
            old = _own_temp_dir(root, f".old-{cls}-")  # our unfinished install: aside, then gone
            os.replace(final, old / cls)
            shutil.rmtree(old)
        os.replace(tmp_root / cls, final)
        return sequences
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)

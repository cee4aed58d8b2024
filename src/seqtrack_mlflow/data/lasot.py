"""LaSOT reader: sequences, boxes, visibility and the train/test split.

Layout (Fan et al., "LaSOT", CVPR 2019; the same files the official pytracking/SeqTrack
`Lasot` dataset class reads)::

    root/<class>/<class>-<n>/img/00000001.jpg ...
                            /groundtruth.txt     one "x,y,w,h" line per frame (pixels, read as-is)
                            /full_occlusion.txt  one line "0,1,0,..." (one flag per frame)
                            /out_of_view.txt     same format
                            /nlp.txt             a sentence describing the target (optional)

A frame is *visible* when it is neither fully occluded nor out of view and its box has w > 0
and h > 0 (official `Lasot.get_sequence_info`: `valid & ~occlusion & ~out_of_view`).

Split (protocol II: train on 1120 sequences, test on 280, four per class). Per class the first
rule that applies decides:
1. `testing_set.txt` at the root (the official list; the Hub downloader puts it there) names at
   least one sequence of the class: those are test, the rest train.
2. `training_set.txt` at the root names at least one sequence of the class: the others are test.
3. The class is one of LaSOT's 70: the official protocol-II list shipped with the package
   (`lasot_testing_set.txt`, 4 per class; e.g. zebra-10, -14, -16, -17), so every class works
   offline and no split file is ever downloaded for a local copy.
4. Otherwise (a class LaSOT does not have): in numeric order, every fifth sequence starting
   with the first is test.

Symlinks: a class, sequence, annotation or frame path that is a link resolving outside the
root is logged (`LasotDataset.outside_links`); with `follow_symlinks=False` it is refused
with a DataError naming the link and its target.

Nothing here writes: the tree may be read-only, and is never changed.

Every problem raises `DataError` naming the file (and line where there is one). With
`skip_bad=True` a bad sequence is skipped with a warning and listed in `LasotDataset.skipped`,
never dropped silently.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from seqtrack_mlflow.errors import DataError

log = logging.getLogger(__name__)

PROTOCOL_II_FILE = "lasot_testing_set.txt"  # package data beside this module


@lru_cache(maxsize=1)
def protocol_ii_test() -> dict[str, tuple[int, ...]]:
    """{class: its four protocol-II test sequence numbers} for all 70 LaSOT classes, read from
    the official testing_set.txt shipped as package data."""
    text = resources.files(__package__).joinpath(PROTOCOL_II_FILE).read_text(encoding="utf-8")
    table: dict[str, list[int]] = {}
    for line in text.splitlines():
        name = line.strip()
        if name and not name.startswith("#"):
            cls, number = name.rsplit("-", 1)
            table.setdefault(cls, []).append(int(number))
    return {cls: tuple(sorted(numbers)) for cls, numbers in table.items()}


PROTOCOL_II_TEST = protocol_ii_test()
TRAIN_SPLIT_FILE = "training_set.txt"
TEST_SPLIT_FILE = "testing_set.txt"
JPEG_SOI = b"\xff\xd8\xff"  # every JPEG starts with the SOI marker and a segment marker
JPEG_EOI = b"\xff\xd9"  # ... and ends with EOI (a truncated download lacks it)


@dataclass(frozen=True, eq=False)
class Sequence:
    """One LaSOT video. Arrays are read-only; frame indices are 0-based (file = index + 1)."""

    name: str
    """e.g. 'airplane-1'."""
    class_name: str
    path: Path
    """The sequence folder (holding img/ and groundtruth.txt)."""
    boxes: np.ndarray = field(repr=False)
    """(N, 4) float64 xywh in image pixels, as written in groundtruth.txt."""
    visible: np.ndarray = field(repr=False)
    """(N,) bool: not fully occluded, not out of view, w > 0 and h > 0."""
    split: str = "train"
    """'train' or 'test'."""
    nlp: str = ""
    """The language description (nlp.txt), '' if absent."""

    def __len__(self) -> int:
        return len(self.boxes)

    def frame_path(self, i: int) -> Path:
        """Path of frame i (0-based) : img/%08d.jpg numbered from 1."""
        if not 0 <= i < len(self.boxes):
            raise IndexError(f"{self.name}: frame {i} out of range 0..{len(self.boxes) - 1}")
        return self.path / "img" / f"{i + 1:08d}.jpg"


def _lines(path: Path) -> list[str]:
    """Lines of a text file without BOM, CR or trailing blank lines."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block the read forever
            raise DataError(f"{path}: not a regular file")
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text file ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def parse_groundtruth(path: Path) -> np.ndarray:
    """groundtruth.txt -> (N, 4) float64. Raises DataError naming file and 1-based line."""
    lines = _lines(path)
    if not lines:
        raise DataError(f"{path}: empty, expected one 'x,y,w,h' line per frame")
    parts = [line.split(",") for line in lines]
    for i, p in enumerate(parts):
        if len(p) != 4:
            raise DataError(f"{path}:{i + 1}: expected 4 comma-separated numbers 'x,y,w,h', "
                            f"got {lines[i].strip()[:60]!r}")
    try:
        boxes = np.array(parts, dtype=np.float64)  # one C-level pass over 4N strings
    except ValueError:
        for i, p in enumerate(parts):  # slow path only to name the line
            try:
                [float(v) for v in p]
            except ValueError:
                raise DataError(f"{path}:{i + 1}: not a number in {lines[i].strip()[:60]!r}") from None
        raise  # pragma: no cover - numpy and float() disagree
    bad = ~np.isfinite(boxes).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}:{i + 1}: NaN or infinite value in {lines[i].strip()[:60]!r}")
    return boxes


def parse_flags(path: Path, count: int) -> np.ndarray:
    """full_occlusion.txt / out_of_view.txt -> (count,) bool. One line of comma-separated 0/1."""
    lines = [line for line in _lines(path) if line.strip()]
    if len(lines) != 1:
        raise DataError(f"{path}: expected one line of comma-separated 0/1 flags, got {len(lines)} lines")
    values = [v.strip() for v in lines[0].split(",")]
    if values and values[-1] == "":
        values.pop()  # tolerate a trailing comma
    flags = np.array([v == "1" for v in values], dtype=bool)
    bad = [j for j, v in enumerate(values) if v not in ("0", "1")]
    if bad:
        j = bad[0]
        raise DataError(f"{path}:1: flag {j + 1} is {values[j][:20]!r}, expected 0 or 1")
    if len(flags) != count:
        raise DataError(f"{path}:1: {len(flags)} flags but groundtruth.txt has {count} frames")
    return flags


def _check_jpeg(path: Path) -> None:
    """Cheap integrity check: SOI at the start, EOI at the end (catches empty/truncated files)."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO or device: refused before any read
            raise DataError(f"{path}: not a regular file; a frame must be a JPEG file")
        with open(path, "rb") as f:
            head = f.read(3)
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(size - 2, 0))
            tail = f.read(2)
    except OSError as exc:
        raise DataError(f"{path}: cannot read frame ({exc.strerror})") from None
    if head != JPEG_SOI:
        raise DataError(f"{path}: not a JPEG file (starts with {head!r})")
    if tail != JPEG_EOI:
        raise DataError(f"{path}: truncated JPEG (no end-of-image marker); re-download the sequence")


_FRAME_RE = re.compile(r"^(\d{8})\.jpg$")
_LINKS_LOGGED = 5  # log the first few outside links one by one, then only a count


class LinkPolicy:
    """Where symlinks inside a LaSOT tree may point: anywhere (logged when outside the root),
    or only inside the root (`follow=False`: an outside link raises DataError)."""

    def __init__(self, root: Path, follow: bool = True):
        self.root = Path(os.path.realpath(root))
        self.follow = follow
        self.outside: list[tuple[str, str]] = []

    def check(self, path: Path, is_link: bool | None = None) -> None:
        """Check `path` if it is a symlink (`is_link` saves the lstat when the caller knows)."""
        if not (os.path.islink(path) if is_link is None else is_link):
            return
        target = os.path.realpath(path)
        if os.path.commonpath([self.root, target]) == str(self.root):
            return
        if not self.follow:
            raise DataError(f"{path}: symlink to {target}, outside the dataset folder {self.root}; "
                            f"copy the data in, or allow it with --set data.follow_symlinks=true")
        self.outside.append((str(path), target))
        if len(self.outside) <= _LINKS_LOGGED:
            log.warning("%s: symlink to %s, outside the dataset folder; followed "
                        "(--set data.follow_symlinks=false refuses such links)", path, target)


def read_sequence(path: str | Path, split: str = "train", deep: bool = False,
                  links: LinkPolicy | None = None) -> Sequence:
    """Read one sequence folder `<class>-<n>`.

    Checks: groundtruth and flag files parse, one annotation per frame, img/ holds exactly
    00000001.jpg .. N.jpg, and the first and last frames look like complete JPEGs (`deep=True`
    checks every frame that way, ~10 us per frame). Decoding errors of other frames are raised
    (naming the file) when the frame is decoded.
    """
    path = Path(path)
    name = path.name
    class_name = name.rsplit("-", 1)[0]
    if not path.is_dir():
        raise DataError(f"{path}: sequence folder not found")
    if links is not None:
        for p in (path, path / "groundtruth.txt", path / "full_occlusion.txt",
                  path / "out_of_view.txt", path / "img"):
            links.check(p)
    boxes = parse_groundtruth(path / "groundtruth.txt")
    n = len(boxes)
    occluded = parse_flags(path / "full_occlusion.txt", n)
    out_of_view = parse_flags(path / "out_of_view.txt", n)
    img = path / "img"
    if not img.is_dir():
        raise DataError(f"{img}: frame folder not found (expected img/00000001.jpg ...)")
    numbers = []
    with os.scandir(img) as entries:
        for entry in entries:
            m = _FRAME_RE.match(entry.name)
            if m:
                numbers.append(int(m.group(1)))
                if links is not None:  # d_type from the directory listing: no extra stat
                    links.check(Path(entry.path), entry.is_symlink())
    numbers.sort()
    if numbers != list(range(1, n + 1)):
        have = set(numbers)
        missing = next((i for i in range(1, n + 1) if i not in have), None)
        detail = (f"frame {img / f'{missing:08d}.jpg'} is missing" if missing is not None
                  else f"extra frames after {n:08d}.jpg")
        raise DataError(f"{path / 'groundtruth.txt'}: {n} annotations but img/ holds {len(numbers)} "
                        f"frames ({detail})")
    for i in (range(1, n + 1) if deep else sorted({1, n})):
        _check_jpeg(img / f"{i:08d}.jpg")
    nlp_path = path / "nlp.txt"
    nlp = " ".join(_lines(nlp_path)).strip() if nlp_path.is_file() else ""
    visible = ~occluded & ~out_of_view & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    boxes.flags.writeable = False
    visible.flags.writeable = False
    return Sequence(name=name, class_name=class_name, path=path, boxes=boxes, visible=visible,
                    split=split, nlp=nlp)


def read_split_file(path: Path) -> set[str]:
    """Sequence names listed in a split file (tolerates BOM, CRLF, blanks, spaces, commas)."""
    return {tok for line in _lines(path) for tok in re.split(r"[\s,]+", line) if tok}


def _seq_number(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


def sequence_folders(class_dir: Path) -> list[Path]:
    """`<class>-<n>` sub-folders of a class folder, in numeric order."""
    cls = class_dir.name
    pattern = re.compile(rf"^{re.escape(cls)}-(\d+)$")
    found = []
    for entry in sorted(os.scandir(class_dir), key=lambda e: e.name):
        if entry.is_dir() and pattern.match(entry.name):
            found.append(Path(entry.path))
        else:
            log.debug("%s: ignoring %s (not a <class>-<n> sequence folder)", class_dir, entry.name)
    return sorted(found, key=lambda p: _seq_number(p.name))


def split_test_names(class_name: str, names: list[str], test_file: set[str] | None,
                     train_file: set[str] | None) -> tuple[set[str], str]:
    """(test names of this class, rule used); see the module docstring for the rules."""
    if test_file is not None and any(n in test_file for n in names):
        return {n for n in names if n in test_file}, TEST_SPLIT_FILE
    if train_file is not None and any(n in train_file for n in names):
        return {n for n in names if n not in train_file}, TRAIN_SPLIT_FILE
    if class_name in PROTOCOL_II_TEST:
        ids = PROTOCOL_II_TEST[class_name]
        return {n for n in names if _seq_number(n) in ids}, "protocol-II built-in"
    ordered = sorted(names, key=_seq_number)
    return set(ordered[::5]), "every 5th sequence (no split file)"


class LasotDataset:
    """The chosen classes of a LaSOT-format tree, split into train and test sequences.

    Attributes: `root`, `classes`, `sequences` (all, class then number order), `train`, `test`,
    `skipped` (list of (sequence name, reason)), `split_rules` ({class: rule used}),
    `outside_links` ([(link, target)] of symlinks leading out of the root), `origin` (where
    the data came from, set by `data.dataset.open_dataset`; None otherwise).
    """

    def __init__(self, root: str | Path, classes: tuple[str, ...] | list[str],
                 skip_bad: bool = False, deep: bool = False, follow_symlinks: bool = True):
        self.root = Path(root).expanduser()
        self.classes = tuple(classes)
        self.skipped: list[tuple[str, str]] = []
        self.split_rules: dict[str, str] = {}
        self.origin = None
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset folder not found")
        links = LinkPolicy(self.root, follow_symlinks)
        test_file = train_file = None
        if (self.root / TEST_SPLIT_FILE).is_file():
            test_file = read_split_file(self.root / TEST_SPLIT_FILE)
        if (self.root / TRAIN_SPLIT_FILE).is_file():
            train_file = read_split_file(self.root / TRAIN_SPLIT_FILE)
        if test_file and train_file and test_file & train_file:
            both = sorted(test_file & train_file)
            log.warning("%s: %d sequence(s) listed in both split files (e.g. %s); treated as test",
                        self.root, len(both), both[0])
        for name in (TEST_SPLIT_FILE, TRAIN_SPLIT_FILE):
            links.check(self.root / name)
        for cls in self.classes:  # all class folders first: fail before any slow reading
            if not (self.root / cls).is_dir():
                raise DataError(f"{self.root / cls}: class folder not found; download the class or "
                                f"remove {cls!r} from data.classes")
            links.check(self.root / cls)
        sequences: list[Sequence] = []
        for cls in self.classes:
            class_dir = self.root / cls
            folders = sequence_folders(class_dir)
            if not folders:
                raise DataError(f"{class_dir}: no <class>-<n> sequence folders inside")
            names = [p.name for p in folders]
            test, rule = split_test_names(cls, names, test_file, train_file)
            self.split_rules[cls] = rule
            for folder in folders:
                split = "test" if folder.name in test else "train"
                try:
                    sequences.append(read_sequence(folder, split=split, deep=deep, links=links))
                except DataError as exc:
                    if not skip_bad:
                        raise
                    log.warning("skipping bad sequence %s: %s", folder.name, exc)
                    self.skipped.append((folder.name, str(exc)))
        if len(links.outside) > _LINKS_LOGGED:
            log.warning("%s: %d symlinks lead outside the dataset folder in all (first ones above)",
                        self.root, len(links.outside))
        self.outside_links = links.outside
        self.sequences = sequences
        self.train = [s for s in sequences if s.split == "train"]
        self.test = [s for s in sequences if s.split == "test"]

    def __repr__(self) -> str:
        return (f"LasotDataset({str(self.root)!r}, classes={self.classes}, train={len(self.train)}, "
                f"test={len(self.test)}, skipped={len(self.skipped)})")

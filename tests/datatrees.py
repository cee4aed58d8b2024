"""Tiny LaSOT-format trees for tests (importable by every test module).

    from tests.datatrees import make_lasot_tree
    root = make_lasot_tree(tmp_path / "lasot", classes=("airplane", "bicycle"),
                           seqs_per_class=3, frames=30, size=(64, 48))

Each sequence `<class>-<n>` (n = 1..seqs_per_class) gets `frames` JPEG frames (a grey
background with a coloured square target moving right), groundtruth.txt with the square's box,
full_occlusion.txt (frame 3 occluded), out_of_view.txt (frame 4 out of view, box 0,0,0,0) and
nlp.txt. Visible frames are therefore all but frames 3 and 4 (0-based) when frames > 4.
The split follows lasot.py: airplane-1 and bicycle-2 are test with the defaults.
`split_files=True` also writes training_set.txt / testing_set.txt at the root (with a BOM,
CRLF line ends and stray spaces, as such files come from Windows tools), listing `test_ids`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

OCCLUDED_FRAME = 3
OUT_OF_VIEW_FRAME = 4


def target_box(i: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Box (x, y, w, h) of the square in frame i (0-based) of a tree of image `size` (w, h)."""
    w, h = size
    side = max(4, min(w, h) // 4)
    x = (2 + i) % max(1, w - side)
    return x, (h - side) // 2, side, side


def _jpeg(size: tuple[int, int], box: tuple[int, int, int, int] | None, colour) -> bytes:
    w, h = size
    img = np.full((h, w, 3), 110, dtype=np.uint8)
    if box is not None:
        x, y, bw, bh = box
        img[y:y + bh, x:x + bw] = colour
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_sequence(folder: Path, frames: int = 30, size: tuple[int, int] = (64, 48),
                  colour=(200, 40, 40)) -> Path:
    """Write one sequence folder (img/, groundtruth.txt, flag files, nlp.txt)."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines, occ, oov = [], [], []
    for i in range(frames):
        box = target_box(i, size)
        out = i == OUT_OF_VIEW_FRAME
        (folder / "img" / f"{i + 1:08d}.jpg").write_bytes(_jpeg(size, None if out else box, colour))
        lines.append("0,0,0,0" if out else ",".join(map(str, box)))
        occ.append("1" if i == OCCLUDED_FRAME else "0")
        oov.append("1" if out else "0")
    (folder / "groundtruth.txt").write_text("\n".join(lines) + "\n")
    (folder / "full_occlusion.txt").write_text(",".join(occ))
    (folder / "out_of_view.txt").write_text(",".join(oov))
    (folder / "nlp.txt").write_text("a red square moving right\n")
    return folder


def make_lasot_tree(root: str | Path, classes: tuple[str, ...] = ("airplane", "bicycle"),
                    seqs_per_class: int = 3, frames: int = 30, size: tuple[int, int] = (64, 48),
                    split_files: bool = False, test_ids: dict[str, tuple[int, ...]] | None = None
                    ) -> Path:
    """Build a LaSOT-format tree under `root` and return `root`.

    seqs_per_class: sequences <class>-1 .. <class>-<seqs_per_class> per class.
    frames: frames per sequence; size: (width, height) of every JPEG.
    split_files / test_ids: write training_set.txt / testing_set.txt; test_ids maps a class to
    its test sequence numbers (default: {class: (1,)} for every class).
    """
    root = Path(root)
    palette = [(200, 40, 40), (40, 60, 200), (40, 170, 60), (220, 200, 30)]
    for ci, cls in enumerate(classes):
        for n in range(1, seqs_per_class + 1):
            make_sequence(root / cls / f"{cls}-{n}", frames, size, palette[ci % len(palette)])
    if split_files:
        ids = test_ids or {cls: (1,) for cls in classes}
        test = [f"{c}-{n}" for c in classes for n in ids.get(c, ())]
        train = [f"{c}-{n}" for c in classes for n in range(1, seqs_per_class + 1)
                 if f"{c}-{n}" not in test]
        (root / "testing_set.txt").write_bytes(("\ufeff" + "\r\n".join(f" {t} " for t in test)
                                                + "\r\n\r\n").encode("utf-8"))
        (root / "training_set.txt").write_bytes(("\ufeff" + "\r\n".join(train) + "\r\n").encode("utf-8"))
    return root


def tree_snapshot(root: str | Path) -> dict[str, tuple]:
    """{relative path: (kind, size, mtime_ns, sha256 of a file's bytes)} of everything under root
    (links not followed): equal snapshots mean the tree is byte-for-byte unchanged."""
    import hashlib
    import os

    root = Path(root)
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else ""
            kind = "link" if p.is_symlink() else ("dir" if p.is_dir() else "file")
            out[p.relative_to(root).as_posix()] = (kind, st.st_size if kind == "file" else 0,
                                                   st.st_mtime_ns, digest)
    return out


_WATCHED: list[tuple[str, list]] = []
_WRITE_FLAGS = 0


def _audit(event: str, args: tuple) -> None:
    import os

    if not _WATCHED:
        return
    if event == "open":
        path, mode, flags = args
        writes = (any(c in mode for c in "wax+") if isinstance(mode, str)
                  else bool(flags & _WRITE_FLAGS) if isinstance(flags, int) else False)
        paths = [path] if writes else []
    elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.chmod", "os.utime", "os.truncate",
                   "shutil.rmtree", "os.symlink", "os.link"):
        paths = [args[0]] if event not in ("os.symlink", "os.link") else [args[1]]
    elif event in ("os.rename", "os.replace"):
        paths = [args[0], args[1]]
    else:
        return
    for path in paths:
        if isinstance(path, int):
            continue
        try:
            full = os.path.abspath(os.fsdecode(path))
        except (TypeError, ValueError):
            continue
        for root, hits in _WATCHED:
            if full == root or full.startswith(root + os.sep):
                hits.append((event, full))


class no_writes_under:
    """Context manager recording every write, create, rename or delete under `root` (by Python
    audit hooks, so it holds even for root, whom file modes do not stop). `.hits` lists them."""

    _installed = False

    def __init__(self, root: str | Path):
        import os

        self.root = os.path.abspath(root)
        self.hits: list[tuple[str, str]] = []

    def __enter__(self) -> no_writes_under:
        import os
        import sys

        global _WRITE_FLAGS
        if not no_writes_under._installed:
            _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
            sys.addaudithook(_audit)  # cannot be removed; idle while nothing is watched
            no_writes_under._installed = True
        _WATCHED.append((self.root, self.hits))
        return self

    def __exit__(self, *exc) -> None:
        _WATCHED[:] = [w for w in _WATCHED if w[1] is not self.hits]

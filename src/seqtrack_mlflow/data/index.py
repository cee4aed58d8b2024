"""The frame index: one row per frame of the chosen sequences, as a Hugging Face Arrow table.

Columns: sequence, class, frame (0-based), path (relative to the dataset root, so the table
and its digest do not depend on where the data lives), x, y, w, h (groundtruth, pixels),
visible, split. Built with `datasets.Dataset.from_dict`, saved in the user's cache folder
(`<cache>/index/<fingerprint>/`, never inside the dataset tree, which may be the user's own
read-only copy) and memory-mapped on later calls. The fingerprint is a sha256 of the parsed
annotations (names, split, boxes, visibility), so the index is rebuilt exactly when the data
changes (older indexes are left in place: another class selection may still use them; they
are ~100 bytes per frame).

`index_digest(table)` is the sha256 of every row and every column of a table (the boolean
`visible` column included). The run logs it as the MLflow dataset digest: MLflow's own digest
hashes only the first 10,000 rows through pandas, so most annotation edits of a real LaSOT
index would leave it unchanged.

Sampling does not use the table: reading the annotations with numpy takes milliseconds for the
sample data (~20 ms for 40 LaSOT sequences), while `import datasets` alone costs ~1-2 s and
Arrow row access is slower than numpy arrays (see benchmarks/data_pipeline.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from seqtrack_mlflow.data.lasot import LasotDataset

log = logging.getLogger(__name__)

INDEX_VERSION = 1
INDEX_DIR = ".seqtrack_index"


def fingerprint(dataset: LasotDataset) -> str:
    """sha256 (first 16 hex digits) of the parsed annotations of the dataset's sequences."""
    h = hashlib.sha256(f"frame-index-v{INDEX_VERSION}".encode())
    for s in dataset.sequences:
        h.update(f"\0{s.class_name}\0{s.name}\0{s.split}\0{len(s)}\0".encode())
        h.update(np.ascontiguousarray(s.boxes, dtype="<f8").tobytes())
        h.update(np.packbits(s.visible).tobytes())
    return h.hexdigest()[:16]


def _columns(dataset: LasotDataset) -> dict[str, list]:
    seqs = dataset.sequences
    n = [len(s) for s in seqs]
    boxes = np.concatenate([s.boxes for s in seqs]) if seqs else np.zeros((0, 4))
    root = dataset.root
    paths = []
    for s in seqs:
        rel = s.path.relative_to(root).as_posix() if s.path.is_relative_to(root) else s.path.as_posix()
        paths.extend(f"{rel}/img/{i + 1:08d}.jpg" for i in range(len(s)))
    return {
        "sequence": [s.name for s, k in zip(seqs, n) for _ in range(k)],
        "class": [s.class_name for s, k in zip(seqs, n) for _ in range(k)],
        "frame": np.concatenate([np.arange(k, dtype=np.int32) for k in n]) if seqs else [],
        "path": paths,
        "x": boxes[:, 0], "y": boxes[:, 1], "w": boxes[:, 2], "h": boxes[:, 3],
        "visible": np.concatenate([s.visible for s in seqs]) if seqs else [],
        "split": [s.split for s, k in zip(seqs, n) for _ in range(k)],
    }


def _features():
    from datasets import Features, Value
    return Features({
        "sequence": Value("string"), "class": Value("string"), "frame": Value("int32"),
        "path": Value("string"), "x": Value("float64"), "y": Value("float64"),
        "w": Value("float64"), "h": Value("float64"), "visible": Value("bool"),
        "split": Value("string"),
    })


def _index_parent() -> Path:
    from seqtrack_mlflow.data.synthetic import cache_dir
    parent = cache_dir() / "index"
    parent.mkdir(parents=True, exist_ok=True)
    return parent


DIGEST_FILE = "seqtrack_digest.txt"  # index_digest of the table, written inside the folder before it is renamed into place


def frame_index(dataset: LasotDataset):
    """The frame index of `dataset` as a memory-mapped `datasets.Dataset` (built once, cached).

    A cached index is used only if it reads back and its rows hash to the digest written with
    it; anything else (truncated, zeroed, a missing or foreign file) is set aside with one
    warning and rebuilt. The folder appears by one rename, complete or not at all."""
    key = fingerprint(dataset)
    parent = _index_parent()
    folder = parent / key
    if folder.is_dir():
        table, problem = _read_verified(folder)
        if table is not None:
            return table
        log.warning("frame index %s cannot be used (%s): rebuilding it", folder, problem)
        _set_aside(folder)
    return _build(dataset, parent, folder, key)


def _read_verified(folder: Path):
    """(table, '') if `folder` holds a readable index matching its digest, else (None, why)."""
    from datasets import load_from_disk

    try:
        recorded = (folder / DIGEST_FILE).read_text(encoding="ascii").strip()
        table = load_from_disk(str(folder))
        actual = index_digest(table)
    except Exception as exc:  # noqa: BLE001 - any failure to read a cache means: rebuild it
        return None, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    if actual != recorded:
        return None, "its rows do not match the digest written with it"
    return table, ""


def _set_aside(folder: Path) -> None:
    """Move a broken index out of the way (a rename: atomic against concurrent readers), then remove it."""
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.broken-", dir=folder.parent))
    try:
        os.rename(folder, aside / folder.name)
    except OSError:  # another process set it aside or rebuilt it first
        pass
    shutil.rmtree(aside, ignore_errors=True)


def _build(dataset: LasotDataset, parent: Path, folder: Path, key: str):
    from datasets import Dataset, load_from_disk

    table = Dataset.from_dict(_columns(dataset), features=_features())
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=parent))
    try:
        table.save_to_disk(str(tmp))
        (tmp / DIGEST_FILE).write_text(index_digest(load_from_disk(str(tmp))) + "\n", encoding="ascii")
        os.rename(tmp, folder)  # atomic; a concurrent builder wrote the same bytes
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not folder.is_dir():
            from seqtrack_mlflow.errors import StorageError, describe_os_error
            raise StorageError(describe_os_error(exc, "write the frame index to", tmp)) from None
    log.info("frame index: %d frames written to %s", len(table), folder)
    table, problem = _read_verified(folder)
    if table is None:
        from seqtrack_mlflow.errors import StorageError
        raise StorageError(f"the frame index just written to {folder} does not read back ({problem})")
    return table


DIGEST_CHARS = 32
"""Characters of `index_digest` given to MLflow (its dataset digest column holds 36)."""


def index_digest(table) -> str:
    """sha256 (64 hex digits) of all rows and all columns of a frame index (`datasets.Dataset`
    or a `select`/`filter` of one): column names and types, then each column's values in a
    canonical byte form (numbers little-endian, booleans one byte each, strings as lengths +
    UTF-8 bytes), so the same table gives the same digest however Arrow chunked it."""
    import pyarrow as pa

    data = table.with_format("arrow")[:] if hasattr(table, "with_format") else table
    h = hashlib.sha256(f"frame-index-digest-v1\0{data.num_rows}".encode())
    for name in data.column_names:
        column = data.column(name).combine_chunks()
        h.update(f"\0{name}\0{column.type}\0{column.null_count}\0".encode())
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            width = np.int32 if pa.types.is_string(column.type) else np.int64
            offsets = np.frombuffer(column.buffers()[1], dtype=width)[column.offset:column.offset + len(column) + 1]
            values = column.buffers()[2]
            blob = b"" if values is None else values.to_pybytes()[offsets[0]:offsets[-1]]
            h.update(np.diff(offsets).astype("<i8").tobytes())
            h.update(blob)
        elif pa.types.is_boolean(column.type):
            h.update(column.to_numpy(zero_copy_only=False).astype(np.uint8).tobytes())
        else:
            values = column.to_numpy(zero_copy_only=False)
            h.update(values.astype(values.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def split_index(table, split: str):
    """The rows of one split ('train' or 'test') of a frame index."""
    import pyarrow.compute as pc

    mask = pc.equal(table.with_format("arrow")[:].column("split"), split)
    return table.select(np.flatnonzero(mask.to_numpy(zero_copy_only=False)))

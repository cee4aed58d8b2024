"""File writes that a crash cannot tear, and file digests.

`atomic_write` writes to a hidden temporary file in the target's folder, fsyncs it and renames it
over the target (POSIX rename is atomic within a file system), then fsyncs the folder so the
rename itself is durable. A crash leaves the complete old file, the complete new one, or no file;
a kill -9 may leave the hidden `.<name>.XXXX.tmp`, which nothing reads (`remove_temp_files`
clears them). A failed write (disk full, read-only folder) raises StorageError naming the file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO, Callable

from seqtrack_mlflow.errors import StorageError, describe_os_error

TEMP_SUFFIX = ".tmp"


def atomic_write(path: str | Path, data: bytes | str | Callable[[IO[bytes]], None]) -> Path:
    """Write bytes, UTF-8 text, or whatever `data(file)` writes, to `path` atomically."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise StorageError(f"not saved: {describe_os_error(exc, path=path)}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        # torch.save reports a failed write (e.g. ENOSPC) as a RuntimeError whose context is
        # the OSError: name the file and the system's reason in one line.
        cause = exc if isinstance(exc, OSError) else exc.__context__
        if isinstance(cause, OSError) and isinstance(exc, (OSError, RuntimeError)):
            raise StorageError(f"not saved: {describe_os_error(cause, path=path)}") from exc
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return path


def remove_temp_files(folder: str | Path, names: tuple[str, ...]) -> list[Path]:
    """Delete the temporary files that killed `atomic_write`s left in folder for files whose
    names start with one of `names` (never a complete file). Call only when nothing is
    writing there."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.is_file() and p.name.endswith(TEMP_SUFFIX)
             and any(p.name.startswith(f".{name}") for name in names)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

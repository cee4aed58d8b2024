"""Bounded, path-checked zip extraction: nothing outside the target folder, no more bytes than allowed.

A zip is read member by member and each file is written by us (never `ZipFile.extract`),
without permissions or links from the archive. The checks, each a one-line `ExtractionRefused`
naming the member (see `ExtractLimits` for the bounds):
- before anything is written: member count, every member's path (no absolute paths, no `..`,
  no symlinks or special files), the declared uncompressed total and free disk space;
- while writing: the bytes actually written in all, and each member's compression ratio (a
  zip may declare small sizes and inflate to much more).
The LaSOT install around it (which folder, which layout, flagging a refused zip) is download.py.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from seqtrack_mlflow.errors import DataError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ExtractLimits:
    """Bounds on what one zip (a LaSOT class zip) may extract to (each breach: ExtractionRefused)."""

    max_total_bytes: int = 32 * 2**30
    """Bytes actually written for the class (data.max_class_bytes). Real LaSOT: the largest
    class zip is a few GB and JPEGs barely compress, so 32 GiB leaves ample room."""
    max_ratio: float = 100.0
    """Uncompressed / compressed bytes of one member. JPEG frames are ~1.0; flag files
    ('0,0,0,...') compress ~200x but stay far below `ratio_floor_bytes`."""
    ratio_floor_bytes: int = 1 << 20
    """The ratio is enforced once a member has written this much: a small file is no bomb."""
    max_members: int = 500_000
    """Zip members (a LaSOT class has 20 sequences of up to ~11,000 frames: <= ~220,000)."""
    free_margin_bytes: int = 1 << 30
    """Free disk space to keep beyond the zip's declared uncompressed size."""


class ExtractionRefused(DataError):
    """A zip's content breaks a bound or would escape its folder; the zip gets flagged."""


def open_zip(zip_path: Path) -> zipfile.ZipFile:
    """The open zip, or DataError if it is not a readable zip."""
    try:
        return zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{zip_path}: not a readable zip ({exc}); delete it and download again") from None


def member_parts(info: zipfile.ZipInfo, zip_path: Path) -> tuple[str, ...]:
    """The member's path components, or ExtractionRefused if it could escape the target folder."""
    name = info.filename
    file_type = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip records no unix mode
    if file_type and file_type not in (stat.S_IFREG, stat.S_IFDIR):
        kind = "symlink" if file_type == stat.S_IFLNK else "special file (link, device or fifo)"
        raise ExtractionRefused(f"{zip_path}: member {name!r} is a {kind}; refusing to extract")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise ExtractionRefused(f"{zip_path}: member {name!r} has an absolute path; refusing to extract")
    parts = tuple(p for p in re.split(r"[/\\]+", name) if p not in ("", "."))
    if ".." in parts:
        raise ExtractionRefused(f"{zip_path}: member {name!r} points outside the folder ('..'); "
                                f"refusing to extract")
    return parts


def checked_members(infos: list[zipfile.ZipInfo], zip_path: Path,
                    limits: ExtractLimits) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """(member, path components) of every member, after the member count and path checks."""
    if len(infos) > limits.max_members:  # before looking at each member
        raise ExtractionRefused(f"{zip_path}: member {infos[limits.max_members].filename!r} is past "
                                f"the limit of {limits.max_members} members; refusing to extract")
    return [(info, member_parts(info, zip_path)) for info in infos]


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def check_declared(infos: list[zipfile.ZipInfo], zip_path: Path, dest: Path,
                   limits: ExtractLimits) -> int:
    """Cheap checks before writing anything: declared total and free disk space.
    Returns the declared uncompressed total (the real bound is on bytes written, below)."""
    total = 0
    for info in infos:
        total += info.file_size
        if total > limits.max_total_bytes:
            raise ExtractionRefused(
                f"{zip_path}: member {info.filename!r} takes the declared size past "
                f"data.max_class_bytes={limits.max_total_bytes} ({_gib(limits.max_total_bytes)}); "
                f"refusing to extract (raise data.max_class_bytes if the zip is genuine)")
    existing = dest
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < total + limits.free_margin_bytes:
        raise DataError(f"{zip_path}: extracting needs {_gib(total)} plus a {_gib(limits.free_margin_bytes)} "
                        f"margin, but {dest} has {_gib(free)} free; free some space and rerun")
    return total


def extract_bounded(zf: zipfile.ZipFile, members: list[tuple[zipfile.ZipInfo, tuple[str, ...]]],
                    target_dir: Path, drop: int, declared: int, zip_path: Path,
                    limits: ExtractLimits, desc: str) -> set[str]:
    """Write `members` (from `checked_members`) under `target_dir`, each without its first `drop`
    path components, counting the bytes actually written against `limits`. Returns the first
    path component of every member written."""
    from tqdm import tqdm

    base = target_dir.resolve()
    names = set()
    written_total = 0
    # disable=None: no bar when stderr is not a terminal (logs, CI, mlflow run > file)
    with tqdm(total=declared, unit="B", unit_scale=True, desc=desc, disable=None,
              leave=False) as bar:
        for info, parts in members:
            rel = parts[drop:]
            if not rel:
                continue
            target = base.joinpath(*rel)
            if os.path.commonpath([base, target.resolve()]) != str(base):  # belt and braces
                raise ExtractionRefused(f"{zip_path}: member {info.filename!r} resolves outside {base}")
            names.add(rel[0])
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            ratio_cap = limits.max_ratio * max(info.compress_size, 1)
            written = 0
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        written_total += len(chunk)
                        if written_total > limits.max_total_bytes:
                            raise ExtractionRefused(
                                f"{zip_path}: member {info.filename!r} takes the extracted size past "
                                f"data.max_class_bytes={limits.max_total_bytes} "
                                f"({_gib(limits.max_total_bytes)}); refusing to extract further")
                        if written > limits.ratio_floor_bytes and written > ratio_cap:
                            raise ExtractionRefused(
                                f"{zip_path}: member {info.filename!r} inflates more than "
                                f"{limits.max_ratio:g}x its {info.compress_size} compressed bytes "
                                f"(a zip bomb?); refusing to extract")
                        out.write(chunk)
                        bar.update(len(chunk))
            except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
                raise DataError(f"{zip_path}: member {info.filename!r} is damaged ({exc}); delete the "
                                f"zip and download again") from None
            except OSError as exc:
                raise DataError(f"{zip_path}: cannot write member {info.filename!r} to {target} "
                                f"({exc.strerror or exc}); partial extraction removed") from None
    return names

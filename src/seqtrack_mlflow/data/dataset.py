"""The configured dataset: one call from a DataConfig to a ready dataset (the bundled sample, a
LaSOT copy already on disk read in place, or the chosen LaSOT classes downloaded into the
user's cache), where it came from (`DataOrigin`), and the MLflow dataset inputs of a run."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from seqtrack_mlflow import names
from seqtrack_mlflow.config import DataConfig
from seqtrack_mlflow.names import CONTEXT_SPLITS, HF_DATASETS_SCHEME

log = logging.getLogger(__name__)

HUB_SOURCE = f"{HF_DATASETS_SCHEME}l-lt/LaSOT"


def default_lasot_root() -> Path:
    """Where downloads go when data.root is empty: $SEQTRACK_CACHE/lasot, else
    $XDG_CACHE_HOME/seqtrack_mlflow/lasot, else ~/.cache/seqtrack_mlflow/lasot. Not under the
    current folder, so `mlflow run` from a git URL or from elsewhere reuses one copy."""
    from seqtrack_mlflow.data.synthetic import cache_dir
    return cache_dir() / "lasot"


@dataclass(frozen=True)
class DataOrigin:
    """Where a run's data came from, as logged on the run (tags and dataset source)."""

    kind: str
    """'sample', 'hub' (every class downloaded by the project), 'local' (a copy the project did
    not make, read in place) or 'mixed' (some of each)."""
    root: str
    """Absolute path of the tree."""
    revision: str
    """The l-lt/LaSOT commit of a download; 'local' for a local copy; the sample's version;
    'class=rev,...' when the classes differ."""
    source: str
    """Dataset source URI: hf://datasets/l-lt/LaSOT@<commit>, file://<root>, or the sample's."""

    def tags(self) -> dict[str, str]:
        return {names.DATA_SOURCE_TAG: self.source, names.DATA_REVISION_TAG: self.revision,
                names.DATA_ROOT_TAG: self.root, names.DATA_ORIGIN_TAG: self.kind}


def lasot_origin(root: Path, revisions: dict[str, str]) -> DataOrigin:
    """The origin of a LaSOT tree from {class: commit | 'local' | 'unknown'}."""
    root_abs = os.path.abspath(root)
    kinds = {"local" if r == "local" else "hub" for r in revisions.values()}
    distinct = sorted(set(revisions.values()))
    if kinds == {"hub"} and len(distinct) == 1:
        return DataOrigin("hub", root_abs, distinct[0], f"{HUB_SOURCE}@{distinct[0]}")
    revision = distinct[0] if len(distinct) == 1 else ",".join(f"{c}={r}" for c, r in revisions.items())
    kind = "local" if kinds == {"local"} else ("hub" if kinds == {"hub"} else "mixed")
    return DataOrigin(kind, root_abs, revision, Path(root_abs).as_uri())


def dataset_source(data: DataConfig, dataset=None) -> str:
    """Where the data comes from, as logged to MLflow (dataset source / tag)."""
    origin = getattr(dataset, "origin", None)
    if origin is not None:
        return origin.source
    if data.source == "lasot":
        return HUB_SOURCE
    from seqtrack_mlflow.data.synthetic import SAMPLE_VERSION
    # The sample's source name as recorded on runs (tag and dataset source): a fixed name, so
    # runs on the same sample version compare; it is not a module path.
    return f"seqtrack_mlflow.data.sample/{SAMPLE_VERSION}"


def open_dataset(data: DataConfig, endpoint: str | None = None):
    """Generate the sample tree, or use / download the chosen LaSOT classes; then read it.

    The returned LasotDataset carries `.origin` (a DataOrigin)."""
    from seqtrack_mlflow.data.lasot import LasotDataset

    if data.source == "sample":
        from seqtrack_mlflow.data.synthetic import SAMPLE_VERSION, ensure_sample_data
        root = ensure_sample_data(Path(data.root) if data.root else None)
        origin = DataOrigin("sample", os.path.abspath(root), f"v{SAMPLE_VERSION}",
                            dataset_source(data))
    else:
        from seqtrack_mlflow.data.archive import ExtractLimits
        from seqtrack_mlflow.data.download import ensure_lasot
        root = Path(data.root).expanduser() if data.root else default_lasot_root()
        install = ensure_lasot(root, data.classes, endpoint=endpoint, keep_zip=data.keep_zip,
                               revision=data.revision or None,
                               limits=ExtractLimits(max_total_bytes=data.max_class_bytes))
        origin = lasot_origin(install.root, install.revisions)
    log.info("dataset: %s data in %s, classes %s (%s %s)", data.source, root, ",".join(data.classes),
             origin.kind, origin.revision)
    dataset = LasotDataset(root, data.classes, skip_bad=data.skip_bad_sequences,
                           follow_symlinks=data.follow_symlinks)
    dataset.origin = origin
    return dataset


def test_split(dataset) -> list:
    """The held-out sequences of an opened dataset, in class then number order: what the trainer
    validates and tracks after each epoch and what `evaluate` scores. Which sequences these are
    is decided by the split rules of data/lasot.py, so the same data config (a run's logged
    one, which `evaluate` reads back) always gives the same list."""
    return list(dataset.test)


@dataclass(frozen=True)
class DatasetInput:
    """One MLflow dataset input of a run: rows of the frame index and how to log them."""

    table: object
    """A `datasets.Dataset` (rows of the frame index)."""
    name: str
    context: str
    """'training', 'validation' or 'evaluation'."""
    digest: str
    """`index_digest` of these rows, cut to what MLflow stores."""
    source: str
    """What `mlflow.data.get_source(...).load()` reloads: hf://datasets/l-lt/LaSOT@<commit> for
    a download, else the file:// URI of the tree on this disk (the sample, a local copy)."""




def dataset_inputs(dataset, data: DataConfig, contexts: tuple[str, ...]) -> tuple[list[DatasetInput], dict[str, str]]:
    """The inputs to log for `contexts`, and the run tags naming the data (origin, revision, root,
    and the full 64-digit digest of the whole frame index)."""
    from seqtrack_mlflow.data.index import DIGEST_CHARS, frame_index, index_digest, split_index

    index = frame_index(dataset)
    origin = getattr(dataset, "origin", None)
    if origin is None:
        source = dataset_source(data, dataset)
    else:
        source = origin.source if origin.kind == "hub" else Path(origin.root).as_uri()
    base = f"{data.source}:{','.join(data.classes)}"
    inputs = []
    for context in contexts:
        rows = split_index(index, CONTEXT_SPLITS[context])
        inputs.append(DatasetInput(rows, f"{base}/{CONTEXT_SPLITS[context]}", context,
                                   index_digest(rows)[:DIGEST_CHARS], source))
    tags = dict(origin.tags()) if origin is not None else {names.DATA_SOURCE_TAG: source}
    tags[names.DATA_FINGERPRINT_TAG] = index_digest(index)
    return inputs, tags

"""One call from a DataConfig to a ready dataset: the bundled sample or downloaded LaSOT."""

from __future__ import annotations

import logging
from pathlib import Path

from seqtrack_mlflow.config import DataConfig

log = logging.getLogger(__name__)

DEFAULT_LASOT_ROOT = Path("data") / "lasot"


def dataset_source(data: DataConfig) -> str:
    """Where the data comes from, as logged to MLflow (dataset source / tag)."""
    if data.source == "lasot":
        return "hf://datasets/l-lt/LaSOT"
    from seqtrack_mlflow.data.sample import SAMPLE_VERSION
    return f"seqtrack_mlflow.data.sample/{SAMPLE_VERSION}"


def open_dataset(data: DataConfig):
    """Generate the sample tree or download the chosen LaSOT classes, then read it."""
    from seqtrack_mlflow.data.lasot import LasotDataset

    if data.source == "sample":
        from seqtrack_mlflow.data.sample import ensure_sample_data
        root = ensure_sample_data(Path(data.root) if data.root else None)
    else:
        from seqtrack_mlflow.data.download import ensure_lasot
        root = ensure_lasot(Path(data.root) if data.root else DEFAULT_LASOT_ROOT, data.classes,
                            keep_zip=data.keep_zip)
    log.info("dataset: %s data in %s, classes %s", data.source, root, ",".join(data.classes))
    return LasotDataset(root, data.classes, skip_bad=data.skip_bad_sequences)

"""Which data an evaluation scores: by default the test split of the data the model was trained on.

The trained data is read from where the model's training recorded it:
- a run (`--run-id`, a `models:/` URI, or the newest training run): its `config.yaml` artifact;
  a run without one, its `data.source` / `data.classes` / `data.root` params over the
  checkpoint's stored config; a run with neither, the checkpoint's stored config;
- a checkpoint file (`--checkpoint`): its stored config.
The whole data section is taken (source, classes, folder, split-relevant switches), so
`data.dataset.open_dataset` of it yields the same test split the trainer validated on. The data
flags (`--data`, `--classes`, `--data-dir`, `--skip-bad-sequences`, `--set data.*`) change
single keys of it.

- A run's folder that no longer exists is an error naming the folder and `--data-dir`; a
  relative folder is the absolute one the run read (its `seqtrack.data_root` tag).
- A source or class set other than the trained one is cross-data: refused unless asked for
  (`--other-data`), then tagged (names.CROSS_DATA_TAG) and never recorded as the run's result.
  Another folder of the same source and classes (a moved copy) is not cross-data.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from seqtrack_mlflow import experiment, names
from seqtrack_mlflow.config import Config, DataConfig
from seqtrack_mlflow.errors import ConfigError, DataError, TrackingError

log = logging.getLogger(__name__)

DATA_FIELDS = tuple(f.name for f in dataclasses.fields(DataConfig))
# The flag (and MLproject parameter) of each data key, for messages.
FLAGS = {"data.source": "--data", "data.classes": "--classes", "data.root": "--data-dir",
         "data.skip_bad_sequences": "--skip-bad-sequences"}
OTHER_DATA_HINT = "--other-data (MLflow: -P other_data=true)"


@dataclass(frozen=True)
class TrainedData:
    """The data section a checkpoint was trained with and where it was read from."""

    data: dict[str, Any]
    """DataConfig keys (without the `data.` prefix) -> values as recorded."""
    what: str
    """'run <id>' or 'checkpoint <path>'."""
    origin: str
    """Where `data` was read: "run <id>'s config.yaml", "run <id>'s params", "the checkpoint's config"."""
    root_read: str = ""
    """The absolute folder the run read its data from (its data-root tag), '' when unknown."""

    @property
    def label(self) -> str:
        return data_label(str(self.data.get("source", "")), self.data.get("classes", ()))


@dataclass(frozen=True)
class EvaluationData:
    """The data an evaluation scores, and how it relates to the trained data."""

    data: DataConfig
    trained: TrainedData
    changed: tuple[str, ...]
    """The data keys a flag set (dotted, e.g. 'data.classes')."""
    cross: bool
    """Another source or class set than the trained one (allowed with --other-data only)."""

    @property
    def label(self) -> str:
        return data_label(self.data.source, self.data.classes)

    def tags(self) -> dict[str, str]:
        return {names.TRAINED_ON_TAG: self.trained.label, names.EVALUATED_ON_TAG: self.label,
                names.CROSS_DATA_TAG: str(self.cross).lower()}

    def describe(self) -> str:
        """One line: source, classes, folder, and where they came from."""
        where = self.data.root or "the cache folder"
        given = ", ".join(FLAGS.get(k, f"--set {k}") for k in self.changed)
        text = (f"{self.data.source} data, classes {','.join(self.data.classes)}, in {where} "
                f"(from {self.trained.origin}" + (f"; changed by {given}" if given else "") + ")")
        if self.cross:
            text += f"; other data than trained on ({self.trained.label}): not recorded as the run's result"
        return text


def data_label(source: str, classes: Any) -> str:
    """'<source>:<class>,<class>' (the run's dataset input names start the same way)."""
    if isinstance(classes, str):
        classes = [c for c in classes.split(",") if c]
    return f"{source}:{','.join(map(str, classes))}"


def _class_set(classes: Any) -> frozenset[str]:
    if isinstance(classes, str):
        classes = classes.split(",")
    return frozenset(str(c).strip() for c in classes or () if str(c).strip())


def _run_config(run_id: str) -> dict[str, Any] | None:
    """The data section of a run's config.yaml artifact, None when it has none."""
    with tempfile.TemporaryDirectory(prefix="seqtrack-runcfg-") as tmp:
        try:
            path = experiment.download_artifacts(run_id, names.CONFIG_FILE, tmp)
        except TrackingError:
            return None
        try:
            tree = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise TrackingError(f"run {run_id}: its {names.CONFIG_FILE} cannot be read ({exc})") from None
    data = tree.get("data") if isinstance(tree, dict) else None
    if not isinstance(data, dict):
        raise TrackingError(f"run {run_id}: its {names.CONFIG_FILE} has no data section")
    return data


def trained_data(run_id: str, checkpoint_cfg: Config, checkpoint_label: str = "") -> TrainedData:
    """The data a checkpoint was trained on: its run's logged config when it has a run (see the
    module docstring), else the checkpoint's stored config."""
    stored = checkpoint_cfg.to_dict()["data"]
    if not run_id:
        return TrainedData(stored, f"checkpoint {checkpoint_label}".strip(), "the checkpoint's config")
    run = experiment.find_run(run_id)
    root_read = run.data.tags.get(names.DATA_ROOT_TAG, "")
    logged = _run_config(run_id)
    if logged is not None:
        data = {k: v for k, v in logged.items() if k in DATA_FIELDS}
        return TrainedData({**stored, **data}, f"run {run_id}", f"run {run_id}'s {names.CONFIG_FILE}", root_read)
    params = {k.removeprefix("data."): v for k, v in run.data.params.items()
              if k in ("data.source", "data.classes", "data.root")}
    if "source" in params:
        return TrainedData({**stored, **params}, f"run {run_id}", f"run {run_id}'s params", root_read)
    return TrainedData(stored, f"run {run_id}", "the checkpoint's config", root_read)


def _given(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The data.* overrides a user actually gave (None or blank = not given, as load_config)."""
    return {k: v for k, v in overrides.items()
            if k.startswith("data.") and v is not None and not (isinstance(v, str) and not v.strip())}


def evaluation_data(trained: TrainedData, overrides: Mapping[str, Any] | None = None,
                    other_data: bool = False) -> EvaluationData:
    """The trained data with the given data.* overrides on top; raises DataError for a trained
    folder that is gone, ConfigError for other data without `other_data`."""
    given = _given(overrides or {})
    tree = dict(trained.data)
    source_changed = "data.source" in given and str(given["data.source"]).strip() != str(tree.get("source"))
    if "data.root" not in given:
        root = str(tree.get("root") or "")
        if source_changed:
            root = ""  # the trained folder holds the other source: use the new source's cache
        elif root:
            if not Path(root).expanduser().is_absolute() and trained.root_read:
                root = trained.root_read  # the folder training read, wherever this runs from
            if not Path(root).expanduser().is_dir():
                raise DataError(f"{trained.what} was trained on {tree.get('source')} data in {root}, which no "
                                f"longer exists; give --data-dir (MLflow: -P data_dir=...) with the folder "
                                "that holds it now")
        tree["root"] = root
    try:
        data = Config.from_dict({"data": tree}, given, origin=f"data of {trained.what}").data
    except ConfigError as exc:
        raise ConfigError(f"evaluation data: {exc}") from None
    cross = (data.source != str(tree.get("source"))
             or _class_set(data.classes) != _class_set(tree.get("classes", ())))
    result = EvaluationData(data, trained, tuple(given), cross)
    if cross and not other_data:
        flags = [FLAGS.get(k, f"--set {k}") for k in given if k in ("data.source", "data.classes")]
        raise ConfigError(f"{trained.what} was trained on {trained.label}; {' and '.join(flags) or 'the flags'} "
                          f"ask{'s' if len(flags) == 1 else ''} for "
                          f"{result.label}: add {OTHER_DATA_HINT} to evaluate on other data (recorded as "
                          "such, never as the run's own result)")
    if other_data and not cross:
        log.info("--other-data: %s is the data %s was trained on; a regular evaluation", result.label, trained.what)
    return result

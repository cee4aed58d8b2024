"""Each chosen epoch as an MLflow LoggedModel of its training run, and the best one as a
registered model version: alias `newest` always, the champion alias (mlflow.alias) only when it
beats the current champion on the same held-out data (`champion_decision`).

A LoggedModel is a pyfunc model from code (`publish/pyfunc_model.py`) whose artifact `weights/`
holds config.json + model.safetensors exactly as the Hub mirror writes them, with a signature,
an input example and pinned requirements. It is logged at step = epoch, so MLflow links the
run's epoch metrics to it and the model's page shows them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import mlflow

import seqtrack_mlflow
from seqtrack_mlflow import epoch_ranking, names
from seqtrack_mlflow.experiment import client, retry_locked, tracking_errors
from seqtrack_mlflow.publish import pyfunc_model
from seqtrack_mlflow.train.determinism import rng_state, set_rng_state

PACKAGE_DIR = Path(seqtrack_mlflow.__file__).resolve().parent  # shipped with every model: code/seqtrack_mlflow


def should_log_model(mode: str, epoch: int, last_epoch: int, row: dict[str, float],
               history: list[dict[str, float]]) -> bool:
    """Whether `epoch` (its metrics `row`) becomes a LoggedModel under mlflow.log_models
    (all | best | last); `history` holds the earlier epochs. best: the first epoch and each one
    that beats every earlier one by the `epoch_ranking` rule."""
    if mode == "all":
        return True
    if mode == "last":
        return epoch == last_epoch
    best = epoch_ranking.best_in_history([*history, row], range(1, len(history) + 2))
    return not history or (best is not None and best[0] == len(history) + 1)


class EpochModels:
    """The LoggedModels of one training run (the active MLflow run), by epoch."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.models: dict[int, str] = {}  # epoch -> LoggedModel id
        self._example: Any = None

    def log(self, epoch: int, weights_dir: Path, track: dict[str, Any]) -> str:
        """After the checkpoint of `epoch`: its weights (`weights_dir`: config.json +
        model.safetensors) become a LoggedModel of this run at step = epoch; its id."""
        if self._example is None:
            self._example = pyfunc_model.sample_example()
        # log_model loads the model once to check the input example: the RNG states are put
        # back afterwards, so logging models never changes what training computes.
        saved, saved_path = rng_state(), list(sys.path)
        try:
            with warnings.catch_warnings():
                # "add type hints to predict": the signature is given explicitly instead
                warnings.filterwarnings("ignore", message=".*type hints to the `predict` method")
                # a locked sqlite store is retried for a bounded time, as every other write
                info = retry_locked(f"logging the model of epoch {epoch}", lambda: mlflow.pyfunc.log_model(
                    name=f"epoch-{epoch}", python_model=pyfunc_model.__file__,
                    artifacts={pyfunc_model.WEIGHTS_ARTIFACT: str(weights_dir)}, model_config=dict(track),
                    signature=signature(), input_example=self._example,
                    pip_requirements=pip_requirements(), code_paths=[str(PACKAGE_DIR)], step=int(epoch),
                    tags={names.EPOCH_TAG: str(epoch)}, model_type="seqtrack-tracker"))
        finally:
            set_rng_state(saved)
            # loading the model (above) put its code/ folder first on sys.path: take it off again
            sys.path[:] = saved_path
        self.models[epoch] = info.model_id
        return info.model_id

    def register_best(self, history: list[dict[str, float]], name: str, alias: str,
                      force: bool = False) -> "Registration | None":
        """Register the best logged epoch (`epoch_ranking`: highest epoch/val_auc, else epoch/val_iou;
        earliest on ties) as a new version of `name`; it takes `newest` always and `alias` by
        `champion_decision`. None when nothing is registered (no name, no logged model)."""
        logged = sorted(self.models)
        if not name or not logged:
            return None
        epoch, metric, value = epoch_ranking.best_in_history(history, logged) or (logged[-1], "", math.nan)
        with tracking_errors(f"registering the model of epoch {epoch} as {name}"):
            digest = validation_digest(self.run_id)
            version = mlflow.register_model(
                f"models:/{self.models[epoch]}", name,
                tags={names.EPOCH_TAG: str(epoch), names.MODEL_RUN_TAG: self.run_id, names.SCORE_METRIC_TAG: metric,
                      names.SCORE_VALUE_TAG: repr(value) if math.isfinite(value) else "",
                      names.VALIDATION_DIGEST_TAG: digest}).version
            client().update_model_version(name, version, description=(
                f"SeqTrack epoch {epoch} of run {self.run_id}, {metric or 'no validation metric'} {value:.4f}"))
            client().set_registered_model_alias(name, names.LATEST_ALIAS, version)
            current = alias_holder(name, alias)
            take, why = champion_decision(current, metric, value, digest, force)
            if take:
                client().set_registered_model_alias(name, alias, version)
            client().set_model_version_tag(name, version, names.CHAMPION_DECISION_TAG, why)
        return Registration(f"{name}/{version}", epoch, metric, value, take, why)


@dataclasses.dataclass(frozen=True)
class Registration:
    version: str
    """'name/version'."""
    epoch: int
    metric: str
    value: float
    champion: bool
    """Whether the champion alias now points at this version."""
    decision: str
    """Why (or why not), in words; also the version's seqtrack.champion_decision tag."""


def validation_digest(run_id: str) -> str:
    """The digest of the run's `validation` dataset input ('' if it logged none)."""
    for item in client().get_run(run_id).inputs.dataset_inputs:
        if any(t.key == "mlflow.data.context" and t.value == "validation" for t in item.tags):
            return item.dataset.digest
    return ""


def alias_holder(name: str, alias: str) -> dict[str, str] | None:
    """{'version', and the version's tags} of the version `alias` points at; None if none."""
    from mlflow.exceptions import MlflowException

    try:
        version = client().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    return {"version": str(version.version), **dict(version.tags or {})}


def champion_decision(current: dict[str, str] | None, metric: str, value: float, digest: str,
                      force: bool) -> tuple[bool, str]:
    """(take the alias?, why) for a new version scored `metric` = `value` on the held-out rows
    of `digest`, against the version holding the alias (`alias_holder`). Scores compare only
    when both were validated on the same rows (same digest) with the same metric; a tie keeps
    the current holder; an incomparable holder is kept; `force` always takes it."""
    if current is None:
        return True, "champion: no version held the alias"
    held = f"version {current['version']}"
    if force:
        return True, f"champion: forced (mlflow.force_champion), replacing {held}"
    if not math.isfinite(value):
        return False, f"not champion: no validation score; {held} keeps the alias"
    if not digest or current.get(names.VALIDATION_DIGEST_TAG) != digest or current.get(names.SCORE_METRIC_TAG) != metric:
        return False, (f"not champion: {held} was not validated on the same held-out data with {metric} "
                       f"(digest {current.get(names.VALIDATION_DIGEST_TAG) or 'none'} vs {digest or 'none'}); "
                       "it keeps the alias (mlflow.force_champion=true moves it)")
    try:
        best = float(current.get(names.SCORE_VALUE_TAG, "nan"))
    except ValueError:
        best = math.nan
    if not math.isfinite(best) or value > best:
        return True, f"champion: {metric} {value:.4f} beats {held}'s {best:.4f}"
    return False, f"not champion: {metric} {value:.4f} does not beat {held}'s {best:.4f}; it keeps the alias"


def signature():
    """frame (a path or a data URI; in Python also a uint8 array) + the first row's box -> one
    box per frame. `frame` is a string column: the scoring server parses CSV bodies only into
    typed columns (an `any` column makes it answer 400)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string", "frame"),
                                         *(ColSpec("double", c) for c in pyfunc_model.BOX_COLUMNS)]),
                          outputs=Schema([ColSpec("double", c) for c in pyfunc_model.BOX_COLUMNS]))


# What the pyfunc imports when it loads and predicts (seqtrack_mlflow itself travels with the
# model as code/seqtrack_mlflow: `code_paths`, put first on sys.path by MLflow when it loads):
# cv2 for the crops (geometry), simplejpeg for the JPEG decoder the model was validated with.
MODEL_PACKAGES = ("torch", "numpy", "mlflow", "pandas", "safetensors", "huggingface_hub", "pillow", "pyyaml",
                  "opencv-python-headless", "simplejpeg")


def pip_requirements() -> list[str]:
    """MODEL_PACKAGES pinned to the versions of this environment, without local version labels
    (`2.13.0+cpu` -> `2.13.0`: no index serves a local label; pip takes 2.13.0 for it, and a
    machine with a local CPU wheel keeps using it). Given explicitly: inferring them starts a
    subprocess that loads the model (seconds per epoch)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for package in MODEL_PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            out.append(f"{package}=={version(package).split('+', 1)[0]}")
    return out

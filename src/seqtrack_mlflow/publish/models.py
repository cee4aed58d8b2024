"""Each chosen epoch as an MLflow LoggedModel of its training run, and the best one as a
registered model version with an alias.

A LoggedModel is a pyfunc model from code (`publish/pyfunc_model.py`) whose artifact `weights/`
holds config.json + model.safetensors exactly as the Hub mirror writes them, with a signature,
an input example and pinned requirements. It is logged at step = epoch, so MLflow links the
run's epoch metrics to it and the model's page shows them.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path
from typing import Any

import mlflow

from seqtrack_mlflow import epoch_ranking, names
from seqtrack_mlflow.experiment import client, tracking_errors
from seqtrack_mlflow.publish import pyfunc_model
from seqtrack_mlflow.train.determinism import rng_state, set_rng_state


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
        saved = rng_state()
        try:
            with tracking_errors(f"logging the model of epoch {epoch}"), warnings.catch_warnings():
                # "add type hints to predict": the signature is given explicitly instead
                warnings.filterwarnings("ignore", message=".*type hints to the `predict` method")
                info = mlflow.pyfunc.log_model(
                    name=f"epoch-{epoch}", python_model=pyfunc_model.__file__,
                    artifacts={pyfunc_model.WEIGHTS_ARTIFACT: str(weights_dir)}, model_config=dict(track),
                    signature=signature(), input_example=self._example,
                    pip_requirements=pip_requirements(), step=int(epoch),
                    tags={names.EPOCH_TAG: str(epoch)}, model_type="seqtrack-tracker")
        finally:
            set_rng_state(saved)
        self.models[epoch] = info.model_id
        return info.model_id

    def register(self, epoch: int, name: str, alias: str, description: str = "") -> str:
        """Register the LoggedModel of `epoch` as a new version of `name` and point `alias`
        at it; returns 'name/version' ('' when that epoch has no model or name is '')."""
        model_id = self.models.get(epoch)
        if not name or not model_id:
            return ""
        with tracking_errors(f"registering the model of epoch {epoch} as {name}@{alias}"):
            version = mlflow.register_model(f"models:/{model_id}", name,
                                            tags={names.EPOCH_TAG: str(epoch), names.MODEL_RUN_TAG: self.run_id})
            if description:
                client().update_model_version(name, version.version, description=description)
            client().set_registered_model_alias(name, alias, version.version)
        return f"{name}/{version.version}"

    def register_best(self, history: list[dict[str, float]], name: str, alias: str) -> tuple[str, int, str, float]:
        """The best logged epoch (`epoch_ranking`: highest epoch/val_auc, else epoch/val_iou; earliest
        on ties) as a version of `name` with `alias`: (version or '', epoch, metric, value)."""
        logged = sorted(self.models)
        if not name or not logged:
            return "", 0, "", math.nan
        epoch, metric, value = epoch_ranking.best_in_history(history, logged) or (logged[-1], "", math.nan)
        version = self.register(epoch, name, alias,
                                description=f"SeqTrack epoch {epoch} of run {self.run_id}, "
                                            f"{metric or 'no validation metric'} {value:.4f}")
        return version, epoch, metric, value


def signature():
    """frame (path, data URI or uint8 array) + the first row's box -> one box per frame."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec(AnyType(), "frame"),
                                         *(ColSpec("double", c) for c in pyfunc_model.BOX_COLUMNS)]),
                          outputs=Schema([ColSpec("double", c) for c in pyfunc_model.BOX_COLUMNS]))


def pip_requirements() -> list[str]:
    """Pinned as in this environment; given explicitly, because inferring them starts a
    subprocess that loads the model (seconds per epoch). seqtrack-mlflow itself must be
    installed from this repository (it is not on PyPI)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for package in ("torch", "numpy", "mlflow", "safetensors", "pillow", "pandas", "pyyaml"):
        with contextlib.suppress(PackageNotFoundError):
            out.append(f"{package}=={version(package)}")
    return out

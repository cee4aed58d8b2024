"""What becomes of each finished epoch beyond its checkpoint: its MLflow LoggedModel (as
`mlflow.log_models` says), its upload to the Hub while training goes on (`hub.push_every_epoch`),
and at the end the best epoch registered. The training loop calls these hooks (rank 0 only);
the training lifecycle builds this object and hands it over."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from seqtrack_mlflow import epoch_ranking
from seqtrack_mlflow.config import Config
from seqtrack_mlflow.names import LATEST_ALIAS
from seqtrack_mlflow.publish import pyfunc_model
from seqtrack_mlflow.publish.export import export_pretrained
from seqtrack_mlflow.publish.models import EpochModels, should_log_model
from seqtrack_mlflow.publish.uploader import EpochUploader
from seqtrack_mlflow.train.loop import EpochListener

log = logging.getLogger(__name__)


class Publisher(EpochListener):
    def __init__(self, cfg: Config, run_id: str, uploader: EpochUploader | None = None):
        self.cfg, self.run_id, self.uploader = cfg, run_id, uploader
        self.models = EpochModels(run_id)

    def epoch_model(self, epoch: int, state: dict[str, Any], history: list[dict[str, float]]) -> str:
        """The epoch's weights as a LoggedModel of the run when mlflow.log_models picks it:
        safetensors + config.json exactly as the Hub mirror writes them, staged in a temporary
        folder (the checkpoint stays the local copy). Its id, or ''."""
        if not should_log_model(self.cfg.mlflow.log_models, epoch, self.cfg.train.epochs, history[-1], history[:-1]):
            return ""
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="seqtrack-model-") as tmp:
            weights = Path(tmp) / "weights"  # the folder's name is kept in the model: artifacts/weights/
            export_pretrained(state, weights, self.run_id)
            # frame_roots: [] (no path is read when served) is listed so an operator can set it at load.
            model_id = self.models.log(epoch, weights, {**dataclasses.asdict(self.cfg.track),
                                                        pyfunc_model.FRAME_ROOTS_KEY: []})
        log.info("epoch %d logged as MLflow model %s (%.2f s)", epoch, model_id, time.perf_counter() - t0)
        return model_id

    def checkpoint_logged(self, epoch: int, path: Path, history: list[dict[str, float]]) -> None:
        """Hand the checkpoint to the Hub uploader (it only queues: returns at once)."""
        if self.uploader is not None:
            self.uploader.on_checkpoint(epoch, path, epoch_ranking.row_score(history[-1]) if history else None)

    def training_finished(self, history: list[dict[str, float]]) -> None:
        """Register the best logged epoch: `newest` always, the champion alias by the rule of
        `models.champion_decision`; one log line says what was decided and why."""
        m = self.cfg.mlflow
        done = self.models.register_best(history, m.registered_model, m.alias, force=m.force_champion)
        if done is not None:
            log.info("registered epoch %d (%s %.4f) as %s (alias %s); %s: models:/%s@%s is version %s",
                     done.epoch, done.metric or "no score", done.value, done.version, LATEST_ALIAS, done.decision,
                     m.registered_model, m.alias, done.version.rsplit("/", 1)[1] if done.champion else "unchanged")

    def close(self, timeout: float) -> list[int]:
        """Wait for the Hub uploads still running; the epochs not on the Hub."""
        return self.uploader.close(timeout=timeout) if self.uploader is not None else []

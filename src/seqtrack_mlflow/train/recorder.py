"""What a training run records besides its checkpoints (main rank only): params, tags, dataset
inputs, config and dataset summary at the start; per-block and per-epoch metrics; the
checkpoint artifacts; report and plots at the end. Every MLflow call of training goes through
the run object held here (`experiment.TrainingRun`, or `NullRun` on other ranks)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from seqtrack_mlflow import epoch_ranking, names, provenance
from seqtrack_mlflow.config import Config
from seqtrack_mlflow.data.dataset import dataset_inputs, dataset_source
from seqtrack_mlflow.data.summary import COUNT_KEYS
from seqtrack_mlflow.train import report
from seqtrack_mlflow.train.checkpoint import Manifest
from seqtrack_mlflow.train.resume import ResumeState, adopt_earlier_epochs
from seqtrack_mlflow.train.warm_start import InitWeights, inherited_tags

log = logging.getLogger(__name__)


class RunRecorder:
    def __init__(self, run, cfg: Config, out_dir: Path):
        self.run, self.cfg, self.out_dir = run, cfg, out_dir
        # Per-block train/loss and train/iou as (global sample, value), for the plots.
        self.blocks: dict[str, list[tuple[int, float]]] = {names.TRAIN_LOSS: [], names.TRAIN_IOU: []}
        self.phase_rows: list[dict[str, float]] = []  # seconds per phase of each epoch trained here

    def start(self, dataset, summary: dict[str, Any], device: torch.device, manifest: Manifest,
              resume: ResumeState | None, init: InitWeights | None) -> None:
        """Params, tags, dataset inputs, config.yaml and dataset_summary.json; on a resume, the
        earlier epochs adopted from the run it continues."""
        cfg, run = self.cfg, self.run
        # `mlflow run` already logged its -P values under their own names (device=auto, ...);
        # the config's resolved values are namespaced, the resolved device has its own name.
        run.log_params({**cfg.flat(), "resolved_device": str(device)})
        run.set_tags({
            names.DEVICE_TAG: str(device),
            **{f"{names.TAG_PREFIX}{k}_version": v for k, v in provenance.versions().items()},
            **{f"{names.TAG_PREFIX}{k}": v for k, v in provenance.cpu_facts().items()},
            names.DATA_SOURCE_TAG: dataset_source(cfg.data, dataset),
            names.OUTPUT_DIR_TAG: str(self.out_dir.resolve()),
            "mlflow.note.content": f"SeqTrack, {cfg.train.epochs} epochs on {','.join(cfg.data.classes)} "
                                   f"({cfg.data.source} data), seed {cfg.seed}",
        })
        for name, counts in [*summary["classes"].items(), ("total", summary["total"])]:
            run.log_params({f"dataset.{name}.{k}": counts[k] for k in COUNT_KEYS})
        # Training and validation rows as separate inputs, each with the digest of all its rows;
        # tags: data origin, l-lt/LaSOT commit (or 'local'), root, full index fingerprint.
        # epoch/val_iou is logged against the validation input.
        inputs, data_tags = dataset_inputs(dataset, cfg.data, ("training", "validation"))
        for item in inputs:
            run.log_dataset(item.table, source=item.source, name=item.name, context=item.context,
                            digest=item.digest)
        run.set_tags(data_tags)
        for name, text in ((names.CONFIG_FILE, cfg.to_yaml()),
                           (names.SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")):
            (self.out_dir / name).write_text(text)
            run.log_artifact(self.out_dir / name)
        if init is not None:
            run.set_tags(init.tags(run.experiment_id))
        if resume is not None:
            run.set_tags({names.RESUMED_FROM_TAG: resume.describe(), names.RESUMED_FROM_EPOCH_TAG: resume.epoch,
                          **inherited_tags(resume.state)})
            self.blocks = adopt_earlier_epochs(resume, run, manifest, manifest.folder, self.out_dir / names.TRAINING_LOG)

    def block(self, step: int, loss: float, iou: float, block_s: float, since_start: float, left: float,
              count: int) -> None:
        """One progress block's metrics (step = global samples), queued: training never waits."""
        self.blocks[names.TRAIN_LOSS].append((step, loss))
        self.blocks[names.TRAIN_IOU].append((step, iou))
        self.run.log_metrics({names.TRAIN_LOSS: loss, names.TRAIN_IOU: iou, "time/block_seconds": block_s,
                              "time/elapsed_seconds": since_start, "time/eta_epoch_seconds": left,
                              "time/samples_per_second": count / max(block_s, 1e-9)}, step=step)

    def epoch(self, epoch: int, history: list[dict[str, float]], model_id: str, path: Path,
              manifest: Manifest) -> None:
        """The epoch's metrics (history[-1]; with its LoggedModel and the validation dataset) and
        the run-level bests so far (`epoch_ranking.run_bests`), then the checkpoint and manifest as
        artifacts. Every metric up to this checkpoint reaches the store before its artifact does:
        after a kill -9, a resume copies the metrics of the epochs it keeps, so none may be buffered."""
        self.run.log_metrics({f"{names.EPOCH_PREFIX}{k}": v for k, v in history[-1].items()}, step=epoch,
                             model_id=model_id, dataset="validation")
        self.run.log_metrics(epoch_ranking.run_bests(history), step=epoch, dataset="validation")
        self.run.flush(wait=True)
        self.run.log_artifact(path, names.CHECKPOINTS)
        self.run.log_artifact(manifest.path, names.CHECKPOINTS)

    def phases(self, epoch: int, seconds: dict[str, float], samples_per_second: float) -> None:
        """Where the epoch's time went (train/phases.py), and its training throughput."""
        self.phase_rows.append(dict(seconds))
        self.run.log_metrics({**{names.PHASE_PREFIX + k: v for k, v in seconds.items()},
                              names.EPOCH_SAMPLES_PER_SECOND: samples_per_second}, step=epoch)

    def stored(self, path: Path) -> None:
        """The checkpoint's bytes kept once on this disk (see TrainingRun.store_once)."""
        self.run.store_once(path, names.CHECKPOINTS)

    def finish(self, history: list[dict[str, float]], summary: dict[str, Any], manifest: Manifest,
               total_seconds: float, timing: dict[str, float], step: int, device: torch.device,
               no_motion_iou: float) -> str:
        """Total time and the job's timing (`phases.job_timing`), plots and report.md; returns the
        report's text."""
        self.run.log_metrics({"time/total_seconds": total_seconds, **timing}, step=step)
        for p in report.save_plots(self.blocks, history, self.out_dir / names.PLOTS, no_motion_iou):
            self.run.log_artifact(p, names.PLOTS)
        text = report.render(self.cfg, summary, history, manifest.list(), total_seconds, device,
                             self.run.run_id, no_motion_iou, self.phase_rows, timing)
        (self.out_dir / names.REPORT_FILE).write_text(text)
        self.run.log_artifact(self.out_dir / names.REPORT_FILE)
        return text

"""One training run from start to end: device, determinism, processes, the checks made before a
run exists (resume, --init, pretrained weights), the MLflow run, the training loop wired to
publishing (`publish.Publisher`: LoggedModels, the registry, the Hub upload of each epoch), and
how the run ends (FINISHED, KILLED after Ctrl-C/SIGTERM, FAILED with the error as a tag)."""

from __future__ import annotations

import dataclasses
import logging
import signal
from pathlib import Path

import torch

from seqtrack_mlflow import experiment, names
from seqtrack_mlflow.config import Config
from seqtrack_mlflow.data.dataset import open_dataset
from seqtrack_mlflow.data.index import fingerprint
from seqtrack_mlflow.errors import SeqTrackError, first_line
from seqtrack_mlflow.publish.publisher import Publisher
from seqtrack_mlflow.publish.uploader import EpochUploader
from seqtrack_mlflow.train import distributed
from seqtrack_mlflow.train.determinism import seed_everything
from seqtrack_mlflow.train.device import check_precision, resolve_device, resolve_precision
from seqtrack_mlflow.train.loop import Trainer
from seqtrack_mlflow.train.resume import check_resume_data, load_resume_state, newest_verified_checkpoint
from seqtrack_mlflow.train.signals import StopFlag, StopRequested, signals_deferred
from seqtrack_mlflow.train.warm_start import check_init_config, load_init

log = logging.getLogger(__name__)

# Seconds the end of training waits for a background Hub upload still running (hub.push_every_epoch).
HUB_CLOSE_TIMEOUT = 600.0


def check_pretrained(cfg: Config) -> None:
    """Load cfg.model.pretrained into a throw-away model (global RNG untouched): CheckpointError
    for a file that is not ViT weights of this encoder."""
    from seqtrack_mlflow.model.load import load_pretrained_encoder
    from seqtrack_mlflow.model.seqtrack import SeqTrack

    with torch.random.fork_rng(devices=[]):
        load_pretrained_encoder(SeqTrack(dataclasses.replace(cfg.model, pretrained="")), cfg.model.pretrained)


def run_training(cfg: Config, run_name: str, experiment_name: str = "") -> str:
    """Train `cfg` in one MLflow run, always closed; returns the report (main rank) or ''.
    Raises SystemExit-free: StopRequested for a signal, the original error for a failure."""
    cfg, device, info = _prepare_process(cfg)
    resume, init, dataset, data_changed = _checked_sources(cfg)  # a bad input makes no run
    run = _start_run(cfg, run_name, experiment_name, device, info)
    ckpt_dir = Path(cfg.train.output_dir) / run.run_id / names.CHECKPOINTS
    publisher = None
    try:
        if data_changed:
            run.set_tags({names.RESUME_DATA_CHANGED_TAG: data_changed})
        if info.is_main:
            uploader = None
            if cfg.hub.push_every_epoch:  # before any epoch: no token fails here
                uploader = EpochUploader(cfg.hub.repo_id, run.run_id, revision=cfg.hub.revision,
                                         private=cfg.hub.private)
            publisher = Publisher(cfg, run.run_id, uploader)
        with StopFlag() as stop:
            try:
                trainer = Trainer(cfg, device, run, stop, info, resume, init, listener=publisher, dataset=dataset)
                dataset = None
                init = None  # its tensors are in the model now: do not hold a second copy
            finally:
                if resume is not None:
                    resume.remove_download()  # its checkpoints are in this run's folder by now
            trainer.fit()
    except StopRequested as exc:
        name = signal.Signals(exc.signum).name
        log.error("stopped by %s after finishing the current step (epoch %d, %d samples); run %s marked "
                  "KILLED; %s", name, exc.epoch, exc.samples, run.run_id,
                  _resume_hint(ckpt_dir, info, run.run_id, f"epoch {exc.epoch} will restart from the last "
                               "complete checkpoint ({path}): resume with --resume {run_id}"))
        _end(run, "KILLED", f"stopped by {name}")
        raise
    except KeyboardInterrupt:
        log.error("interrupted: run %s marked KILLED; %s", run.run_id,
                  _resume_hint(ckpt_dir, info, run.run_id,
                               "resume with --resume {run_id} (epoch {epoch} is complete)"))
        _end(run, "KILLED", "interrupted (KeyboardInterrupt)")
        raise
    except BaseException as exc:
        lost = distributed.peer_lost(exc, info)
        # torchrun's SIGTERM follows a peer's death within milliseconds: the run is closed first,
        # and that SIGTERM dropped so that this rank still prints its one error line
        with signals_deferred(redeliver=lost is None):
            _close_failed(lost or exc, run, ckpt_dir, info)
        if lost is not None:
            raise lost from None
        raise
    finally:
        distributed.shutdown(info)
    if publisher is not None:  # after a failure the upload thread just ends with the process
        missing = publisher.close(timeout=HUB_CLOSE_TIMEOUT)
        if missing:
            log.warning("epochs %s are not on the Hub yet: run `mirror --run-id %s`", missing, run.run_id)
    run.end("FINISHED")
    return getattr(trainer, "report_text", "")


def _prepare_process(cfg: Config) -> tuple[Config, torch.device, distributed.DistInfo]:
    """Device, precision (resolved and checked), the process group, every seed."""
    device = resolve_device(cfg.train.device)
    cfg = resolve_precision(cfg, device)
    check_precision(device, cfg.train.precision)  # before a run exists
    info = distributed.init(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    seed_everything(cfg.seed)
    return cfg, device, info


def _checked_sources(cfg: Config):
    """What the run starts from, each checked before the MLflow run exists: the resume state (and
    the data it continues on against the checkpoint's), the --init weights, pretrained weights.
    (resume, init, the opened dataset or None, the data-change note or '')."""
    check_init_config(cfg)  # --init with --resume: refused before anything is read
    resume = load_resume_state(cfg) if cfg.train.resume else None
    dataset, data_changed = None, ""
    if resume is not None:
        try:
            dataset = open_dataset(cfg.data)
            data_changed = check_resume_data(resume, fingerprint(dataset), cfg)
        except BaseException:
            resume.remove_download()
            raise
    init = load_init(cfg) if cfg.train.init.strip() else None
    if cfg.model.pretrained:
        check_pretrained(cfg)
    return resume, init, dataset, data_changed


def _start_run(cfg: Config, run_name: str, experiment_name: str, device: torch.device,
               info: distributed.DistInfo):
    """The MLflow run (main rank) or a NullRun (other ranks), and the lines that name it."""
    if not info.is_main:
        return experiment.NullRun()
    run = experiment.TrainingRun(run_name, experiment_name, system_metrics=cfg.mlflow.system_metrics).start()
    log.info("MLflow run %s (tracking %s)", run.run_id, experiment.tracking_uri())
    log.info("device: %s%s%s", device, "" if cfg.train.device != "auto" else " (auto: CUDA "
             + ("available)" if device.type == "cuda" else "not available, CPU fallback)"),
             f", {info.world} processes" if info.enabled else "")
    return run


def _resume_hint(ckpt_dir: Path, info: distributed.DistInfo, run_id: str, template: str) -> str:
    """`template` filled with the newest verified checkpoint ({epoch}, {path}, {run_id}), or the
    words for a run that has none: a resume is advertised only when it can succeed."""
    done = newest_verified_checkpoint(ckpt_dir) if info.is_main else None
    if not done:
        return "it stopped before its first checkpoint, so there is nothing to resume: start it again"
    return template.format(epoch=done[0], path=done[1], run_id=run_id)


def _close_failed(exc: BaseException, run, ckpt_dir: Path, info: distributed.DistInfo) -> None:
    """One error line, where the checkpoints are (or no empty folder left), the run FAILED."""
    text = first_line(exc) if isinstance(exc, SeqTrackError) else str(exc)
    log.error("training failed: %s: %s", type(exc).__name__, text)
    done = newest_verified_checkpoint(ckpt_dir) if info.is_main else None
    if done:
        log.error("complete checkpoints are kept in %s; continue with --resume %s", ckpt_dir, run.run_id)
    elif ckpt_dir.is_dir() and not any(ckpt_dir.iterdir()):
        ckpt_dir.rmdir()  # a failed start leaves no empty folder behind
    # Our errors are one line by design; the tag holds that line, not a traceback.
    _end(run, "FAILED", f"{type(exc).__name__}: {text}")


def _end(run, status: str, error: str) -> None:
    with signals_deferred():  # a second signal must not interrupt writing the run's final state
        run.end(status, error=error)

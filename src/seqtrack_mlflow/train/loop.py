"""The deterministic SeqTrack training loop behind `mlflow run .` (entry point `main`).

Built in a fixed order: data -> model -> optimizer -> resume state -> run info. Then
fit -> epoch -> step: each epoch trains (a progress block every `log_every` samples),
validates on the held-out sequences (validation.py), writes its checkpoint (checkpoint.py) and
hands it to the `EpochListener` (publishing: LoggedModel, Hub upload). The recipe follows the
official SeqTrack (microsoft/VideoX, lib/train/base_functions.py and trainers/ltr_trainer.py):
AdamW with a lower encoder lr, StepLR counted in epochs, gradient clipping (optim.py).

With several processes (torchrun) every rank trains in lockstep on its shard of each global
batch; only the main rank (`is_main`) validates, records and writes files, and the others hold
an `experiment.NullRun`. The model is only touched through `SeqTrackActor`, which returns
(loss, stats); every MLflow call goes through the recorder.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from seqtrack_mlflow import names
from seqtrack_mlflow.config import Config, TrainConfig
from seqtrack_mlflow.data.dataset import open_dataset
from seqtrack_mlflow.data.index import fingerprint
from seqtrack_mlflow.data.sampler import EpochSampler, TrainSamples, model_batch
from seqtrack_mlflow.data.summary import dataset_summary
from seqtrack_mlflow.errors import SeqTrackError, first_line
from seqtrack_mlflow.geometry import cxcywh_to_xywh, iou_xywh
from seqtrack_mlflow.model import build_seqtrack, tokens_to_boxes
from seqtrack_mlflow.train import distributed, phases
from seqtrack_mlflow.train.actor import SeqTrackActor
from seqtrack_mlflow.train.averaging import build_ema, evaluated
from seqtrack_mlflow.train.checkpoint import Manifest, restore, save_checkpoint, training_state
from seqtrack_mlflow.train.device import autocast
from seqtrack_mlflow.train.optim import build_optimizer
from seqtrack_mlflow.train.phases import PhaseClock
from seqtrack_mlflow.train.progress import ProgressLog, format_block
from seqtrack_mlflow.train.recorder import RunRecorder
from seqtrack_mlflow.train.resume import ResumeState
from seqtrack_mlflow.train.signals import StopRequested, ignore_sigint_in_worker
from seqtrack_mlflow.train.validation import track_held_out, validation_iou, validation_samples
from seqtrack_mlflow.train.warm_start import InitWeights

log = logging.getLogger(__name__)


class NonFiniteLoss(SeqTrackError):
    """The loss became NaN or inf; training stops, the last good checkpoint is kept."""


class WorkerLost(SeqTrackError):
    """A DataLoader worker process died (killed by a signal, out of memory)."""


class EpochListener:
    """What happens to a finished epoch beyond its checkpoint (the lifecycle passes
    `publish.Publisher`). Called on the main rank only; every hook must return promptly."""

    def epoch_model(self, epoch: int, state: dict[str, Any], history: list[dict[str, float]]) -> str:
        """After the checkpoint of `epoch` is written (history[-1] is its row), before its
        metrics are logged: the id of the epoch's LoggedModel, or ''."""
        return ""

    def checkpoint_logged(self, epoch: int, path: Path, history: list[dict[str, float]]) -> None:
        """After the checkpoint artifact is logged."""

    def training_finished(self, history: list[dict[str, float]]) -> None:
        """After the last epoch, before the report."""


def train_step(actor, model: torch.nn.Module, optimizer, scaler, batch: dict[str, torch.Tensor],
               device: torch.device, t: TrainConfig,
               clock: PhaseClock | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step on one batch (already on the device): forward under the chosen
    precision, backward (loss-scaled for fp16), clip, update. Returns (loss, stats)."""
    clock = clock or PhaseClock()
    with clock(phases.FORWARD_BACKWARD):
        with autocast(device, t.precision):
            loss, stats = actor(batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
    with clock(phases.OPTIMIZER):
        if t.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        scaler.step(optimizer)
        scaler.update()
    return loss, stats


class Trainer:
    def __init__(self, cfg: Config, device: torch.device, run, stop, dist: distributed.DistInfo,
                 resume: ResumeState | None = None, init: InitWeights | None = None,
                 listener: EpochListener | None = None, dataset=None):
        self.cfg, self.device, self.run, self.stop, self.dist = cfg, device, run, stop, dist
        self.is_main = dist.is_main
        self.listener = listener or EpochListener()
        self.out_dir = Path(cfg.train.output_dir) / run.run_id
        self.manifest = Manifest(self.out_dir / names.CHECKPOINTS)
        self.recorder = RunRecorder(run, cfg, self.out_dir)
        self.history: list[dict[str, float]] = []  # one dict of epoch metrics per finished epoch
        self.global_samples = 0
        self.elapsed_before = 0.0  # seconds trained before a resume
        self.clock = PhaseClock()  # where this epoch's time goes (phases.py)
        self.training_seconds, self.samples_trained = 0.0, 0  # inside training blocks, this process
        self.start_epoch = 1
        self.loader: DataLoader | None = None  # built at the first epoch, kept to the last

        # Data.
        self.dataset = dataset if dataset is not None else open_dataset(cfg.data)
        self.data_fingerprint = fingerprint(self.dataset)  # recorded in each checkpoint (resume checks it)
        self.summary = dataset_summary(self.dataset, cfg)
        # Model (its init is a function of the seed alone), actor, optimizer, schedule.
        torch.manual_seed(cfg.seed)
        self.model = build_seqtrack(cfg.model).to(device)
        if init is not None:  # warm start: the weights only (draws no random number)
            init.load_into(self.model)
        self.ema = build_ema(self.model, cfg.train.ema_decay)  # None without weight averaging
        self.eval_model = evaluated(self.model, self.ema)  # what is validated, tracked and checkpointed
        # DDP averages gradients across ranks; the actor calls the wrapper, everything else
        # (validation, checkpoints, param groups) uses the plain model.
        self.actor = SeqTrackActor(DistributedDataParallel(self.model) if dist.enabled else self.model,
                                   cfg.model.bins, cfg.train.label_rounding)
        self.optimizer, self.scheduler = build_optimizer(
            self.model, cfg.train, math.ceil(cfg.data.samples_per_epoch / cfg.train.batch_size))
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")
        if resume is not None:
            restored = restore(resume.state, self.model, self.optimizer, self.scheduler, self.scaler,
                               f"resume: {resume.path}", self.ema)
            self.history, self.global_samples = restored.history, restored.global_samples
            self.elapsed_before, self.start_epoch = restored.elapsed_seconds, resume.epoch + 1
            log.info("resuming from %s: epoch %d done, continuing with epoch %d", resume.describe(),
                     resume.epoch, self.start_epoch)
        if self.is_main:
            self.manifest.folder.mkdir(parents=True, exist_ok=True)
            self.recorder.start(self.dataset, self.summary, device, self.manifest, resume, init)

    # -- fit -> epoch -> step ----------------------------------------------------------------------
    def fit(self) -> None:
        cfg = self.cfg
        self.t_start = time.perf_counter() - self.elapsed_before
        val_samples, self.no_motion_iou = None, float("nan")
        if self.is_main:
            self.progress = ProgressLog(self.out_dir / names.TRAINING_LOG)
            val_samples = validation_samples(self.dataset, cfg)
            # The bar for val_iou: the crop is centred on the previous box, so "no motion" scores well.
            if val_samples is not None:
                self.no_motion_iou = val_samples.no_motion_iou()
            self.run.log_metrics({names.NO_MOTION_IOU: self.no_motion_iou,
                                  names.STARTUP_SECONDS: phases.seconds_since_process_start()}, step=0)
        try:
            for epoch in range(self.start_epoch, cfg.train.epochs + 1):
                t_epoch = time.perf_counter()
                train_loss = self.train_epoch(epoch)
                lr = self.optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
                if cfg.train.schedule == "step":
                    self.scheduler.step()  # StepLR counted in epochs
                if self.is_main:
                    self.end_epoch(epoch, train_loss, lr, val_samples, t_epoch)
                distributed.barrier(self.dist)  # the other ranks wait for validation and checkpoint
        finally:
            self.loader = None  # its worker processes end here
            if self.is_main:
                self.progress.close()
                self.run.log_artifact(self.progress.path)
        if self.is_main:
            t_finish = time.perf_counter()
            self.listener.training_finished(self.history)
            self.report_text = self.recorder.finish(
                self.history, self.summary, self.manifest, time.perf_counter() - self.t_start,
                phases.job_timing(self.training_seconds, self.samples_trained, time.perf_counter() - t_finish),
                self.global_samples, self.device, self.no_motion_iou)
        # The ranks leave together: one that destroys the process group while rank 0 still
        # writes the report and registers the model can abort in gloo (seen: exit -6).
        distributed.barrier(self.dist)

    def end_epoch(self, epoch: int, train_loss: float, lr: float, val_samples, t_epoch: float) -> None:
        """Validate, write the checkpoint, track the held-out sequences, publish (main rank)."""
        cfg = self.cfg
        with self.clock(phases.VALIDATION):
            val_iou = validation_iou(self.eval_model, val_samples, cfg, self.device)
        best = max([h[names.ROW_VAL_IOU] for h in self.history] + [val_iou])

        def epoch_row(tracking: dict[str, float]) -> dict[str, float]:
            return {names.ROW_TRAIN_LOSS: train_loss, names.ROW_VAL_IOU: val_iou, names.ROW_BEST_VAL_IOU: best,
                    **{f"val_{k}": v for k, v in tracking.items()},
                    names.ROW_SECONDS: time.perf_counter() - t_epoch, names.ROW_LR: lr,
                    names.ROW_SKIPPED: float(self.skipped)}

        # The epoch's checkpoint is written before the held-out tracking, which reads whole
        # videos and can fail on their data: a failure there never loses the epoch.
        self.history.append(epoch_row({}))
        state, path = self.write_checkpoint(epoch)
        with self.clock(phases.HELD_OUT_TRACKING):
            tracking = track_held_out(self.eval_model, self.dataset, cfg, self.device)
        if tracking:  # the same checkpoint again, its last row now with the tracking scores
            self.history[-1] = epoch_row(tracking)
            state, path = self.write_checkpoint(epoch)
        log.info("epoch %d: train loss %.6f, val IoU %.4f (best %.4f, no-motion baseline %.4f)%s, %.1f s",
                 epoch, train_loss, val_iou, best, self.no_motion_iou,
                 f", tracking AUC {tracking['auc']:.4f}" if tracking else "", self.history[-1][names.ROW_SECONDS])
        self.publish_checkpoint(epoch, state, path)
        self.recorder.phases(epoch, self.clock.take(), self.epoch_samples / max(self.epoch_train_seconds, 1e-9))

    def train_epoch(self, epoch: int) -> float:
        """One epoch of optimizer steps; returns the mean training loss over all ranks."""
        cfg, device, world = self.cfg, self.device, self.dist.world
        self.model.train()
        if self.loader is None:
            self.loader = self._build_loader()
        self.loader.sampler.epoch = epoch
        loader, total = self.loader, cfg.data.samples_per_epoch  # global samples per epoch
        every, done = cfg.train.log_every, 0
        epoch_loss = torch.zeros((), dtype=torch.float64, device=device)
        block, clock = _Block(), self.clock
        t_epoch = t_block = time.perf_counter()
        self.skipped, self.epoch_train_seconds = 0, 0.0
        batches = _unwrapped(loader)
        while True:
            t_wait = time.perf_counter()
            batch = next(batches, None)
            if batch is None:  # the loader's end is outside the training blocks too
                break
            clock.add(phases.DATA_WAIT, time.perf_counter() - t_wait)
            # Draws that hit an unreadable frame under data.skip_bad_sequences (see the sampler).
            self.skipped += int(batch.pop("skipped").sum())
            batch = {k: v.to(device, non_blocking=True) for k, v in model_batch(batch).items()}
            loss, stats = train_step(self.actor, self.model, self.optimizer, self.scaler, batch, device,
                                     cfg.train, clock)
            with clock(phases.OPTIMIZER):
                if cfg.train.schedule == "cosine":  # counted in optimizer steps
                    self.scheduler.step()
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
            n = batch["search"].shape[0] * world  # global samples in this step (equal shards)
            block.add(loss.detach(), n, stats["pred_tokens"], batch["box"])
            epoch_loss += loss.detach().double() * n
            done += n
            self.global_samples += n
            block_end = done // every > (done - n) // every or done == total
            if block_end:
                t_log = time.perf_counter()
                self.epoch_train_seconds += t_log - t_block
                with clock(phases.BLOCK_LOGGING):
                    self._end_block(epoch, block, done, total, t_log - t_block, t_log - t_epoch)
                block, t_block = _Block(), time.perf_counter()
            if self._stop_requested(block_end):
                raise StopRequested(self.stop.signum or signal.SIGTERM, epoch, done)  # SIGTERM: another rank's
        self.epoch_samples = done
        self.training_seconds += self.epoch_train_seconds
        self.samples_trained += done
        distributed.all_reduce_sum(epoch_loss, self.dist)
        if self.dist.enabled:
            self.skipped = int(distributed.all_reduce_sum(torch.tensor([float(self.skipped)], device=device),
                                                          self.dist).item())
        if self.skipped:
            log.warning("epoch %d: %d sample draw(s) hit an unreadable frame and were drawn again "
                        "(data.skip_bad_sequences)", epoch, self.skipped)
        return float(epoch_loss.item() / max(done, 1) / world)

    def _build_loader(self) -> DataLoader:
        """One DataLoader for the whole run, its sampler naming the epoch: with workers, the
        worker processes (and their decoded-frame caches) live from the first epoch to the last
        instead of starting cold every epoch. Samples depend only on (seed, epoch, index)."""
        cfg, workers = self.cfg, self.cfg.train.workers
        total = cfg.data.samples_per_epoch
        # With several processes: this rank's slice of every global batch.
        indices = (distributed.shard_indices(total, cfg.train.batch_size, self.dist) if self.dist.enabled
                   else list(range(total)))
        # uint8 crops from the worker, normalised here (model_batch): less for the worker to do and pass.
        samples = TrainSamples(self.dataset, cfg, self.start_epoch, normalize=False)
        return DataLoader(samples, sampler=EpochSampler(indices),
                          batch_size=cfg.train.batch_size // self.dist.world, num_workers=workers,
                          pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
                          prefetch_factor=4 if workers else None,
                          worker_init_fn=ignore_sigint_in_worker if workers else None,
                          generator=torch.Generator())  # its seed draws never touch the global RNG (dropout)

    def _stop_requested(self, at_block_end: bool) -> bool:
        """One process: after every step. Several: all ranks agree at block ends (else they hang)."""
        if not self.dist.enabled:
            return bool(self.stop.signum)
        if not at_block_end:
            return False
        flag = torch.tensor([float(self.stop.signum)], device=self.device)
        return bool(distributed.all_reduce_sum(flag, self.dist).item())

    def _end_block(self, epoch: int, block: "_Block", done: int, total: int, block_s: float,
                   epoch_s: float) -> None:
        """One host sync per block: check the loss, print the progress lines, queue the metrics."""
        losses = torch.stack(block.losses).float()
        if self.dist.enabled:  # every rank's mean loss over its equal shard -> the global mean
            losses = distributed.all_reduce_sum(losses, self.dist) / self.dist.world
        losses = losses.cpu()
        if not torch.isfinite(losses).all():
            bad = int((~torch.isfinite(losses)).nonzero()[0])
            first = done - block.count + sum(block.sizes[:bad]) + 1
            raise NonFiniteLoss(f"loss became {losses[bad].item()} at epoch {epoch}, samples "
                                f"{first}-{first + block.sizes[bad] - 1}; the last good checkpoint "
                                f"is kept in {self.manifest.folder}")
        if not self.is_main:
            return
        loss = float((losses * torch.tensor(block.sizes)).sum() / block.count)
        left = epoch_s / done * (total - done)
        since_start = time.perf_counter() - self.t_start
        self.progress.write(format_block(epoch, done, total, block.count, block_s, since_start, left))
        self.recorder.block(self.global_samples, loss, block.mean_iou(self.cfg.model.bins), block_s,
                            since_start, left, block.count)

    # -- the epoch's checkpoint ----------------------------------------------------------------------
    def write_checkpoint(self, epoch: int) -> tuple[dict[str, Any], Path]:
        """Write the epoch's checkpoint (atomically) and list it in the manifest at once: if
        anything after it fails, the local file is complete and verifiable. (state, path)."""
        with self.clock(phases.CHECKPOINT):
            state = training_state(epoch, self.cfg, self.model, self.optimizer, self.scheduler, self.scaler,
                                   self.history, self.global_samples, time.perf_counter() - self.t_start,
                                   self.run.run_id, self.ema)
            state[names.DATA_FINGERPRINT_KEY] = self.data_fingerprint
            path = save_checkpoint(self.manifest.folder / names.checkpoint_name(epoch), state)
            self.manifest.add(path, epoch)
            return state, path

    def publish_checkpoint(self, epoch: int, state: dict[str, Any], path: Path) -> None:
        """The written checkpoint's LoggedModel (if this epoch is one), metrics and artifacts,
        and hand it to the listener."""
        # The epoch's LoggedModel comes before the epoch metrics, so they are logged with its id
        # and the held-out dataset, and the model's page shows them.
        with self.clock(phases.MODEL_LOGGING):
            model_id = self.listener.epoch_model(epoch, state, self.history)
        with self.clock(phases.ARTIFACT_LOGGING):
            self.recorder.epoch(epoch, self.history, model_id, path, self.manifest)
            self.listener.checkpoint_logged(epoch, path, self.history)
            self.recorder.stored(path)
        log.info("checkpoint %s (%.1f MB, %.2f s to write)", path, self.manifest.entries[epoch]["bytes"] / 1e6,
                 self.clock.seconds[phases.CHECKPOINT])


def _unwrapped(loader):
    """Iterate a DataLoader; an error of ours raised in a worker process comes back as itself.

    torch re-raises a worker's exception as the same type whose message is "Caught DataError in
    DataLoader worker process 0." plus the worker's whole traceback; the last line of that
    traceback is the original "module.Type: message", which is all a user needs."""
    try:
        yield from loader
    except RuntimeError as exc:
        if "DataLoader worker" not in str(exc):
            raise
        raise WorkerLost(f"{first_line(exc)}; the epoch cannot go on (train.workers=0 loads in the main "
                         "process); the last complete checkpoint is kept") from None
    except SeqTrackError as exc:
        text = str(exc)
        if not text.startswith("Caught ") or "Traceback" not in text:
            raise
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        raise type(exc)(last.partition(": ")[2] or last) from None


class _Block:
    """Losses and predictions of the batches since the last progress block (kept on device)."""

    def __init__(self):
        self.losses: list[torch.Tensor] = []
        self.sizes: list[int] = []
        self.tokens: list[torch.Tensor] = []
        self.boxes: list[torch.Tensor] = []
        self.count = 0

    def add(self, loss: torch.Tensor, n: int, tokens: torch.Tensor, boxes: torch.Tensor) -> None:
        self.losses.append(loss)
        self.sizes.append(n)
        self.tokens.append(tokens.detach())
        self.boxes.append(boxes.detach())
        self.count += n

    def mean_iou(self, bins: int) -> float:
        """IoU of the teacher-forced argmax boxes with the targets (normalised search-crop units)."""
        pred = tokens_to_boxes(torch.cat(self.tokens), bins).float().cpu().numpy()
        gt = torch.cat(self.boxes).float().cpu().numpy()
        return float(iou_xywh(cxcywh_to_xywh(pred), cxcywh_to_xywh(gt)).mean())

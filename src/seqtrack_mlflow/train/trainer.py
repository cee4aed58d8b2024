"""The deterministic SeqTrack training loop behind `mlflow run .` (entry point `main`).

Built in a fixed order: data -> model -> optimizer -> resume state -> run info; then per epoch:
train (a progress block every `log_every` samples), validate (greedy autoregressive decode on
held-out sequences), checkpoint (atomic, logged, stored once), log. The recipe follows the
official SeqTrack (microsoft/VideoX, lib/train/base_functions.py and trainers/ltr_trainer.py):
AdamW with a lower encoder lr, StepLR counted in epochs, gradient clipping.

With several processes (torchrun) every rank trains in lockstep on its shard of each global
batch; only the main rank (`is_main`) validates, logs and writes files, and the others hold an
`experiment.NullRun`. The model is only touched through `SeqTrackActor`, which returns
(loss, stats); every MLflow call goes through the run object.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import signal
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from seqtrack_mlflow import names, provenance, selection
from seqtrack_mlflow.config import Config, TrainConfig
from seqtrack_mlflow.data.dataset import dataset_inputs, dataset_source, open_dataset
from seqtrack_mlflow.data.sampler import TrainSamples, ValidationSamples
from seqtrack_mlflow.data.summary import COUNT_KEYS, dataset_summary
from seqtrack_mlflow.errors import CheckpointError, SeqTrackError
from seqtrack_mlflow.geometry import cxcywh_to_xywh, iou_xywh
from seqtrack_mlflow.model import build_seqtrack, tokens_to_boxes
from seqtrack_mlflow.track.evaluate import tracker_config, tracking_scores
from seqtrack_mlflow.train import distributed, report
from seqtrack_mlflow.train.actor import SeqTrackActor
from seqtrack_mlflow.train.checkpoint import CHECKPOINT_FORMAT, Manifest, checkpoint_name, save_checkpoint
from seqtrack_mlflow.train.determinism import rng_state, set_rng_state
from seqtrack_mlflow.train.device import autocast
from seqtrack_mlflow.train.progress import ProgressLog, format_block
from seqtrack_mlflow.train.resume import _RESTORE_ERRORS, ResumeState, adopt, first_line
from seqtrack_mlflow.train.signals import StopRequested, ignore_sigint_in_worker
from seqtrack_mlflow.train.warm_start import InitWeights, inherited_tags

log = logging.getLogger(__name__)


class NonFiniteLoss(SeqTrackError):
    """The loss became NaN or inf; training stops, the last good checkpoint is kept."""


def cosine_factor(step: int, warmup: int, total: int) -> float:
    """lr multiplier after `step` optimizer steps: linear warm-up from 0 over `warmup` steps,
    then half a cosine down to 0 at `total` (SGDR, Loshchilov & Hutter 2017, without restarts;
    the warm-up as in Goyal et al. 2017)."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def build_optimizer(model: torch.nn.Module, t: TrainConfig, steps_per_epoch: int = 1):
    """AdamW over the model's (decoder, encoder) groups and the lr schedule: the official
    StepLR counted in epochs ('step'), or warm-up + cosine counted in optimizer steps."""
    # fused: one kernel for all parameters, same AdamW math; torch's CPU default is a Python
    # loop per tensor (x4 slower for B256, benchmarks/speed.py).
    optimizer = torch.optim.AdamW(model.param_groups(t.lr, t.encoder_lr_mult, t.weight_decay), lr=t.lr,
                                  weight_decay=t.weight_decay, fused=True)
    if t.schedule == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=t.lr_drop_epoch, gamma=t.lr_drop_factor)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
            cosine_factor, warmup=t.warmup_steps, total=t.epochs * steps_per_epoch))
    return optimizer, scheduler


def train_step(actor, model: torch.nn.Module, optimizer, scaler, batch: dict[str, torch.Tensor],
               device: torch.device, t: TrainConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step on one batch (already on the device): forward under the chosen
    precision, backward (loss-scaled for fp16), clip, update. Returns (loss, stats)."""
    with autocast(device, t.precision):
        loss, stats = actor(batch)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if t.grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss, stats


class Trainer:
    def __init__(self, cfg: Config, device: torch.device, run, stop, dist: distributed.DistInfo,
                 resume: ResumeState | None = None, init: InitWeights | None = None):
        self.cfg, self.device, self.run, self.stop, self.dist = cfg, device, run, stop, dist
        self.is_main = dist.is_main
        self.out_dir = Path(cfg.train.output_dir) / run.run_id
        self.ckpt_dir = self.out_dir / names.CHECKPOINTS
        self.manifest = Manifest(self.ckpt_dir)
        self.history: list[dict[str, float]] = []  # one dict of epoch metrics per finished epoch
        self.blocks: dict[str, list[tuple[int, float]]] = {names.TRAIN_LOSS: [], names.TRAIN_IOU: []}
        self.global_samples = 0
        self.elapsed_before = 0.0  # seconds trained before a resume
        self.start_epoch = 1
        # Called after each checkpoint is complete: (epoch, path, val_iou); must return at once
        # (hub.push_every_epoch sets it to EpochUploader.on_checkpoint, which only queues).
        self.checkpoint_hook = None

        # Data.
        self.dataset = open_dataset(cfg.data)
        self.summary = dataset_summary(self.dataset, cfg)
        # Model (its init is a function of the seed alone), actor, optimizer, schedule.
        torch.manual_seed(cfg.seed)
        self.model = build_seqtrack(cfg.model).to(device)
        if init is not None:  # warm start: the weights only (draws no random number)
            init.load_into(self.model)
        # DDP averages gradients across ranks; the actor calls the wrapper, everything else
        # (validation, checkpoints, param groups) uses the plain model.
        self.actor = SeqTrackActor(DistributedDataParallel(self.model) if dist.enabled else self.model,
                                   cfg.model.bins, cfg.train.label_rounding)
        self.optimizer, self.scheduler = build_optimizer(
            self.model, cfg.train, math.ceil(cfg.data.samples_per_epoch / cfg.train.batch_size))
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")
        if resume is not None:
            self._restore(resume)
        if self.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            self._log_run_info(resume, init)

    def _restore(self, resume: ResumeState) -> None:
        try:
            self._load_state(resume)
        except _RESTORE_ERRORS as exc:  # check_restorable ran these before the run: a backstop
            raise CheckpointError(f"resume: {resume.path} cannot be restored "
                                  f"({type(exc).__name__}: {first_line(exc)})") from None

    def _load_state(self, resume: ResumeState) -> None:
        state = resume.state
        self.model.load_state_dict(state["model_state_dict"])
        self.optimizer.load_state_dict(state["optimizer_state_dict"])
        self.scheduler.load_state_dict(state["scheduler_state_dict"])
        if "scaler_state_dict" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler_state_dict"])
        set_rng_state(state["rng"])
        self.history = [dict(h) for h in state["metrics"]]
        self.global_samples = int(state["progress"]["global_samples"])
        self.elapsed_before = float(state["progress"]["elapsed_seconds"])
        self.start_epoch = resume.epoch + 1
        log.info("resuming from %s: epoch %d done, continuing with epoch %d", resume.describe(),
                 resume.epoch, self.start_epoch)

    def _log_run_info(self, resume: ResumeState | None, init: InitWeights | None = None) -> None:
        cfg, run = self.cfg, self.run
        # `mlflow run` already logged its -P values under their own names (device=auto, ...);
        # the config's resolved values are namespaced, the resolved device has its own name.
        run.log_params({**cfg.flat(), "resolved_device": str(self.device)})
        run.set_tags({
            "seqtrack.git_commit": provenance.git_commit(),
            "seqtrack.device": str(self.device),
            **{f"seqtrack.{k}_version": v for k, v in provenance.versions().items()},
            **{f"seqtrack.{k}": v for k, v in provenance.cpu_facts().items()},
            "seqtrack.data_source": dataset_source(cfg.data, self.dataset),
            names.OUTPUT_DIR_TAG: str(self.out_dir.resolve()),
            "mlflow.note.content": f"SeqTrack, {cfg.train.epochs} epochs on {','.join(cfg.data.classes)} "
                                   f"({cfg.data.source} data), seed {cfg.seed}",
        })
        for name, counts in [*self.summary["classes"].items(), ("total", self.summary["total"])]:
            run.log_params({f"dataset.{name}.{k}": counts[k] for k in COUNT_KEYS})
        # Training and validation rows as separate inputs, each with the digest of all its rows;
        # tags: data origin, l-lt/LaSOT commit (or 'local'), root, full index fingerprint.
        # epoch/val_iou is logged against the validation input.
        inputs, data_tags = dataset_inputs(self.dataset, cfg.data, ("training", "validation"))
        for item in inputs:
            run.log_dataset(item.table, source=item.source, name=item.name, context=item.context,
                            digest=item.digest)
        run.set_tags(data_tags)
        for name, text in ((names.CONFIG_FILE, cfg.to_yaml()),
                           (names.SUMMARY_FILE, json.dumps(self.summary, indent=2) + "\n")):
            (self.out_dir / name).write_text(text)
            run.log_artifact(self.out_dir / name)
        if init is not None:
            run.set_tags(init.tags(run.experiment_id))
        if resume is not None:
            run.set_tags({"seqtrack.resumed_from": resume.describe(), "seqtrack.resumed_from_epoch": resume.epoch,
                          **inherited_tags(resume.state)})
            self.blocks = adopt(resume, run, self.manifest, self.ckpt_dir, self.out_dir / names.TRAINING_LOG)

    # -- the loop --------------------------------------------------------------------------------
    def fit(self) -> None:
        cfg, run = self.cfg, self.run
        self.t_start = time.perf_counter() - self.elapsed_before
        self.logging_seconds = 0.0
        val_samples, self.no_motion_iou = None, float("nan")
        if self.is_main:
            self.progress = ProgressLog(self.out_dir / names.TRAINING_LOG)
            val_samples = self._validation_samples()
            # The bar for val_iou: the crop is centred on the previous box, so "no motion" scores well.
            if val_samples is not None:
                self.no_motion_iou = val_samples.no_motion_iou()
            run.log_metrics({names.NO_MOTION_IOU: self.no_motion_iou}, step=0)
        try:
            for epoch in range(self.start_epoch, cfg.train.epochs + 1):
                t_epoch = time.perf_counter()
                train_loss = self.train_epoch(epoch)
                if self.is_main:
                    val_iou = validation_iou(self.model, val_samples, cfg, self.device)
                    best = max([h["val_iou"] for h in self.history] + [val_iou])
                    tracking = self._track_held_out()
                lr = self.optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
                if cfg.train.schedule == "step":
                    self.scheduler.step()  # StepLR counted in epochs
                if self.is_main:
                    metrics = {"train_loss": train_loss, "val_iou": val_iou, "best_val_iou": best,
                               **{f"val_{k}": v for k, v in tracking.items()},
                               "seconds": time.perf_counter() - t_epoch, "lr": lr,
                               "skipped_samples": float(self.skipped)}
                    as_model = logs_model(cfg.mlflow.log_models, epoch, cfg.train.epochs, metrics,
                                          self.history)
                    self.history.append(metrics)  # logged by save_checkpoint, with the epoch's model
                    log.info("epoch %d: train loss %.6f, val IoU %.4f (best %.4f, no-motion baseline "
                             "%.4f)%s, %.1f s", epoch, train_loss, val_iou, best, self.no_motion_iou,
                             f", tracking AUC {tracking['auc']:.4f}" if tracking else "", metrics["seconds"])
                    self.save_checkpoint(epoch, as_model)
                distributed.barrier(self.dist)  # the other ranks wait for validation and checkpoint
        finally:
            if self.is_main:
                self.progress.close()
                run.log_artifact(self.progress.path)
        if self.is_main:
            total = time.perf_counter() - self.t_start
            run.log_metrics({"time/total_seconds": total,
                             "time/logging_overhead_fraction": self.logging_seconds / max(total, 1e-9)},
                            step=self.global_samples)
            self.finish(total)
        # The ranks leave together: one that destroys the process group while rank 0 still
        # writes the report and registers the model can abort in gloo (seen: exit -6).
        distributed.barrier(self.dist)

    def train_epoch(self, epoch: int) -> float:
        """One epoch of optimizer steps; returns the mean training loss over all ranks."""
        cfg, device, world = self.cfg, self.device, self.dist.world
        self.model.train()
        samples = TrainSamples(self.dataset, cfg, epoch)
        total = len(samples)  # global samples per epoch
        if self.dist.enabled:  # this rank's slice of every global batch
            samples = Subset(samples, distributed.shard_indices(total, cfg.train.batch_size, self.dist))
        loader = DataLoader(samples, batch_size=cfg.train.batch_size // world, shuffle=False,
                            num_workers=cfg.train.workers, pin_memory=device.type == "cuda",
                            prefetch_factor=4 if cfg.train.workers else None,
                            worker_init_fn=ignore_sigint_in_worker if cfg.train.workers else None)
        every, done = cfg.train.log_every, 0
        epoch_loss = torch.zeros((), dtype=torch.float64, device=device)
        block = _Block()
        t_epoch = t_block = time.perf_counter()
        self.skipped = 0
        for batch in _unwrapped(loader):
            # Draws that hit an unreadable frame under data.skip_bad_sequences (see the sampler).
            self.skipped += int(batch.pop("skipped").sum())
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            loss, stats = train_step(self.actor, self.model, self.optimizer, self.scaler, batch, device, cfg.train)
            if cfg.train.schedule == "cosine":  # counted in optimizer steps
                self.scheduler.step()
            n = batch["search"].shape[0] * world  # global samples in this step (equal shards)
            block.add(loss.detach(), n, stats["pred_tokens"], batch["box"])
            epoch_loss += loss.detach().double() * n
            done += n
            self.global_samples += n
            block_end = done // every > (done - n) // every or done == total
            if block_end:
                t_log = time.perf_counter()
                self._end_block(epoch, block, done, total, t_log - t_block, t_log - t_epoch)
                block, t_block = _Block(), time.perf_counter()
                self.logging_seconds += t_block - t_log
            if self._stop_requested(block_end):
                raise StopRequested(self.stop.signum or signal.SIGTERM, epoch, done)  # SIGTERM: another rank's
        distributed.all_reduce_sum(epoch_loss, self.dist)
        if self.dist.enabled:
            self.skipped = int(distributed.all_reduce_sum(torch.tensor([float(self.skipped)], device=device),
                                                          self.dist).item())
        if self.skipped:
            log.warning("epoch %d: %d sample draw(s) hit an unreadable frame and were drawn again "
                        "(data.skip_bad_sequences)", epoch, self.skipped)
        return float(epoch_loss.item() / max(done, 1) / world)

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
                                f"is kept in {self.ckpt_dir}")
        if not self.is_main:
            return
        loss = float((losses * torch.tensor(block.sizes)).sum() / block.count)
        iou = block.mean_iou(self.cfg.model.bins)
        left = epoch_s / done * (total - done)
        since_start = time.perf_counter() - self.t_start
        self.progress.write(format_block(epoch, done, total, block.count, block_s, since_start, left))
        self.blocks[names.TRAIN_LOSS].append((self.global_samples, loss))
        self.blocks[names.TRAIN_IOU].append((self.global_samples, iou))
        self.run.log_metrics({names.TRAIN_LOSS: loss, names.TRAIN_IOU: iou, "time/block_seconds": block_s,
                              "time/elapsed_seconds": since_start, "time/eta_epoch_seconds": left,
                              "time/samples_per_second": block.count / max(block_s, 1e-9)},
                             step=self.global_samples)

    def _track_held_out(self) -> dict[str, float]:
        """{auc, precision, norm_precision} of tracking the held-out sequences in closed loop, as
        `evaluate` does (fp32, the `track` settings); {} when data.val_tracking leaves it off."""
        d = self.cfg.data
        tracks = d.val_tracking == "always" or (d.val_tracking == "auto" and d.source == "sample")
        if not (tracks and self.dataset.test):
            return {}
        t0 = time.perf_counter()
        scores = tracking_scores(self.model, tracker_config(self.cfg, self.cfg.track), self.dataset.test,
                                 self.device)
        log.info("tracked the %d held-out sequences: AUC %.4f (%.1f s)", len(self.dataset.test),
                 scores["auc"], time.perf_counter() - t0)
        return scores

    def _validation_samples(self) -> ValidationSamples | None:
        if not self.dataset.test or self.cfg.data.val_samples == 0:
            log.warning("no held-out sequences: validation IoU is not computed")
            return None
        return ValidationSamples(self.dataset, self.cfg)

    # -- checkpoints and the end -----------------------------------------------------------------
    def save_checkpoint(self, epoch: int, as_model: bool = False) -> None:
        t0 = time.perf_counter()
        state = {
            "format": CHECKPOINT_FORMAT,
            "model_state_dict": self.model.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict(),
            "epoch": epoch,
            "seed": self.cfg.seed,
            "rng": rng_state(),
            "config": self.cfg.to_dict(),
            "metrics": [dict(h) for h in self.history],
            "progress": {"global_samples": self.global_samples,
                         "elapsed_seconds": time.perf_counter() - self.t_start},
            "versions": provenance.versions(),
            "run_id": self.run.run_id,
        }
        if self.scaler.is_enabled():
            state["scaler_state_dict"] = self.scaler.state_dict()
        path = save_checkpoint(self.ckpt_dir / checkpoint_name(epoch), state)
        # Listed at once: if the tracking store fails below, the local file is still verifiable.
        self.manifest.add(path, epoch)
        # The epoch's LoggedModel (if this epoch is one) comes before the epoch metrics, so they
        # are logged with its id and the held-out dataset, and the model's page shows them.
        model_id = self.log_model(epoch, state) if as_model else ""
        if self.history:
            self.run.log_metrics({f"{names.EPOCH_PREFIX}{k}": v for k, v in self.history[-1].items()}, step=epoch,
                                 model_id=model_id, dataset="validation")
        # Every metric up to this checkpoint reaches the store before its artifact does: after a
        # kill -9, a resume copies the metrics of the epochs it keeps, so none may be buffered.
        self.run.flush(wait=True)
        self.run.log_artifact(path, names.CHECKPOINTS)
        self.run.log_artifact(self.manifest.path, names.CHECKPOINTS)
        if self.checkpoint_hook is not None:
            self.checkpoint_hook(epoch, path, selection.row_score(self.history[-1]) if self.history else None)
        self.run.store_once(path, names.CHECKPOINTS)
        log.info("checkpoint %s (%.1f MB, %.2f s)", path, self.manifest.entries[epoch]["bytes"] / 1e6,
                 time.perf_counter() - t0)

    def log_model(self, epoch: int, state: dict) -> str:
        """The epoch's weights as an MLflow LoggedModel of the run: safetensors + config.json
        exactly as the Hub mirror writes them, staged in a temporary folder (the checkpoint
        stays the local copy)."""
        import dataclasses
        import tempfile

        from seqtrack_mlflow.mirror import export_pretrained

        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="seqtrack-model-") as tmp:
            weights = Path(tmp) / "weights"  # the folder's name is kept in the model: artifacts/weights/
            export_pretrained(state, weights, self.run.run_id)
            model_id = self.run.log_epoch_model(epoch, weights, dataclasses.asdict(self.cfg.track))
        log.info("epoch %d logged as MLflow model %s (%.2f s)", epoch, model_id, time.perf_counter() - t0)
        return model_id

    def register_best(self) -> str:
        """The best logged epoch (`selection`: highest epoch/val_auc, else epoch/val_iou; earliest
        on ties) becomes a version of the registered model, with the configured alias; '' when
        none qualifies."""
        m = self.cfg.mlflow
        logged = sorted(getattr(self.run, "models", {}))
        if not m.registered_model or not logged:
            return ""
        epoch, metric, value = selection.best_in_history(self.history, logged) or (logged[-1], "", math.nan)
        version = self.run.register_best(epoch, m.registered_model, m.alias,
                                         description=f"SeqTrack epoch {epoch} of run {self.run.run_id}, "
                                                     f"{metric or 'no validation metric'} {value:.4f}")
        if version:
            log.info("registered epoch %d (%s %.4f) as %s, alias %s: models:/%s@%s", epoch, metric, value,
                     version, m.alias, m.registered_model, m.alias)
        return version

    def finish(self, total_seconds: float) -> None:
        self.register_best()
        for p in report.save_plots(self.blocks, self.history, self.out_dir / names.PLOTS, self.no_motion_iou):
            self.run.log_artifact(p, names.PLOTS)
        text = report.render(self.cfg, self.summary, self.history, self.manifest.list(), total_seconds,
                             self.device, self.run.run_id, self.no_motion_iou)
        (self.out_dir / names.REPORT_FILE).write_text(text)
        self.run.log_artifact(self.out_dir / names.REPORT_FILE)
        self.report_text = text


def _unwrapped(loader):
    """Iterate a DataLoader; an error of ours raised in a worker process comes back as itself.

    torch re-raises a worker's exception as the same type whose message is "Caught DataError in
    DataLoader worker process 0." plus the worker's whole traceback; the last line of that
    traceback is the original "module.Type: message", which is all a user needs."""
    try:
        yield from loader
    except SeqTrackError as exc:
        text = str(exc)
        if not text.startswith("Caught ") or "Traceback" not in text:
            raise
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        raise type(exc)(last.partition(": ")[2] or last) from None


def logs_model(mode: str, epoch: int, last_epoch: int, row: dict[str, float],
               history: list[dict[str, float]]) -> bool:
    """Whether `epoch` (its metrics `row`) becomes a LoggedModel under mlflow.log_models
    (all | best | last); `history` holds the earlier epochs. best: the first epoch and each one
    that beats every earlier one by the `selection` rule."""
    if mode == "all":
        return True
    if mode == "last":
        return epoch == last_epoch
    best = selection.best_in_history([*history, row], range(1, len(history) + 2))
    return not history or (best is not None and best[0] == len(history) + 1)


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


def validation_iou(model: torch.nn.Module, samples, cfg: Config, device: torch.device) -> float:
    """Mean IoU of greedy autoregressive boxes (Hanning window on) on held-out samples."""
    if samples is None or len(samples) == 0:
        return math.nan
    return float(validation_ious(model, samples, cfg, device).mean())


@torch.no_grad()
def validation_ious(model: torch.nn.Module, samples, cfg: Config, device: torch.device) -> np.ndarray:
    """IoU per held-out sample of the greedy autoregressive box (Hanning window on), decoded at
    cfg.train.precision in batches of cfg.train.batch_size. Leaves the model in eval mode."""
    model.eval()
    ious = []
    loader = DataLoader(samples, batch_size=cfg.train.batch_size, shuffle=False, num_workers=0)
    for batch in loader:
        templates = [t.to(device) for t in batch["templates"].unbind(1)]
        with autocast(device, cfg.train.precision):
            tokens, _ = model.predict(templates, batch["search"].to(device), window=True)
        pred = cxcywh_to_xywh(tokens_to_boxes(tokens, cfg.model.bins).float().cpu().numpy())
        ious.append(iou_xywh(pred, cxcywh_to_xywh(batch["box"].numpy())))
    return np.concatenate(ious)

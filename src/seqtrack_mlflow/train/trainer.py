"""The deterministic SeqTrack trainer behind `mlflow run .` (entry point `main`).

Built in a fixed order: device -> determinism -> MLflow run -> data -> model -> optimizer ->
resume state; then per epoch: train (progress block every 50 samples), validate (greedy
autoregressive decode on held-out sequences), checkpoint (atomic), log. Recipe after the
official SeqTrack (microsoft/VideoX, lib/train/base_functions.py and trainers/ltr_trainer.py):
AdamW with a lower encoder lr, StepLR counted in epochs, gradient clipping.

Every MLflow call goes through `seqtrack_mlflow.tracking`; the model is only touched through
`SeqTrackActor`, which returns (loss, stats).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

import seqtrack_mlflow
from seqtrack_mlflow import tracking
from seqtrack_mlflow.config import Config, load_config
from seqtrack_mlflow.data.open import dataset_inputs, dataset_source, open_dataset
from seqtrack_mlflow.data.sampler import TrainSamples, ValidationSamples
from seqtrack_mlflow.data.summary import COUNT_KEYS, dataset_summary
from seqtrack_mlflow.errors import CheckpointError, ConfigError, SeqTrackError
from seqtrack_mlflow.geometry import cxcywh_to_xywh, iou_xywh
from seqtrack_mlflow.model import build_seqtrack, tokens_to_boxes
from seqtrack_mlflow.train import distributed, report
from seqtrack_mlflow.train.actor import SeqTrackActor
from seqtrack_mlflow.train.checkpoint import (CHECKPOINT_FORMAT, checkpoint_name, load_checkpoint,
                                              remove_stale_temp_files, save_checkpoint, sha256_file)
from seqtrack_mlflow.train.determinism import rng_state, seed_everything, set_rng_state
from seqtrack_mlflow.train.progress import ProgressLog, format_block

log = logging.getLogger(__name__)

# Config keys that may differ between a checkpoint and the run resuming it without changing
# the result (where outputs go, how data is loaded, how long to train).
RESUMABLE_CHANGES = {"train.epochs", "train.resume", "train.output_dir", "train.workers", "train.device",
                     "data.root", "data.keep_zip"}


class NonFiniteLoss(SeqTrackError):
    """The loss became NaN or inf; training stops, the last good checkpoint is kept."""


class StopRequested(Exception):
    """SIGINT/SIGTERM arrived: the current step was finished, the epoch restarts on resume."""

    def __init__(self, signum: int, epoch: int, samples: int):
        self.signum, self.epoch, self.samples = signum, epoch, samples
        super().__init__(f"{signal.Signals(signum).name} after {samples} samples of epoch {epoch}")


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each optimizer step."""

    def __init__(self):
        self.signum = 0

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        if self.signum:  # a second signal: stop right now
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s received: finishing the current step, then stopping", signal.Signals(signum).name)

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)


def _ignore_sigint_in_worker(worker_id: int) -> None:
    """Data workers leave Ctrl-C to the main process, which stops cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} asked for, but CUDA is not available; use auto or cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CPU or CUDA, fp16 AMP on CUDA, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision: 'fp16' needs CUDA; use bf16 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def run_training(cfg: Config) -> int:
    """Entry point of `python -m seqtrack_mlflow train`: one MLflow run, always closed."""
    device = resolve_device(cfg.train.device)
    autocast(device, cfg.train.precision)  # reject fp16 on CPU before a run exists
    info = distributed.init(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    seed_everything(cfg.seed)
    if not info.is_main:  # other ranks train in lockstep; rank 0 owns the run and the files
        try:
            with _StopFlag() as stop:
                Trainer(cfg, device, tracking.NullRun(), stop, info).fit()
        except StopRequested as exc:
            return 128 + exc.signum
        finally:
            distributed.shutdown(info)
        return 0
    run = tracking.TrainingRun().start()
    log.info("MLflow run %s (tracking %s)", run.run_id, tracking.tracking_uri())
    log.info("device: %s%s%s", device, "" if cfg.train.device != "auto" else " (auto: CUDA "
             + ("available)" if device.type == "cuda" else "not available, CPU fallback)"),
             f", {info.world} processes" if info.enabled else "")
    try:
        with _StopFlag() as stop:
            Trainer(cfg, device, run, stop, info).fit()
    except StopRequested as exc:
        last = f"epoch_{exc.epoch - 1}.ckpt" if exc.epoch > 1 else "no checkpoint yet"
        log.error("stopped by %s after finishing the current step (epoch %d, %d samples); run %s marked "
                  "KILLED. Epoch %d will restart from the last complete checkpoint (%s): resume with "
                  "--resume %s", signal.Signals(exc.signum).name, exc.epoch, exc.samples, run.run_id,
                  exc.epoch, last, run.run_id)
        run.end("KILLED", error=f"stopped by {signal.Signals(exc.signum).name}")
        return 128 + exc.signum
    except KeyboardInterrupt:
        log.error("interrupted: run %s marked KILLED; resume with --resume %s", run.run_id, run.run_id)
        run.end("KILLED", error="interrupted (KeyboardInterrupt)")
        raise
    except BaseException as exc:
        log.error("training failed: %s: %s", type(exc).__name__, exc)
        _report_checkpoints(Path(cfg.train.output_dir) / run.run_id / "checkpoints")
        run.end("FAILED", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        distributed.shutdown(info)
    run.end("FINISHED")
    return 0


def _report_checkpoints(folder: Path) -> None:
    """After a failure: where the complete checkpoints are and how to continue from them."""
    done = sorted(folder.glob("epoch_*.ckpt"), key=lambda p: int(p.stem[6:])) if folder.is_dir() else []
    if done:
        log.error("complete checkpoints are kept in %s; continue with --resume %s", folder, done[-1])


class Trainer:
    def __init__(self, cfg: Config, device: torch.device, run: tracking.TrainingRun, stop: _StopFlag,
                 info: distributed.DistInfo = distributed.DistInfo()):
        self.cfg, self.device, self.run, self.stop, self.dist = cfg, device, run, stop, info
        self.out_dir = Path(cfg.train.output_dir) / run.run_id
        self.ckpt_dir = self.out_dir / "checkpoints"
        if info.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.history: list[dict[str, float]] = []  # one dict of epoch metrics per finished epoch
        self.manifest: list[dict[str, Any]] = []
        self.global_samples = 0
        self.elapsed_before = 0.0  # seconds trained before a resume
        self.start_epoch = 1

        # Resume state first: its config must match before any work is done.
        resume = load_resume_state(cfg) if cfg.train.resume else None
        try:
            self._build(resume)
        finally:
            if resume is not None:
                resume.remove_download()  # its checkpoints are in this run's folder by now

    def _build(self, resume: "ResumeState | None") -> None:
        """Data, model, optimizer; then the resume state and (rank 0) the run's params."""
        cfg, device, info = self.cfg, self.device, self.dist
        # Data.
        self.dataset = open_dataset(cfg.data)
        self.summary = dataset_summary(self.dataset, cfg)

        # Model, actor, optimizer, schedule (official recipe, epochs instead of 500).
        torch.manual_seed(cfg.seed)  # model init is a function of the seed alone
        self.model = build_seqtrack(cfg.model).to(device)
        # DDP averages gradients across ranks; the actor calls the wrapper, everything else
        # (validation, checkpoints, param groups) uses the plain model.
        forward = DistributedDataParallel(self.model) if info.enabled else self.model
        self.actor = SeqTrackActor(forward, cfg.model.bins)
        t = cfg.train
        # fused: one kernel for all parameters, same AdamW math (last-bit differences only);
        # torch's CPU default is a Python loop per tensor, ~1.2 s/step for B256 (benchmarks/speed.py).
        self.optimizer = torch.optim.AdamW(
            self.model.param_groups(t.lr, t.encoder_lr_mult, t.weight_decay), lr=t.lr,
            weight_decay=t.weight_decay, fused=True)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=t.lr_drop_epoch,
                                                         gamma=t.lr_drop_factor)
        self.scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")

        if resume is not None:
            self._restore(resume)
        if info.is_main:
            self._log_run_info(resume)

    # -- setup -----------------------------------------------------------------------------------
    def _restore(self, resume: "ResumeState") -> None:
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
        self.start_epoch = int(state["epoch"]) + 1
        log.info("resuming from %s: epoch %d done, continuing with epoch %d", resume.describe(),
                 state["epoch"], self.start_epoch)

    def _log_run_info(self, resume: "ResumeState | None") -> None:
        cfg, run = self.cfg, self.run
        # `mlflow run` already logged its -P values (device=auto, ...); the resolved device gets
        # its own name because MLflow params cannot change.
        run.log_params({**cfg.flat(), "resolved_device": str(self.device)})
        run.set_tags({
            "seqtrack.git_commit": git_commit(),
            "seqtrack.device": str(self.device),
            "seqtrack.torch_version": torch.__version__,
            "seqtrack.mlflow_version": tracking.mlflow_version(),
            "seqtrack.version": seqtrack_mlflow.__version__,
            "seqtrack.data_source": dataset_source(cfg.data, self.dataset),
            "seqtrack.output_dir": str(self.out_dir.resolve()),
            "mlflow.note.content": f"SeqTrack, {cfg.train.epochs} epochs on {','.join(cfg.data.classes)} "
                                   f"({cfg.data.source} data), seed {cfg.seed}",
        })
        # Dataset summary as params (per class and total) + the frame index as MLflow input.
        for name, counts in [*self.summary["classes"].items(), ("total", self.summary["total"])]:
            run.log_params({f"dataset.{name}.{k}": counts[k] for k in COUNT_KEYS})
        # Training and validation rows as separate inputs, each with the digest of all its rows;
        # tags: data origin, l-lt/LaSOT commit (or 'local'), root, full index fingerprint.
        inputs, data_tags = dataset_inputs(self.dataset, cfg.data, ("training", "validation"))
        for item in inputs:
            run.log_dataset(item.table, source=item.source, name=item.name, context=item.context,
                            digest=item.digest)
        run.set_tags(data_tags)
        (self.out_dir / "config.yaml").write_text(cfg.to_yaml())
        (self.out_dir / "dataset_summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")
        run.log_artifact(self.out_dir / "config.yaml")
        run.log_artifact(self.out_dir / "dataset_summary.json")
        if resume is not None:
            run.set_tags({"seqtrack.resumed_from": resume.describe(),
                          "seqtrack.resumed_from_epoch": resume.state["epoch"]})
            resume.adopt(self)

    # -- the loop --------------------------------------------------------------------------------
    def fit(self) -> None:
        cfg = self.cfg
        self.t_start = time.perf_counter() - self.elapsed_before
        self.logging_seconds = 0.0
        if not self.dist.is_main:
            for epoch in range(self.start_epoch, cfg.train.epochs + 1):
                self._train_epoch(epoch)
                self.scheduler.step()
                distributed.barrier(self.dist)  # rank 0 validates and writes the checkpoint
            return
        self.progress = ProgressLog(self.out_dir / "training_log.txt")
        val_samples = self._validation_samples()
        # The bar for val_iou: the crop is centred on the previous box, so "no motion" scores well.
        self.no_motion_iou = val_samples.no_motion_iou() if val_samples is not None else float("nan")
        self.run.log_metrics({"val/no_motion_iou": self.no_motion_iou}, step=0)
        try:
            for epoch in range(self.start_epoch, cfg.train.epochs + 1):
                t_epoch = time.perf_counter()
                train_loss = self._train_epoch(epoch)
                val_iou = self._validate(val_samples)
                best = max([h["val_iou"] for h in self.history] + [val_iou])
                self.scheduler.step()  # StepLR counted in epochs
                metrics = {"train_loss": train_loss, "val_iou": val_iou, "best_val_iou": best,
                           "seconds": time.perf_counter() - t_epoch, "lr": self.optimizer.param_groups[-1]["lr"]}
                self.history.append(metrics)
                self.run.log_metrics({f"epoch/{k}": v for k, v in metrics.items()}, step=epoch)
                log.info("epoch %d: train loss %.6f, val IoU %.4f (best %.4f, no-motion baseline %.4f), "
                         "%.1f s", epoch, train_loss, val_iou, best, self.no_motion_iou, metrics["seconds"])
                self._save_checkpoint(epoch)
                distributed.barrier(self.dist)
        finally:
            self.progress.close()
            self.run.log_artifact(self.progress.path)
        total = time.perf_counter() - self.t_start
        self.run.log_metrics({"time/total_seconds": total,
                              "time/logging_overhead_fraction": self.logging_seconds / max(total, 1e-9)},
                             step=self.global_samples)
        self._finish(total)

    def _train_epoch(self, epoch: int) -> float:
        cfg, device = self.cfg, self.device
        self.model.train()
        samples = self._train_samples(epoch)
        total = len(samples)  # global samples per epoch
        world = self.dist.world
        if self.dist.enabled:  # this rank's slice of every global batch
            samples = Subset(samples, distributed.shard_indices(total, cfg.train.batch_size, self.dist))
        loader = DataLoader(samples, batch_size=cfg.train.batch_size // world, shuffle=False,
                            num_workers=cfg.train.workers, pin_memory=device.type == "cuda",
                            prefetch_factor=4 if cfg.train.workers else None,
                            worker_init_fn=_ignore_sigint_in_worker if cfg.train.workers else None)
        every = cfg.train.log_every
        done = 0
        epoch_loss = torch.zeros((), dtype=torch.float64, device=device)
        block = _Block(device)
        t_epoch = t_block = time.perf_counter()
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast(device, cfg.train.precision):
                loss, stats = self.actor(batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.train.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()

            n = batch["search"].shape[0] * world  # global samples in this step (equal shards)
            block.add(loss.detach(), n, stats["pred_tokens"], batch["box"])
            epoch_loss += loss.detach().double() * n
            done += n
            self.global_samples += n
            block_end = done // every > (done - n) // every or done == total
            if block_end:
                now = time.perf_counter()
                t_log = now
                self._end_block(epoch, block, done, total, now - t_block, now - t_epoch)
                block = _Block(device)
                t_block = time.perf_counter()
                self.logging_seconds += t_block - t_log
            if self._stop_requested(block_end):
                raise StopRequested(self.stop.signum or signal.SIGTERM, epoch, done)
        distributed.all_reduce_sum(epoch_loss, self.dist)
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
        """One sync per block: check the loss, print the spec's lines, queue the metrics."""
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
        if not self.dist.is_main:
            return
        loss = float((losses * torch.tensor(block.sizes)).sum() / block.count)
        iou = block.mean_iou(self.cfg.model.bins)
        left = epoch_s / done * (total - done)
        since_start = time.perf_counter() - self.t_start
        self.progress.write(format_block(epoch, done, total, block.count, block_s, since_start, left))
        self.run.log_metrics({"train/loss": loss, "train/iou": iou, "time/block_seconds": block_s,
                              "time/elapsed_seconds": since_start, "time/eta_epoch_seconds": left,
                              "time/samples_per_second": block.count / max(block_s, 1e-9)},
                             step=self.global_samples)

    @torch.no_grad()
    def _validate(self, samples) -> float:
        """Mean IoU of greedy autoregressive boxes (Hanning window on) on held-out samples."""
        if samples is None or len(samples) == 0:
            return float("nan")
        return float(validation_ious(self.model, samples, self.cfg, self.device).mean())

    def _train_samples(self, epoch: int) -> TrainSamples:
        return TrainSamples(self.dataset, self.cfg, epoch)

    def _validation_samples(self) -> ValidationSamples | None:
        if not self.dataset.test or self.cfg.data.val_samples == 0:
            log.warning("no held-out sequences: validation IoU is not computed")
            return None
        return ValidationSamples(self.dataset, self.cfg)

    # -- checkpoints and the end -----------------------------------------------------------------
    def _save_checkpoint(self, epoch: int) -> None:
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
            "versions": versions(),
            "run_id": self.run.run_id,
        }
        if self.scaler.is_enabled():
            state["scaler_state_dict"] = self.scaler.state_dict()
        path = save_checkpoint(self.ckpt_dir / checkpoint_name(epoch), state)
        # Every metric up to this checkpoint reaches the store before its artifact does: after a
        # kill -9, a resume copies the metrics of the epochs it keeps, so none may be buffered.
        self.run.flush(wait=True)
        self._add_to_manifest(path, epoch)
        log.info("checkpoint %s (%.1f MB, %.2f s)", path, path.stat().st_size / 1e6, time.perf_counter() - t0)

    def _add_to_manifest(self, path: Path, epoch: int) -> None:
        self.manifest = [m for m in self.manifest if m["epoch"] != epoch]
        self.manifest.append({"file": path.name, "epoch": epoch, "sha256": sha256_file(path),
                              "bytes": path.stat().st_size})
        self.manifest.sort(key=lambda m: m["epoch"])
        manifest_path = self.ckpt_dir / "manifest.json"
        tmp = manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"checkpoints": self.manifest}, indent=2) + "\n")
        os.replace(tmp, manifest_path)
        self.run.log_artifact(path, "checkpoints")
        self.run.log_artifact(manifest_path, "checkpoints")

    def _finish(self, total_seconds: float) -> None:
        plots = report.plot_curves(self.run_metric_history(), self.history, self.out_dir / "plots",
                                   self.no_motion_iou)
        for p in plots:
            self.run.log_artifact(p, "plots")
        text = report.render(self.cfg, self.summary, self.history, self.manifest, total_seconds,
                             self.device, self.run.run_id, self.no_motion_iou)
        (self.out_dir / "report.md").write_text(text)
        self.run.log_artifact(self.out_dir / "report.md")
        print(text, flush=True)

    def run_metric_history(self) -> dict[str, list[tuple[int, float]]]:
        self.run.flush(wait=True)
        return {key: tracking.metric_points(self.run.run_id, key) for key in ("train/loss", "train/iou")}


class _Block:
    """Losses and predictions of the batches since the last progress block (kept on device)."""

    def __init__(self, device: torch.device):
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


# -- resume --------------------------------------------------------------------------------------
@dataclasses.dataclass
class ResumeState:
    state: dict[str, Any]
    path: Path                   # the checkpoint file
    source_run_id: str | None    # MLflow run it came from, when known
    download_dir: Path | None = None  # temporary copy of a run's artifacts, owned by this state

    def remove_download(self) -> None:
        if self.download_dir is not None:
            shutil.rmtree(self.download_dir, ignore_errors=True)
            self.download_dir = None

    def describe(self) -> str:
        return f"run {self.source_run_id} epoch {self.state['epoch']}" if self.source_run_id else str(self.path)

    def adopt(self, trainer: Trainer) -> None:
        """Bring the earlier epochs into the new run: checkpoints, log lines, metrics."""
        epoch = int(self.state["epoch"])
        folder = self.path.parent
        for k in range(1, epoch + 1):
            src = folder / checkpoint_name(k)
            if src.is_file():
                dst = trainer.ckpt_dir / src.name
                if src.resolve() != dst.resolve():
                    shutil.copy2(src, dst)
                trainer._add_to_manifest(dst, k)
        old_log = folder.parent / "training_log.txt"
        if old_log.is_file():
            trainer.out_dir.joinpath("training_log.txt").write_text(_log_up_to_epoch(old_log.read_text(), epoch))
        for k, metrics in enumerate(self.state["metrics"], start=1):
            trainer.run.log_metrics({f"epoch/{key}": v for key, v in metrics.items()}, step=k)
        if self.source_run_id:
            copied = trainer.run.copy_metrics(self.source_run_id, tracking.BLOCK_METRICS,
                                              max_step=int(self.state["progress"]["global_samples"]))
            log.info("copied %d metric points of epochs 1-%d from run %s", copied, epoch, self.source_run_id)
            tracking.close_resumed_run(self.source_run_id, trainer.run.run_id)


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


def _log_up_to_epoch(text: str, epoch: int) -> str:
    """The progress blocks of epochs 1..epoch (a killed run may have written part of the next)."""
    from seqtrack_mlflow.train.progress import BLOCK_RE
    return "".join(m.group(0) for m in BLOCK_RE.finditer(text) if int(m.group(1)) <= epoch)


def load_resume_state(cfg: Config) -> ResumeState:
    """`--resume` is a checkpoint file or an MLflow run id (its newest checkpoint is used).

    A run id's checkpoints are downloaded to a temporary folder that the returned state owns:
    call remove_download() once they are copied (load_resume_state removes it on an error)."""
    spec = cfg.train.resume
    path = Path(spec).expanduser()
    if path.is_file():
        state = load_checkpoint(path)
        resume = ResumeState(state, path, state.get("run_id"))
        _remove_stale_temp_files(path.parent)
    elif path.suffix == ".ckpt" or os.sep in spec:
        raise CheckpointError(f"resume: checkpoint {spec} does not exist")
    else:
        folder = Path(tempfile.mkdtemp(prefix="seqtrack-resume-"))
        try:
            resume = _download_resume_state(spec, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    try:
        check_resume_config(cfg, resume.state, spec)
        if int(resume.state["epoch"]) >= cfg.train.epochs:
            raise ConfigError(f"train.epochs: {cfg.train.epochs} is not allowed; {spec} already finished "
                              f"epoch {resume.state['epoch']}, ask for more epochs to continue")
    except BaseException:
        resume.remove_download()
        raise
    return resume


def _download_resume_state(run_id: str, folder: Path) -> ResumeState:
    """The newest checkpoint of MLflow run `run_id` (all its checkpoints land in `folder`)."""
    old_outputs = tracking.find_run(run_id).data.tags.get("seqtrack.output_dir", "")
    path = tracking.latest_checkpoint(run_id, folder)
    state = load_checkpoint(path)
    if old_outputs and Path(old_outputs).is_dir():  # the run's own folder, on this machine
        _remove_stale_temp_files(Path(old_outputs) / "checkpoints")
        # Killed by SIGKILL, it never logged its training log: take it from its folder.
        local_log = Path(old_outputs) / "training_log.txt"
        if local_log.is_file() and not (folder / "training_log.txt").is_file():
            shutil.copy2(local_log, folder / "training_log.txt")
    return ResumeState(state, path, run_id, download_dir=folder)


def _remove_stale_temp_files(ckpt_dir: Path) -> None:
    """Temp files of a checkpoint write that a kill -9 interrupted, in the run resumed from."""
    for stale in remove_stale_temp_files(ckpt_dir):
        log.info("removed %s, left by an interrupted checkpoint write", stale)


def check_resume_config(cfg: Config, state: dict[str, Any], spec: str) -> None:
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"resume: {spec} has format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    saved = load_config_dict(state["config"]).flat()
    now = cfg.flat()
    changed = sorted(k for k in now if now[k] != saved.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        diffs = ", ".join(f"{k}={saved.get(k)!r} in checkpoint vs {now[k]!r}" for k in changed)
        raise ConfigError(f"resume: the config differs from the checkpoint's ({diffs}); an exact "
                          f"resume needs the same settings")


def load_config_dict(tree: dict[str, Any]) -> Config:
    overrides = {"seed": tree["seed"]}
    for section, values in tree.items():
        if isinstance(values, dict):
            overrides.update({f"{section}.{k}": v for k, v in values.items()})
    return load_config(None, overrides)


# -- facts about the environment -----------------------------------------------------------------
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def versions() -> dict[str, str]:
    return {"seqtrack_mlflow": seqtrack_mlflow.__version__, "torch": str(torch.__version__),
            "numpy": np.__version__, "mlflow": tracking.mlflow_version(), "python": platform.python_version()}


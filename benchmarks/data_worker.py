"""Does the data worker slow the training loop down? The default job's loop, measured three ways.

    python benchmarks/data_worker.py                 # 1200 samples a variant, 3 rounds (~3 min)
    python benchmarks/data_worker.py --samples 800 --rounds 4

The loop is the trainer's: one persistent DataLoader per variant over TrainSamples (default
preset, bf16 where native) passing uint8 crops, normalised in this process (`model_batch`), and
`train_step` through the real actor. Variants, interleaved A,B,C,D then D,C,B,A (drift cancels):
- `workers=1, 2 threads`: the default (the assignment's 1 worker; torch's thread count), its
  decoded-frame cache warm after the first round, as from the trainer's second epoch on;
- `workers=1, no frame cache`: the same, decoding every frame (data.frame_cache_mb=0);
- `workers=0, 2 threads`: samples loaded in the training process, between steps;
- `workers=1, 1 thread`: one compute thread, leaving a core to the worker.
On 2 cores the worker and the two compute threads share the CPU: while the worker works, one
compute thread waits for its core and the other waits at the next OpenMP barrier, so every
millisecond of the worker's CPU time is a millisecond added to the step. Printed: the samples/s
of each round, best and median, and the share of time spent waiting for data.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from seqtrack_mlflow import provenance  # noqa: E402
from seqtrack_mlflow.config import load_config  # noqa: E402
from seqtrack_mlflow.data.dataset import open_dataset  # noqa: E402
from seqtrack_mlflow.data.sampler import EpochSampler, TrainSamples, model_batch  # noqa: E402
from seqtrack_mlflow.model import build_seqtrack  # noqa: E402
from seqtrack_mlflow.train.actor import SeqTrackActor  # noqa: E402
from seqtrack_mlflow.train.device import resolve_precision  # noqa: E402
from seqtrack_mlflow.train.loop import train_step  # noqa: E402
from seqtrack_mlflow.train.optim import build_optimizer  # noqa: E402

CPU = torch.device("cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1200, help="training samples per variant and round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    cfg = resolve_precision(load_config(None, {"data.samples_per_epoch": args.samples}), CPU)
    threads = torch.get_num_threads()
    dataset = open_dataset(cfg.data)
    torch.manual_seed(cfg.seed)
    model = build_seqtrack(cfg.model)
    actor = SeqTrackActor(model, cfg.model.bins, cfg.train.label_rounding)
    optimizer, _ = build_optimizer(model, cfg.train, -(-args.samples // cfg.train.batch_size))
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def make_loader(workers: int, cache: bool) -> DataLoader:
        variant_cfg = cfg if cache else load_config(None, {"data.samples_per_epoch": args.samples,
                                                           "data.frame_cache_mb": 0,
                                                           "train.precision": cfg.train.precision})
        samples = TrainSamples(dataset, variant_cfg, 1, normalize=False)
        return DataLoader(samples, sampler=EpochSampler(list(range(args.samples))), batch_size=cfg.train.batch_size,
                          num_workers=workers, prefetch_factor=4 if workers else None,
                          persistent_workers=workers > 0)

    def loop(loader: DataLoader, compute_threads: int) -> tuple[float, float]:
        """(samples/s, share of the time spent waiting for the next batch); the first batch is
        left out. Each round is another epoch of the same samples' keys."""
        torch.set_num_threads(compute_threads)
        loader.sampler.epoch += 1
        batches = iter(loader)
        batch, done, waiting = next(batches), 0, 0.0
        t0 = time.perf_counter()
        while batch is not None:
            batch.pop("skipped")
            batch = model_batch(batch)
            train_step(actor, model, optimizer, scaler, batch, CPU, cfg.train)
            done += batch["search"].shape[0]
            t_wait = time.perf_counter()
            batch = next(batches, None)
            waiting += time.perf_counter() - t_wait
        elapsed = time.perf_counter() - t0
        torch.set_num_threads(threads)
        return done / elapsed, waiting / elapsed

    variants = {f"workers=1, {threads} threads": (make_loader(1, True), threads),
                "workers=1, no frame cache": (make_loader(1, False), threads),
                f"workers=0, {threads} threads": (make_loader(0, True), threads),
                "workers=1, 1 thread": (make_loader(1, True), 1)}
    for loader, n in variants.values():  # warm the frame caches: one pass each, as a first epoch
        loop(loader, n)
    facts = provenance.cpu_facts()
    print(f"CPU: {facts['cpu']} ({facts['cpu_flags']}), {threads} threads, precision {cfg.train.precision}, "
          f"{args.samples} samples a round")
    rates: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            rate, waiting = loop(*variants[name])
            rates[name].append(rate)
            print(f"round {r + 1}  {name:24s} {rate:6.1f} samples/s, waiting for data {100 * waiting:3.0f}%",
                  flush=True)
    base = max(rates[names[0]])
    for name, rs in rates.items():
        print(f"{name:24s} best {max(rs):6.1f}  median {sorted(rs)[len(rs) // 2]:6.1f} samples/s  "
              f"(best x{max(rs) / base:.2f} the default)")


if __name__ == "__main__":
    main()

"""Does the data worker slow the training loop down? The default job's loop, measured three ways.

    python benchmarks/data_worker.py                 # 1200 samples a variant, 3 rounds (~3 min)
    python benchmarks/data_worker.py --samples 800 --rounds 4

The loop is the trainer's: DataLoader over TrainSamples (default preset, bf16 where native) and
`train_step` through the real actor. Variants, interleaved A,B,C then C,B,A (drift cancels):
- `workers=1, 2 threads`: the default (the assignment's 1 worker; torch's thread count);
- `workers=0, 2 threads`: samples loaded in the training process, between steps;
- `workers=1, 1 thread`: one compute thread, leaving a core to the worker.
On 2 cores the worker and the two compute threads share the CPU: while the worker decodes, one
compute thread waits for its core and the other waits at the next OpenMP barrier. Printed: the
samples/s of each round, best and median, and the share of time spent waiting for data.
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
from seqtrack_mlflow.data.sampler import TrainSamples  # noqa: E402
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

    def loop(workers: int, compute_threads: int) -> tuple[float, float]:
        """(samples/s, share of the time spent waiting for the next batch); worker start-up and
        the first batch are left out."""
        torch.set_num_threads(compute_threads)
        loader = DataLoader(TrainSamples(dataset, cfg, 1), batch_size=cfg.train.batch_size,
                            num_workers=workers, prefetch_factor=4 if workers else None)
        batches = iter(loader)
        batch, done, waiting = next(batches), 0, 0.0
        t0 = time.perf_counter()
        while batch is not None:
            batch.pop("skipped")
            train_step(actor, model, optimizer, scaler, batch, CPU, cfg.train)
            done += batch["search"].shape[0]
            t_wait = time.perf_counter()
            batch = next(batches, None)
            waiting += time.perf_counter() - t_wait
        elapsed = time.perf_counter() - t0
        torch.set_num_threads(threads)
        return done / elapsed, waiting / elapsed

    variants = {f"workers=1, {threads} threads": (1, threads),
                f"workers=0, {threads} threads": (0, threads),
                "workers=1, 1 thread": (1, 1)}
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

"""Multi-process data parallelism with torchrun + torch.distributed (gloo on CPU, nccl on GPU).

`-P nproc=N` (or `--set train.nproc=N`) re-launches the trainer under
`python -m torch.distributed.run --standalone --nproc_per_node N`; on several machines run
torchrun yourself with a rendezvous (docs/distributed.md). Every rank builds the same model from the same
seed; DistributedDataParallel averages gradients. `train.batch_size` is the GLOBAL batch: at
each step rank r trains on its slice of the global batch's sample indices, so the ranks see
disjoint samples, together exactly the samples a 1-process run sees. Only rank 0 logs to
MLflow, validates and writes checkpoints.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from seqtrack_mlflow.errors import SeqTrackError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def launch_if_needed(nproc: int) -> None:
    """Re-exec under torchrun when more than one process is asked for and we are not in one."""
    if nproc <= 1 or "LOCAL_RANK" in os.environ:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    # torchrun's own parser would take our `--nproc` for its `--nproc-per-node`: pass it on
    # as `--set train.nproc=N` instead.
    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            argv.append(arg)
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "seqtrack_mlflow", *argv, "--set", f"train.nproc={nproc}"]
    os.execv(sys.executable, args)


def init(device_type: str) -> DistInfo:
    """Join the process group torchrun set up (env:// rendezvous); 1 process = no-op."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return info


def shard_indices(total: int, batch_size: int, info: DistInfo) -> list[int]:
    """This rank's sample indices: its equal slice of every global batch, in order."""
    out: list[int] = []
    for start in range(0, total, batch_size):
        chunk = np.arange(start, min(start + batch_size, total))
        out.extend(np.array_split(chunk, info.world)[info.rank].tolist())
    return out


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class PeerLost(SeqTrackError):
    """Another process of a data-parallel training died (killed, out of memory): this one cannot
    go on, since every step needs all of them."""


_PEER_WORDS = ("gloo", "nccl", "connection closed by peer", "connection reset by peer", "broken pipe",
               "process group", "timed out")


def peer_lost(exc: BaseException, info: DistInfo) -> PeerLost | None:
    """The one-line error for a collective that failed because a peer process is gone; None when
    `exc` is something else (or this is a single process)."""
    if not info.enabled or isinstance(exc, SeqTrackError) or not isinstance(exc, (RuntimeError, OSError)):
        return None
    text = str(exc).strip()
    dist_error = isinstance(exc, getattr(dist, "DistError", ()))
    if not dist_error and not any(w in text.lower() for w in _PEER_WORDS):
        return None
    line = text.splitlines()[0][:200] if text else type(exc).__name__
    return PeerLost(f"another training process of this {info.world}-process run stopped (rank {info.rank} "
                    f"saw: {line}); the run is marked FAILED: resume it from its last checkpoint")


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()

"""Where a training job's time goes: seconds per phase of each epoch, logged as
`time/phase/<phase>` (step = epoch), and the start-up before the first step.

Host wall clock (`time.perf_counter`). On the CPU every phase is synchronous, so the split is
exact; on CUDA kernels run asynchronously, so part of forward_backward can show up in the
phase that next waits for the device (the epoch's sum stays right).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import psutil

from seqtrack_mlflow import names

# Inside the training blocks (what time/samples_per_second divides by) ...
DATA_WAIT = "data_wait"                # waiting for the next batch from the loader
FORWARD_BACKWARD = "forward_backward"  # forward under autocast, loss, backward
OPTIMIZER = "optimizer"                # unscale, clip, AdamW, lr schedule
# ... and outside them.
BLOCK_LOGGING = "block_logging"        # progress lines and the queued per-block metrics
VALIDATION = "validation"              # greedy decodes of the held-out samples (val IoU)
HELD_OUT_TRACKING = "held_out_tracking"  # closed-loop tracking of the held-out sequences (val AUC)
CHECKPOINT = "checkpoint"              # the epoch's checkpoint written and hashed
MODEL_LOGGING = "model_logging"        # the epoch's LoggedModel (mlflow.log_models)
ARTIFACT_LOGGING = "artifact_logging"  # epoch metrics flushed, checkpoint and manifest logged
PHASES = (DATA_WAIT, FORWARD_BACKWARD, OPTIMIZER, BLOCK_LOGGING, VALIDATION, HELD_OUT_TRACKING,
          CHECKPOINT, MODEL_LOGGING, ARTIFACT_LOGGING)
IN_TRAINING = (DATA_WAIT, FORWARD_BACKWARD, OPTIMIZER)


class PhaseClock:
    """Seconds spent in each phase since the last `take()`."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - t0

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] += seconds

    def take(self) -> dict[str, float]:
        """The seconds per phase so far, and start again from zero."""
        seconds, self.seconds = self.seconds, dict.fromkeys(PHASES, 0.0)
        return seconds


def job_timing(training_seconds: float, samples: int, registration_seconds: float) -> dict[str, float]:
    """The job's time at its end (names.JOB_SECONDS ...): its training throughput, and the share
    of its wall time spent outside the training blocks."""
    job = seconds_since_process_start()
    return {names.JOB_SECONDS: job, names.TRAINING_SECONDS: training_seconds,
            names.TRAIN_SAMPLES_PER_SECOND: samples / max(training_seconds, 1e-9),
            names.OUTSIDE_TRAINING_FRACTION: 1.0 - training_seconds / max(job, 1e-9),
            names.REGISTRATION_SECONDS: registration_seconds}


def seconds_since_process_start() -> float:
    """Wall seconds since this process was created (interpreter start-up and imports included)."""
    return max(0.0, time.time() - psutil.Process().create_time())

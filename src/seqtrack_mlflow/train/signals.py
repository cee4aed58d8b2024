"""Ctrl-C / SIGTERM during training: finish the current optimizer step, then stop cleanly."""

from __future__ import annotations

import logging
import signal

log = logging.getLogger(__name__)


class StopRequested(Exception):
    """SIGINT/SIGTERM arrived: the current step was finished, the epoch restarts on resume."""

    def __init__(self, signum: int, epoch: int, samples: int):
        self.signum, self.epoch, self.samples = signum, epoch, samples
        super().__init__(f"{signal.Signals(signum).name} after {samples} samples of epoch {epoch}")


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each optimizer step; a second
    signal stops at once (KeyboardInterrupt)."""

    def __init__(self):
        self.signum = 0

    def __enter__(self) -> "StopFlag":
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s received: finishing the current step, then stopping", signal.Signals(signum).name)

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)


def ignore_sigint_in_worker(worker_id: int) -> None:
    """Data workers leave Ctrl-C to the main process, which stops cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

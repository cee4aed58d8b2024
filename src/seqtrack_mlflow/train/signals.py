"""Ctrl-C / SIGTERM / SIGHUP (a closed terminal or ssh session) during training: finish the
current optimizer step, then stop cleanly; and a guard that keeps these signals from cutting
the closing of a run short."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Iterator

log = logging.getLogger(__name__)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def signals_deferred(redeliver: bool = True) -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP while a run's final state is written, so the run is closed
    first: they are recorded and delivered again when the block ends (`redeliver=False`: dropped,
    as torchrun's SIGTERM after a peer died, which would only cut the error line short).
    Handlers, not a thread's signal mask: the kernel hands a process-wide signal to any thread
    that does not block it (MLflow's logging threads, gloo's), and under the default action that
    ends the whole process; a Python handler always runs in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for signum in dict.fromkeys(pending) if redeliver else ():
            signal.raise_signal(signum)


class StopRequested(Exception):
    """SIGINT/SIGTERM/SIGHUP arrived: the current step was finished, the epoch restarts on resume."""

    def __init__(self, signum: int, epoch: int, samples: int):
        self.signum, self.epoch, self.samples = signum, epoch, samples
        super().__init__(f"{signal.Signals(signum).name} after {samples} samples of epoch {epoch}")


class StopFlag:
    """Turns SIGINT/SIGTERM/SIGHUP into a flag the loop checks after each optimizer step; a second
    signal stops at once (KeyboardInterrupt)."""

    def __init__(self):
        self.signum = 0

    def __enter__(self) -> "StopFlag":
        self._old = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
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

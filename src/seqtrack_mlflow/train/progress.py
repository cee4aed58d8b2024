"""The assignment's progress block (docs/training.md), printed and appended to training_log.txt
every 50 samples: the one print outside the command line.

    Epoch 1 : 50 / 7000 samples , 
    time for last 50 samples : 0:02:35 hours , 
    time since beginning : 1:22:44 hours , 
    time left to finish the epoch : 4:17:28 hours

(The first three lines end in ", " exactly as in the assignment.) A block is written when the sample
count crosses a multiple of `every`; with batch 16 that is after 64, 112, 160, ... samples, and
the lines give the true counts. The last, partial block of an epoch is always written.
"""

from __future__ import annotations

import re
from pathlib import Path

BLOCK_RE = re.compile(
    r"Epoch (\d+) : (\d+) / (\d+) samples , \n"
    r"time for last (\d+) samples : (\d+):([0-5]\d):([0-5]\d) hours , \n"
    r"time since beginning : (\d+):([0-5]\d):([0-5]\d) hours , \n"
    r"time left to finish the epoch : (\d+):([0-5]\d):([0-5]\d) hours\n"
)


def hms(seconds: float) -> str:
    """H:MM:SS, hours unbounded (e.g. 12:03:09)."""
    total = max(0, int(round(seconds)))
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def format_block(epoch: int, done: int, total: int, last_n: int, last_s: float, since_start_s: float,
                 left_s: float) -> str:
    return (f"Epoch {epoch} : {done} / {total} samples , \n"
            f"time for last {last_n} samples : {hms(last_s)} hours , \n"
            f"time since beginning : {hms(since_start_s)} hours , \n"
            f"time left to finish the epoch : {hms(left_s)} hours\n")


class ProgressLog:
    """Prints blocks to the console and appends them to a log file (flushed every block)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, block: str) -> None:
        print(block, end="", flush=True)
        self._file.write(block)
        self._file.flush()

    def close(self) -> None:
        self._file.close()

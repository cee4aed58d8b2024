"""Test-only hooks for the kill tests: the real CLI, with one spot made to hang.

    python -c "import tests.killhooks as k; k.main()" <point> <target> <marker> train ...

runs `seqtrack_mlflow.cli.main(["train", ...])` after installing one hook, so a test can kill
the process with SIGKILL at a known point (the hook writes `marker` and sleeps):

- `fsync <name>`: inside the fsync of the temporary file of checkpoint `<name>` (the checkpoint
  bytes are in `.<name>.XXXX.tmp`, not yet renamed to `<name>`).
- `artifact <name>`: while MLflow copies `<name>` into the artifact store, after half the bytes.
- `block <text>`: right after the progress block containing `<text>` is written, until the test
  removes `marker` (so a signal sent meanwhile lands at a known step, however fast training is).

Product code has no test hooks; these patch `os.fsync` and `shutil.copyfileobj` from outside.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path


def _hang(marker: str) -> None:
    Path(marker).write_text(str(os.getpid()))
    time.sleep(600)


def install(point: str, target: str, marker: str) -> None:
    if point == "fsync":
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            try:
                name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                name = ""
            if name.startswith(f".{target}.") and name.endswith(".tmp"):
                _hang(marker)
            real_fsync(fd)

        os.fsync = fsync
    elif point == "artifact":
        real_copy = shutil.copyfileobj

        def copyfileobj(fsrc, fdst, length=0):
            if str(getattr(fsrc, "name", "")).endswith(os.sep + target):
                data = fsrc.read()
                fdst.write(data[: len(data) // 2])
                fdst.flush()
                _hang(marker)
            return real_copy(fsrc, fdst, length) if length else real_copy(fsrc, fdst)

        shutil.copyfileobj = copyfileobj
    elif point == "block":
        from seqtrack_mlflow.train.progress import ProgressLog

        real_write = ProgressLog.write

        def write(self, block: str) -> None:
            real_write(self, block)
            if target in block:
                Path(marker).write_text(str(os.getpid()))
                while Path(marker).exists():
                    time.sleep(0.05)

        ProgressLog.write = write
    else:
        raise ValueError(f"unknown hook point {point!r}")


def main() -> None:
    point, target, marker, *argv = sys.argv[1:]
    install(point, target, marker)
    from seqtrack_mlflow.cli import main as cli_main
    sys.exit(cli_main(argv))

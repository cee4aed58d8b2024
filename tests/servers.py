"""Servers the tests start on 127.0.0.1 (mlflow server, mlflow models serve): a free port and
a bounded wait until one answers."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, timeout: float, log: Path | None = None) -> None:
    """Poll `url` until it answers 200; fail the test (with the log's tail) if the process exits
    or `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
        assert process.poll() is None, f"the server at {url} exited: {tail}"
        assert time.monotonic() < deadline, f"the server at {url} did not start in {timeout:.0f} s: {tail}"
        time.sleep(0.5)

"""A team's tracking server for the tests: a real PostgreSQL (the `pgserver` wheel's binaries)
with MLflow's own `mlflow server` in front of it (proxied artifacts, the basic-auth app), started
once per test session on 127.0.0.1 by `scripts/team_server.py`'s functions.

Everything lives in one temporary folder made here and removed at the end. Run as root,
PostgreSQL runs as `nobody` (initdb refuses root), so that folder is made traversable (0711).
Where PostgreSQL, psycopg2 or the auth app cannot be had, the tests that use `team` skip with
the reason.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .conftest import REPO

_spec = importlib.util.spec_from_file_location("team_server", REPO / "scripts" / "team_server.py")
team_server = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(team_server)

USER = "alice"  # an ordinary (not admin) user of the server


class Team:
    """The running PostgreSQL + mlflow server, and an account on it."""

    def __init__(self, root: Path):
        self.root = root
        self.pg = team_server.Postgres(root / "postgres")
        self.port = team_server.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts = root / "artifacts"
        self.admin_password = secrets.token_urlsafe(16)
        self.password = secrets.token_urlsafe(16)  # USER's: the tests search for it in everything written
        self.server: subprocess.Popen | None = None

    def start_postgres(self) -> None:
        self.pg.start()

    def start_mlflow(self) -> None:
        env = team_server.mlflow_server_env(self.pg, self.root, auth=True, default_permission="EDIT")
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = self.admin_password
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                    "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
            env.pop(key, None)
        log = open(self.root / "mlflow-server.log", "ab")
        # 2 workers: requests of several trainings at once are served side by side.
        self.server = subprocess.Popen(
            team_server.mlflow_server_command(self.pg, self.artifacts, "127.0.0.1", self.port, True, 2),
            cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        team_server.wait_healthy(self.url, self.server, self.root / "mlflow-server.log")

    def stop_mlflow(self, sig: int = signal.SIGTERM) -> None:
        if self.server is None or self.server.poll() is not None:
            return
        os.killpg(self.server.pid, sig)
        try:
            self.server.wait(5)  # uvicorn waits for open keep-alive connections: not worth more
        except subprocess.TimeoutExpired:
            os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait(15)

    def add_user(self) -> None:
        import requests

        r = requests.post(f"{self.url}/api/2.0/mlflow/users/create", json={"username": USER, "password": self.password},
                          auth=("admin", self.admin_password), timeout=30)
        assert r.status_code == 200, r.text

    def env(self, user: str | None = USER, password: str | None = None) -> dict[str, str]:
        """Environment of a process that uses the server as `user` (None: no credentials)."""
        env = {"MLFLOW_TRACKING_URI": self.url, "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
        if user is not None:
            env.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password or self.password)
        return env

    def stop(self) -> None:
        self.stop_mlflow()
        self.pg.stop()


@pytest.fixture(scope="session")
def team():
    """The test run's team server (see the module docstring)."""
    missing = [m for m in ("psycopg2", "flask_wtf") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"team server tests need {', '.join(missing)} (pip install -e '.[test]')")
    root = Path(tempfile.mkdtemp(prefix="seqtrack-team-"))
    team = None
    try:
        if os.geteuid() == 0:
            root.chmod(0o711)  # PostgreSQL's account (nobody) must reach root/postgres
        team = Team(root)
        try:
            team.pg.initdb()
            team.start_postgres()
        except team_server.ServerError as exc:
            pytest.skip(f"PostgreSQL from the pgserver package cannot start here: {exc}")
        for name in team_server.DATABASES:
            team.pg.create_database(name)
        team.start_mlflow()
        team.add_user()
        yield team
    finally:
        if team is not None:
            team.stop()
        shutil.rmtree(root, ignore_errors=True)


def python_env() -> dict[str, str]:
    """PATH with this interpreter's folder first (torchrun, mlflow run's `python`)."""
    return {"PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}

"""A lab's shared MLflow tracking server in one command: PostgreSQL + MLflow's own `mlflow server`.

    python scripts/team_server.py --root /srv/seqtrack-mlflow --host 0.0.0.0 --port 5000

- PostgreSQL 16 from the `pgserver` wheel's binaries (`pip install pgserver`, no system
  packages): a data folder `<root>/pgdata` made by `initdb` on first start, listening on
  127.0.0.1:`--pg-port` only, password (SCRAM) authentication. Its superuser `mlflow` has a
  generated password kept in `<root>/pgpass` (mode 0600, libpq's password-file format): it is
  never on a command line, never in a URI that MLflow logs.
- Two databases in it: `mlflow` (runs, metrics, registry: `--backend-store-uri`) and
  `mlflow_auth` (the basic-auth app's users and permissions).
- `mlflow server --backend-store-uri postgresql+psycopg2://mlflow@127.0.0.1:PORT/mlflow
  --artifacts-destination <root>/artifacts --app-name basic-auth`: artifacts are proxied
  (runs get `mlflow-artifacts:/` URIs; clients need no access to the folder).
- Basic auth: the admin user is `admin` with the password of MLFLOW_AUTH_ADMIN_PASSWORD at the
  first start (MLflow refuses to start without one); the Flask secret key (CSRF) is generated
  once into `<root>/flask_secret_key` (0600) unless MLFLOW_FLASK_SERVER_SECRET_KEY is set.
  `--no-auth` leaves the auth app out.

Run as root, PostgreSQL runs as `--pg-user` (default `nobody`): `initdb` refuses root. Ctrl-C
or SIGTERM stops the MLflow server, then PostgreSQL. The functions are reused by the tests
(tests/pgserver_fixture.py). Plain stdlib + psycopg2; nothing here imports seqtrack_mlflow.
"""

from __future__ import annotations

import argparse
import os
import pwd
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DB_USER = "mlflow"
DATABASES = ("mlflow", "mlflow_auth")


class ServerError(RuntimeError):
    """PostgreSQL or the MLflow server could not be started (the message says why)."""


def postgres_bin() -> Path:
    """The folder of the `pgserver` wheel's PostgreSQL programs (initdb, postgres, ...)."""
    import importlib.util

    # Located, not imported: importing pgserver sets up its own server manager (and warns).
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("the pgserver package is not installed: pip install pgserver")
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (path / "postgres").is_file():
        raise ServerError(f"pgserver has no PostgreSQL binaries in {path}")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _account(pg_user: str) -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as: None (this one) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(pg_user)
    except KeyError:
        raise ServerError(f"running as root: PostgreSQL must run as another user, and {pg_user!r} does "
                          "not exist (pass --pg-user)") from None


class Postgres:
    """One PostgreSQL server on 127.0.0.1:port with its data in `folder`/pgdata."""

    def __init__(self, folder: Path, port: int = 0, pg_user: str = "nobody"):
        self.folder = Path(folder).resolve()
        self.data = self.folder / "pgdata"
        self.passfile = self.folder / "pgpass"
        self.port = port or free_port()
        self.bin = postgres_bin()
        self.account = _account(pg_user)
        self.proc: subprocess.Popen | None = None

    # -- the account and the files -----------------------------------------------------------
    def _as_account(self) -> dict:
        if self.account is None:
            return {}
        return {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}

    def _check_reachable(self) -> None:
        """As root, PostgreSQL's account must be able to run the binaries and reach the data."""
        if self.account is None:
            return
        probe = subprocess.run([str(self.bin / "postgres"), "--version"], capture_output=True, text=True,
                               **self._as_account(), check=False)
        if probe.returncode != 0:
            raise ServerError(f"user {self.account.pw_name!r} cannot run {self.bin}/postgres: "
                              f"{probe.stderr.strip() or probe.returncode}")
        probe = subprocess.run(["test", "-w", str(self.folder)], **self._as_account(), check=False)
        if probe.returncode != 0:
            raise ServerError(f"user {self.account.pw_name!r} cannot write {self.folder} (put the server's "
                              "folder where that user can reach it, e.g. under /srv or /tmp)")

    def password(self) -> str:
        return self.passfile.read_text().strip().rsplit(":", 1)[1]

    def initdb(self) -> None:
        """Create the data folder on first use (a superuser `mlflow` with a new password)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.account is not None:
            os.chown(self.folder, self.account.pw_uid, self.account.pw_gid)
        self._check_reachable()
        if (self.data / "PG_VERSION").is_file():
            return
        password = secrets.token_urlsafe(24)
        pwfile = self.folder / ".initdb-password"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        if self.account is not None:
            os.chown(pwfile, self.account.pw_uid, self.account.pw_gid)
        try:
            result = subprocess.run(
                [str(self.bin / "initdb"), "-D", str(self.data), "-U", DB_USER, f"--pwfile={pwfile}",
                 "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "--encoding=UTF8",
                 "--no-instructions"], capture_output=True, text=True, **self._as_account(), check=False)
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise ServerError(f"initdb failed: {result.stderr.strip()[-2000:]}")
        # libpq's password file: host:port:database:user:password (port '*': a later start may
        # take another port). Readable by this account only.
        self.passfile.write_text(f"127.0.0.1:*:*:{DB_USER}:{password}\n")
        self.passfile.chmod(0o600)

    # -- running -------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "Postgres":
        log = open(self.folder / "postgres.log", "ab")
        self.proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data), "-h", "127.0.0.1", "-p", str(self.port),
             "-c", "unix_socket_directories=", "-c", "max_connections=200"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **self._as_account())
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                tail = (self.folder / "postgres.log").read_text(errors="replace")[-2000:]
                raise ServerError(f"PostgreSQL exited with code {self.proc.returncode}: {tail}")
            try:
                self.connect("postgres").close()
                return self
            except Exception:  # noqa: BLE001 (psycopg2.OperationalError while it starts up)
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerError(f"PostgreSQL did not accept connections within {timeout:.0f} s") from None
                time.sleep(0.2)

    def connect(self, database: str):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user=DB_USER, password=self.password(),
                                dbname=database, connect_timeout=5)

    def create_database(self, name: str) -> None:
        """CREATE DATABASE name, unless it exists."""
        conn = self.connect("postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()

    def drop_database(self, name: str) -> None:
        conn = self.connect("postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            conn.close()

    def uri(self, database: str) -> str:
        """SQLAlchemy URI without the password (libpq reads it from PGPASSFILE)."""
        return f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{self.port}/{database}"

    def env(self) -> dict[str, str]:
        """What a process connecting to this server needs in its environment."""
        return {"PGPASSFILE": str(self.passfile)}

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: open transactions are rolled back), then SIGKILL if needed."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)


def write_auth_config(folder: Path, database_uri: str, default_permission: str = "READ") -> Path:
    """The basic-auth app's configuration (MLFLOW_AUTH_CONFIG_PATH): users in `database_uri`,
    admin `admin` (password: MLFLOW_AUTH_ADMIN_PASSWORD, read at the first start only).

    `default_permission`: what every user may do on experiments and models they did not create
    (READ: look; EDIT: also log runs into them). A verified password is cached for 60 s per
    worker: without the cache every request pays a PBKDF2 hash (~0.14 s measured on a loaded
    2-core AMD EPYC, 2026-12-07), with it a password change reaches the other workers within 60 s."""
    path = Path(folder) / "basic_auth.ini"
    path.write_text("[mlflow]\n"
                    f"default_permission = {default_permission}\n"
                    f"database_uri = {database_uri}\n"
                    "admin_username = admin\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                    "auth_cache_ttl_seconds = 60\n")
    return path


def secret_key(folder: Path) -> str:
    """MLFLOW_FLASK_SERVER_SECRET_KEY if set, else the one generated into folder/flask_secret_key."""
    if os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        return os.environ["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    path = Path(folder) / "flask_secret_key"
    if not path.is_file():
        path.write_text(secrets.token_hex(32) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def mlflow_server_command(pg: Postgres, artifacts: Path, host: str, port: int, auth: bool,
                          workers: int) -> list[str]:
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", pg.uri("mlflow"),
            "--artifacts-destination", str(artifacts), "--host", host, "--port", str(port),
            "--workers", str(workers)]
    if host not in ("127.0.0.1", "localhost"):
        argv += ["--allowed-hosts", "*"]  # a lab reaches it under the machine's own names
    return argv + (["--app-name", "basic-auth"] if auth else [])


def mlflow_server_env(pg: Postgres, folder: Path, auth: bool, default_permission: str = "READ") -> dict[str, str]:
    env = {**os.environ, **pg.env(), "MLFLOW_DISABLE_TELEMETRY": "true"}
    # MLflow's job runner (huey consumers for GenAI jobs: prompt optimization, scorers) is a few
    # more processes this project never uses; set MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true to keep it.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if auth:
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(write_auth_config(folder, pg.uri("mlflow_auth"), default_permission))
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secret_key(folder)
    return env


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise ServerError(f"mlflow server exited with code {proc.returncode}: "
                              f"{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            raise ServerError(f"mlflow server not healthy within {timeout:.0f} s: "
                              f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--root", required=True, help="folder of the database, artifacts and secrets")
    parser.add_argument("--host", default="127.0.0.1", help="address mlflow server listens on (0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=5000, help="mlflow server port")
    parser.add_argument("--pg-port", type=int, default=5432, help="PostgreSQL port (on 127.0.0.1 only)")
    parser.add_argument("--pg-user", default="nobody", help="account PostgreSQL runs as when started by root")
    parser.add_argument("--workers", type=int, default=2, help="mlflow server worker processes")
    parser.add_argument("--no-auth", action="store_true", help="no basic-auth app (anyone reaching it may write)")
    parser.add_argument("--default-permission", default="READ", choices=["READ", "EDIT", "MANAGE", "NO_PERMISSIONS"],
                        help="what users may do on experiments they did not create (EDIT: log runs into them)")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    try:
        pg = Postgres(root / "postgres", args.pg_port, args.pg_user)
        pg.initdb()
        pg.start()
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        for name in DATABASES:
            pg.create_database(name)
        (root / "artifacts").mkdir(parents=True, exist_ok=True)
        env = mlflow_server_env(pg, root, auth=not args.no_auth, default_permission=args.default_permission)
        if not args.no_auth and not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
            print("note: MLFLOW_AUTH_ADMIN_PASSWORD is not set; the first start needs it (the admin's "
                  "password), later starts do not", file=sys.stderr)
        server = subprocess.Popen(mlflow_server_command(pg, root / "artifacts", args.host, args.port,
                                                        not args.no_auth, args.workers), env=env)
        print(f"PostgreSQL on 127.0.0.1:{pg.port} (data {pg.data}); MLflow on http://{args.host}:{args.port} "
              f"(artifacts {root / 'artifacts'}); Ctrl-C stops both", file=sys.stderr, flush=True)
        signal.signal(signal.SIGTERM, lambda *_: server.send_signal(signal.SIGTERM))
        try:
            return server.wait()
        except KeyboardInterrupt:
            server.send_signal(signal.SIGINT)
            return server.wait()
    finally:
        pg.stop()


if __name__ == "__main__":
    sys.exit(main())

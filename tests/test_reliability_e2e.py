"""Reliability end to end (slow): real training subprocesses killed with SIGKILL at several
points and resumed bit for bit, SIGINT/SIGTERM, two trainers on one sqlite store, a tracking
server that goes away mid-run, bad parameters through `mlflow run`.

All subprocesses share one sqlite store (module fixture) and the test run's sample-data cache;
each test tells its runs apart by run id. Budget: about 3-4 minutes on 2 CPU cores.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from seqtrack_mlflow.train.checkpoint import load_checkpoint
from seqtrack_mlflow.train.progress import BLOCK_RE

from .conftest import REPO, reset_active_experiment
from .servers import free_port, wait_until_up
from .test_trainer import DETERMINISTIC_METRICS, assert_same_tensors
from .tiny import write_tiny_config

pytestmark = pytest.mark.slow

EPOCHS = 2
TIMEOUT = 240  # seconds any one subprocess may take on a loaded 2-core machine


@pytest.fixture(scope="module")
def store(tmp_path_factory, empty_tracking_db) -> Path:
    root = tmp_path_factory.mktemp("reliability-store")
    shutil.copy(empty_tracking_db, root / "mlflow.db")
    return root


@pytest.fixture(autouse=True)
def tracking_uri(store, monkeypatch, tmp_path_factory) -> str:
    """Overrides conftest's per-test store: these tests share one (and a reference run)."""
    uri = f"sqlite:///{store / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SEQTRACK_CACHE", str(tmp_path_factory.getbasetemp() / "seqtrack_cache"))
    reset_active_experiment(monkeypatch)
    return uri


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
                "PYTHONHASHSEED": "8", "SEQTRACK_HASHSEED_SET": "1", "HF_HUB_OFFLINE": "1",
                "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"})
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])  # `python` of MLproject
    env.pop("MLFLOW_RUN_ID", None)
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    env.update(extra)
    return env


class Child:
    """A training subprocess with stdout/stderr in files (no pipe can fill up and block it)."""

    def __init__(self, folder: Path, argv: list[str], hook: tuple[str, str] | None = None, **env: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.marker = folder / "hook-reached"
        self.stdout_path, self.stderr_path = folder / "stdout.txt", folder / "stderr.txt"
        if hook:
            cmd = [sys.executable, "-c", "import tests.killhooks as k; k.main()", *hook, str(self.marker), *argv]
        else:
            cmd = [sys.executable, "-m", "seqtrack_mlflow", *argv]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, cwd=folder, stdout=out, stderr=err, env=child_env(**env))

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for(self, condition, what: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"process ended (rc {self.proc.returncode}) before {what}:\n{self.stderr[-3000:]}")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"timed out waiting for {what}:\n{self.stderr[-3000:]}")
            time.sleep(0.05)

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"did not finish in {timeout} s:\n{self.stderr[-3000:]}")


def train_args(config: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(config), "--output-dir", str(out), *extra]


def run_ids() -> set[str]:
    return {r.info.run_id for r in MlflowClient().search_runs(["0"], max_results=1000)}


def new_run(before: set[str]) -> str:
    (run_id,) = run_ids() - before
    return run_id


def run_metrics(run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient()
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in DETERMINISTIC_METRICS}


def comparable(path: Path) -> dict:
    state = load_checkpoint(path)
    state["metrics"] = [{k: v for k, v in m.items() if k != "seconds"} for m in state["metrics"]]
    return state


def assert_same_checkpoint(a: Path, b: Path) -> None:
    sa, sb = comparable(a), comparable(b)
    for key in ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "rng", "metrics", "epoch"):
        assert_same_tensors(sa[key], sb[key], f"{b.name}:{key}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_config(tmp_path_factory.mktemp("tiny-config"), train={"epochs": EPOCHS})


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny, store, empty_tracking_db) -> tuple[str, Path]:
    """One uninterrupted run: (run id, its checkpoints folder)."""
    with pytest.MonkeyPatch.context() as mp:  # module scope: the per-test fixture is not set up yet
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
        mp.setenv("SEQTRACK_CACHE", str(tmp_path_factory.getbasetemp() / "seqtrack_cache"))
        folder = tmp_path_factory.mktemp("reference")
        before = run_ids()
        child = Child(folder, train_args(tiny, folder / "out"))
        assert child.wait() == 0, child.stderr[-3000:]
        run_id = new_run(before)
    return run_id, folder / "out" / run_id / "checkpoints"


# -- kill -9 ------------------------------------------------------------------------------------
KILL_POINTS = {
    # name: (hook or None, what to wait for, checkpoints complete on disk after the kill)
    "mid_epoch": (("block", "Epoch 2 : 16 / 40 samples"), None, {"epoch_1.ckpt"}),
    "checkpoint_write": (("fsync", "epoch_2.ckpt"), None, {"epoch_1.ckpt"}),
    "artifact_logging": (("artifact", "epoch_2.ckpt"), None, {"epoch_1.ckpt", "epoch_2.ckpt"}),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_then_resume_reproduces_the_uninterrupted_run(tmp_path, tiny, reference, point):
    hook, text, expected = KILL_POINTS[point]
    ref_id, ref_ckpts = reference
    out = tmp_path / "out"
    before = run_ids()
    child = Child(tmp_path / "killed", train_args(tiny, out), hook=hook)
    if hook:
        child.wait_for(child.marker.exists, f"the {point} hook")
    else:
        child.wait_for(lambda: text in child.stdout, repr(text))
    child.proc.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    killed = new_run(before)
    client = MlflowClient()
    assert client.get_run(killed).info.status == "RUNNING"  # nobody could say otherwise

    # Every epoch_N.ckpt on disk is complete (it loads, and holds epoch N) or absent.
    ckpts = out / killed / "checkpoints"
    on_disk = {p.name for p in ckpts.glob("epoch_*.ckpt")}
    assert on_disk == expected
    for name in on_disk:
        assert load_checkpoint(ckpts / name)["epoch"] == int(name[6:-5])
    strays = sorted(p.name for p in ckpts.iterdir() if p.name.endswith(".tmp"))
    if point == "checkpoint_write":
        assert strays and strays[0].startswith(".epoch_2.ckpt.")  # the write the kill interrupted

    # Resume by run id: the old run is closed KILLED and points at the new one.
    before = run_ids()
    resumed_child = Child(tmp_path / "resumed", train_args(tiny, out, "--resume", killed))
    assert resumed_child.wait() == 0, resumed_child.stderr[-3000:]
    resumed = new_run(before)
    old = client.get_run(killed)
    assert old.info.status == "KILLED"
    assert old.data.tags["seqtrack.resumed_by"] == resumed
    assert client.get_run(resumed).info.status == "FINISHED"
    assert not [p for p in ckpts.iterdir() if p.name.endswith(".tmp")], "resume removes stray temp files"

    # Bit for bit the uninterrupted run: metrics and every checkpoint.
    assert run_metrics(resumed) == run_metrics(ref_id)
    for epoch in range(1, EPOCHS + 1):
        assert_same_checkpoint(ref_ckpts / f"epoch_{epoch}.ckpt", out / resumed / "checkpoints" / f"epoch_{epoch}.ckpt")
    log_text = (out / resumed / "training_log.txt").read_text()
    assert [int(b.group(1)) for b in BLOCK_RE.finditer(log_text)] == [1, 1, 1, 2, 2, 2]


# -- SIGINT / SIGTERM ---------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_signal_finishes_the_step_marks_killed_and_says_how_to_resume(tmp_path, tiny, reference, signum):
    out = tmp_path / "out"
    before = run_ids()
    # The child waits after its first progress block until the signal is sent (the tiny config
    # trains a whole epoch in about 0.1 s, faster than a test can react to the printed block).
    child = Child(tmp_path, train_args(tiny, out), hook=("block", "Epoch 1 : 16 / 40 samples"))
    child.wait_for(child.marker.exists, "the first progress block")
    child.proc.send_signal(signum)
    time.sleep(0.5)  # the handler runs in the child's main thread, which sleeps in 50 ms steps
    child.marker.unlink()
    assert child.wait() == 128 + signum
    run_id = new_run(before)
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED"
    assert signal.Signals(signum).name in run.data.tags["seqtrack.error"]
    err = child.stderr
    assert "finishing the current step" in err
    # Stopped inside epoch 1: no checkpoint yet, so it says there is nothing to resume.
    assert "stopped before its first checkpoint, so there is nothing to resume" in err
    assert "Traceback" not in err
    assert not list((out / run_id / "checkpoints").glob("epoch_*.ckpt"))


# -- two trainers, one sqlite store -------------------------------------------------------------
def test_two_trainers_on_one_sqlite_store_and_a_resume_beside_a_new_run(tmp_path, tiny, reference):
    ref_id, ref_ckpts = reference
    out = tmp_path / "out"  # both write under the same output folder
    before = run_ids()
    first = Child(tmp_path / "first", train_args(tiny, out, "--epochs", "1"))
    assert first.wait() == 0, first.stderr[-3000:]
    first_id = new_run(before)
    first_sha = (out / first_id / "checkpoints" / "epoch_1.ckpt").read_bytes()

    before = run_ids()
    resumed = Child(tmp_path / "resumed", train_args(tiny, out, "--resume", first_id))
    fresh = Child(tmp_path / "fresh", train_args(tiny, out))
    assert resumed.wait() == 0, resumed.stderr[-3000:]
    assert fresh.wait() == 0, fresh.stderr[-3000:]
    assert "database is locked" not in resumed.stderr + fresh.stderr
    ids = run_ids() - before
    assert len(ids) == 2
    client = MlflowClient()
    by_tag = {client.get_run(r).data.tags.get("seqtrack.resumed_from_epoch"): r for r in ids}
    resumed_id, fresh_id = by_tag["1"], by_tag[None]
    for run_id in ids:
        assert client.get_run(run_id).info.status == "FINISHED"
        assert run_metrics(run_id) == run_metrics(ref_id)  # both exact, neither disturbed
        for epoch in range(1, EPOCHS + 1):
            path = out / run_id / "checkpoints" / f"epoch_{epoch}.ckpt"
            assert_same_checkpoint(ref_ckpts / f"epoch_{epoch}.ckpt", path)
        assert load_checkpoint(out / run_id / "checkpoints" / "epoch_2.ckpt")["run_id"] == run_id
    # Outputs are per run id: the resumed run's source folder is untouched.
    assert (out / first_id / "checkpoints" / "epoch_1.ckpt").read_bytes() == first_sha
    assert not (out / first_id / "checkpoints" / "epoch_2.ckpt").exists()
    assert client.get_run(first_id).data.tags["seqtrack.resumed_by"] == resumed_id
    assert fresh_id != resumed_id


# -- a tracking server ----------------------------------------------------------------------------
def test_tracking_server_then_the_server_goes_away_mid_run(tmp_path, tiny, reference, empty_tracking_db):
    shutil.copy(empty_tracking_db, tmp_path / "server.db")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "art"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], cwd=tmp_path, stdout=server_log, stderr=subprocess.STDOUT, env=child_env(),
        start_new_session=True)
    try:
        wait_until_up(f"{url}/health", server, 120, tmp_path / "server.log")
        client = MlflowClient(url)
        exp_id = client.create_experiment("team")  # artifacts proxied: mlflow-artifacts:/...
        env = {"MLFLOW_TRACKING_URI": url, "MLFLOW_EXPERIMENT_NAME": "team",
               "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}

        # 1. A run through the server, read back through the server.
        child = Child(tmp_path / "ok", train_args(tiny, tmp_path / "out", "--epochs", "1"), **env)
        assert child.wait() == 0, child.stderr[-3000:]
        (run,) = client.search_runs([exp_id])
        assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
        assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch/val_iou")] == [1]
        names = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "checkpoints")}
        assert names == {"epoch_1.ckpt", "manifest.json"}
        assert any((tmp_path / "art").rglob("epoch_1.ckpt"))  # stored by the server

        # 2. The server goes away after epoch 1's checkpoint: no hang, a clear end, checkpoints kept.
        child = Child(tmp_path / "gone", train_args(tiny, tmp_path / "out", "--epochs", "3"), **env)
        child.wait_for(lambda: "Epoch 2 : 16 / 40 samples" in child.stdout, "epoch 2")
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(30)
        started = time.monotonic()
        rc = child.wait(timeout=180)
        waited = time.monotonic() - started
        err = child.stderr
        run_dirs = [p for p in (tmp_path / "out").iterdir() if p.name != run.info.run_id]
        (run_dir,) = run_dirs
        assert load_checkpoint(run_dir / "checkpoints" / "epoch_1.ckpt")["epoch"] == 1
        for path in (run_dir / "checkpoints").glob("epoch_*.ckpt"):
            load_checkpoint(path)  # whatever is there is complete
        if rc == 0:  # training went on and the tracking calls got through somehow
            assert (run_dir / "checkpoints" / "epoch_3.ckpt").is_file()
        else:
            last = err.strip().splitlines()[-1]
            assert last.startswith("error: ") and "tracking" in last and url in last, err[-3000:]
            assert "Traceback" not in err, err[-3000:]
            assert str(run_dir / "checkpoints") in err  # says where the checkpoints are
        assert waited < 150
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(30)
        server_log.close()


# -- bad parameters through `mlflow run` ---------------------------------------------------------
@pytest.mark.parametrize("entry, params, expected", [
    ("main", ["-P", "epochs=-1"], "train.epochs: -1 is not allowed"),
    ("main", ["-P", "batch_size=abc"], "train.batch_size: 'abc' is not an integer"),
    ("download", ["-P", "run_id=0123456789abcdef0123456789abcdef"], "no MLflow run with id"),
])
def test_mlflow_run_with_bad_parameters_fails_clearly(tmp_path, entry, params, expected):
    before = run_ids()
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", "-e", entry, *params],
        cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT, env=child_env())
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    for run_id in run_ids() - before:  # a run mlflow opened is closed, not left RUNNING
        assert MlflowClient().get_run(run_id).info.status == "FAILED"


# -- two first runs at once in a fresh folder ----------------------------------------------------
def test_two_first_runs_at_once_in_a_fresh_folder(tmp_path, tiny, reference):
    """No mlflow.db yet: both processes create the sqlite store at the same moment (MLflow's
    schema creation raced: an alembic CommandError in one of them, 3 of 3 trials, before the
    file lock in experiment.prepare_store). Both must finish, each identical to a run alone."""
    ref_id, ref_ckpts = reference
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    uri = f"sqlite:///{fresh / 'mlflow.db'}"
    children = [Child(fresh / name, train_args(tiny, fresh / "out"), MLFLOW_TRACKING_URI=uri) for name in "ab"]
    for child in children:
        assert child.wait() == 0, child.stderr[-3000:]
        assert "Traceback" not in child.stderr
    client = MlflowClient(uri)
    ids = [r.info.run_id for r in client.search_runs(["0"])]
    assert len(ids) == 2
    ref = run_metrics(ref_id)
    for run_id in ids:
        assert client.get_run(run_id).info.status == "FINISHED"
        got = {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in ref}
        assert got == ref
        for epoch in range(1, EPOCHS + 1):
            assert_same_checkpoint(ref_ckpts / f"epoch_{epoch}.ckpt",
                                   fresh / "out" / run_id / "checkpoints" / f"epoch_{epoch}.ckpt")


# -- killed while writing the report and plots ----------------------------------------------------
def test_a_run_killed_while_writing_its_report_is_finished_by_resume(tmp_path, tiny, reference):
    """SIGKILL while MLflow copies plots/loss.png (every checkpoint is complete): the run stays
    RUNNING with a half-copied `.artifact.uploading.*` file. `--resume <id>` with the same
    epochs finishes it: a new run with the report and plots, FINISHED, the old one KILLED, the
    leftover removed."""
    out = tmp_path / "out"
    before = run_ids()
    child = Child(tmp_path / "killed", train_args(tiny, out), hook=("artifact", "loss.png"))
    child.wait_for(child.marker.exists, "the plot artifact copy")
    child.proc.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    killed = new_run(before)
    client = MlflowClient()
    assert client.get_run(killed).info.status == "RUNNING"
    artifacts = Path(client.get_run(killed).info.artifact_uri.removeprefix("file://"))
    assert list(artifacts.rglob(".artifact.uploading.*")), "the kill left a half-copied artifact"

    before = run_ids()
    resumed = Child(tmp_path / "resumed", train_args(tiny, out, "--resume", killed))
    assert resumed.wait() == 0, resumed.stderr[-3000:]
    new = new_run(before)
    assert client.get_run(new).info.status == "FINISHED"
    assert client.get_run(killed).info.status == "KILLED"
    top = {a.path for a in client.list_artifacts(new)}
    assert {"report.md", "plots", "checkpoints"} <= top
    assert "Best IoU" in (out / new / "report.md").read_text()
    assert not list(artifacts.rglob(".artifact.uploading.*"))
    assert run_metrics(new) == run_metrics(reference[0])

"""Every run ends in a true state, caches heal, and resume finds the checkpoint it advertises:
the frame index rebuilt when it does not verify, resume from the newest verified local or
uploaded checkpoint (also in a new store), the data fingerprint on resume, a locked sqlite store
retried for a bounded time, a lost DDP peer as one line, held-out tracking after the checkpoint."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from seqtrack_mlflow import cli, names
from seqtrack_mlflow.data.index import DIGEST_FILE, frame_index, index_digest
from seqtrack_mlflow.data.lasot import LasotDataset
from seqtrack_mlflow.data.synthetic import ensure_sample_data
from seqtrack_mlflow.errors import TrackingError
from seqtrack_mlflow.experiment import retry_locked
from seqtrack_mlflow.train.checkpoint import Manifest, load_checkpoint
from seqtrack_mlflow.train.distributed import DistInfo, PeerLost, peer_lost

from .conftest import new_store, reset_active_experiment
from .tiny import write_tiny_config


# -- 4. caches heal -----------------------------------------------------------------------------
def _break_truncate(folder: Path) -> None:
    arrow = next(folder.glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:100])


def _break_zero(folder: Path) -> None:
    arrow = next(folder.glob("*.arrow"))
    arrow.write_bytes(b"\0" * arrow.stat().st_size)


def _break_missing(folder: Path) -> None:
    next(folder.glob("*.arrow")).unlink()


def _break_state(folder: Path) -> None:
    (folder / "state.json").write_text("{not json")


def _break_digest(folder: Path) -> None:
    (folder / DIGEST_FILE).write_text("0" * 64 + "\n")


def _break_half_written(folder: Path) -> None:
    (folder / DIGEST_FILE).unlink()  # as a folder made before the digest was written


@pytest.mark.parametrize("damage", [_break_truncate, _break_zero, _break_missing, _break_state, _break_digest,
                                    _break_half_written], ids=lambda f: f.__name__[7:])
def test_a_frame_index_that_fails_to_read_or_verify_is_rebuilt(tmp_path, monkeypatch, caplog, damage):
    monkeypatch.setenv("SEQTRACK_CACHE", str(tmp_path / "cache"))
    dataset = LasotDataset(ensure_sample_data(), ("airplane",))
    good = index_digest(frame_index(dataset))
    (folder,) = [p for p in (tmp_path / "cache" / "index").iterdir() if not p.name.startswith(".")]
    damage(folder)
    with caplog.at_level(logging.WARNING, logger="seqtrack_mlflow.data.index"):
        healed = frame_index(dataset)
    assert index_digest(healed) == good
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "rebuilding it" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
    assert not [p for p in (tmp_path / "cache" / "index").iterdir() if p.name.startswith(".")], "leftovers"
    caplog.clear()
    frame_index(dataset)  # healed for good: no second warning
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


# -- 6. bounded retries, a lost peer ---------------------------------------------------------------
def test_a_locked_store_is_retried_then_succeeds(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert retry_locked("logging params", flaky) == "ok" and len(calls) == 3


def test_a_store_locked_too_long_is_one_line(monkeypatch):
    monkeypatch.setenv("SEQTRACK_STORE_RETRY_SECONDS", "0.5")

    def locked():
        raise MlflowException("(sqlite3.OperationalError) database is locked")

    with pytest.raises(TrackingError, match="stayed locked by another process for 0 s while setting tags") as info:
        retry_locked("setting tags", locked)
    assert "\n" not in str(info.value)


def test_other_store_errors_are_not_retried():
    calls = []

    def broken():
        calls.append(1)
        raise MlflowException("RESOURCE_DOES_NOT_EXIST")

    with pytest.raises(TrackingError):
        retry_locked("x", broken)
    assert len(calls) == 1


@pytest.mark.parametrize("exc", [
    RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:5"),
    RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 1800000ms"),
])
def test_a_lost_ddp_peer_is_one_line(exc):
    lost = peer_lost(exc, DistInfo(0, 2, 0))
    assert isinstance(lost, PeerLost) and "\n" not in str(lost) and "2-process run" in str(lost)
    assert peer_lost(exc, DistInfo()) is None  # one process: not a peer problem
    assert peer_lost(ValueError("x"), DistInfo(0, 2, 0)) is None


@pytest.mark.parametrize("redeliver", [True, False])
def test_a_signal_while_a_run_is_closed_waits_for_the_close(redeliver):
    """Sent from another thread (the kernel may hand a process-wide signal to any thread), it is
    held until the block ends, then delivered (or dropped, after a lost DDP peer)."""
    from seqtrack_mlflow.train.signals import signals_deferred

    got: list[int] = []
    old = signal.signal(signal.SIGHUP, lambda signum, frame: got.append(signum))
    try:
        with signals_deferred(redeliver=redeliver):
            sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGHUP))
            sender.start()
            sender.join()
            time.sleep(0.05)  # the main thread runs Python signal handlers between bytecodes
            assert got == []
        time.sleep(0.05)
        assert got == ([signal.SIGHUP] if redeliver else [])
    finally:
        signal.signal(signal.SIGHUP, old)


# -- 5 / 6. training end to end ---------------------------------------------------------------------
@pytest.fixture
def in_process(monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "8")
    monkeypatch.setenv("SEQTRACK_HASHSEED_SET", "1")


def _train(folder: Path, *args: str, expect: int = 0, **sections) -> str:
    config = write_tiny_config(folder, **sections)
    client = MlflowClient()
    before = {r.info.run_id for e in client.search_experiments() for r in client.search_runs([e.experiment_id])}
    assert cli.main(["train", "--config", str(config), "--output-dir", str(folder / "outputs"), *args]) == expect
    after = {r.info.run_id for e in client.search_experiments() for r in client.search_runs([e.experiment_id])}
    new = after - before
    return new.pop() if new else ""


@pytest.mark.slow
def test_resume_by_run_id_takes_the_newer_local_checkpoint(tmp_path, in_process, capsys):
    """The run's uploaded artifacts stop at epoch 1 (as after a lost upload), its local folder holds
    a verified epoch 2: resume continues after epoch 2, not 1."""
    run_id = _train(tmp_path, train={"epochs": 2})
    artifacts = Path(mlflow.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "checkpoints"
    (artifacts / "epoch_2.ckpt").unlink()
    resumed = _train(tmp_path, "--resume", run_id, train={"epochs": 3})
    tags = MlflowClient().get_run(resumed).data.tags
    assert tags[names.RESUMED_FROM_EPOCH_TAG] == "2"
    assert load_checkpoint(tmp_path / "outputs" / resumed / "checkpoints" / "epoch_3.ckpt")["epoch"] == 3


@pytest.mark.slow
def test_resume_in_a_new_store_starts_a_new_run_tagged_with_the_old_id(tmp_path, in_process, monkeypatch,
                                                                       tmp_path_factory, empty_tracking_db):
    run_id = _train(tmp_path, train={"epochs": 1})
    # The store is replaced by an empty one; by path and by run id (its local folder) both work.
    for how in ("path", "run_id"):
        db = new_store(tmp_path_factory, empty_tracking_db, f"new-{how}") / "mlflow.db"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        reset_active_experiment(monkeypatch)
        spec = str(tmp_path / "outputs" / run_id / "checkpoints" / "epoch_1.ckpt") if how == "path" else run_id
        resumed = _train(tmp_path, "--resume", spec, train={"epochs": 2})
        run = MlflowClient().get_run(resumed)
        assert run.info.status == "FINISHED", how
        assert run_id in run.data.tags[names.RESUMED_FROM_TAG], how


@pytest.mark.slow
def test_resume_on_other_annotations_stops_unless_allowed(tmp_path, in_process, monkeypatch, capsys):
    run_id = _train(tmp_path, train={"epochs": 1})
    capsys.readouterr()
    # The same sequences with one box moved: another fingerprint.
    root = tmp_path / "data"
    shutil.copytree(ensure_sample_data(), root, symlinks=True)
    gt = next(root.glob("airplane/airplane-2/groundtruth.txt"))
    lines = gt.read_text().splitlines()
    x, y, w, h = (float(v) for v in lines[3].split(","))
    lines[3] = f"{x + 1},{y},{w},{h}"
    gt.write_text("\n".join(lines) + "\n")
    assert _train(tmp_path, "--resume", run_id, "--data-dir", str(root), expect=2, train={"epochs": 2}) == ""
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: resume: the data differs") and "--allow-data-change" in err[-1]
    resumed = _train(tmp_path, "--resume", run_id, "--data-dir", str(root), "--allow-data-change",
                     train={"epochs": 2})
    tags = MlflowClient().get_run(resumed).data.tags
    assert "->" in tags[names.RESUME_DATA_CHANGED_TAG]


@pytest.mark.slow
def test_held_out_tracking_runs_after_the_checkpoint_is_saved(tmp_path, in_process, monkeypatch):
    """A failure while tracking the held-out sequences leaves the epoch's checkpoint complete and
    listed, the run FAILED with one line, and a resume that continues after that epoch."""
    from seqtrack_mlflow.errors import DataError

    def broken(*args, **kwargs):
        raise DataError("initial box [0, 0, 1e+05, 1e+05] does not fit a 320x240 frame")

    from seqtrack_mlflow.train import loop

    real = loop.track_held_out
    monkeypatch.setattr(loop, "track_held_out", broken)
    run_id = _train(tmp_path, expect=2, train={"epochs": 2}, data={"val_tracking": "always"})
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FAILED" and "does not fit" in run.data.tags[names.ERROR_TAG]
    folder = tmp_path / "outputs" / run_id / "checkpoints"
    Manifest.read(folder).verify(folder / "epoch_1.ckpt")
    monkeypatch.setattr(loop, "track_held_out", real)
    resumed = _train(tmp_path, "--resume", run_id, train={"epochs": 2}, data={"val_tracking": "always"})
    assert MlflowClient().get_run(resumed).data.tags[names.RESUMED_FROM_EPOCH_TAG] == "1"


@pytest.mark.slow
def test_tracking_scores_are_in_the_checkpoint_history(tmp_path, in_process):
    run_id = _train(tmp_path, train={"epochs": 1}, data={"val_tracking": "always"})
    state = load_checkpoint(tmp_path / "outputs" / run_id / "checkpoints" / "epoch_1.ckpt")
    assert {"val_auc", "val_precision", "val_norm_precision"} <= set(state["metrics"][0])
    assert list(state["metrics"][0])[:3] == ["train_loss", "val_iou", "best_val_iou"]
    entry = json.loads((tmp_path / "outputs" / run_id / "checkpoints" / "manifest.json").read_text())
    assert len(entry["checkpoints"]) == 1
    assert MlflowClient().get_metric_history(run_id, "epoch/val_auc")


@pytest.mark.slow
def test_experiment_name_creates_a_missing_experiment(tmp_path, in_process, monkeypatch, tmp_path_factory,
                                                      empty_tracking_db):
    # A sqlite store puts a new experiment's artifacts in ./mlruns of the folder it was opened in.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{new_store(tmp_path_factory, empty_tracking_db, 'x')}/mlflow.db")
    reset_active_experiment(monkeypatch)
    run_id = _train(tmp_path, "--experiment-name", "brand-new", train={"epochs": 1})
    exp = MlflowClient().get_experiment_by_name("brand-new")
    assert exp is not None and MlflowClient().get_run(run_id).info.experiment_id == exp.experiment_id


@pytest.mark.slow
def test_interrupted_before_a_checkpoint_never_says_resume_with(tmp_path, in_process, monkeypatch, caplog):
    def interrupt(self, epoch):
        raise KeyboardInterrupt

    monkeypatch.setattr("seqtrack_mlflow.train.loop.Trainer.train_epoch", interrupt)
    with caplog.at_level(logging.ERROR):
        _train(tmp_path, expect=130, train={"epochs": 1})
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "nothing to resume" in text and "resume with" not in text


# -- end to end in subprocesses: a FIFO frame, a killed DDP rank, a silent server, a sqlite lock ----
def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _run(run_id: str):
    return MlflowClient().get_run(run_id)


@pytest.mark.slow
@pytest.mark.parametrize("fifo, skip", [("bicycle/bicycle-3/img/00000007.jpg", False),
                                        ("bicycle/bicycle-3/img/00000007.jpg", True),
                                        ("bicycle/bicycle-3/groundtruth.txt", False)],
                         ids=["frame", "frame-skipped", "annotation"])
def test_a_fifo_in_a_local_lasot_copy_never_hangs_training(tmp_path, fifo, skip):
    """One training frame (or annotation file) of a local LaSOT copy is a FIFO nobody writes to:
    one `error:` line naming it (or, with --skip-bad-sequences, the draw is made again and the
    run finishes), well within the bound; a read of the FIFO would block forever."""
    from .datatrees import make_lasot_tree
    from .test_reliability_e2e import Child, run_ids, train_args

    root = make_lasot_tree(tmp_path / "lasot")
    (root / fifo).unlink()
    os.mkfifo(root / fifo)
    config = write_tiny_config(tmp_path, train={"epochs": 1})
    before = run_ids()
    child = Child(tmp_path / "child", train_args(config, tmp_path / "out", "--data", "lasot", "--data-dir",
                                                 str(root), *(["--skip-bad-sequences"] if skip else [])))
    rc = child.wait(timeout=120)  # fails the test (and kills the child) if it hangs
    assert "Traceback" not in child.stderr
    new = run_ids() - before
    if skip:
        assert rc == 0, child.stderr[-3000:]
        (run_id,) = new
        skipped = MlflowClient().get_metric_history(run_id, names.EPOCH_PREFIX + names.ROW_SKIPPED)
        assert _run(run_id).info.status == "FINISHED" and skipped and skipped[-1].value >= 1
        return
    assert rc == 2, child.stderr[-3000:]
    (line,) = _error_lines(child.stderr)
    # a frame by its full path; the annotation as the local copy's check names it
    assert (str(root / fifo) if fifo.endswith(".jpg") else "bicycle-3/groundtruth.txt") in line
    assert "not a regular file" in line
    for run_id in new:  # the annotation is read before a run exists; a frame only in training
        assert _run(run_id).info.status == "FAILED"


@pytest.mark.slow
def test_a_killed_ddp_rank_ends_the_run_failed_with_one_line(tmp_path):
    """`train --nproc 2` (gloo, CPU): rank 1 is killed with SIGKILL mid-epoch. torchrun sends
    rank 0 SIGTERM at once; rank 0 still closes the run FAILED and prints one `error:` line."""
    import psutil

    from .test_reliability_e2e import Child, run_ids, train_args

    # 30 epochs: still training when the test acts on the first printed block (an epoch of the
    # tiny config takes well under a second).
    config = write_tiny_config(tmp_path, train={"epochs": 30})
    before = run_ids()
    child = Child(tmp_path / "child", train_args(config, tmp_path / "out", "--nproc", "2"))
    child.wait_for(lambda: "Epoch 1 : 16 / 40 samples" in child.stdout, "the first progress block")
    workers = {p.environ().get("RANK"): p for p in psutil.Process(child.proc.pid).children(recursive=True)
               if "seqtrack_mlflow" in " ".join(p.cmdline())}
    workers["1"].send_signal(signal.SIGKILL)
    assert child.wait(timeout=120) != 0
    (run_id,) = run_ids() - before
    run = _run(run_id)
    assert run.info.status == "FAILED", child.stderr[-3000:]
    assert run.data.tags[names.ERROR_TAG].startswith("PeerLost: another training process")
    (line,) = _error_lines(child.stderr)
    assert "another training process of this 2-process run stopped" in line
    assert "exitcode  : 2 " in child.stderr  # rank 0 ended by its own error, not by torchrun's SIGTERM


@pytest.fixture
def silent_server():
    """127.0.0.1:<port> accepting connections and never answering; yields (port, connections)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept():
        with contextlib.suppress(OSError):
            while True:
                held.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1], held
    server.close()
    for conn in held:
        conn.close()


@pytest.mark.slow
def test_a_tracking_server_that_never_answers_is_one_line_within_90_s(tmp_path, silent_server):
    from .test_reliability_e2e import Child, train_args

    port, held = silent_server
    config = write_tiny_config(tmp_path, train={"epochs": 1})
    start = time.monotonic()
    child = Child(tmp_path / "child", train_args(config, tmp_path / "out"),
                  MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}")
    rc = child.wait(timeout=150)
    elapsed = time.monotonic() - start
    assert rc == 2 and held, child.stderr[-3000:]
    (line,) = _error_lines(child.stderr)
    assert f"MLflow tracking at http://127.0.0.1:{port} failed while" in line
    assert "Traceback" not in child.stderr
    assert elapsed < 90, f"{elapsed:.0f} s to the error line (HTTP_DEFAULTS: 3 tries of 15 s)"


def _hold_lock(db: Path, seconds: float) -> subprocess.Popen:
    """Another process holding `db`'s write lock (BEGIN EXCLUSIVE) for `seconds`; returns once held."""
    code = ("import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True)\n"
            "time.sleep(float(sys.argv[2])); c.execute('ROLLBACK')\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.mark.slow
@pytest.mark.parametrize("hold, retry, ends", [(35, 20, "FAILED"), (30, 90, "FINISHED")],
                         ids=["held-past-the-retry-window", "released-within-it"])
def test_a_real_sqlite_lock_mid_training(tmp_path, tracking_uri, hold, retry, ends):
    """Another process holds the store's write lock from the middle of epoch 1 for `hold` s.
    Longer than SEQTRACK_STORE_RETRY_SECONDS: one `error:` line, and the run is closed FAILED once
    the lock is gone. Released within it (but after MLflow's own 20 s busy timeout gave up once):
    retried, and the run finishes."""
    from .test_reliability_e2e import Child, run_ids, train_args

    db = Path(tracking_uri.removeprefix("sqlite:///"))
    config = write_tiny_config(tmp_path, train={"epochs": 2})
    before = run_ids()
    child = Child(tmp_path / "child", train_args(config, tmp_path / "out"), hook=("block", "Epoch 1 : 16 / 40 samples"),
                  SEQTRACK_STORE_RETRY_SECONDS=str(retry))
    child.wait_for(child.marker.exists, "the first progress block")  # the child waits there
    holder = _hold_lock(db, hold)
    child.marker.unlink()  # the rest of the training meets the lock
    try:
        rc = child.wait(timeout=hold + retry + 120)
    finally:
        holder.kill()
        holder.wait()
    assert "Traceback" not in child.stderr
    (run_id,) = run_ids() - before
    assert _run(run_id).info.status == ends, child.stderr[-3000:]
    if ends == "FINISHED":
        assert rc == 0 and not _error_lines(child.stderr)
        assert "locked by another process while" in child.stderr  # the retry was reached
        return
    assert rc == 2
    (line,) = _error_lines(child.stderr)
    assert f"stayed locked by another process for {retry} s while" in line

"""Inputs from outside are bounded before anything is read or allocated: frames a served model
is asked for, configs (YAML, config.json, checkpoints), weights files and their digests, boxes."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException

from seqtrack_mlflow import cli
from seqtrack_mlflow.config import Config
from seqtrack_mlflow.data.lasot import LasotDataset
from seqtrack_mlflow.data.synthetic import ensure_sample_data
from seqtrack_mlflow.errors import CheckpointError, ConfigError, DataError
from seqtrack_mlflow.model import build_seqtrack
from seqtrack_mlflow.model.load import model_from_checkpoint
from seqtrack_mlflow.model.seqtrack import SeqTrack
from seqtrack_mlflow.presets import read_yaml
from seqtrack_mlflow.publish import export, pyfunc_model
from seqtrack_mlflow.publish.models import signature
from seqtrack_mlflow.track.tracker import SeqTrackTracker, TrackerConfig, track_frames
from tests.servers import free_port, wait_until_up
from tests.tiny import TINY

REPO = Path(__file__).resolve().parents[1]
CFG = Config.from_dict(TINY)


def _state(epoch: int = 1, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return {"model_state_dict": build_seqtrack(CFG.model).state_dict(), "epoch": epoch, "seed": 8,
            "config": CFG.to_dict()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("exported") / "m"
    export.export_pretrained(_state(), folder, run_id="abc")
    return folder


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, exported) -> Path:
    """A pyfunc model as every LoggedModel holds it (saved locally: no tracking store needed)."""
    path = tmp_path_factory.mktemp("pyfunc") / "model"
    mlflow.pyfunc.save_model(str(path), python_model=pyfunc_model.__file__,
                             artifacts={pyfunc_model.WEIGHTS_ARTIFACT: str(exported)},
                             model_config={**dataclasses.asdict(CFG.track), pyfunc_model.FRAME_ROOTS_KEY: []},
                             signature=signature())
    return path


def _frames(n: int = 2) -> tuple[list[Path], np.ndarray]:
    root = ensure_sample_data()
    seq = next(s for s in LasotDataset(root, ("airplane",)).sequences if s.name == "airplane-1")
    return [Path(seq.frame_path(i)) for i in range(n)], seq.boxes[0]


# -- 1. served frames ------------------------------------------------------------------------------
def _hostile_paths(tmp_path: Path) -> dict[str, str]:
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:
        f.truncate(pyfunc_model_max_bytes() + 1)  # sparse: no disk used
    return {"passwd": "/etc/passwd", "missing": "/etc/nonexistent-seqtrack", "dir": "/root",
            "zero": "/dev/zero", "fifo": str(fifo), "big": str(big)}


def pyfunc_model_max_bytes() -> int:
    from seqtrack_mlflow.data.frames import MAX_FRAME_BYTES
    return MAX_FRAME_BYTES


@pytest.mark.parametrize("kind", ["passwd", "missing", "dir", "zero", "fifo", "big"])
def test_a_served_model_reads_no_path_and_says_the_same_for_each(saved_model, tmp_path, monkeypatch, kind):
    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "true")
    model = mlflow.pyfunc.load_model(str(saved_model))
    path = _hostile_paths(tmp_path)[kind]
    frames, box = _frames(1)
    data = pyfunc_model.tracking_input([pyfunc_model.jpeg_data_uri(frames[0].read_bytes()), path], box)
    with pytest.raises(MlflowException) as info:
        model.predict(data)
    assert info.value.message == f"frame 1: {pyfunc_model.REFUSED_PATH}"
    assert path not in info.value.message


@pytest.mark.parametrize("kind", ["zero", "fifo", "big", "dir"])
def test_in_process_paths_are_regular_bounded_files_only(saved_model, tmp_path, monkeypatch, kind):
    monkeypatch.delenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", raising=False)
    model = mlflow.pyfunc.load_model(str(saved_model))
    frames, box = _frames(1)
    start = time.monotonic()
    with pytest.raises(MlflowException, match="not a regular file|larger than the limit|cannot read"):
        model.predict(pyfunc_model.tracking_input([frames[0], _hostile_paths(tmp_path)[kind]], box))
    assert time.monotonic() - start < 60  # refused before reading (a FIFO would block forever)


def test_frame_roots_allow_paths_under_them_only(saved_model, tmp_path, monkeypatch):
    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "true")
    frames, box = _frames(2)
    root = tmp_path / "frames"
    root.mkdir()
    for f in frames:
        shutil.copy(f, root / f.name)
    (root / "escape.jpg").symlink_to(frames[0])  # resolves outside the root
    model = mlflow.pyfunc.load_model(str(saved_model), model_config={"frame_roots": [str(root)]})
    out = model.predict(pyfunc_model.tracking_input([root / f.name for f in frames], box))
    assert len(out) == 2 and np.isfinite(out.values).all()
    with pytest.raises(MlflowException, match="not an allowed frame file"):
        model.predict(pyfunc_model.tracking_input([root / frames[0].name, root / "escape.jpg"], box))
    monkeypatch.setenv(pyfunc_model.FRAME_ROOTS_ENV, str(root))  # the operator's environment
    plain = mlflow.pyfunc.load_model(str(saved_model))
    assert len(plain.predict(pyfunc_model.tracking_input([root / f.name for f in frames], box))) == 2


@pytest.mark.slow
def test_mlflow_models_serve_refuses_server_files_without_detail(saved_model, tmp_path):
    """A real scoring server on 127.0.0.1 asked for /etc/passwd, /dev/zero and a FIFO: each reply
    is the same one line, with no stack trace, and comes back at once."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", None)
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", str(saved_model), "-h",
                               "127.0.0.1", "-p", str(port), "--env-manager", "local", "--workers", "1"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server, 180)
        frames, box = _frames(1)
        first = "data:image/jpeg;base64," + base64.b64encode(frames[0].read_bytes()).decode()
        replies = []
        for path in ("/etc/passwd", "/dev/zero", str(fifo)):
            body = json.dumps({"dataframe_records": [
                {"frame": first, "x": float(box[0]), "y": float(box[1]), "w": float(box[2]), "h": float(box[3])},
                {"frame": path, "x": None, "y": None, "w": None, "h": None}]}).encode()
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
            start = time.monotonic()
            try:
                urllib.request.urlopen(request, timeout=60).read()
                raise AssertionError(f"{path} was answered with boxes")
            except urllib.error.HTTPError as exc:
                reply = json.loads(exc.read())
            assert time.monotonic() - start < 60
            assert "stack_trace" not in reply, reply
            assert reply["message"].endswith(f"frame 1: {pyfunc_model.REFUSED_PATH}"), reply["message"]
            replies.append(reply["message"].split("Error: ")[-1])
        assert len(set(replies)) == 1
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait(timeout=30)


@pytest.mark.parametrize("frame, match", [
    ("data:image/jpeg;base64,@@@", "invalid base64"),
    ("data:image/jpeg,abc", "data URI must read"),
    (np.zeros((0, 0, 3), dtype=np.uint8), "H, W >= 1"),
    (np.zeros((4, 4), dtype=np.uint8), r"\(H, W, 3\)"),
    (3.5, "must be a path, a data URI or an"),
])
def test_malformed_frames_are_one_line_mlflow_errors(saved_model, frame, match):
    import pandas as pd

    model = mlflow.pyfunc.load_model(str(saved_model))
    frames, box = _frames(1)
    data = pyfunc_model.tracking_input([pyfunc_model.jpeg_data_uri(frames[0].read_bytes()), "x"], box)
    data = pd.DataFrame({"frame": pd.Series([data["frame"][0], frame], dtype=object),
                         **{c: data[c] for c in pyfunc_model.BOX_COLUMNS}})
    with pytest.raises(MlflowException, match=match) as info:
        model.predict(data)
    assert "\n" not in info.value.message


def test_malformed_tables_are_one_line_mlflow_errors(saved_model):
    import pandas as pd

    model = mlflow.pyfunc.load_model(str(saved_model))
    empty = {c: pd.Series([], dtype=float) for c in pyfunc_model.BOX_COLUMNS}
    with pytest.raises(MlflowException, match="no frames given") as info:
        model.predict(pd.DataFrame({"frame": pd.Series([], dtype=object), **empty}))
    assert "\n" not in info.value.message
    # A frame column of numbers is refused by the signature (frame: string) before predict runs.
    with pytest.raises(MlflowException, match="frame"):
        model.predict(pd.DataFrame({"frame": pd.Series([], dtype=float), **empty}))


@pytest.mark.parametrize("box", [(0, 0, 1e5, 1e5), (0, 0, 1e300, 1e300), (1e9, 0, 10, 10)])
def test_a_first_box_far_larger_than_the_frame_is_a_data_error(saved_model, box):
    model = mlflow.pyfunc.load_model(str(saved_model))
    frames, _ = _frames(2)
    with pytest.raises(MlflowException, match="does not fit a"):
        model.predict(pyfunc_model.tracking_input(frames, box))
    tracker = SeqTrackTracker(SeqTrack(CFG.model), TrackerConfig(template_size=32, search_size=64), torch.device("cpu"))
    with pytest.raises(DataError, match="does not fit a"):
        track_frames(tracker, (np.zeros((240, 320, 3), np.uint8) for _ in range(2)), np.array(box, float))


# -- 2. bounds before allocation -------------------------------------------------------------------
@pytest.mark.parametrize("change, match", [
    ({"embed_dim": 65536}, "model.embed_dim"),
    ({"bins": 1e9}, "model.bins"),
    ({"depth": 2000}, "model.depth"),
    ({"embed_dim": 1024, "depth": 24}, "missing key"),
    ({"embed_dim": 64}, "another shape"),
    ({"search_size": 100000}, "model.search_size"),
])
def test_an_exported_config_is_checked_before_the_network_is_built(exported, tmp_path, change, match):
    folder = tmp_path / "m"
    shutil.copytree(exported, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=match):
        SeqTrack.from_pretrained(folder)


@pytest.mark.parametrize("key, value", [("search_size", 100000), ("search_factor", 1e6), ("template_size", 0),
                                        ("search_size", "big")])
def test_tracker_settings_of_an_exported_config_are_bounded(exported, tmp_path, key, value):
    folder = tmp_path / "m"
    shutil.copytree(exported, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tracker": {**config["tracker"], key: value}}))
    path = tmp_path / "model"
    mlflow.pyfunc.save_model(str(path), python_model=pyfunc_model.__file__,
                             artifacts={pyfunc_model.WEIGHTS_ARTIFACT: str(folder)},
                             model_config=dataclasses.asdict(CFG.track), signature=signature())
    with pytest.raises(ConfigError, match=f"track.{key}"):
        mlflow.pyfunc.load_model(str(path))


def test_tracker_settings_given_at_load_are_bounded(saved_model):
    with pytest.raises(ConfigError, match="track.clip_margin"):
        mlflow.pyfunc.load_model(str(saved_model), model_config={"clip_margin": 0.5})


def test_a_checkpoint_whose_config_disagrees_with_its_weights_is_refused_before_building():
    state = _state()
    state["config"] = {**state["config"], "model": {**state["config"]["model"], "depth": 2000}}
    with pytest.raises(CheckpointError, match="model.depth"):
        model_from_checkpoint(state, "ckpt")
    state["config"] = {**state["config"], "model": {**CFG.to_dict()["model"], "depth": 12}}
    with pytest.raises(CheckpointError, match="missing key"):
        model_from_checkpoint(state, "ckpt")


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")) + "data: {classes: *i}\n"


def test_a_yaml_alias_bomb_is_refused_without_expanding_it(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB) < 1500
    with pytest.raises(ConfigError, match="expands to more than") as info:
        read_yaml(path)
    assert len(str(info.value)) < 300


def test_a_yaml_alias_bomb_stays_under_a_memory_bound(tmp_path):
    """The CLI in a subprocess whose address space is capped at 3 GiB: one error line, exit 2."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
            "from seqtrack_mlflow import cli\n"
            f"sys.exit(cli.main(['train', '--config', {str(path)!r}, '--print-config']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: config:") and "expands to more than" in lines[-1]
    assert "Traceback" not in done.stderr


def test_config_upper_bounds_name_the_key():
    for key, value in (("model.embed_dim", 65536), ("model.bins", 10**9), ("data.search_factor", 1e4),
                       ("train.batch_size", 10**7)):
        section, name = key.split(".")
        with pytest.raises(ConfigError, match=key):
            Config.from_dict({**TINY, section: {**TINY.get(section, {}), name: value}})


# -- 3. verified models ---------------------------------------------------------------------------
def test_a_swapped_weights_file_is_named_at_load(exported, tmp_path):
    ours, other = tmp_path / "ours", tmp_path / "other"
    shutil.copytree(exported, ours)
    export.export_pretrained(_state(seed=1), other)
    assert json.loads((ours / "config.json").read_text())["seqtrack_mlflow"]["weights_sha256"]
    SeqTrack.from_pretrained(ours)
    shutil.copy(other / "model.safetensors", ours / "model.safetensors")
    with pytest.raises(CheckpointError, match="differs from .* recorded in its config.json"):
        SeqTrack.from_pretrained(ours)


def test_export_writes_the_digest_of_the_file_it_wrote(exported):
    from seqtrack_mlflow.fsutil import sha256_file

    doc = json.loads((exported / "config.json").read_text())
    assert doc["seqtrack_mlflow"]["weights_sha256"] == sha256_file(exported / "model.safetensors")


# -- 8. one line for the rest ---------------------------------------------------------------------
def test_a_nan_line_in_cached_results_is_tracked_again(tmp_path):
    from seqtrack_mlflow.track.tracker import load_results, save_results

    save_results(tmp_path, "seq", np.ones((3, 4)), np.ones(3))
    path = tmp_path / "seq.txt"
    path.write_text("1,1,1,1\nnan,nan,nan,nan\n1,1,1,1\n")
    assert load_results(tmp_path, "seq", 3) is None


def test_garbage_in_the_sqlite_store_is_one_line(tmp_path, monkeypatch, capsys):
    db = tmp_path / "mlflow.db"
    db.write_bytes(os.urandom(4096))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    assert cli.main(["download", "--run-id", "0123456789abcdef0123456789abcdef", "--dest", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)


def test_http_timeouts_are_set_unless_the_user_set_them(monkeypatch):
    from seqtrack_mlflow.experiment import set_http_defaults

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    set_http_defaults()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "15"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"

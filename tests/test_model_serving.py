"""The registered model through MLflow's own clients: `mlflow models serve` answering CSV and
JSON bodies (a real scoring server on 127.0.0.1), and `mlflow models predict` in a virtualenv
that MLflow builds from the model's requirements and shipped code."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest
import torch

from seqtrack_mlflow import cli
from seqtrack_mlflow.data.lasot import LasotDataset
from seqtrack_mlflow.data.synthetic import ensure_sample_data
from seqtrack_mlflow.publish.pyfunc_model import FRAME_ROOTS_ENV, tracking_input
from tests.servers import free_port, wait_until_up
from tests.tiny import write_tiny_config

REPO = Path(__file__).resolve().parents[1]
MODEL = "models:/seqtrack-lasot@champion"
SERVER_START_S = 180  # the scoring server imports torch and loads the model first


@pytest.fixture
def champion(tmp_path, monkeypatch) -> tuple[list[str], list[float], list[list[float]]]:
    """A one-epoch tiny run registered as seqtrack-lasot@champion; (frame paths, first box,
    the boxes the model predicts for them in this process)."""
    monkeypatch.setenv("PYTHONHASHSEED", "8")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = write_tiny_config(tmp_path, train={"epochs": 1})
    assert cli.main(["train", "--config", str(config), "--output-dir", str(tmp_path / "out"), "--device", "cpu",
                     "--no-system-metrics"]) == 0
    torch.set_num_threads(threads)
    seq = LasotDataset(ensure_sample_data(), ("airplane",)).test[0]
    paths = [str(seq.frame_path(i)) for i in range(4)]
    box = [float(v) for v in seq.boxes[0]]
    expected = mlflow.pyfunc.load_model(MODEL).predict(tracking_input(paths, box)).values.tolist()
    return paths, box, expected


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # uvicorn
    return env


def _post(url: str, body: str, content_type: str) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _boxes(answer: str) -> list[float]:
    """The predicted boxes of a scoring answer, flattened (x, y, w, h per frame)."""
    rows = json.loads(answer)["predictions"]
    return [row[c] for row in rows for c in ("x", "y", "w", "h")]


@pytest.mark.slow
def test_served_model_answers_csv_and_json_bodies(champion, tmp_path):
    paths, box, expected = champion
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    # The operator lets the served model read the sample's frames (it reads no path otherwise).
    env = {**_env(), FRAME_ROOTS_ENV: str(Path(paths[0]).parents[2])}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", MODEL, "--env-manager", "local",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server, SERVER_START_S, tmp_path / "serve.log")
        url = f"http://127.0.0.1:{port}/invocations"
        # CSV: frame paths, the box in the first row, empty cells after it
        csv = "frame,x,y,w,h\n" + "\n".join(f"{p},{','.join(map(str, box))}" if i == 0 else f"{p},,,,"
                                            for i, p in enumerate(paths)) + "\n"
        status, answer = _post(url, csv, "text/csv")
        assert status == 200, answer
        assert _boxes(answer) == pytest.approx(sum(expected, []))
        # JSON (dataframe_split), missing boxes as null: what serving_input_example.json holds
        body = {"dataframe_split": {"columns": ["frame", "x", "y", "w", "h"],
                                    "data": [[p, *(box if i == 0 else [None] * 4)] for i, p in enumerate(paths)]}}
        status, answer = _post(url, json.dumps(body), "application/json")
        assert status == 200, answer
        assert _boxes(answer) == pytest.approx(sum(expected, []))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()


def _local_wheel_dirs() -> list[str]:
    """The folders of pip's find-links (PIP_FIND_LINKS, else pip's config) that hold the wheel of
    the running torch: a local CPU build that uv can take instead of PyPI's CUDA one."""
    folders = os.environ.get("PIP_FIND_LINKS", "").split()
    if not folders:
        done = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"],
                              capture_output=True, text=True, check=False)
        folders = done.stdout.split() if done.returncode == 0 else []
    wheel = f"torch-{torch.__version__}-*.whl"
    return [f for f in folders if Path(f).is_dir() and any(Path(f).glob(wheel))]


def _uv() -> str | None:
    try:
        import uv
    except ImportError:
        return shutil.which("uv")
    return uv.find_uv_bin()


@pytest.mark.slow
@pytest.mark.skipif(_uv() is None, reason="`--env-manager uv` needs uv (the `test` extra installs it)")
@pytest.mark.skipif(not _local_wheel_dirs(),
                    reason=f"no local wheel of torch {torch.__version__} in pip's find-links: uv would take "
                           "torch from PyPI, a multi-GB CUDA build on Linux")
def test_predict_rebuilds_the_environment_from_the_model_files(champion, tmp_path):
    """`mlflow models predict --env-manager uv` on the model's serving_input_example.json: MLflow
    builds a fresh virtualenv of the model's python_env.yaml Python with uv and installs the
    model's requirements.txt from the package index into it (no seqtrack_mlflow there: the
    package comes from the model's code/), then predicts; the boxes equal the in-process ones.

    uv, not the virtualenv manager: `mlflow models predict --env-manager virtualenv` installs
    CPython with pyenv into a new pyenv root per call (`pyenv install` downloads the source from
    www.python.org), which machines reaching only the package registries cannot do; uv takes the
    installed interpreter of the same version (the running one's base, put on PATH) and is told
    never to download one. torch is constrained to the running build and found in pip's local
    find-links folder, so uv never downloads a CUDA torch."""
    from mlflow.artifacts import download_artifacts

    model = mlflow.pyfunc.load_model(MODEL)
    expected = model.predict(model.input_example).values.tolist()
    example = Path(download_artifacts(f"{MODEL}/serving_input_example.json", dst_path=str(tmp_path)))
    (tmp_path / "constraints.txt").write_text(f"torch=={torch.__version__}\n")
    env = _env()
    env.pop("PYTHONPATH")  # the environment MLflow builds must not see this checkout
    env["PATH"] = os.pathsep.join([str(Path(_uv()).parent), str(Path(sys.base_prefix) / "bin"), env["PATH"]])
    env.update(UV_FIND_LINKS=" ".join(_local_wheel_dirs()), UV_CONSTRAINT=str(tmp_path / "constraints.txt"),
               UV_PYTHON_DOWNLOADS="never", UV_CACHE_DIR=str(REPO / ".pytest_cache" / "uv-cache"),
               TMPDIR=str(tmp_path))  # MLflow builds the environment in a temporary folder
    done = subprocess.run([sys.executable, "-m", "mlflow", "models", "predict", "-m", MODEL, "-i", str(example),
                           "-t", "json", "-o", str(tmp_path / "out.json"), "--env-manager", "uv"],
                          env=env, capture_output=True, text=True, timeout=1800, check=False)
    log = done.stdout + done.stderr
    (tmp_path / "predict.log").write_text(log)
    assert done.returncode == 0, log[-4000:]
    assert _boxes((tmp_path / "out.json").read_text()) == pytest.approx(sum(expected, []))
    installed = {line.split()[1].split("==")[0]: line.split("==")[1] for line in log.splitlines()
                 if line.startswith(" + ") and "==" in line}  # uv's list of what it installed
    assert installed["torch"] == torch.__version__ and installed["mlflow"] == mlflow.__version__, log[-4000:]
    assert "seqtrack-mlflow" not in installed and not any(p.startswith("nvidia-") for p in installed)

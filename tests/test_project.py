"""The MLproject file, its entry points and the command line around them."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from mlflow.projects import _project_spec  # mlflow's own MLproject loader

from seqtrack_mlflow import cli
from seqtrack_mlflow.errors import NotImplementedYet

from .conftest import REPO

EXPECTED = {
    "main": {"epochs": ("int", 5), "seed": ("int", 8), "batch_size": ("int", 16),
             "workers": ("int", 1), "nproc": ("int", 1), "patch_size": ("int", 8),
             "classes": ("string", "airplane,bicycle"), "data": ("string", "sample"),
             "data_dir": ("string", ""), "config": ("string", "configs/default.yaml"),
             "device": ("string", "auto"), "precision": ("string", "fp32"),
             "resume": ("string", ""), "samples_per_epoch": ("int", 0)},
    "mirror": {"run_id": ("string", ""), "repo_id": ("string", "hossamaladdin/Assignment3"),
               "private": ("string", "false"), "revision": ("string", ""), "dry_run": ("string", "false")},
    "evaluate": {"run_id": ("string", ""), "checkpoint": ("string", ""), "epoch": ("string", "best")},
    "download": {"run_id": ("string", None), "artifact_path": ("string", ""),
                 "dest": ("string", "downloads")},
}


def test_mlproject_parses_with_mlflow_and_has_the_promised_parameters():
    project = _project_spec.load_project(str(REPO))
    assert project.env_type == "python_env"
    for name, params in EXPECTED.items():
        entry = project.get_entry_point(name)
        got = {p.name: (p.type, p.default) for p in entry.parameters.values()}
        assert got == params, name


def test_no_conda_env_and_python_env_pins_torch():
    spec = yaml.safe_load((REPO / "MLproject").read_text())
    assert "conda_env" not in spec and spec["python_env"] == "python_env.yaml"
    env = yaml.safe_load((REPO / "python_env.yaml").read_text())
    assert env["python"] == "3.11.7" and "torch==2.13.0" in env["dependencies"]
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip_deps = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert sorted(pip_deps) == sorted(env["dependencies"])


def test_main_entry_point_command_resolves_to_the_default_config(tmp_path):
    """Render the MLproject command exactly as `mlflow run` would, then ask it for its config."""
    entry = _project_spec.load_project(str(REPO)).get_entry_point("main")
    command = entry.compute_command({"epochs": "3"}, str(tmp_path))
    assert command.startswith("PYTHONHASHSEED=8 ")
    out = subprocess.run(command + " --print-config", shell=True, cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    resolved = yaml.safe_load(out)
    assert resolved["train"]["epochs"] == 3 and resolved["seed"] == 8
    assert resolved["model"]["patch_size"] == 8 and resolved["data"]["samples_per_epoch"] == 2000
    assert resolved["data"]["classes"] == ["airplane", "bicycle"]


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seqtrack_mlflow", *args], cwd=REPO,
                          capture_output=True, text=True, env={"PYTHONPATH": str(REPO / "src"),
                                                               "PATH": "/usr/bin:/bin"})


def test_help_lists_every_command():
    result = _run_cli("--help")
    assert result.returncode == 0
    for command in ("train", "summary", "mirror", "fetch-hub", "evaluate", "download"):
        assert command in result.stdout


@pytest.mark.parametrize("args,words", [
    (["--epochs", "-1"], ["train.epochs", "-1"]),
    (["--batch-size", "abc"], ["train.batch_size", "abc"]),
    (["--classes", "airplane,dragon"], ["dragon"]),
    (["--device", "gpu"], ["train.device", "gpu"]),
    (["--patch-size", "6"], ["model.patch_size=6"]),
    (["--set", "model.depth"], ["KEY=VALUE"]),
])
def test_bad_train_flags_exit_2_with_one_line(args, words):
    result = _run_cli("train", "--print-config", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0]


def test_a_missing_module_is_reported_as_not_implemented():
    with pytest.raises(NotImplementedYet, match="not implemented yet"):
        cli._import("seqtrack_mlflow.no_such_module", "frobnicate")

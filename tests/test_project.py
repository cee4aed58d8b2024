"""The MLproject file, its entry points and the command line around them."""

from __future__ import annotations

import subprocess
import sys

import pytest
import tomllib
import yaml
from mlflow.projects import _project_spec  # mlflow's own MLproject loader

from seqtrack_mlflow.config import load_config
from seqtrack_mlflow.names import DEFAULT_HUB_REPO

from .conftest import REPO

NOT_GIVEN = ("string", "")  # "" = keep the preset's value
EXPECTED = {
    "main": {"config": ("string", "default"),
             **{name: NOT_GIVEN for name in ("epochs", "seed", "batch_size", "workers", "nproc", "patch_size",
                                              "classes", "data", "data_dir", "device", "precision", "resume", "init",
                                              "samples_per_epoch", "run_name", "experiment_name",
                                              "system_metrics", "log_models", "force_champion")}},
    "mirror": {"run_id": NOT_GIVEN, "repo_id": ("string", DEFAULT_HUB_REPO),
               "private": ("string", "false"), "revision": NOT_GIVEN, "dry_run": ("string", "false")},
    "evaluate": {"run_id": NOT_GIVEN, "checkpoint": NOT_GIVEN, "epoch": ("string", "best"),
                 "data": NOT_GIVEN, "classes": NOT_GIVEN, "data_dir": NOT_GIVEN,
                 "other_data": ("string", "false"), "device": NOT_GIVEN},
    "download": {"run_id": NOT_GIVEN, "artifact_path": NOT_GIVEN, "dest": ("string", "downloads")},
}


def test_mlproject_parses_with_mlflow_and_has_the_promised_parameters():
    project = _project_spec.load_project(str(REPO))
    assert project.env_type == "python_env"
    for name, params in EXPECTED.items():
        entry = project.get_entry_point(name)
        got = {p.name: (p.type, p.default) for p in entry.parameters.values()}
        assert got == params, name


def test_one_default_hub_repo():
    """The repo the CLI, the MLproject and the default preset publish to is names.DEFAULT_HUB_REPO
    (the MLproject and YAML cannot import it, so they are checked against it)."""
    from seqtrack_mlflow.cli import build_parser

    assert DEFAULT_HUB_REPO == "hossamaladdin/Assignment3"  # the assignment's repo
    assert load_config("default").hub.repo_id == DEFAULT_HUB_REPO
    for command in (["mirror"], ["fetch-hub", "--epoch", "1"]):
        assert build_parser().parse_args(command).repo_id == DEFAULT_HUB_REPO


def test_environments_install_the_project_whose_dependencies_pin_torch():
    """One dependency list (pyproject.toml); the MLflow environments install the project itself."""
    spec = yaml.safe_load((REPO / "MLproject").read_text())
    assert "conda_env" not in spec and spec["python_env"] == "python_env.yaml"
    env = yaml.safe_load((REPO / "python_env.yaml").read_text())
    assert env["python"] == "3.11.7" and env["dependencies"] == ["."]
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    assert next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict)) == ["."]
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.13.0" in deps  # a looser range pulls a multi-GB CUDA build here


def test_main_entry_point_command_resolves_to_the_default_config(tmp_path):
    """Render the MLproject command exactly as `mlflow run` would, then ask it for its config."""
    entry = _project_spec.load_project(str(REPO)).get_entry_point("main")
    command = entry.compute_command({"epochs": "3"}, str(tmp_path))
    assert "PYTHONPATH" not in command  # runs the installed package
    out = subprocess.run(command + " --print-config", shell=True, cwd=tmp_path, check=True,
                         capture_output=True, text=True).stdout
    resolved = yaml.safe_load(out)
    assert resolved["train"]["epochs"] == 3 and resolved["seed"] == 8
    assert resolved["model"]["patch_size"] == 8
    assert resolved["data"]["samples_per_epoch"] == load_config("default").data.samples_per_epoch
    assert resolved["data"]["classes"] == ["airplane", "bicycle"]
    assert resolved["train"]["precision"] == "auto"  # resolved (bf16 or fp32) when training starts


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
    (["--patch-size", "7"], ["model.patch_size=7"]),
    (["--set", "model.depth"], ["KEY=VALUE"]),
])
def test_bad_train_flags_exit_2_with_one_line(args, words):
    result = _run_cli("train", "--print-config", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0]


def test_b256_preset_through_the_mlproject_command_is_not_masked_by_defaults(tmp_path):
    entry = _project_spec.load_project(str(REPO)).get_entry_point("main")
    command = entry.compute_command({"config": "seqtrack_b256"}, str(tmp_path))
    out = subprocess.run(command + " --print-config", shell=True, cwd=tmp_path, check=True,
                         capture_output=True, text=True).stdout
    resolved = yaml.safe_load(out)
    assert resolved["model"]["patch_size"] == 16 and resolved["model"]["search_size"] == 256
    assert resolved["data"]["source"] == "lasot" and resolved["train"]["workers"] == 8


def test_each_command_lists_only_its_own_flags_with_defaults():
    evaluate = _run_cli("evaluate", "--help").stdout
    assert "--run-id" in evaluate and "--epoch " in evaluate and "(default: best)" in evaluate
    assert "--other-data" in evaluate and "(default: the evaluated model's training data)" in " ".join(evaluate.split())
    for foreign in ("--epochs", "--batch-size", "--resume", "--seed"):
        assert foreign not in evaluate
    summary = _run_cli("summary", "--help").stdout
    assert "--classes" in summary and "--epochs" not in summary and "--run-id" not in summary
    train = _run_cli("train", "--help").stdout
    assert "(default: the preset's value)" in train and "(default: default)" in train

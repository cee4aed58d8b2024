"""Shared fixtures. Every test runs offline against a temporary sqlite MLflow store."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Set before mlflow or huggingface_hub is imported anywhere in the test session.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.pop("HF_TOKEN", None)


@pytest.fixture(scope="session")
def empty_tracking_db(tmp_path_factory) -> Path:
    """An initialised, empty sqlite store. Creating one runs ~6 s of schema migrations, so it
    is made once and copied for each test. Its Default experiment keeps artifacts in this
    session folder (never in the repository's mlruns/)."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlflow-template")
    db = root / "mlflow.db"
    previous = os.getcwd()
    os.chdir(root)  # the Default experiment's artifact location is ./mlruns at creation
    try:
        MlflowClient(f"sqlite:///{db}").search_experiments()
    finally:
        os.chdir(previous)
    return db


@pytest.fixture(autouse=True)
def tracking_uri(tmp_path_factory, monkeypatch, empty_tracking_db) -> str:
    """A fresh sqlite tracking store for every test."""
    root = tmp_path_factory.mktemp("mlflow")
    shutil.copy(empty_tracking_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("HF_HOME", str(root / "hf_home"))
    reset_active_experiment(monkeypatch)
    # One sample-data cache per test session: generated once, shared by every test.
    monkeypatch.setenv("SEQTRACK_CACHE", str(tmp_path_factory.getbasetemp() / "seqtrack_cache"))
    return uri


def new_store(tmp_path_factory, empty_tracking_db, name: str) -> Path:
    """A folder holding a fresh copy of the empty store, for a module whose tests share runs."""
    root = tmp_path_factory.mktemp(name)
    shutil.copy(empty_tracking_db, root / "mlflow.db")
    return root


def use_store(monkeypatch, tmp_path_factory, store: Path) -> str:
    """Point this test at a shared store (a module's `tracking_uri` override), with the
    test run's sample-data cache and a Hugging Face home inside the store's folder."""
    uri = f"sqlite:///{store / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SEQTRACK_CACHE", str(tmp_path_factory.getbasetemp() / "seqtrack_cache"))
    monkeypatch.setenv("HF_HOME", str(store / "hf_home"))
    return uri


@pytest.fixture(autouse=True)
def forget_experiment_env():
    """Kept apart from `tracking_uri`, which some test files override: whatever experiment a
    test made active (mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID) stays with it."""
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    yield
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def reset_active_experiment(monkeypatch) -> None:
    """`mlflow.set_experiment` (e.g. in test_mirror) leaves an experiment active for the rest of
    the session; with a fresh store, a later test would then fail with "No Experiment with id=N
    exists". Make the new store's Default experiment the active one (public API)."""
    import mlflow

    mlflow.set_experiment(experiment_name="Default")
    # set_experiment also exports MLFLOW_EXPERIMENT_ID; popped, not monkeypatched: monkeypatch
    # would put a leaked value back after the test, where a module-scoped fixture of the next
    # file could hand it to a child process.
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)

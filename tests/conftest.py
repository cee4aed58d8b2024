"""Shared fixtures. Every test runs offline against a temporary sqlite MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Set before mlflow or huggingface_hub is imported anywhere in the test session.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.pop("HF_TOKEN", None)


@pytest.fixture(autouse=True)
def tracking_uri(tmp_path_factory, monkeypatch) -> str:
    """A fresh sqlite tracking store (artifacts beside it) for every test."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ARTIFACT_ROOT", str(root / "artifacts"))
    monkeypatch.setenv("HF_HOME", str(root / "hf_home"))
    # One sample-data cache per test session: generated once, shared by every test.
    monkeypatch.setenv("SEQTRACK_CACHE", str(tmp_path_factory.getbasetemp() / "seqtrack_cache"))
    return uri

"""Fixtures of the trainer tests. A real local MLflow store per test: MLflow's schema set-up takes
seconds, so one initialised `mlflow.db` is made per module and copied into each test's data directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from trainer.tracking import client_for


@pytest.fixture(scope="module")
def blank_store(tmp_path_factory) -> Path:
    """An initialised mlflow.db (MLflow's schema set-up takes seconds: done once, copied per test)."""
    folder = tmp_path_factory.mktemp("mlflow-template")
    client_for(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder / "mlflow.db"


@pytest.fixture
def data_dir(blank_store, tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(blank_store, folder / "mlflow.db")
    return folder

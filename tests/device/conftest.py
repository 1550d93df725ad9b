"""Fixtures for the device tests that need the real default bundle (BirdNET with its context
outputs, and the frog head): built once per session, copied per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import fresh_home


@pytest.fixture(scope="session")
def default_home_template(tmp_path_factory) -> Path:
    """A data home holding the real `elsilencio-default` bundle, active (about 15 s to build:
    convert, slice, LiteRT and fusion checks, sign)."""
    from device.home import ExplorerHome
    from exporter.default_bundle import build_default_bundle

    home = ExplorerHome.resolve(tmp_path_factory.mktemp("default-home-template")).ensure()
    build_default_bundle(home, progress=lambda line: None)
    return home.root


@pytest.fixture
def default_home(default_home_template, tmp_path, monkeypatch):
    """A fresh data home for this test with the default bundle active; $EXPLORER_HOME points at it."""
    return fresh_home(default_home_template, tmp_path, monkeypatch)

"""Fixtures shared by every test: where the real recordings are, and a clean data home."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's real recordings and metadata (read-only; never write here)."""
    if not (SHARED_DATA / "recordings.csv").is_file():
        pytest.fail(f"the shared recordings are missing: expected them at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return EXAMPLES


@pytest.fixture(autouse=True)
def no_developer_home(tmp_path_factory, monkeypatch):
    """Keep the developer's own $EXPLORER_HOME (config, database, keys) out of every test."""
    monkeypatch.setenv("EXPLORER_HOME", str(tmp_path_factory.mktemp("explorer-home")))


@pytest.fixture(scope="session")
def demo_home_template(tmp_path_factory) -> Path:
    """A data home holding the demo bundle (built once per test session), its key and trust list."""
    from device.home import ExplorerHome
    from exporter.demo_bundle import build_demo_bundle

    home = ExplorerHome.resolve(tmp_path_factory.mktemp("demo-home-template")).ensure()
    build_demo_bundle(home)
    return home.root


@pytest.fixture
def device_home(demo_home_template, tmp_path, monkeypatch):
    """A fresh data home for this test, with the demo bundle active; $EXPLORER_HOME points at it."""
    return fresh_home(demo_home_template, tmp_path, monkeypatch)


def fresh_home(template: Path, tmp_path: Path, monkeypatch):
    """A copy of the data home `template` for one test, with $EXPLORER_HOME pointing at it."""
    import shutil

    from device.home import ExplorerHome

    root = tmp_path / "home"
    shutil.copytree(template, root, symlinks=True)
    monkeypatch.setenv("EXPLORER_HOME", str(root))
    return ExplorerHome.resolve(root)


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

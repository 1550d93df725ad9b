"""A real signed bundle (the demo bundle, built once) and fresh copies of it per test."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from device.home import ExplorerHome


@dataclass(frozen=True)
class BundleCopy:
    path: Path
    """A copy of the demo bundle directory this test may tamper with."""
    trust_dir: Path
    """A trust directory holding only the key that signed it."""
    private_key: Path
    """That signing key (outside the bundle)."""


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory) -> tuple[Path, Path, Path]:
    from exporter.demo_bundle import build_demo_bundle

    home = ExplorerHome.resolve(tmp_path_factory.mktemp("bundle-source-home"))
    path = build_demo_bundle(home)
    return path, home.trusted_keys, home.signing_keys / "dev-local.key"


@pytest.fixture
def bundle_copy(demo_build, tmp_path) -> BundleCopy:
    path, trust_dir, private_key = demo_build
    copy = tmp_path / "bundle" / path.name
    shutil.copytree(path, copy)
    trust = tmp_path / "trusted"
    shutil.copytree(trust_dir, trust)
    return BundleCopy(copy, trust, private_key)

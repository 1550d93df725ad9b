"""Resolving, verifying and loading the bundle a command should run."""

from __future__ import annotations

from pathlib import Path

from device.bundle.manifest import BundleError
from device.bundle.verify import VerifiedBundle, verify_bundle
from device.home import ExplorerHome


def resolve_bundle_dir(home: ExplorerHome, bundle_dir: Path | str | None) -> Path:
    """The bundle named on the command line, else the active one."""
    if bundle_dir:
        return Path(bundle_dir)
    active = home.active_bundle()
    if active is None:
        raise BundleError(
            f"no active bundle in {home.bundles} (build the demo one with `explorer export demo-bundle`, "
            "install one with `explorer bundle install`, or pass --bundle DIR)"
        )
    return active


def load_verified(home: ExplorerHome, bundle_dir: Path | str | None) -> VerifiedBundle:
    """Verify (schema, hashes, signature against the home's trust list) the bundle to run."""
    return verify_bundle(resolve_bundle_dir(home, bundle_dir), home.trusted_keys)


def load_engine(home: ExplorerHome, bundle_dir: Path | str | None, threads: int = 0):
    """A ready Engine for the verified bundle (sessions open, inputs checked)."""
    from device.engine.engine import Engine

    return Engine(load_verified(home, bundle_dir), threads=threads)

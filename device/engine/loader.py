"""Resolving, verifying and loading the bundle a command should run."""

from __future__ import annotations

from pathlib import Path

from device.bundle.manifest import BundleError
from device.bundle.verify import VerifiedBundle, verify_bundle
from device.home import ExplorerHome


NO_ACTIVE_BUNDLE = (
    "no active bundle in {bundles}: build and activate the El Silencio model with "
    "`explorer export default-bundle` (about 10 s), install a signed one with `explorer bundle install`, "
    "or pass --bundle DIR (`explorer export demo-bundle` builds a small 15-taxon model for tests)"
)
"""What a fresh data directory is told. The product's model comes first; the demo bundle is
only for tests, so it is named last and for what it is."""


def resolve_bundle_dir(home: ExplorerHome, bundle_dir: Path | str | None) -> Path:
    """The bundle named on the command line, else the active one.

    Raises:
        BundleError: none named and none active (the message says how to get one).
    """
    if bundle_dir:
        return Path(bundle_dir)
    active = home.active_bundle()
    if active is None:
        raise BundleError(NO_ACTIVE_BUNDLE.format(bundles=home.bundles))
    return active


def load_verified(home: ExplorerHome, bundle_dir: Path | str | None) -> VerifiedBundle:
    """Verify (schema, hashes, signature against the home's trust list) the bundle to run."""
    return verify_bundle(resolve_bundle_dir(home, bundle_dir), home.trusted_keys)


def load_engine(home: ExplorerHome, bundle_dir: Path | str | None, threads: int = 0):
    """A ready Engine for the verified bundle (sessions open, inputs checked)."""
    from device.engine.engine import Engine

    return Engine(load_verified(home, bundle_dir), threads=threads)

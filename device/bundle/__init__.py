"""The model bundle: the contract every part of the system shares (manifest, files, signature)."""

from device.bundle.manifest import BundleError, Manifest, parse_manifest, read_manifest
from device.bundle.verify import VerifiedBundle, verify_bundle

__all__ = ["BundleError", "Manifest", "VerifiedBundle", "parse_manifest", "read_manifest", "verify_bundle"]

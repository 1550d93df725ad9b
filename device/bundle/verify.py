"""Hashes, ed25519 signatures and the device's trust list.

The signature (`manifest.sig.json`) covers the exact bytes of `manifest.json`, and the
manifest pins the sha256 of every other file, so one signature covers the whole bundle.
Public keys the device trusts are one-line files in a trust directory
(`$EXPLORER_HOME/keys/trusted/*.pub`), each `ed25519 <base64 raw key> [comment]`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device.bundle.manifest import MANIFEST_FILE, SIGNATURE_FILE, BundleError, Manifest, read_manifest

_HASH_BLOCK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def key_id(raw_public_key: bytes) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its sha256."""
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    public_key: Ed25519PublicKey
    comment: str
    path: Path


def format_public_key(raw_public_key: bytes, comment: str = "") -> str:
    """The one-line text form of a trusted key file."""
    line = "ed25519 " + base64.b64encode(raw_public_key).decode("ascii")
    return (line + " " + comment).strip() + "\n"


def parse_public_key(text: str, where: str) -> tuple[bytes, str]:
    parts = text.strip().split(maxsplit=2)
    if len(parts) < 2 or parts[0] != "ed25519":
        raise BundleError(f"{where}: expected 'ed25519 <base64 key> [comment]'")
    try:
        raw = base64.b64decode(parts[1], validate=True)
    except binascii.Error:
        raise BundleError(f"{where}: the key is not base64") from None
    if len(raw) != 32:
        raise BundleError(f"{where}: an ed25519 public key is 32 bytes, this one is {len(raw)}")
    return raw, parts[2] if len(parts) > 2 else ""


def load_trust_list(trust_dir: Path) -> dict[str, TrustedKey]:
    """Every `*.pub` key in `trust_dir`, by key id. A malformed key file is refused, not skipped."""
    keys: dict[str, TrustedKey] = {}
    if not Path(trust_dir).is_dir():
        return keys
    for path in sorted(Path(trust_dir).glob("*.pub")):
        raw, comment = parse_public_key(path.read_text(encoding="utf-8", errors="replace"), str(path))
        keys[key_id(raw)] = TrustedKey(key_id(raw), Ed25519PublicKey.from_public_bytes(raw), comment, path)
    return keys


def check_files(bundle_dir: Path, manifest: Manifest) -> None:
    """Every file the manifest pins exists and matches its sha256, and nothing else is there.

    An unpinned file is refused because nothing vouches for it: a bundle is exactly what
    its signed manifest lists.
    """
    allowed = set(manifest.files()) | {MANIFEST_FILE, SIGNATURE_FILE}
    extra = sorted(p.name for p in Path(bundle_dir).iterdir() if p.name not in allowed)
    if extra:
        raise BundleError(f"{bundle_dir}: holds files the manifest does not pin: {extra[:5]}")
    for name, expected in manifest.files().items():
        path = Path(bundle_dir) / name
        if not path.is_file():
            raise BundleError(f"{path}: missing (the manifest pins it)")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(f"{path}: sha256 {actual[:12]}... does not match the manifest's {expected[:12]}...")


def check_signature(bundle_dir: Path, trusted: dict[str, TrustedKey]) -> TrustedKey:
    """The manifest's detached signature verifies under a trusted key; returns that key."""
    sig_path = Path(bundle_dir) / SIGNATURE_FILE
    if not sig_path.is_file():
        raise BundleError(f"{sig_path}: missing (the bundle is unsigned)")
    try:
        envelope = json.loads(sig_path.read_text(encoding="utf-8"))
        algorithm, signer, signature_b64 = envelope["algorithm"], envelope["key_id"], envelope["signature"]
        signature = base64.b64decode(signature_b64, validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise BundleError(f"{sig_path}: malformed signature envelope ({exc})") from None
    if algorithm != "ed25519":
        raise BundleError(f"{sig_path}: algorithm {algorithm!r} is not ed25519")
    if signer not in trusted:
        known = ", ".join(sorted(trusted)) or "none"
        raise BundleError(f"{sig_path}: signed by key {signer}, which this device does not trust (trusted: {known})")
    key = trusted[signer]
    try:
        key.public_key.verify(signature, (Path(bundle_dir) / MANIFEST_FILE).read_bytes())
    except InvalidSignature:
        raise BundleError(f"{sig_path}: the signature does not match manifest.json under key {signer}") from None
    return key


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose manifest parsed, whose files match and whose signature a trusted key made."""

    path: Path
    manifest: Manifest
    sha256: str
    """sha256 of manifest.json: the bundle's identity in detections and logs."""
    signer: TrustedKey


def verify_bundle(bundle_dir: Path, trust_dir: Path) -> VerifiedBundle:
    """Parse, hash-check and signature-check a bundle directory.

    Raises:
        BundleError: naming what is wrong (schema, labels, a file's hash, the signature, the signer).
    """
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    check_files(bundle_dir, manifest)
    signer = check_signature(bundle_dir, load_trust_list(trust_dir))
    return VerifiedBundle(bundle_dir.resolve(), manifest, sha256_file(bundle_dir / MANIFEST_FILE), signer)

"""Ed25519 key pairs and the manifest signature the device verifies (device/bundle/verify.py).

The private key is the one secret of the model channel: whoever holds it can make every
device run their model. So it is written with mode 0600, never overwritten, and never
inside a bundle directory or a git working tree (a `git add .` or a tarred bundle would
leak it). The public key is written in the device's trust-list format, ready to copy
into `$EXPLORER_HOME/keys/trusted/` on a Pi.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.bundle.manifest import MANIFEST_FILE, SIGNATURE_FILE
from device.bundle.verify import format_public_key, key_id, parse_public_key

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class SigningError(ValueError):
    """A key operation refused; the message names the path and the reason."""


def _enclosing_git_tree(path: Path) -> Path | None:
    """The working tree `path` lies in (a parent holding `.git`), or None."""
    for parent in (path, *path.parents):
        if (parent / ".git").exists():
            return parent
    return None


def _enclosing_bundle(path: Path) -> Path | None:
    for parent in (path, *path.parents):
        if (parent / MANIFEST_FILE).is_file() or (parent / SIGNATURE_FILE).is_file():
            return parent
    return None


def check_private_key_location(directory: Path) -> None:
    """Refuse a directory where a private key could travel with code or with a bundle.

    Raises:
        SigningError: `directory` is inside a git working tree or a bundle directory.
    """
    directory = Path(directory).expanduser().resolve()
    tree = _enclosing_git_tree(directory)
    if tree is not None:
        raise SigningError(
            f"{directory}: inside the git working tree {tree}; a private key there could be committed "
            "(keep signing keys outside the repository, e.g. the default $EXPLORER_HOME/keys/signing)"
        )
    bundle = _enclosing_bundle(directory)
    if bundle is not None:
        raise SigningError(f"{directory}: inside the bundle {bundle}; a private key must never ship in a bundle")


def generate_keypair(out_dir: Path, name: str) -> tuple[Path, Path]:
    """Make an ed25519 key pair: `<name>.key` (PKCS#8 PEM, mode 0600) and `<name>.pub`.

    The public file is the one-line trust-list form (`ed25519 <base64> <name>`).

    Raises:
        SigningError: a bad name, an unsafe directory, or a key of that name already there.
    """
    if not _KEY_NAME.match(name):
        raise SigningError(f"{name!r}: a key name is letters, digits, '.', '_' or '-' (at most 64)")
    out_dir = Path(out_dir).expanduser()
    check_private_key_location(out_dir)
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_path, public_path = out_dir / (name + PRIVATE_SUFFIX), out_dir / (name + PUBLIC_SUFFIX)
    for path in (private_path, public_path):
        if path.exists():
            raise SigningError(f"{path}: already exists; a key is never overwritten (choose another --name)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    # O_EXCL: never follow or clobber something that appeared meanwhile; 0600 from birth.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public_path.write_text(format_public_key(public_bytes(key), name), encoding="utf-8")
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a PEM (PKCS#8) or 32-byte raw ed25519 private key.

    Raises:
        SigningError: the file is missing or is not an unencrypted ed25519 private key.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"{path}: cannot read the private key ({exc.strerror})") from None
    if len(data) == 32:
        return Ed25519PrivateKey.from_private_bytes(data)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: a {type(key).__name__}, not an ed25519 key")
    return key


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signer_key_id(private_key_path: Path) -> str:
    """The key id (device.bundle.verify.key_id) a bundle signed with this key will carry."""
    return key_id(public_bytes(load_private_key(private_key_path)))


def sign_manifest(bundle_dir: Path, private_key_path: Path) -> Path:
    """Sign the exact bytes of `bundle_dir/manifest.json` into `manifest.sig.json`.

    Raises:
        SigningError: the key lies inside the bundle, or the manifest is missing.
    """
    bundle_dir, private_key_path = Path(bundle_dir).resolve(), Path(private_key_path).resolve()
    if bundle_dir == private_key_path.parent or bundle_dir in private_key_path.parents:
        raise SigningError(f"{private_key_path}: the private key lies inside the bundle {bundle_dir}")
    manifest_path = bundle_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise SigningError(f"{manifest_path}: missing; write the manifest before signing it")
    key = load_private_key(private_key_path)
    envelope = {
        "algorithm": "ed25519",
        "key_id": key_id(public_bytes(key)),
        "signature": base64.b64encode(key.sign(manifest_path.read_bytes())).decode("ascii"),
    }
    sig_path = bundle_dir / SIGNATURE_FILE
    tmp = sig_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(envelope, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, sig_path)
    return sig_path


def install_public_key(public_key_path: Path, trust_dir: Path) -> Path:
    """Copy a trust-list key file into `trust_dir` as `<key id>.pub` (idempotent).

    Raises:
        BundleError: the file is not a one-line ed25519 public key.
    """
    public_key_path = Path(public_key_path)
    raw, comment = parse_public_key(public_key_path.read_text(encoding="utf-8"), str(public_key_path))
    return trust_raw_key(raw, trust_dir, comment)


def trust_raw_key(raw_public_key: bytes, trust_dir: Path, comment: str = "") -> Path:
    """Write `<key id>.pub` for a raw 32-byte public key into `trust_dir` (idempotent)."""
    trust_dir = Path(trust_dir)
    trust_dir.mkdir(parents=True, exist_ok=True)
    target = trust_dir / (key_id(raw_public_key) + PUBLIC_SUFFIX)
    if not target.exists():
        tmp = target.with_suffix(".tmp")
        tmp.write_text(format_public_key(raw_public_key, comment), encoding="utf-8")
        os.replace(tmp, target)
    return target

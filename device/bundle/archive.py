"""Bundles travel as a `.tar` of their directory; this packs and safely unpacks one."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path

from device.bundle.manifest import MANIFEST_FILE, BundleError

# A bundle is a handful of files; anything far bigger is not one of ours.
MAX_MEMBERS = 64
MAX_UNPACKED_BYTES = 2 << 30


def pack_bundle(bundle_dir: Path, tar_path: Path) -> Path:
    """Write `bundle_dir`'s files (flat, no directories) into an uncompressed tar."""
    bundle_dir, tar_path = Path(bundle_dir), Path(tar_path)
    tmp = tar_path.with_suffix(tar_path.suffix + ".part")
    with tarfile.open(tmp, "w") as tar:
        for path in sorted(bundle_dir.iterdir()):
            if path.is_file():
                tar.add(path, arcname=path.name, recursive=False)
    tmp.replace(tar_path)
    return tar_path


def unpack_bundle(tar_path: Path, dest_dir: Path) -> Path:
    """Unpack a bundle tar into `dest_dir` (which must not exist), refusing anything but flat files.

    Raises:
        BundleError: the tar is unreadable, holds paths, links or devices, or is implausibly large.
    """
    tar_path, dest_dir = Path(tar_path), Path(dest_dir)
    if dest_dir.exists():
        raise BundleError(f"{dest_dir}: already exists")
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            members = tar.getmembers()
            if len(members) > MAX_MEMBERS:
                raise BundleError(f"{tar_path}: {len(members)} members is more than a bundle holds")
            total = 0
            for member in members:
                if not member.isfile() or "/" in member.name or member.name in ("", ".", ".."):
                    raise BundleError(f"{tar_path}: member {member.name!r} is not a plain top-level file")
                total += member.size
            if total > MAX_UNPACKED_BYTES:
                raise BundleError(f"{tar_path}: unpacks to {total} bytes, more than a bundle may")
            if MANIFEST_FILE not in {m.name for m in members}:
                raise BundleError(f"{tar_path}: holds no {MANIFEST_FILE}")
            staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest_dir.parent))
            try:
                for member in members:
                    source = tar.extractfile(member)
                    with open(staging / member.name, "wb") as out:
                        shutil.copyfileobj(source, out)
                staging.replace(dest_dir)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{tar_path}: not a readable bundle tar ({exc})") from None
    return dest_dir

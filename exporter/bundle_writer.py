"""Write a signed model bundle, checked before it exists and verified before it is visible.

Order matters: every branch is compared with its source on real recordings first (a
failed check leaves nothing behind), then file hashes, manifest, signature, then the
device's own verifier runs on the result, and only then is the directory renamed into
place. A reader never sees a half-written bundle, and a bundle that exists verified once.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from device.bundle.manifest import MANIFEST_FILE, SIGNATURE_FILE, BundleError, parse_manifest
from device.bundle.verify import VerifiedBundle, format_public_key, sha256_file, verify_bundle
from exporter.signing import load_private_key, public_bytes, sign_manifest


@dataclass(frozen=True)
class ParityResult:
    """One comparison of an ONNX output with the source it was exported from."""

    branch: str
    output: str
    """Which graph output was compared ("scores", "mel", ...)."""
    max_abs_diff: float
    tolerance: float
    unit: str
    """What the difference is measured in ("probability", "dB")."""
    reference: str
    """What the ONNX output was compared with, in words."""
    windows: int
    recordings: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return math.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.tolerance

    def describe(self) -> str:
        return (
            f"branch {self.branch!r} output {self.output!r}: max |ONNX - {self.reference}| = "
            f"{self.max_abs_diff:.3g} {self.unit} on {self.windows} windows of {len(self.recordings)} recordings "
            f"(tolerance {self.tolerance:.3g})"
        )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["recordings"] = list(self.recordings)
        out["passed"] = self.passed
        return out


@dataclass(frozen=True)
class BranchCheck:
    """Compares one branch's ONNX file with its source; `run` gets the staged file's path."""

    branch: str
    run: Callable[[Path], ParityResult | Sequence[ParityResult]]


class ParityError(Exception):
    """A branch's ONNX output differs from its source by more than its tolerance."""

    def __init__(self, failures: Sequence[ParityResult]):
        self.failures = tuple(failures)
        super().__init__("parity check failed, no bundle written: " + "; ".join(f.describe() for f in failures))


def _run_checks(
    staging: Path, manifest: Mapping[str, Any], checks: Sequence[BranchCheck]
) -> list[ParityResult]:
    files = {branch["name"]: branch["file"] for branch in manifest["branches"]}
    unchecked = sorted(set(files) - {check.branch for check in checks})
    if unchecked:
        raise ValueError(f"branches {unchecked} have no parity check; a bundle is never written unchecked")
    strays = sorted({check.branch for check in checks} - set(files))
    if strays:
        raise ValueError(f"checks name branches {strays} that are not in the manifest")
    results: list[ParityResult] = []
    for check in checks:
        outcome = check.run(staging / files[check.branch])
        outcome = [outcome] if isinstance(outcome, ParityResult) else list(outcome)
        if not outcome:
            raise ValueError(f"the check for branch {check.branch!r} compared nothing")
        results.extend(outcome)
    failures = [result for result in results if not result.passed]
    if failures:
        raise ParityError(failures)
    return results


def _pinned_files(manifest: Mapping[str, Any]) -> list[tuple[dict, str]]:
    """(entry, file) for every branch and an ONNX fusion: the entries whose sha256 we fill."""
    pinned = [(branch, branch["file"]) for branch in manifest["branches"]]
    fusion = manifest.get("fusion") or {}
    if fusion.get("kind") == "onnx":
        pinned.append((fusion, fusion["file"]))
    return pinned


def write_bundle(
    out_dir: Path,
    manifest: Mapping[str, Any],
    files: Mapping[str, Path | bytes],
    private_key_path: Path,
    checks: Sequence[BranchCheck],
) -> VerifiedBundle:
    """Check, hash, sign, verify and atomically place a bundle directory.

    Args:
        out_dir: where the bundle appears; must not exist yet.
        manifest: a schema-v1 dict (see `manifest_builder.build_manifest`); file hashes are
            filled in here, and the parity results go into `provenance.parity`, which the
            signature covers.
        files: every file the manifest pins, by name, as a path or bytes; nothing else.
        private_key_path: the signer's ed25519 key (outside the bundle; see signing.py).
        checks: at least one per branch, each comparing the ONNX with its source.

    Returns:
        The bundle as `device.bundle.verify.verify_bundle` sees it at `out_dir` (its
        `signer.path` names a temporary trust file that no longer exists).

    Raises:
        ParityError: a check failed (nothing is written).
        BundleError: the manifest is invalid or the written bundle does not verify.
        FileExistsError: `out_dir` exists.
        ValueError: files missing or unpinned, or a branch without a check.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir}: already exists; a bundle is never overwritten")
    manifest = copy.deepcopy(dict(manifest))
    pinned = _pinned_files(manifest)
    names = {name for _, name in pinned}
    if set(files) != names:
        raise ValueError(
            f"files {sorted(files)} must be exactly the ones the manifest pins {sorted(names)} "
            "(an unpinned file would not be covered by the signature)"
        )
    if names & {MANIFEST_FILE, SIGNATURE_FILE}:
        raise ValueError(f"{MANIFEST_FILE} and {SIGNATURE_FILE} are written here, not passed in")
    key = load_private_key(private_key_path)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        for name, content in files.items():
            target = staging / Path(name).name
            if target.name != name:
                raise ValueError(f"{name!r}: bundle files are plain names, not paths")
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                shutil.copyfile(content, target)
        results = _run_checks(staging, manifest, checks)
        for entry, name in pinned:
            entry["sha256"] = sha256_file(staging / name)
        manifest.setdefault("provenance", {})["parity"] = [result.as_dict() for result in results]
        parse_manifest(copy.deepcopy(manifest))
        text = json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        (staging / MANIFEST_FILE).write_text(text, encoding="utf-8")
        sign_manifest(staging, private_key_path)
        with tempfile.TemporaryDirectory(prefix="trust-") as trust:
            Path(trust, "signer.pub").write_text(format_public_key(public_bytes(key), "signer"), encoding="utf-8")
            verify_bundle(staging, Path(trust))
            for path in staging.iterdir():
                path.chmod(0o644)
            staging.chmod(0o755)
            os.rename(staging, out_dir)
            verified = verify_bundle(out_dir, Path(trust))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return verified


__all__ = ["BranchCheck", "BundleError", "ParityError", "ParityResult", "write_bundle"]

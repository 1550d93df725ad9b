"""`explorer bundle`: verify, describe, locate and install model bundles on the device.

Every refusal exits non-zero with the BundleError's message (which names the file, key
and reason). Installing verifies against this home's trust list before the bundle is
visible under `bundles/`, and a failed install leaves the active bundle as it was.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import tarfile
import uuid
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import click

from device.bundle.archive import unpack_bundle
from device.bundle.manifest import MANIFEST_FILE, SIGNATURE_FILE, BundleError, Manifest, read_manifest
from device.bundle.verify import VerifiedBundle, verify_bundle
from device.cli.common import home_of
from device.home import ExplorerHome

if TYPE_CHECKING:
    from device.engine.selftest import SelfTestReport

# name-version becomes a directory under bundles/: no separators, no leading dot.
_DIR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def _bundle_dir(home: ExplorerHome, directory: Path | None) -> Path:
    from device.engine.loader import resolve_bundle_dir

    try:
        return resolve_bundle_dir(home, directory)
    except BundleError as exc:
        raise click.ClickException(str(exc)) from None


def _verify(directory: Path, home: ExplorerHome) -> VerifiedBundle:
    try:
        return verify_bundle(directory, home.trusted_keys)
    except BundleError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def bundle() -> None:
    """Verify, describe, locate and install model bundles.

    Example:

        explorer bundle info
    """


@bundle.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.pass_context
def verify(ctx: click.Context, directory: Path | None) -> None:
    """Check a bundle's manifest, file hashes and signature against the trust list.

    With no DIRECTORY, checks the active bundle.

    Example:

        explorer bundle verify ~/Downloads/elsilencio-default-1.0.0
    """
    home = home_of(ctx)
    verified = _verify(_bundle_dir(home, directory), home)
    manifest = verified.manifest
    click.echo(
        f"OK {manifest.name} {manifest.version}: {len(manifest.files())} files match, "
        f"signed by trusted key {verified.signer.key_id} ({verified.signer.comment or verified.signer.path.name})"
    )


def _signer_id(directory: Path) -> str:
    try:
        return str(json.loads((directory / SIGNATURE_FILE).read_text(encoding="utf-8"))["key_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable"


def describe(manifest: Manifest) -> list[str]:
    """The human-readable lines of `explorer bundle info` (no verification here)."""
    lines = [
        f"{manifest.name} {manifest.version}",
        f"  created      {manifest.created_on}",
        f"  licence      {manifest.license}",
        f"  attribution  {manifest.attribution}",
    ]
    by_class: dict[str, list[str]] = defaultdict(list)
    for label in manifest.labels:
        by_class[label.class_name].append(f"{label.primary_label} {label.scientific_name} ({label.common_name})")
    counts = ", ".join(f"{name} {len(items)}" for name, items in by_class.items())
    lines.append(f"  labels       {len(manifest.labels)}: {counts}")
    for class_name, items in by_class.items():
        lines.append(f"    {class_name}:")
        lines.extend(f"      {item}" for item in items)
    for branch in manifest.branches:
        rate = branch.input.sample_rate_hz
        lines.append(
            f"  branch {branch.name}: {branch.file}  {rate} Hz, {branch.input.window_s:.2f} s window "
            f"({branch.input.window_samples} samples), {branch.precision}, {branch.threads} thread(s), "
            f"sha256 {branch.sha256[:16]}..."
        )
        front_end = branch.input.front_end
        if front_end is not None:
            p = front_end.parameters
            lines.append(
                f"    front end  {front_end.kind} in graph: n_fft {p.get('n_fft')}, hop {p.get('hop_length')}, "
                f"{p.get('n_mels')} mels {p.get('fmin')}-{p.get('fmax')} Hz"
            )
        outputs = [f"{branch.scores_output} ({len(branch.score_labels)} labels, activation {branch.activation})"]
        if branch.embedding_output:
            outputs.append(f"{branch.embedding_output} ({branch.embedding_dim})")
        if branch.mel_output:
            outputs.append(branch.mel_output)
        lines.append("    outputs    " + ", ".join(outputs))
    fusion = manifest.fusion
    how = f"rule {fusion.rule}" if fusion.kind == "rule" else f"onnx {fusion.file}"
    lines.append(f"  fusion       {how} over {', '.join(fusion.required_branches)}")
    per_label = list(manifest.label_thresholds.values())
    summary = f"default {manifest.default_threshold:.2f}"
    if per_label:
        summary += (
            f"; per label for {len(per_label)} (min {min(per_label):.2f}, "
            f"median {statistics.median(per_label):.2f}, max {max(per_label):.2f})"
        )
    lines.append(f"  thresholds   {summary}")
    return lines


@bundle.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.pass_context
def info(ctx: click.Context, directory: Path | None) -> None:
    """Describe a bundle: labels, branches, fusion, thresholds, signer, and whether it verifies.

    With no DIRECTORY, describes the active bundle. Exits non-zero when it does not verify.

    Example:

        explorer bundle info
    """
    home = home_of(ctx)
    directory = _bundle_dir(home, directory)
    try:
        manifest = read_manifest(directory)
    except BundleError as exc:
        raise click.ClickException(str(exc)) from None
    for line in describe(manifest):
        click.echo(line)
    click.echo(f"  signer       key {_signer_id(directory)}")
    try:
        verified = verify_bundle(directory, home.trusted_keys)
    except BundleError as exc:
        raise click.ClickException(f"does not verify: {exc}") from None
    click.echo(f"  verified     yes (manifest sha256 {verified.sha256[:16]}...)")


@bundle.command()
@click.pass_context
def path(ctx: click.Context) -> None:
    """Print the active bundle's directory.

    Example:

        ls "$(explorer bundle path)"
    """
    click.echo(str(_bundle_dir(home_of(ctx), None)))


def _stage(source: Path, staging: Path) -> None:
    """Copy a bundle tar or directory into `staging` (flat regular files only)."""
    if source.is_dir():
        staging.mkdir()
        for item in sorted(source.iterdir()):
            if item.is_symlink() or not item.is_file():
                raise BundleError(f"{item}: not a plain file; a bundle directory holds only files")
            shutil.copyfile(item, staging / item.name)
    elif source.is_file() and tarfile.is_tarfile(source):
        unpack_bundle(source, staging)
    else:
        raise BundleError(f"{source}: neither a bundle directory nor a bundle tar")


def install_bundle(home: ExplorerHome, source: Path) -> tuple[VerifiedBundle, SelfTestReport]:
    """Verify `source` (tar or directory) against the home's trust list, place it, self-test it
    on this device's recent clips, and make it active (the one it replaces becomes PREVIOUS).

    Raises:
        BundleError: the bundle is malformed, unsigned, untrusted, holds unpinned files, or
            a different bundle of the same name and version is installed.
        SelfTestError: it verified but does not run correctly here; nothing changed.
    """
    from device.engine.selftest import SelfTestError, self_test

    home.ensure()
    staging = home.bundles / f".install-{uuid.uuid4().hex}"
    try:
        _stage(Path(source), staging)
        staging.chmod(0o755)
        try:
            verified = verify_bundle(staging, home.trusted_keys)
        except BundleError as exc:
            # Name what the operator passed, not the hidden staging directory.
            raise BundleError(str(exc).replace(str(staging.resolve()), str(source)).replace(str(staging), str(source))) from None
        manifest = verified.manifest
        allowed = set(manifest.files()) | {MANIFEST_FILE, SIGNATURE_FILE}
        extra = sorted(p.name for p in staging.iterdir() if p.name not in allowed)
        if extra:
            raise BundleError(f"{source}: files {extra} are not pinned by the manifest (the signature does not cover them)")
        dir_name = f"{manifest.name}-{manifest.version}"
        if not _DIR_NAME.match(dir_name):
            raise BundleError(f"{source}: name-version {dir_name!r} is not a safe directory name")
        target = home.bundles / dir_name
        if target.exists():
            existing = verify_bundle(target, home.trusted_keys)
            if existing.sha256 != verified.sha256:
                raise BundleError(f"{target}: a different bundle {dir_name} is already installed there")
            shutil.rmtree(staging)
            placed_here = False
        else:
            staging.rename(target)
            placed_here = True
        installed = verify_bundle(target, home.trusted_keys)
        try:
            report = self_test(installed, home.clips)
        except SelfTestError as exc:
            if placed_here:  # never leave a bundle that failed here where a rollback could pick it
                shutil.rmtree(target, ignore_errors=True)
            raise SelfTestError(f"{source}: self-test failed, the active bundle is unchanged: {exc}") from None
        home.set_active_bundle(target)
        return installed, report
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


@bundle.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.pass_context
def install(ctx: click.Context, source: Path) -> None:
    """Install a bundle (a .tar or a directory) and make it active.

    It is verified against this home's trusted keys before it is placed under
    <home>/bundles/<name>-<version>; a refused bundle changes nothing.

    Example:

        explorer bundle install elsilencio-default-1.0.0.tar
    """
    try:
        verified, report = install_bundle(home_of(ctx), source)
    except BundleError as exc:
        raise click.ClickException(str(exc)) from None
    manifest = verified.manifest
    click.echo(f"self-test passed on {report.audio}: {report.windows} window(s), {report.ms_per_window:.0f} ms each")
    click.echo(f"installed and active: {manifest.name} {manifest.version} at {verified.path}")


@bundle.command()
@click.pass_context
def rollback(ctx: click.Context) -> None:
    """Make the previously active bundle active again (run it twice to come back).

    The previous bundle is verified against the trusted keys first; a bundle that no longer
    verifies is never switched to.

    Example:

        explorer bundle rollback
    """
    home = home_of(ctx)
    previous = home.previous_bundle()
    if previous is None:
        raise click.ClickException(f"nothing to roll back to: no previous bundle recorded in {home.bundles}")
    verified = _verify(previous, home)
    home.set_active_bundle(previous)
    click.echo(f"active again: {verified.manifest.name} {verified.manifest.version} at {previous}")


@bundle.command(name="list")
@click.pass_context
def list_bundles(ctx: click.Context) -> None:
    """The installed bundles, marking the active one (*) and the one a rollback returns to (<).

    Example:

        explorer bundle list
    """
    home = home_of(ctx)
    active, previous = home.active_bundle(), home.previous_bundle()
    found = sorted(p for p in home.bundles.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if home.bundles.is_dir() else []
    if not found:
        click.echo(f"no bundles installed in {home.bundles}")
        return
    for path in found:
        mark = "*" if active and path.name == active.name else "<" if previous and path.name == previous.name else " "
        click.echo(f"{mark} {path.name}")

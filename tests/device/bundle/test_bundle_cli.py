"""`explorer bundle verify|info|path|install` through click's CliRunner."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import pytest
from click.testing import CliRunner

from device.bundle.archive import pack_bundle
from device.cli.bundle_cmd import bundle
from device.cli.main import cli
from device.home import ExplorerHome
from exporter.signing import generate_keypair, sign_manifest


def run(home, *args):
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


@pytest.fixture
def home(tmp_path, bundle_copy) -> ExplorerHome:
    """A home that trusts the demo bundle's signer and has no bundle yet."""
    home = ExplorerHome.resolve(tmp_path / "home").ensure()
    for key in bundle_copy.trust_dir.glob("*.pub"):
        shutil.copy(key, home.trusted_keys / key.name)
    return home


def test_install_a_tar_then_verify_info_and_path(home, bundle_copy, tmp_path):
    tar = pack_bundle(bundle_copy.path, tmp_path / "demo.tar")
    result = run(home.root, "bundle", "install", str(tar))
    assert result.exit_code == 0, result.output
    installed = home.bundles / bundle_copy.path.name
    assert home.active_bundle() == installed
    assert [p.name for p in home.bundles.iterdir() if p.name.startswith(".")] == []

    assert run(home.root, "bundle", "path").output.strip() == str(installed)
    verify = run(home.root, "bundle", "verify")
    assert verify.exit_code == 0 and verify.output.startswith("OK demo-tiny 0.1.0+")

    info = run(home.root, "bundle", "info")
    assert info.exit_code == 0, info.output
    for expected in [
        "demo-tiny 0.1.0+", "created      20", "licence      CC BY-NC-SA 4.0", "labels       15: Amphibia 14, Aves 1",
        "littin1 Crypturellus soui (Little Tinamou)", "branch tiny: demo_tiny.onnx  32000 Hz, 5.00 s window (160000 samples), fp32, 1 thread(s), sha256 ",
        "n_fft 1024, hop 320, 64 mels", "fusion       rule max over tiny", "thresholds   default 0.50; per label for 15",
        "signer       key ", "verified     yes",
    ]:
        assert expected in info.output, expected


def test_install_a_directory_and_again_is_idempotent(home, bundle_copy):
    for _ in range(2):
        result = run(home.root, "bundle", "install", str(bundle_copy.path))
        assert result.exit_code == 0, result.output
    assert home.active_bundle().name == bundle_copy.path.name
    assert len([p for p in home.bundles.iterdir() if p.is_dir()]) == 1


def test_an_untrusted_bundle_is_refused_and_changes_nothing(home, bundle_copy, tmp_path):
    run(home.root, "bundle", "install", str(bundle_copy.path))
    active_before = home.active_bundle()
    stranger, _ = generate_keypair(tmp_path / "stranger", "stranger")
    other = tmp_path / "other" / "demo-tiny-9"
    shutil.copytree(bundle_copy.path, other)
    raw = json.loads((other / "manifest.json").read_text())
    raw["version"] = "9.9.9"
    (other / "manifest.json").write_text(json.dumps(raw))
    sign_manifest(other, stranger)
    result = run(home.root, "bundle", "install", str(other))
    assert result.exit_code != 0
    assert "which this device does not trust" in result.output and str(other) in result.output
    assert ".install-" not in result.output
    assert home.active_bundle() == active_before
    assert sorted(p.name for p in home.bundles.iterdir()) == ["ACTIVE", active_before.name]


def test_a_tampered_bundle_is_refused(home, bundle_copy):
    onnx_path = next(bundle_copy.path.glob("*.onnx"))
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    result = run(home.root, "bundle", "install", str(bundle_copy.path))
    assert result.exit_code != 0 and "does not match the manifest" in result.output
    assert home.active_bundle() is None


def test_a_hostile_tar_is_refused(home, bundle_copy, tmp_path):
    tar_path = tmp_path / "hostile.tar"
    with tarfile.open(tar_path, "w") as archive:
        for item in bundle_copy.path.iterdir():
            archive.add(item, arcname=item.name)
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"evil"))
    result = run(home.root, "bundle", "install", str(tar_path))
    assert result.exit_code != 0 and "not a plain top-level file" in result.output
    assert not (tmp_path / "escape.txt").exists() and home.active_bundle() is None


def test_an_unpinned_extra_file_is_refused(home, bundle_copy):
    (bundle_copy.path / "README.txt").write_text("unsigned words")
    result = run(home.root, "bundle", "install", str(bundle_copy.path))
    assert result.exit_code != 0 and "the manifest does not pin" in result.output


def test_a_different_bundle_under_the_same_name_is_refused(home, bundle_copy, tmp_path):
    assert run(home.root, "bundle", "install", str(bundle_copy.path)).exit_code == 0
    changed = tmp_path / "changed"
    shutil.copytree(bundle_copy.path, changed)
    raw = json.loads((changed / "manifest.json").read_text())
    raw["thresholds"]["default"] = 0.3
    (changed / "manifest.json").write_text(json.dumps(raw))
    sign_manifest(changed, bundle_copy.private_key)
    result = run(home.root, "bundle", "install", str(changed))
    assert result.exit_code != 0 and "a different bundle" in result.output


def test_without_an_active_bundle_every_command_says_so(home):
    for command in (["verify"], ["info"], ["path"]):
        result = run(home.root, "bundle", *command)
        assert result.exit_code != 0 and "no active bundle" in result.output
        assert "explorer export default-bundle" in result.output


def test_info_on_a_bundle_that_does_not_verify_describes_it_and_fails(home, bundle_copy, tmp_path):
    result = run(tmp_path / "home-without-keys", "bundle", "info", str(bundle_copy.path))
    assert result.exit_code != 0
    assert "demo-tiny" in result.output and "does not verify" in result.output and "does not trust" in result.output


def test_verify_names_the_tampered_file(home, bundle_copy):
    next(bundle_copy.path.glob("*.onnx")).write_bytes(b"not a model")
    result = run(home.root, "bundle", "verify", str(bundle_copy.path))
    assert result.exit_code != 0 and "demo_tiny.onnx" in result.output


def test_every_bundle_command_has_help_ending_in_an_example():
    for command in [bundle, *bundle.commands.values()]:
        assert command.help and "Example:" in command.help, command.name
        example = command.help.rstrip().rsplit("Example:", 1)[1].strip()
        assert "explorer bundle" in example, command.name

"""Key pairs, the manifest signature, and where a private key may never go."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from device.bundle.manifest import BundleError
from device.bundle.verify import check_signature, key_id, load_trust_list, parse_public_key
from exporter.signing import (
    SigningError,
    generate_keypair,
    install_public_key,
    load_private_key,
    public_bytes,
    sign_manifest,
    signer_key_id,
)


def test_keypair_files_modes_and_trust_line(tmp_path):
    private, public = generate_keypair(tmp_path / "keys", "release")
    assert (private.name, public.name) == ("release.key", "release.pub")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    raw, comment = parse_public_key(public.read_text(), str(public))
    assert comment == "release"
    assert raw == public_bytes(load_private_key(private))
    assert signer_key_id(private) == key_id(raw)
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_a_key_is_never_overwritten(tmp_path):
    private, _ = generate_keypair(tmp_path, "release")
    before = private.read_bytes()
    with pytest.raises(SigningError, match="already exists"):
        generate_keypair(tmp_path, "release")
    assert private.read_bytes() == before


def test_private_key_refused_inside_a_git_working_tree(tmp_path):
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    with pytest.raises(SigningError, match="git working tree"):
        generate_keypair(tmp_path / "repo" / "deploy" / "keys", "release")
    assert not (tmp_path / "repo" / "deploy").exists()


def test_private_key_refused_inside_this_repository():
    repo = Path(__file__).resolve().parents[2]
    with pytest.raises(SigningError, match="git working tree"):
        generate_keypair(repo / "keys-that-must-not-exist", "release")
    assert not (repo / "keys-that-must-not-exist").exists()


def test_private_key_refused_inside_a_bundle(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(SigningError, match="bundle"):
        generate_keypair(tmp_path, "release")
    assert not (tmp_path / "release.key").exists()


def test_bad_key_names_are_refused(tmp_path):
    for name in ("../escape", "", ".hidden", "a/b"):
        with pytest.raises(SigningError, match="key name"):
            generate_keypair(tmp_path, name)


def test_signature_covers_the_exact_manifest_bytes(tmp_path):
    private, public = generate_keypair(tmp_path / "keys", "release")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_bytes(b'{"name": "x"}\n')
    sig_path = sign_manifest(bundle, private)
    envelope = json.loads(sig_path.read_text())
    assert envelope["algorithm"] == "ed25519" and envelope["key_id"] == signer_key_id(private)
    trust = tmp_path / "trusted"
    install_public_key(public, trust)
    assert check_signature(bundle, load_trust_list(trust)).key_id == envelope["key_id"]
    (bundle / "manifest.json").write_bytes(b'{"name": "x"} \n')  # one added space
    with pytest.raises(BundleError, match="does not match"):
        check_signature(bundle, load_trust_list(trust))


def test_signing_refuses_a_key_that_lies_in_the_bundle(tmp_path):
    private, _ = generate_keypair(tmp_path / "keys", "k")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    inside = bundle / "oops.key"
    inside.write_bytes(private.read_bytes())
    with pytest.raises(SigningError, match="inside the bundle"):
        sign_manifest(bundle, inside)
    assert not (bundle / "manifest.sig.json").exists()


def test_raw_32_byte_private_keys_load(tmp_path):
    private, _ = generate_keypair(tmp_path / "keys", "k")
    raw = load_private_key(private).private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    (tmp_path / "raw.key").write_bytes(raw)
    assert signer_key_id(tmp_path / "raw.key") == signer_key_id(private)


def test_a_non_key_file_is_refused_with_its_path(tmp_path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not a key")
    with pytest.raises(SigningError, match="notes.txt"):
        load_private_key(bogus)


def test_installing_a_public_key_is_idempotent(tmp_path):
    _, public = generate_keypair(tmp_path / "keys", "release")
    first = install_public_key(public, tmp_path / "trusted")
    second = install_public_key(public, tmp_path / "trusted")
    assert first == second and len(load_trust_list(tmp_path / "trusted")) == 1

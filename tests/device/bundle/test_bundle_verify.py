"""verify_bundle refuses tampered files, tampered manifests and untrusted signers."""

from __future__ import annotations

import json

import pytest

from device.bundle.manifest import BundleError
from device.bundle.verify import load_trust_list, verify_bundle
from exporter.signing import generate_keypair, install_public_key, sign_manifest, signer_key_id


def test_the_demo_bundle_verifies(bundle_copy):
    verified = verify_bundle(bundle_copy.path, bundle_copy.trust_dir)
    assert verified.signer.key_id == signer_key_id(bundle_copy.private_key)
    assert verified.manifest.name == "demo-tiny"


def test_a_tampered_model_file_is_refused(bundle_copy):
    onnx_path = bundle_copy.path / verify_bundle(bundle_copy.path, bundle_copy.trust_dir).manifest.branches[0].file
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, deep inside the weights
    onnx_path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match the manifest"):
        verify_bundle(bundle_copy.path, bundle_copy.trust_dir)


def test_a_missing_model_file_is_refused(bundle_copy):
    manifest = json.loads((bundle_copy.path / "manifest.json").read_text())
    (bundle_copy.path / manifest["branches"][0]["file"]).unlink()
    with pytest.raises(BundleError, match="missing"):
        verify_bundle(bundle_copy.path, bundle_copy.trust_dir)


def test_a_tampered_manifest_breaks_the_signature(bundle_copy):
    path = bundle_copy.path / "manifest.json"
    raw = json.loads(path.read_text())
    raw["thresholds"]["default"] = 0.01  # still a valid manifest, just not the signed one
    path.write_text(json.dumps(raw, indent=2) + "\n")
    with pytest.raises(BundleError, match="signature does not match manifest.json"):
        verify_bundle(bundle_copy.path, bundle_copy.trust_dir)


def test_a_signature_by_an_untrusted_key_is_refused(bundle_copy, tmp_path):
    stranger, _ = generate_keypair(tmp_path / "stranger", "stranger")
    sign_manifest(bundle_copy.path, stranger)
    with pytest.raises(BundleError, match=f"signed by key {signer_key_id(stranger)}, which this device does not trust"):
        verify_bundle(bundle_copy.path, bundle_copy.trust_dir)


def test_an_empty_trust_list_trusts_nothing(bundle_copy, tmp_path):
    with pytest.raises(BundleError, match=r"does not trust \(trusted: none\)"):
        verify_bundle(bundle_copy.path, tmp_path / "no-keys")


def test_a_second_trusted_key_signs_as_well(bundle_copy, tmp_path):
    other, other_pub = generate_keypair(tmp_path / "other", "other")
    install_public_key(other_pub, bundle_copy.trust_dir)
    sign_manifest(bundle_copy.path, other)
    assert verify_bundle(bundle_copy.path, bundle_copy.trust_dir).signer.key_id == signer_key_id(other)


def test_an_unsigned_bundle_is_refused(bundle_copy):
    (bundle_copy.path / "manifest.sig.json").unlink()
    with pytest.raises(BundleError, match="unsigned"):
        verify_bundle(bundle_copy.path, bundle_copy.trust_dir)


def test_a_malformed_signature_envelope_is_refused(bundle_copy):
    sig = bundle_copy.path / "manifest.sig.json"
    envelope = json.loads(sig.read_text())
    envelope["signature"] = "not base64!"
    sig.write_text(json.dumps(envelope))
    with pytest.raises(BundleError, match="malformed signature envelope"):
        verify_bundle(bundle_copy.path, bundle_copy.trust_dir)


def test_a_malformed_trusted_key_file_is_refused_not_skipped(bundle_copy):
    (bundle_copy.trust_dir / "broken.pub").write_text("ssh-rsa AAAA nope\n")
    with pytest.raises(BundleError, match="broken.pub"):
        load_trust_list(bundle_copy.trust_dir)

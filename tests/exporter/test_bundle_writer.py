"""write_bundle: checked before it exists, verified before it is visible, never half-written."""

from __future__ import annotations

import json

import pytest

from device.bundle.manifest import BundleError
from device.bundle.verify import sha256_file, verify_bundle
from exporter.bundle_writer import BranchCheck, ParityError, write_bundle
from exporter.demo_bundle import ONNX_FILE, demo_manifest, head_check
from exporter.signing import install_public_key


@pytest.fixture
def manifest(demo_head):
    return demo_manifest(demo_head, "0.0.1-test", "0" * 64)


def test_writes_a_signed_verified_bundle(tmp_path, manifest, demo_head, demo_model_bytes, signing_key, check_recordings):
    private, public = signing_key
    out = tmp_path / "bundles" / "demo"
    verified = write_bundle(out, manifest, {ONNX_FILE: demo_model_bytes}, private, [head_check(demo_head, check_recordings)])
    assert verified.path == out.resolve()
    assert sorted(p.name for p in out.iterdir()) == sorted([ONNX_FILE, "manifest.json", "manifest.sig.json"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["demo"], "no staging directory left behind"
    written = json.loads((out / "manifest.json").read_text())
    assert written["branches"][0]["sha256"] == sha256_file(out / ONNX_FILE)
    parity = written["provenance"]["parity"]
    assert {p["output"] for p in parity} == {"mel", "scores", "embedding"}
    assert all(p["passed"] and p["max_abs_diff"] <= p["tolerance"] for p in parity)
    scores = [p for p in parity if p["output"] == "scores"]
    assert max(p["max_abs_diff"] for p in scores) < 1e-5
    install_public_key(public, tmp_path / "trusted")
    assert verify_bundle(out, tmp_path / "trusted").manifest.name == manifest["name"]
    assert manifest["branches"][0]["sha256"] is None, "the caller's dict is not modified"


def test_a_failed_parity_check_writes_nothing(tmp_path, manifest, demo_head, build_head_model, signing_key, check_recordings):
    wrong = build_head_model(demo_head, bias_shift=0.05)  # an export that drifted from its source
    out = tmp_path / "bundles" / "demo"
    with pytest.raises(ParityError) as caught:
        write_bundle(out, manifest, {ONNX_FILE: wrong}, signing_key[0], [head_check(demo_head, check_recordings)])
    message = str(caught.value)
    assert "branch 'tiny'" in message and "'scores'" in message and "no bundle written" in message
    worst = max(f.max_abs_diff for f in caught.value.failures)
    assert worst > 1e-3 and f"{worst:.3g}" in message
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_a_check_that_crashes_writes_nothing(tmp_path, manifest, demo_model_bytes, signing_key):
    def broken(_path):
        raise RuntimeError("the reference model could not load")

    with pytest.raises(RuntimeError, match="could not load"):
        write_bundle(tmp_path / "out", manifest, {ONNX_FILE: demo_model_bytes}, signing_key[0], [BranchCheck("tiny", broken)])
    assert list(tmp_path.iterdir()) == []


def test_every_branch_needs_a_check(tmp_path, manifest, demo_model_bytes, signing_key):
    with pytest.raises(ValueError, match="no parity check"):
        write_bundle(tmp_path / "out", manifest, {ONNX_FILE: demo_model_bytes}, signing_key[0], [])
    assert list(tmp_path.iterdir()) == []


def test_files_must_be_exactly_the_pinned_ones(tmp_path, manifest, demo_model_bytes, signing_key, demo_head, check_recordings):
    checks = [head_check(demo_head, check_recordings)]
    with pytest.raises(ValueError, match="unpinned"):
        write_bundle(tmp_path / "a", manifest, {ONNX_FILE: demo_model_bytes, "notes.txt": b"x"}, signing_key[0], checks)
    with pytest.raises(ValueError, match="must be exactly"):
        write_bundle(tmp_path / "b", manifest, {}, signing_key[0], checks)
    assert list(tmp_path.iterdir()) == []


def test_an_invalid_manifest_is_refused_before_anything_is_visible(tmp_path, manifest, demo_model_bytes, signing_key, demo_head, check_recordings):
    manifest["labels"].append(dict(manifest["labels"][0]))
    with pytest.raises(BundleError, match="appears twice"):
        write_bundle(tmp_path / "out", manifest, {ONNX_FILE: demo_model_bytes}, signing_key[0], [head_check(demo_head, check_recordings)])
    assert list(tmp_path.iterdir()) == []


def test_an_existing_directory_is_never_overwritten(tmp_path, manifest, demo_model_bytes, signing_key):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        write_bundle(tmp_path / "out", manifest, {ONNX_FILE: demo_model_bytes}, signing_key[0], [])
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"

"""The demo bundle builds on a fresh home from committed files, verifies, and is active."""

from __future__ import annotations

import csv
import json
import stat

import numpy as np
import onnxruntime as ort
import pytest

from device.bundle.verify import verify_bundle
from device.home import ExplorerHome
from exporter.demo_bundle import EXAMPLES, LICENSE, build_demo_bundle, example_recordings
from exporter.signing import SigningError
from trainer.tiny_head import load_audio


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    home = ExplorerHome.resolve(tmp_path_factory.mktemp("home"))
    return home, build_demo_bundle(home)


def test_demo_bundle_is_installed_active_and_verifies(built, shared_data):
    home, path = built
    assert home.active_bundle() == path and path.parent == home.bundles
    verified = verify_bundle(path, home.trusted_keys)
    manifest = verified.manifest
    assert manifest.name == "demo-tiny" and manifest.license == LICENSE
    assert "recordings.csv" in manifest.attribution and "BirdCLEF 2025" in manifest.attribution
    in_space = {r["primary_label"] for r in csv.DictReader(open(shared_data / "recordings.csv")) if r["in_label_space"] == "yes"}
    assert set(manifest.label_ids) == in_space and len(in_space) == 15
    order = [r["primary_label"] for r in csv.DictReader(open(shared_data / "taxonomy.csv"))]
    assert list(manifest.label_ids) == sorted(manifest.label_ids, key=order.index)
    branch = manifest.branches[0]
    assert branch.activation == "none" and branch.mel_output == "mel" and branch.embedding_output == "embedding"
    assert set(manifest.label_thresholds) == set(manifest.label_ids)
    assert all(p["passed"] for p in manifest.provenance["parity"])


def test_the_private_key_stays_in_the_home_and_is_trusted(built):
    home, path = built
    key = home.signing_keys / "dev-local.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not any(p.suffix == ".key" for p in path.iterdir())
    assert len(list(home.trusted_keys.glob("*.pub"))) == 1


def test_rebuilding_reuses_the_verified_bundle(built):
    home, path = built
    manifest_bytes = (path / "manifest.json").read_bytes()
    assert build_demo_bundle(home) == path
    assert (path / "manifest.json").read_bytes() == manifest_bytes
    assert len(list(home.trusted_keys.glob("*.pub"))) == 1


def test_the_bundle_names_the_frog_in_a_real_recording(built, shared_data):
    """Allobates femoralis (21211) calls through 4.ogg; the demo head should say so."""
    home, path = built
    manifest = json.loads((path / "manifest.json").read_text())
    labels = manifest["branches"][0]["outputs"]["scores"]["labels"]
    session = ort.InferenceSession(str(path / manifest["branches"][0]["file"]), providers=["CPUExecutionProvider"])
    audio = load_audio(shared_data / "audio/birdclef_train_audio/4.ogg", 32_000)
    windows = np.stack([audio[s : s + 160_000] for s in range(0, len(audio) - 160_000, 160_000)])
    scores, mel = session.run(["scores", "mel"], {"waveform": windows})
    assert mel.shape == (len(windows), 64, 501)
    top = [labels[i] for i in scores.argmax(axis=1)]
    assert top.count("21211") >= 0.8 * len(top), top


def test_example_recordings_prefer_examples_then_shared_data(tmp_path, shared_data):
    from_shared = example_recordings(tmp_path / "no-examples", shared_data)
    assert [p.relative_to(shared_data).as_posix() for p in from_shared] == list(EXAMPLES.values())
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "spinetail.wav").write_bytes((shared_data / "audio/birds/spinetail.wav").read_bytes())
    mixed = example_recordings(tmp_path / "examples", shared_data)
    assert mixed[-1] == tmp_path / "examples" / "spinetail.wav"
    with pytest.raises(FileNotFoundError):
        example_recordings(tmp_path / "none", tmp_path / "none")


def test_a_home_inside_a_git_working_tree_gets_no_signing_key(tmp_path):
    (tmp_path / ".git").mkdir()
    home = ExplorerHome.resolve(tmp_path / ".explorer")
    with pytest.raises(SigningError, match="git working tree"):
        build_demo_bundle(home)
    assert not home.signing_keys.exists() and home.active_bundle() is None


def test_a_fresh_clone_builds_from_examples_alone(tmp_path, examples_dir):
    """No shared data: the committed head plus the repository's examples/ are enough."""
    recordings = example_recordings(examples_dir, tmp_path / "no-shared-data")
    assert [p.parent for p in recordings] == [examples_dir] * len(EXAMPLES)
    home = ExplorerHome.resolve(tmp_path / "home")
    path = build_demo_bundle(home, recordings=recordings)
    assert verify_bundle(path, home.trusted_keys).manifest.provenance["parity"][0]["recordings"] == [p.name for p in recordings]

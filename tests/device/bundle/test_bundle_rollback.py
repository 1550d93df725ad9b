"""Installing runs a self-test on this device first; the bundle it replaces can be rolled back to."""

from __future__ import annotations

import hashlib
import json
import shutil

import soundfile as sf
from click.testing import CliRunner

from device.cli.main import cli
from device.home import ExplorerHome
from exporter.signing import sign_manifest


def run(home, *args):
    return CliRunner().invoke(cli, ["--home", str(home.root), *args], catch_exceptions=False)


def home_trusting(tmp_path, bundle_copy) -> ExplorerHome:
    home = ExplorerHome.resolve(tmp_path / "home").ensure()
    for key in bundle_copy.trust_dir.glob("*.pub"):
        shutil.copy(key, home.trusted_keys / key.name)
    return home


def variant(bundle_copy, tmp_path, version: str, poison_scores: bool = False):
    """The demo bundle under another version, re-signed by its signer; optionally with its
    first branch's scores multiplied by NaN (a graph that verifies but cannot be trusted)."""
    import onnx
    from onnx import helper

    folder = tmp_path / f"demo-{version}"
    shutil.copytree(bundle_copy.path, folder)
    raw = json.loads((folder / "manifest.json").read_text())
    raw["version"] = version
    if poison_scores:
        branch = raw["branches"][0]
        model = onnx.load(folder / branch["file"])
        scores = branch["outputs"]["scores"]["name"]
        for node in model.graph.node:
            node.output[:] = [f"{scores}_clean" if name == scores else name for name in node.output]
        model.graph.node.extend([
            helper.make_node("Constant", [], ["nan_value"], value=helper.make_tensor("nan", onnx.TensorProto.FLOAT, [], [float("nan")])),
            helper.make_node("Mul", [f"{scores}_clean", "nan_value"], [scores]),
        ])
        onnx.save(model, folder / branch["file"])
        branch["sha256"] = hashlib.sha256((folder / branch["file"]).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(raw, indent=2))
    sign_manifest(folder, bundle_copy.private_key)
    return folder


def test_install_switches_after_a_self_test_on_real_clips_and_rollback_returns(tmp_path, bundle_copy, shared_data):
    home = home_trusting(tmp_path, bundle_copy)
    first = run(home, "bundle", "install", str(bundle_copy.path))
    assert first.exit_code == 0, first.output
    assert "self-test passed on silence (no clips on this device yet)" in first.output
    first_dir = home.active_bundle()

    # A guide's day later the device holds clips of what it heard; the next bundle is tested on them.
    frog, rate = sf.read(shared_data / "audio/birdclef_train_audio/3.ogg", dtype="float32")
    (home.clips / "2026-04-20").mkdir(parents=True)
    sf.write(home.clips / "2026-04-20" / "21211_clip.flac", frog[: 5 * rate], rate, format="FLAC")
    second = run(home, "bundle", "install", str(variant(bundle_copy, tmp_path, "1.0.1")))
    assert second.exit_code == 0, second.output
    assert "self-test passed on 21211_clip.flac: 1 window(s)" in second.output
    second_dir = home.active_bundle()
    assert second_dir != first_dir and home.previous_bundle() == first_dir

    listing = run(home, "bundle", "list").output.splitlines()
    assert f"* {second_dir.name}" in listing and f"< {first_dir.name}" in listing

    back = run(home, "bundle", "rollback")
    assert back.exit_code == 0 and "active again: " in back.output
    assert home.active_bundle() == first_dir and home.previous_bundle() == second_dir
    assert run(home, "bundle", "rollback").exit_code == 0  # and forward again
    assert home.active_bundle() == second_dir


def test_a_signed_bundle_whose_graph_gives_nan_is_refused_and_nothing_changes(tmp_path, bundle_copy):
    home = home_trusting(tmp_path, bundle_copy)
    assert run(home, "bundle", "install", str(bundle_copy.path)).exit_code == 0
    active_before = home.active_bundle()
    poisoned = variant(bundle_copy, tmp_path, "1.0.2", poison_scores=True)

    verify = run(home, "bundle", "verify", str(poisoned))  # the signature is fine...
    assert verify.exit_code == 0, verify.output
    result = run(home, "bundle", "install", str(poisoned))  # ...but it must not go live
    assert result.exit_code != 0
    assert "self-test failed, the active bundle is unchanged" in result.output and "NaN" in result.output
    assert home.active_bundle() == active_before and home.previous_bundle() is None
    assert not any("1.0.2" in p.name for p in home.bundles.iterdir())


def test_rollback_without_a_previous_bundle_or_to_a_tampered_one_is_refused(tmp_path, bundle_copy):
    home = home_trusting(tmp_path, bundle_copy)
    assert run(home, "bundle", "install", str(bundle_copy.path)).exit_code == 0
    nothing = run(home, "bundle", "rollback")
    assert nothing.exit_code != 0 and "nothing to roll back to" in nothing.output

    assert run(home, "bundle", "install", str(variant(bundle_copy, tmp_path, "1.0.3"))).exit_code == 0
    current, previous = home.active_bundle(), home.previous_bundle()
    onnx_file = next(previous.glob("*.onnx"))
    onnx_file.write_bytes(onnx_file.read_bytes()[:-1] + b"\0")  # the card corrupted the old bundle
    refused = run(home, "bundle", "rollback")
    assert refused.exit_code != 0 and onnx_file.name in refused.output
    assert home.active_bundle() == current

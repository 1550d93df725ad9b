"""A bundle fused by a trained meta_mlp: built from two tiny fits' checkpoints and the fusion
`explorer-train fit-meta` fitted on their validation scores; with both branches, and with one
(the other fixed absent), `explorer analyze` on a real recording gives the torch meta's output on
the torch heads' scores for that subset."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import onnx
import pytest
import soundfile as sf
from onnx import numpy_helper

from device.bundle.verify import verify_bundle
from device.home import ExplorerHome
from exporter.bundle_from import build_bundle_from
from exporter.bundle_writer import ParityError
from exporter.demo_bundle import development_key
from exporter.meta_fusion import build_meta_fusion, load_meta
from tests.helpers import run_explorer
from tests.trainer.test_meta_export import BRANCHES, two_runs
from trainer.checkpoint import load_head
from trainer.meta import subset_scores
from trainer.onnx_export import export_checkpoint, reference_logits

FROG = "audio/birdclef_train_audio/3.ogg"  # 32 kHz: the device's windows are the file's own samples
TOLERANCE = 1e-5
"""Probability: ONNX branches (float64 front end) + ONNX meta against torch; measured about 1e-7."""


def read_scores(path):
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0][1:], np.array([[float(x) if x else np.nan for x in row[1:]] for row in rows[1:]])


@pytest.fixture(scope="module")
def fused(tmp_path_factory, shared_data):
    trained = two_runs(tmp_path_factory)
    root = tmp_path_factory.mktemp("meta-artefacts")
    artefacts = {b: export_checkpoint(trained["best"][b], root / b, windows=4) for b in BRANCHES}
    heads = {b: load_head(trained["best"][b])[0] for b in BRANCHES}
    meta = load_head(trained["meta"]["checkpoint"])[0]
    audio, rate = sf.read(shared_data / FROG, dtype="float32")
    assert rate == 32_000
    windows = np.stack([audio[i * 160_000:(i + 1) * 160_000] for i in range(3)])
    branch_scores = {b: 1 / (1 + np.exp(-reference_logits(h, windows).astype(np.float64))) for b, h in heads.items()}
    return {"artefacts": artefacts, "fusion": trained["meta"]["fusion"], "meta": meta, "heads": heads,
            "scores": {b: s.astype(np.float32) for b, s in branch_scores.items()}}


def analyze(home, bundle, shared_data, out):
    result = run_explorer("analyze", str(shared_data / FROG), "--bundle", str(bundle), "--out", str(out), home=home)
    assert result.returncode == 0, result.stderr
    return read_scores(out)


def test_both_branches_through_the_cli_give_the_torch_meta(fused, shared_data, tmp_path):
    home = ExplorerHome.resolve(tmp_path / "home").ensure()
    out = home.bundles / "fused"
    built = run_explorer("export", "bundle", *(x for a in fused["artefacts"].values() for x in ("--from", str(a))),
                         "--fusion", str(fused["fusion"]), "--no-int8", "--out", str(out), home=home)
    assert built.returncode == 0, built.stderr
    manifest = verify_bundle(out, home.trusted_keys).manifest
    assert [b.name for b in manifest.branches] == list(BRANCHES)
    assert manifest.fusion.kind == "onnx" and manifest.fusion.file == "fusion_meta.onnx"
    assert manifest.fusion.inputs == tuple((b, "scores") for b in BRANCHES)
    provenance = manifest.provenance["fusion"]
    assert provenance["kind"] == "meta_mlp" and provenance["present"] == list(BRANCHES) and provenance["absent"] == []
    assert all(p["passed"] for p in manifest.provenance["fusion_parity"])
    labels, device = analyze(home, out, shared_data, tmp_path / "both.csv")
    meta = fused["meta"]
    expected = subset_scores(meta, fused["scores"], list(BRANCHES))
    order = [meta.labels.index(label) for label in labels]
    np.testing.assert_allclose(device[:3], expected[:, order], atol=TOLERANCE)
    print(f"both branches: max |device - torch meta| = {np.abs(device[:3] - expected[:, order]).max():.2e}")


def test_one_branch_fixes_the_other_absent_and_gives_the_torch_meta_on_that_subset(fused, shared_data, tmp_path):
    home = ExplorerHome.resolve(tmp_path / "home").ensure()
    verified = build_bundle_from([fused["artefacts"]["raw_cnn"]], home.bundles / "one", development_key(home),
                                 taxonomy=shared_data / "taxonomy.csv", int8=False, fusion_dir=fused["fusion"],
                                 progress=lambda line: None)
    manifest = verified.manifest
    assert [b.name for b in manifest.branches] == ["raw_cnn"]
    assert manifest.provenance["fusion"]["absent"] == ["raw_cnn_2"]
    graph = onnx.load(str(verified.path / manifest.fusion.file))
    assert [i.name for i in graph.graph.input] == ["raw_cnn_scores"]
    present = next(numpy_helper.to_array(t) for t in graph.graph.initializer if t.name == "meta/present")
    assert present.tolist() == [1.0, 0.0]
    artefact = load_meta(fused["fusion"])
    row = artefact.calibration(["raw_cnn"])
    for label, value in row["thresholds"].items():  # the thresholds tuned for this very subset
        assert manifest.threshold(label) == pytest.approx(value)
    labels, device = analyze(home, verified.path, shared_data, tmp_path / "one.csv")
    meta = fused["meta"]
    expected = subset_scores(meta, fused["scores"], ["raw_cnn"])
    both = subset_scores(meta, fused["scores"], list(BRANCHES))
    order = [meta.labels.index(label) for label in labels]
    np.testing.assert_allclose(device[:3], expected[:, order], atol=TOLERANCE)
    assert np.abs(expected - both).max() > 10 * TOLERANCE  # the subset really is another fusion
    print(f"one branch: max |device - torch meta| = {np.abs(device[:3] - expected[:, order]).max():.2e}")


def test_a_meta_that_disagrees_with_torch_writes_nothing(fused, shared_data, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(fused["fusion"], broken)
    with np.load(broken / "reference.npz") as ref:
        arrays = dict(ref)
    arrays["scores"] = arrays["scores"] + 1e-3  # a stale or wrong export
    np.savez(broken / "reference.npz", **arrays)
    home = ExplorerHome.resolve(tmp_path / "home").ensure()
    with pytest.raises(ParityError, match="fusion"):
        build_bundle_from([fused["artefacts"]["raw_cnn"]], home.bundles / "never", development_key(home),
                          taxonomy=shared_data / "taxonomy.csv", int8=False, fusion_dir=broken,
                          progress=lambda line: None)
    assert not (home.bundles / "never").exists()


def test_heads_the_meta_does_not_know_and_incomplete_folders_are_refused(fused, tmp_path):
    artefact = load_meta(fused["fusion"])
    labels = artefact.labels
    with pytest.raises(ValueError, match=r"heads \['panns_mlp'\] are not branches"):
        build_meta_fusion(artefact, [("raw_cnn", labels), ("panns_mlp", labels)], labels)
    with pytest.raises(ValueError, match="does not score the meta's labels"):
        build_meta_fusion(artefact, [("raw_cnn", labels[1:])], labels)
    empty = tmp_path / "nofusion"
    empty.mkdir()
    (empty / "meta.json").write_text(json.dumps({"format": "explorer-meta-onnx/1"}))
    with pytest.raises(ValueError, match="meta.onnx"):
        load_meta(empty)


def _default_source(labels, branch):
    """A stand-in for the default bundle's fusion: its `birdnet_scores` input passed through as scores."""
    from onnx import TensorProto, helper

    from exporter.frontend import make_model
    from exporter.meta_fusion import DefaultSource

    graph = helper.make_graph([helper.make_node("Identity", ["birdnet_scores"], ["scores"])], "stand_in",
                              [helper.make_tensor_value_info("birdnet_scores", TensorProto.FLOAT, ["batch", len(labels)])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", len(labels)])])
    return DefaultSource(make_model(graph), list(labels), branch)


@pytest.mark.parametrize("in_meta", [True, False])
def test_the_default_model_is_a_meta_input_when_trained_with_it_else_maxed_with_it(fused, in_meta):
    """With the default model named as a meta branch (here raw_cnn_2 stands for it), its fused
    scores feed the meta; otherwise the meta runs without it and each label takes the max of
    the meta's and the default's scores. Labels outside the meta's: the max of the sources'."""
    import onnxruntime as ort

    meta = fused["meta"]
    extra = ["999999"]
    default_labels = [*reversed(meta.labels), *extra]  # another order, and a label the meta lacks
    branch = "raw_cnn_2" if in_meta else "birdnet"
    artefact = load_meta(fused["fusion"])
    manifest = [*meta.labels, *extra]
    model, present = build_meta_fusion(artefact, [("raw_cnn", meta.labels)], manifest,
                                       _default_source(default_labels, branch))
    assert present == (list(BRANCHES) if in_meta else ["raw_cnn"])
    head = fused["scores"]["raw_cnn"]
    other = fused["scores"]["raw_cnn_2"]
    default_in = np.concatenate([other[:, ::-1], np.full((len(other), 1), 0.25, np.float32)], axis=1)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["scores"], {"default/birdnet_scores": default_in, "raw_cnn_scores": head})[0]
    if in_meta:
        expected = subset_scores(meta, {"raw_cnn": head, "raw_cnn_2": other}, list(BRANCHES))
    else:
        expected = np.maximum(subset_scores(meta, {"raw_cnn": head}, ["raw_cnn"]), other)
    np.testing.assert_allclose(got[:, :len(meta.labels)], expected, atol=TOLERANCE)
    np.testing.assert_allclose(got[:, -1], 0.25)


BIRDS = "audio/other/birds_10s.wav"  # 32 kHz, 10 s: two windows through BirdNET keep the test short


def test_with_the_default_model_outside_the_meta_each_label_takes_the_max(fused, default_home, shared_data, tmp_path):
    """`--with-default --fusion`: the meta was not trained with the default's `birdnet` branch, so the
    bundle runs BirdNET and the default fusion beside the meta, and each label takes the larger score."""
    from device.bundle.manifest import read_manifest

    out = default_home.bundles / "fused-default"
    built = run_explorer("export", "bundle", *(x for a in fused["artefacts"].values() for x in ("--from", str(a))),
                         "--fusion", str(fused["fusion"]), "--with-default", "--no-int8", "--out", str(out),
                         home=default_home)
    assert built.returncode == 0, built.stderr
    manifest = verify_bundle(out, default_home.trusted_keys).manifest
    assert [b.name for b in manifest.branches] == ["birdnet", *BRANCHES]
    assert manifest.provenance["fusion"]["with_default"] and manifest.provenance["fusion"]["present"] == list(BRANCHES)
    results = {}
    for bundle, name in ((out, "fused.csv"), (default_home.active_bundle(), "default.csv")):
        result = run_explorer("analyze", str(shared_data / BIRDS), "--bundle", str(bundle), "--out",
                              str(tmp_path / name), home=default_home)
        assert result.returncode == 0, result.stderr
        results[name] = read_scores(tmp_path / name)
    labels, device = results["fused.csv"]
    default_labels, alone = results["default.csv"]
    assert set(labels) == set(default_labels) | set(fused["meta"].labels)
    audio, _ = sf.read(shared_data / BIRDS, dtype="float32")
    windows = np.stack([audio[s:s + 160_000] for s in range(0, len(audio) - 159_999, 160_000)])
    meta = fused["meta"]
    scores = {b: (1 / (1 + np.exp(-reference_logits(h, windows).astype(np.float64)))).astype(np.float32)
              for b, h in fused["heads"].items()}
    fused_meta = subset_scores(meta, scores, list(BRANCHES))
    expected = np.full((len(windows), len(labels)), -np.inf)
    for j, label in enumerate(labels):
        if label in default_labels:
            expected[:, j] = alone[:len(windows), default_labels.index(label)]
        if label in meta.labels:
            expected[:, j] = np.maximum(expected[:, j], fused_meta[:, meta.labels.index(label)])
    np.testing.assert_allclose(device[:len(windows)], expected, atol=TOLERANCE)
    print(f"with the default: max |device - max(torch meta, default)| = {np.abs(device[:len(windows)] - expected).max():.2e}")
    assert read_manifest(out).fusion.inputs[:2] == (("birdnet", "scores"), ("birdnet", "embedding"))

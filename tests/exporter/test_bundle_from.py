"""A signed bundle from head artefacts: it verifies, states each branch's cost, and analyzes a real
recording through the device with the scores torch computes."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from device.bundle.manifest import BundleError, parse_manifest, read_manifest
from device.bundle.verify import verify_bundle
from device.home import ExplorerHome
from exporter.bundle_from import build_bundle_from
from exporter.bundle_writer import ParityError
from exporter.demo_bundle import development_key
from tests.exporter.test_head_export import LABELS, tiny_head
from tests.helpers import run_explorer
from trainer.onnx_export import export_head, reference_logits

FROG = "audio/birdclef_train_audio/3.ogg"  # 32 kHz: the device's windows are the file's own samples
BIRDS = "audio/other/birds_10s.wav"  # 32 kHz, 10 s: three windows through BirdNET keep the test short


def read_scores(path):
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0][1:], np.array([[float(x) if x else np.nan for x in row[1:]] for row in rows[1:]])


@pytest.fixture(scope="module")
def heads(tmp_path_factory, shared_data):
    """kind -> (torch head, artefact folder)."""
    root = tmp_path_factory.mktemp("heads")
    out = {}
    for kind, thresholds in (("mel", {"21211": 0.35, "65448": 0.6}), ("waveform", {"21211": 0.45})):
        head = tiny_head(kind, seed=1).eval()  # as a checkpoint loads it
        out[kind] = head, export_head(head, root / kind, windows=6, thresholds=thresholds, data_dir=shared_data)
    return out


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return ExplorerHome.resolve(tmp_path_factory.mktemp("home")).ensure()


def test_the_bundle_verifies_with_costs_labels_and_thresholds(heads, home, shared_data, tmp_path):
    verified = build_bundle_from([heads["mel"][1], heads["waveform"][1]], home.bundles / "heads-int8",
                                 development_key(home), taxonomy=shared_data / "taxonomy.csv",
                                 report_dir=tmp_path / "report", progress=lambda line: None)
    again = verify_bundle(verified.path, home.trusted_keys)
    manifest = again.manifest
    order = [row["primary_label"] for row in csv.DictReader(open(shared_data / "taxonomy.csv", newline=""))]
    assert list(manifest.label_ids) == sorted(LABELS, key=order.index)  # taxonomy order, as every manifest
    assert [b.name for b in manifest.branches] == ["tiny_mel_test", "tiny_wave_test"]
    mel, wave = manifest.branches
    assert mel.mel_output == "mel" and mel.input.front_end.kind == "log_mel" and mel.activation == "none"
    assert wave.mel_output is None and wave.input.front_end is None
    for branch in manifest.branches:
        assert branch.cost.ms_1_thread > 0 and branch.cost.ms_2_threads > 0 and branch.cost.macs > 0
    assert manifest.fusion.kind == "rule" and manifest.fusion.rule == "max"
    assert manifest.label_thresholds == {"21211": 0.45, "65448": 0.6}  # the higher of the heads' thresholds
    report = json.loads((tmp_path / "report" / "quantization.json").read_text())
    assert [r["branch"] for r in report] == ["tiny_mel_test", "tiny_wave_test"]
    assert [r["precision"] for r in report] == [b.precision for b in manifest.branches]
    assert all(p["passed"] for p in manifest.provenance["parity"])


def test_explorer_analyze_runs_the_bundle_with_the_torch_scores(heads, tmp_path, shared_data):
    """Through the CLI: `export bundle` from an artefact folder and from a checkpoint (a tiny RawAudioCNN
    of the registry, as fit saves it: the exporter runs the trainer's export in its own process, it
    never imports torch), fp32, activated; then `analyze` on a real frog recording."""
    from trainer.checkpoint import save_checkpoint
    from trainer.heads import build_head

    torch.manual_seed(0)
    raw = build_head("raw_cnn", labels=LABELS, width=4, depth=1, stages=2).eval()
    checkpoint = save_checkpoint(tmp_path / "best.pt", raw, epoch=2, thresholds={"21211": 0.55},
                                 evaluation={"birdclef": 0.75})
    home = ExplorerHome.resolve(tmp_path / "home").ensure()
    out = home.bundles / "heads-fp32"
    built = run_explorer("export", "bundle", "--from", str(heads["mel"][1]), "--from", str(checkpoint),
                         "--out", str(out), "--no-int8", "--activate", home=home)
    assert built.returncode == 0, built.stderr
    assert "bundle written:" in built.stdout and home.active_bundle() == out
    manifest = verify_bundle(out, home.trusted_keys).manifest
    assert [b.name for b in manifest.branches] == ["tiny_mel_test", "raw_cnn"]
    assert manifest.label_thresholds == {"21211": 0.55, "65448": 0.6}
    provenance = manifest.provenance["heads"]["raw_cnn"]["provenance"]
    assert provenance["epoch"] == 2 and len(provenance["checkpoint_sha256"]) == 64
    csv_path = tmp_path / "frog.csv"
    result = run_explorer("analyze", str(shared_data / FROG), "--out", str(csv_path), home=home)
    assert result.returncode == 0, result.stderr
    labels, device_scores = read_scores(csv_path)
    assert labels == list(manifest.label_ids)
    audio, rate = sf.read(shared_data / FROG, dtype="float32")
    assert rate == 32_000
    windows = np.stack([audio[i * 160_000:(i + 1) * 160_000] for i in range(3)])
    torch_scores = np.max([1 / (1 + np.exp(-reference_logits(head, windows))) for head in (heads["mel"][0], raw)], axis=0)
    order = [LABELS.index(label) for label in labels]
    np.testing.assert_allclose(device_scores[:3], torch_scores[:, order], atol=1e-5)


def test_a_missing_source_is_named(tmp_path):
    from click.testing import CliRunner

    from device.cli.main import cli

    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "export", "bundle", "--from",
                                      str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "nope.pt" in result.output and not (tmp_path / "x").exists()


def test_a_branch_that_disagrees_with_torch_writes_nothing(heads, home, shared_data, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("body.onnx", "head.json"):
        (broken / name).write_bytes((heads["mel"][1] / name).read_bytes())
    with np.load(heads["mel"][1] / "reference.npz") as ref:
        arrays = dict(ref)
    arrays["logits"] = arrays["logits"] + 0.01  # what a stale or wrong export looks like
    np.savez(broken / "reference.npz", **arrays)
    with pytest.raises(ParityError, match="relative"):
        build_bundle_from([broken], home.bundles / "never", development_key(home),
                          taxonomy=shared_data / "taxonomy.csv", int8=False, progress=lambda line: None)
    assert not (home.bundles / "never").exists()


def test_the_cost_key_is_optional_and_validated(device_home):
    raw = read_manifest(device_home.active_bundle()).raw  # the demo bundle: written before costs existed
    assert "cost" not in raw["branches"][0] and parse_manifest(copy.deepcopy(raw)).branches[0].cost is None
    good = copy.deepcopy(raw)
    good["branches"][0]["cost"] = {"ms_1_thread": 12.5, "ms_2_threads": 7.0, "macs": None}
    assert parse_manifest(good).branches[0].cost.ms_2_threads == 7.0
    for bad, message in (({"ms_1_thread": 0, "ms_2_threads": 1.0, "macs": 5}, "ms_1_thread"),
                         ({"ms_1_thread": 1.0, "ms_2_threads": "fast", "macs": 5}, "ms_2_threads"),
                         ({"ms_1_thread": 1.0, "ms_2_threads": 1.0, "macs": 2.5}, "macs"),
                         ({"ms_1_thread": 1.0, "ms_2_threads": 1.0, "watts": 3}, "unknown keys")):
        broken = copy.deepcopy(raw)
        broken["branches"][0]["cost"] = bad
        with pytest.raises(BundleError, match=message):
            parse_manifest(broken)


def test_with_the_default_model_the_heads_join_birdnet_and_the_embedding_head(heads, default_home, shared_data, tmp_path):
    """`--with-default`: BirdNET and the default fusion run inside the bundle's fusion graph; each
    label's score is the max of the default model's and the heads' (torch) scores."""
    out = default_home.bundles / "combined"
    built = run_explorer("export", "bundle", "--from", str(heads["mel"][1]), "--with-default", "--no-int8",
                         "--out", str(out), home=default_home)
    assert built.returncode == 0, built.stderr
    manifest = verify_bundle(out, default_home.trusted_keys).manifest
    default = read_manifest(default_home.active_bundle())
    assert [b.name for b in manifest.branches] == [*(b.name for b in default.branches), "tiny_mel_test"]
    assert manifest.fusion.kind == "onnx" and set(manifest.label_ids) == set(default.label_ids) | set(LABELS)
    assert manifest.threshold("21211") == max(default.threshold("21211"), 0.35)
    for bundle, name in ((out, "combined.csv"), (default_home.active_bundle(), "default.csv")):
        result = run_explorer("analyze", str(shared_data / BIRDS), "--bundle", str(bundle), "--out",
                              str(tmp_path / name), home=default_home)
        assert result.returncode == 0, result.stderr
    labels, combined = read_scores(tmp_path / "combined.csv")
    default_labels, alone = read_scores(tmp_path / "default.csv")
    audio, _ = sf.read(shared_data / BIRDS, dtype="float32")
    windows = np.stack([np.pad(audio[s:s + 160_000], (0, max(0, s + 160_000 - len(audio))))
                        for s in range(0, len(audio), 160_000)])
    head = 1 / (1 + np.exp(-reference_logits(heads["mel"][0], windows)))
    expected = np.full_like(combined, np.nan)
    for j, label in enumerate(labels):
        sources = []
        if label in default_labels:
            sources.append(alone[:, default_labels.index(label)])
        if label in LABELS:
            sources.append(head[:, LABELS.index(label)])
        expected[:, j] = np.max(sources, axis=0)
    np.testing.assert_allclose(combined, expected, atol=1e-5)


"""torch -> ONNX -> onnxruntime: a head exports with the device's front end and computes what torch did.

Tiny heads (one mel head with a conv, one waveform head) on real 5 s windows of the shared
recordings; the heads of the design export through the same two calls.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from exporter.frontend import IR_VERSION, OPSET, log_mel_reference
from exporter.head_branch import (ArtefactError, LOGITS_TOLERANCE, compose_branch, load_artefact, relative_error,
                                  run_outputs, session)
from trainer.heads import HEADS
from trainer.heads.base import Head
from trainer.onnx_export import export_checkpoint, export_head

LABELS = ["21211", "65448", "littin1"]


class TinyMelHead(Head):
    """A conv and a batch norm over the log-mel, mean-pooled, then a linear layer."""

    name = "tiny_mel_test"
    input_kind = "mel"

    def __init__(self, labels, front_end=None, window_samples=160_000, channels=8):
        super().__init__(labels, front_end, window_samples)
        self.channels = channels
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, len(labels))

    def body(self, x):
        x = torch.relu(self.norm(self.conv((x + 40.0) / 20.0)))
        return self.fc(x.mean(dim=(2, 3)))

    def head_config(self):
        return {"channels": self.channels}


class TinyWaveHead(Head):
    """A strided conv on the raw waveform, max-pooled, then a linear layer."""

    name = "tiny_wave_test"
    input_kind = "waveform"

    def __init__(self, labels, front_end=None, window_samples=160_000):
        super().__init__(labels, front_end, window_samples)
        self.conv = nn.Conv1d(1, 8, 64, stride=32)
        self.fc = nn.Linear(8, len(labels))

    def body(self, x):
        return self.fc(torch.relu(self.conv(x.unsqueeze(1) * 10.0)).amax(dim=2))


def tiny_head(kind: str, seed: int = 0) -> Head:
    torch.manual_seed(seed)
    return (TinyMelHead if kind == "mel" else TinyWaveHead)(LABELS)


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory, shared_data):
    """Both heads exported once: kind -> artefact folder."""
    root = tmp_path_factory.mktemp("artefacts")
    return {kind: export_head(tiny_head(kind), root / kind, windows=6, thresholds={"21211": 0.4}, data_dir=shared_data)
            for kind in ("mel", "waveform")}


@pytest.mark.parametrize("kind", ["mel", "waveform"])
def test_the_artefact_folder_is_the_documented_format(artefacts, kind):
    info = json.loads((artefacts[kind] / "head.json").read_text())
    assert info["format"] == "explorer-head-onnx/1" and info["input_kind"] == kind and info["labels"] == LABELS
    assert info["thresholds"] == {"21211": 0.4} and info["reference"]["windows"] == 6
    body = onnx.load(str(artefacts[kind] / "body.onnx"))
    assert body.ir_version == IR_VERSION and {o.version for o in body.opset_import if o.domain == ""} == {OPSET}
    assert body.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a symbolic batch axis
    artefact = load_artefact(artefacts[kind])
    assert artefact.waveform.shape == (6, 160_000) and artefact.logits.shape == (6, 3)
    # 2.ogg holds Allobates femoralis (21211); its windows are the positives of the evaluation set
    assert artefact.targets[:, 0].sum() >= 1 and artefact.targets.sum(axis=1).max() == 1
    assert len(set(artefact.recordings)) == 4


@pytest.mark.parametrize("kind", ["mel", "waveform"])
def test_onnxruntime_gives_the_torch_logits_on_real_windows(artefacts, kind):
    artefact = load_artefact(artefacts[kind])
    model = compose_branch(artefact)
    logits, scores = run_outputs(session(model.SerializeToString()), artefact.waveform, ["logits", "scores"])
    error = relative_error(logits, artefact.logits)
    assert error < LOGITS_TOLERANCE, error
    assert (logits.argmax(axis=1) == artefact.logits.argmax(axis=1)).all()
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-artefact.logits)), atol=1e-5)


def test_the_composed_front_end_is_the_device_reference(artefacts):
    artefact = load_artefact(artefacts["mel"])
    mel, = run_outputs(session(compose_branch(artefact).SerializeToString()), artefact.waveform, ["mel"])
    reference = log_mel_reference(artefact.waveform, artefact.params)
    assert mel.shape == (6, 64, 501)
    assert np.abs(mel - reference).max() < 1e-3


@pytest.mark.parametrize("kind", ["mel", "waveform"])
def test_the_batch_axis_is_dynamic(artefacts, kind):
    artefact = load_artefact(artefacts[kind])
    sess = session(compose_branch(artefact).SerializeToString())
    three = sess.run(["logits"], {"waveform": artefact.waveform[:3]})[0]
    ones = np.concatenate([sess.run(["logits"], {"waveform": artefact.waveform[i:i + 1]})[0] for i in range(3)])
    np.testing.assert_allclose(three, ones, rtol=1e-5, atol=1e-6)


def test_a_head_in_training_mode_exports_its_eval_graph(tmp_path, shared_data):
    """Batch norm on batch statistics would give other logits: export and reference are both eval mode,
    and the caller's head keeps its own mode."""
    head = tiny_head("mel", seed=5)
    with torch.no_grad():
        head.norm.running_mean.fill_(0.3)
        head.norm.running_var.fill_(2.0)
    head.train()
    artefact = load_artefact(export_head(head, tmp_path / "a", windows=3, data_dir=shared_data))
    assert head.training
    logits, = run_outputs(session(compose_branch(artefact).SerializeToString()), artefact.waveform, ["logits"])
    with torch.no_grad():
        evaluated = head.eval()(torch.from_numpy(artefact.waveform)).numpy()
    assert relative_error(logits, artefact.logits) < LOGITS_TOLERANCE
    assert relative_error(artefact.logits, evaluated) < 1e-3  # eval mode, float32 vs float64 front end


def test_a_wrong_export_fails_parity(artefacts, tmp_path):
    """A body whose weights are not the trained ones is caught by the reference logits."""
    from exporter.head_branch import branch_parity

    artefact = load_artefact(artefacts["mel"])
    body = onnx.load(str(artefact.body_path))
    bias = next(t for t in body.graph.initializer if t.name.endswith("fc.bias"))
    values = onnx.numpy_helper.to_array(bias) + 0.05
    bias.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), bias.name))
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("head.json", "reference.npz"):
        (broken / name).write_bytes((artefacts["mel"] / name).read_bytes())
    onnx.save(body, str(broken / "body.onnx"))
    results = branch_parity(load_artefact(broken), compose_branch(load_artefact(broken)).SerializeToString())
    assert not results[0].passed and results[-1].passed  # the logits differ, the mel does not


def test_an_incomplete_folder_is_refused_by_name(artefacts, tmp_path):
    (tmp_path / "head.json").write_text((artefacts["mel"] / "head.json").read_text())
    with pytest.raises(ArtefactError, match="body.onnx: missing"):
        load_artefact(tmp_path)


def test_a_checkpoint_exports_through_the_registry(tmp_path, shared_data, monkeypatch):
    """export_checkpoint reads the checkpoint format, rebuilds the head by name, and records where it came from."""
    monkeypatch.setitem(HEADS, TinyMelHead.name, f"{__name__}:TinyMelHead")
    head = tiny_head("mel", seed=3)
    checkpoint = tmp_path / "best.pt"
    torch.save({"format": "explorer-head-checkpoint/1", "head": head.name, "config": head.config(),
                "model": head.state_dict(), "epoch": 4, "thresholds": {"65448": 0.3},
                "evaluation": {"birdclef": 0.8, "micro_ap": float("nan")}, "fit_config": {"epochs": 4}}, checkpoint)
    out = export_checkpoint(checkpoint, tmp_path / "onnx", windows=2)
    info = json.loads((out / "head.json").read_text())
    assert info["provenance"]["epoch"] == 4 and len(info["provenance"]["checkpoint_sha256"]) == 64
    assert info["metrics"] == {"birdclef": 0.8, "micro_ap": None} and info["thresholds"] == {"65448": 0.3}
    artefact = load_artefact(out)
    logits, = run_outputs(session(compose_branch(artefact).SerializeToString()), artefact.waveform, ["logits"])
    with torch.no_grad():
        trained = head.eval()(torch.from_numpy(artefact.waveform)).numpy()  # the trained module, float32 front end
    assert relative_error(logits, trained) < 1e-3  # float32 vs float64 front end: close, and the same weights

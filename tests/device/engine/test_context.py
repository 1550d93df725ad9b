"""Context scores: the default bundle's BirdNET non-species outputs, scored every window, never labels.

Real audio, the real default bundle and the real engine: the only speech recording in the shared
data (negatives/whisper_jfk_speech.flac) and a real frog call. Variants of the bundle (re-signed
with one change, tests/device/engine/bundle_variants.py) show what the engine does with a context
output that gives NaN, or that a manifest names wrongly.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import onnxruntime as ort
import pytest

from device.analysis import file_windows
from device.bundle.manifest import BundleError
from device.bundle.verify import verify_bundle
from device.config import Settings
from device.detect.detector import Detector
from device.engine.engine import Engine, make_crops
from device.audio.resample import resample
from exporter.birdnet.restrict import CONTEXT_CLASSES, CONTEXT_NAME
from tests.device.engine.bundle_variants import home_variant, poison_scores

SPEECH = "audio/negatives/whisper_jfk_speech.flac"
FROG = "audio/colombian_frogs/Boana_pugnax.wav"


@pytest.fixture
def engine(default_home) -> Engine:
    return Engine(verify_bundle(default_home.active_bundle(), default_home.trusted_keys), threads=1)


def test_the_default_bundle_declares_its_context_outputs_and_they_are_not_labels(engine):
    (branch,) = engine.manifest.branches
    assert branch.context_output == CONTEXT_NAME and branch.context_labels == CONTEXT_CLASSES
    assert branch.context_activation == "sigmoid"
    assert engine.context_labels == engine.manifest.context_labels == CONTEXT_CLASSES
    names = {label.common_name for label in engine.manifest.labels} | {l.scientific_name for l in engine.manifest.labels}
    assert not names & set(CONTEXT_CLASSES) and not set(engine.labels) & set(CONTEXT_CLASSES)


def test_speech_scores_human_vocal_and_a_frog_does_not(engine, shared_data):
    speech = [engine.predict(w) for w in file_windows(shared_data / SPEECH)]
    frog = [engine.predict(w) for w in file_windows(shared_data / FROG)]
    assert all(set(p.context) == set(CONTEXT_CLASSES) for p in speech + frog)
    whole = [p for p in speech if p.window.real_samples == len(p.window.samples)]
    assert len(whole) == 2 and min(p.context["Human vocal"] for p in whole) > 0.5  # measured 0.80 and 0.88
    assert speech[-1].context["Human vocal"] > 0.05  # the last second alone, padded: 0.11
    assert max(p.context["Human vocal"] for p in frog) < 0.01
    assert all(len(p.scores) == len(engine.labels) for p in speech)  # scores over labels only


def test_context_is_the_sigmoid_of_the_graph_output_at_its_highest_over_the_crops(engine, default_home, shared_data):
    """What the engine reports is exactly: activation, then max over the window's 3 s crops."""
    session = ort.InferenceSession(str(default_home.active_bundle() / "birdnet_site.onnx"),
                                   providers=["CPUExecutionProvider"])
    for window in file_windows(shared_data / SPEECH):
        crops = make_crops(resample(window.samples, window.sample_rate_hz, 48_000), 144_000,
                           round(window.real_samples * 48_000 / window.sample_rate_hz))
        assert len(crops) == (2 if window.real_samples == len(window.samples) else 1)  # 0-3 s and 2-5 s
        (logits,) = session.run([CONTEXT_NAME], {"waveform": crops})
        expected = (1 / (1 + np.exp(-logits.astype(np.float64)))).max(axis=0)
        got = engine.predict(window).context
        np.testing.assert_allclose([got[name] for name in CONTEXT_CLASSES], expected, atol=1e-6)


def test_a_bundle_without_context_outputs_gives_none(device_home, shared_data):
    demo = Engine(verify_bundle(device_home.active_bundle(), device_home.trusted_keys))
    assert demo.context_labels == ()
    assert all(demo.predict(w).context == {} for w in file_windows(shared_data / SPEECH))


def test_a_non_finite_context_output_is_left_out_logged_and_fails_the_privacy_filter_closed(
        default_home, shared_data, tmp_path, caplog):
    def poison(raw: dict) -> None:
        branch = raw["branches"][0]
        poison_scores(tmp_path / "nan" / branch["file"], CONTEXT_NAME)
        import hashlib

        branch["sha256"] = hashlib.sha256((tmp_path / "nan" / branch["file"]).read_bytes()).hexdigest()

    bundle = home_variant(default_home, tmp_path / "nan", "9.0.0", edit=poison)
    engine = Engine(verify_bundle(bundle, default_home.trusted_keys), threads=1)
    frog = list(file_windows(shared_data / FROG))
    with caplog.at_level(logging.ERROR, logger="device.engine.engine"):
        predictions = [engine.predict(w) for w in frog]
    assert all(p.context == {} for p in predictions)  # left out, never read as 0
    assert all(p.unscored_branches == () and np.isfinite(p.scores).all() for p in predictions)  # labels unharmed
    assert engine.counters.nonfinite_scores == len(frog)
    assert "context output gave NaN or infinite scores" in caplog.text
    # The bundle promised a Human vocal score and could not give one: no audio is kept.
    detector = Detector.for_engine(engine, Settings())
    merged = [detector.push(p) for p in predictions]
    assert all(m.private for m in merged)
    assert [e.detection.clip_withheld for e in detector.flush()] == ["privacy"]


@pytest.mark.parametrize("change, problem", [
    (lambda ctx: ctx.update(name="no_such_output"), r"no output\(s\) \['no_such_output'\]"),
    (lambda ctx: ctx.update(labels=ctx["labels"][:-1]), "has 10 scores, the manifest lists 9 context labels"),
])
def test_a_manifest_naming_a_context_output_wrongly_is_refused_at_load(default_home, tmp_path, change, problem):
    def edit(raw: dict) -> None:
        change(raw["branches"][0]["outputs"]["context"])

    bundle = home_variant(default_home, tmp_path / "bad", "9.0.1", edit=edit)
    with pytest.raises(BundleError, match=problem):
        Engine(verify_bundle(bundle, default_home.trusted_keys))
    assert json.loads((bundle / "manifest.json").read_text())["branches"][0]["outputs"]["context"]

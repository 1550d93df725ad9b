"""ONNX vs the original TFLite (LiteRT) on real recordings, and the failure a broken export produces."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from exporter.birdnet.parity import (
    EMBEDDING_TOL,
    LOGITS_TOL,
    ParityError,
    check_parity,
    compare_outputs,
    default_recordings,
)
from exporter.birdnet.runners import LiteRtBirdnet


def test_onnx_matches_tflite_on_real_recordings(birdnet, shared_data):
    recordings = default_recordings(shared_data)
    report = check_parity(birdnet.onnx_path, birdnet.tflite_path, recordings, max_windows_per_file=2)
    assert report.files == [p.name for p in recordings]
    assert report.windows == 19 and report.padded_windows == 4  # 2 per long file, 1 per short one
    assert report.logits_max_abs <= LOGITS_TOL
    assert report.embedding_max_abs <= EMBEDDING_TOL
    assert report.top5_agreement == 1.0
    # The outputs really are compared: two independent float32 implementations never agree exactly.
    assert report.logits_max_abs > 0


def test_a_shifted_classifier_bias_fails_parity_naming_logits_and_the_error(birdnet, shared_data, tmp_path):
    model = onnx.load(str(birdnet.onnx_path))
    bias = next(t for t in model.graph.initializer if t.name.endswith("/bias") and t.dims == [6522])
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(0.01), bias.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    recordings = default_recordings(shared_data)[:1]
    with pytest.raises(ParityError, match=r"'logits': max abs error 0\.01\d* > tolerance 0\.001") as info:
        check_parity(broken, birdnet.tflite_path, recordings, max_windows_per_file=2)
    assert info.value.output == "logits" and info.value.error == pytest.approx(0.01, abs=1e-3)


def test_an_embedding_beyond_tolerance_is_reported_as_such(birdnet, soundscape_windows):
    reference = LiteRtBirdnet(birdnet.tflite_path).run(soundscape_windows[:2])
    logits, embedding = reference
    drifted = embedding.copy()
    drifted[1, 7] += 0.02
    with pytest.raises(ParityError, match="'embedding': max abs error 0.02"):
        compare_outputs(reference, (logits, drifted))


def test_a_top5_swap_fails_even_within_the_logit_tolerance(birdnet, soundscape_windows):
    logits, embedding = LiteRtBirdnet(birdnet.tflite_path).run(soundscape_windows[:1])
    reference = logits.copy()
    order = np.argsort(-reference[0])
    reference[0, order[4]] = reference[0, order[3]] - 1e-4  # raising the 5th keeps it above the 6th
    candidate = reference.copy()
    candidate[0, order[3]] -= 2e-4  # 4th and 5th trade places; every logit stays within 1e-3
    with pytest.raises(ParityError, match="logits/top5"):
        compare_outputs((reference, embedding), (candidate, embedding))

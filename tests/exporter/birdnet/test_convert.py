"""The TFLite -> ONNX conversion: interface, embedding -> logits consistency, dynamic batch, bad input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from exporter.birdnet.convert import (
    ATTRIBUTION,
    EMBEDDING_DIM,
    N_CLASSES,
    WINDOW_SAMPLES,
    classifier_tensors,
    convert_birdnet,
    recompute_logits,
)
from exporter.birdnet.runners import OnnxBirdnet
from exporter.birdnet.tflite_graph import read_tflite


def test_the_model_takes_raw_audio_and_returns_logits_and_embedding_with_a_dynamic_batch(birdnet):
    model = onnx.load(str(birdnet.onnx_path))
    assert birdnet.input_shape == ("batch", WINDOW_SAMPLES)
    assert birdnet.outputs == {"logits": ("batch", N_CLASSES), "embedding": ("batch", EMBEDDING_DIM)}
    assert model.opset_import[0].version == birdnet.opset == 17
    assert model.ir_version == 8
    # The whole integer shape machinery (SHAPE, PACK, RANGE, ...) was folded away.
    assert {n.op_type for n in model.graph.node}.isdisjoint({"Shape", "Range", "ReduceProd", "Cast"})


def test_the_manifest_facts_travel_in_the_onnx_metadata(birdnet):
    props = {p.key: p.value for p in onnx.load(str(birdnet.onnx_path)).metadata_props}
    assert props["license"] == "CC-BY-NC-SA-4.0"
    assert props["attribution"] == ATTRIBUTION
    assert props["source_sha256"] == birdnet.tflite_sha256
    assert props["sample_rate_hz"] == "48000"


def test_embedding_reproduces_the_logits_through_the_tflite_classifier(birdnet, soundscape_windows):
    graph = read_tflite(birdnet.tflite_path)
    emb_index, w, b = classifier_tensors(graph)
    assert graph.tensors[emb_index].name == birdnet.embedding_tensor == "model/GLOBAL_AVG_POOL/Mean"
    logits, embedding = OnnxBirdnet(birdnet.onnx_path).run(soundscape_windows)
    recomputed = recompute_logits(embedding, graph.tensors[w].data, graph.tensors[b].data)
    assert np.abs(recomputed - logits).max() < 1e-4
    assert birdnet.classifier_check_max_abs < 1e-4
    # A real soundscape gives a non-trivial embedding (post-ReLU pooled features).
    assert embedding.min() >= 0 and embedding.max() > 0.1


def test_batched_windows_give_the_same_result_as_one_at_a_time(birdnet, soundscape_windows):
    model = OnnxBirdnet(birdnet.onnx_path)
    together, _ = model.run(soundscape_windows[:3])
    alone = np.concatenate([model.run(soundscape_windows[i : i + 1])[0] for i in range(3)])
    assert together.shape == (3, N_CLASSES)
    assert np.abs(together - alone).max() < 1e-4


def test_a_file_that_is_not_tflite_is_refused_by_name(tmp_path):
    bogus = tmp_path / "model.tflite"
    bogus.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="model.tflite: not a TFLite flatbuffer"):
        convert_birdnet(tmp_path / "out.onnx", bogus)
    assert not (tmp_path / "out.onnx").exists()


def test_a_missing_model_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.tflite"):
        convert_birdnet(tmp_path / "out.onnx", tmp_path / "nothing.tflite")

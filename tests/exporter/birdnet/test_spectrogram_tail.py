"""The spectrogram-tail peephole (exporter/birdnet/spectrogram_tail.py): the converted BirdNET
feeds its first convolution straight from the two spectrograms in NCHW, with the batch norm and
the mel reversal folded into their kernels, and computes what the operator-for-operator lowering
computes on real audio; a graph without the pattern, or with a scale the fold cannot take, is
left exactly as it was."""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper

from exporter.birdnet.convert import EMBEDDING_NAME, INPUT_NAME, LOGITS_NAME, WINDOW_SAMPLES, classifier_tensors
from exporter.birdnet.lower import Lowering
from exporter.birdnet.runners import OnnxBirdnet
from exporter.birdnet.spectrogram_tail import fuse_spectrogram_tail
from exporter.birdnet.static import StaticGraph
from exporter.birdnet.tflite_graph import read_tflite

PARITY_TOL = 1e-4
"""Logits and embedding of the rewritten graph against the lowered one: measured 7.6e-6 on
logits up to 17 (float32 rounding of scaled kernels and Exp(c * Log) for Pow)."""


def lowered(tflite_path) -> onnx.ModelProto:
    """BirdNET as the lowering writes it, before the peephole."""
    graph = read_tflite(tflite_path)
    emb, _, _ = classifier_tensors(graph)
    (logits,) = graph.outputs
    return Lowering(graph, StaticGraph(graph, (1, WINDOW_SAMPLES))).run(
        INPUT_NAME, {logits: LOGITS_NAME, emb: EMBEDDING_NAME}, "birdnet_v2_4")


def first_conv_input(model: onnx.ModelProto) -> onnx.NodeProto:
    """The node that feeds the CNN's first convolution (the one after the spectrograms)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    act0 = next(n for n in model.graph.node if n.op_type == "Conv" and n.name.startswith("model/ACT_0"))
    return producers[act0.input[0]]


def test_the_converted_model_reads_both_spectrograms_in_nchw_without_pow_or_transpose(birdnet):
    assert birdnet.spectrogram_tail_fused
    model = onnx.load(str(birdnet.onnx_path))
    ops = [n.op_type for n in model.graph.node]
    assert "Pow" not in ops and ops.count("Exp") == 2 and ops.count("Log") == 2
    feed = first_conv_input(model)
    assert feed.op_type == "Concat" and feed.attribute[0].i == 1
    # Nothing between the input and the first convolution transposes or broadcasts over a last axis of 2.
    head = ops[: ops.index("Concat") + 1]
    assert "Transpose" not in head and "Slice" not in head


def test_it_computes_what_the_lowering_computes_on_the_real_soundscape(birdnet, soundscape_windows, tmp_path):
    plain = lowered(birdnet.tflite_path)
    path = tmp_path / "lowered.onnx"
    onnx.save(plain, str(path))
    want_logits, want_embedding = OnnxBirdnet(path).run(soundscape_windows)
    got_logits, got_embedding = OnnxBirdnet(birdnet.onnx_path).run(soundscape_windows)
    assert np.abs(got_logits - want_logits).max() < PARITY_TOL
    assert np.abs(got_embedding - want_embedding).max() < PARITY_TOL
    assert np.abs(want_logits).max() > 5  # real calls, not a silent input


def test_a_graph_without_the_pattern_or_with_a_negative_scale_is_left_untouched(birdnet):
    fused = onnx.load(str(birdnet.onnx_path))
    before = fused.SerializeToString()
    assert not fuse_spectrogram_tail(fused)  # already rewritten: nothing left to match
    assert fused.SerializeToString() == before

    plain = lowered(birdnet.tflite_path)
    bn_scale = next(n for n in plain.graph.node if n.op_type == "Mul" and "BNORM_SPEC" in n.name)
    init = next(t for t in plain.graph.initializer if t.name in bn_scale.input)
    negative = numpy_helper.to_array(init).copy()
    negative[0] = -negative[0]  # a*(x*x)**c with a < 0 cannot move inside the power
    init.CopyFrom(numpy_helper.from_array(negative, init.name))
    before = copy.deepcopy(plain).SerializeToString()
    assert not fuse_spectrogram_tail(plain)
    assert plain.SerializeToString() == before

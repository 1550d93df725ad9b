"""The pieces under the converter: static folding and TF's SAME padding rule."""

from __future__ import annotations

import numpy as np
import onnx

from exporter.birdnet.static import StaticGraph, conv_geometry
from exporter.birdnet.tflite_graph import read_tflite


def test_same_padding_puts_the_odd_pixel_at_the_end_like_tensorflow():
    # 96 mel bins, kernel 4, stride 2 -> 48 rows; TF pads 1 before and 1 after.
    assert conv_geometry(96, 4, 2, 1, 0) == (48, 1, 1)
    # 511 frames, kernel 8, stride 2 -> 256 columns; 7 padding cells: 3 before, 4 after.
    assert conv_geometry(511, 8, 2, 1, 0) == (256, 3, 4)
    assert conv_geometry(50, 3, 2, 1, 1) == (24, 0, 0)  # VALID


def test_frame_indices_fold_to_constants_and_reshape_targets_follow_the_batch(birdnet):
    graph = read_tflite(birdnet.tflite_path)
    static = StaticGraph(graph, (1, 144000))
    by_name = {t.name: t.index for t in graph.tensors}
    frames = static[by_name["model/MEL_SPEC1/stft/frame/add_1"]]
    assert frames.value.shape == (511, 1024)  # 511 frames of 2048 samples, hop 278, in pairs
    se_target = static[by_name["model/BLOCK_2-1_SE_RESHAPE/Reshape/shape"]]
    assert se_target.value is None and se_target.batch_dependent_value
    assert static[by_name["model/concatenate/concat"]].shape == (-1, 96, 511, 2)


def test_the_cnn_runs_nchw_with_no_layout_transpose(birdnet):
    # The lowering needs one NHWC -> NCHW Transpose after the spectrogram; the spectrogram-tail
    # peephole (test_spectrogram_tail.py) builds that input in NCHW directly, so none is left.
    model = onnx.load(str(birdnet.onnx_path))
    transposes = [n for n in model.graph.node if n.op_type == "Transpose"]
    assert not [n for n in transposes if list(n.attribute[0].ints) in ([0, 3, 1, 2], [0, 2, 3, 1])]


def test_framing_as_a_strided_conv_equals_the_gather_and_matmul_it_replaces(birdnet, soundscape_windows, tmp_path):
    from exporter.birdnet.lower import Lowering
    from exporter.birdnet.runners import OnnxBirdnet

    graph = read_tflite(birdnet.tflite_path)
    plain = Lowering(graph, StaticGraph(graph, (1, 144000)), frames_as_conv=False)
    path = tmp_path / "gather.onnx"
    onnx.save(plain.run("waveform", {546: "logits", 545: "embedding"}, "plain"), str(path))
    default = onnx.load(str(birdnet.onnx_path))
    assert [n.op_type for n in default.graph.node].count("Gather") == 0
    kernels = [next(a.ints for a in n.attribute if a.name == "kernel_shape") for n in default.graph.node if n.op_type == "Conv"]
    assert [list(k) for k in kernels if len(k) == 1] == [[2048], [1024]]  # one per spectrogram
    a, _ = OnnxBirdnet(birdnet.onnx_path).run(soundscape_windows[:2])
    b, _ = OnnxBirdnet(path).run(soundscape_windows[:2])
    assert np.abs(a - b).max() < 1e-3

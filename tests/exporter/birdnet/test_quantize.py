"""The int8 static-QDQ variant keeps the spectrogram front end in float32."""

from __future__ import annotations

import numpy as np
import onnx

from exporter.birdnet.quantize import frontend_nodes, quantize_birdnet_int8
from exporter.birdnet.runners import OnnxBirdnet


def test_int8_variant_quantizes_the_cnn_but_not_the_front_end(birdnet, soundscape_windows, tmp_path):
    path = quantize_birdnet_int8(birdnet.onnx_path, tmp_path / "int8.onnx", soundscape_windows)
    model = onnx.load(str(path))
    fp32_front = set(frontend_nodes(onnx.load(str(birdnet.onnx_path))))
    quantizers = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantizers) > 50
    producers = {o: n.name for n in model.graph.node for o in n.output}
    # No front-end tensor is quantized except the spectrogram handed to the first Conv.
    quantized_front = {producers.get(q.input[0]) for q in quantizers} & fp32_front
    assert len(quantized_front) <= 1
    # The two spectrograms (framing Convs holding the folded DFT and mel matrices) keep fp32 weights.
    front_convs = [n for n in model.graph.node if n.name in fp32_front and n.op_type == "Conv"]
    assert len(front_convs) == 2 and all(n.input[1].endswith("/frames_weights") for n in front_convs)
    logits, embedding = OnnxBirdnet(path).run(soundscape_windows[:2])
    assert logits.shape == (2, 6522) and embedding.shape == (2, 1024)
    assert np.isfinite(logits).all()

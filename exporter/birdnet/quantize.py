"""An int8 static-QDQ variant of the converted BirdNET, calibrated on real recordings.

The spectrogram front end (everything before the first 2-D Conv: normalisation, the framing Conv
that holds the folded DFT/mel matrix, ``** 0.46``) stays float32. Its values span six orders of magnitude and feed a power
law with infinite slope at zero, so 8-bit activations there wreck the embedding (measured by the
team before this module). Only the CNN after it is quantized.

Measured verdict (bench/birdnet_cost.py, 30 held-out real windows, one thread on the dev VM):
post-training int8 does not pay for BirdNET. With every Conv/MatMul of the CNN quantized it runs
14.9 ms per window against 17.2 ms for fp32, but the embedding's cosine to fp32 falls to 0.70 (mean
~0.79) and top-1 agrees on 47% of windows; stages 3-4 alone: 14.6 ms, cosine >= 0.92, top-1 73%.
The damage starts in block 1:
weights and inputs of one conv fake-quantized by hand keep cosine 0.9998, but the quantized *output*
of the first expand conv feeds a swish and a BN-folded depthwise conv that amplify its rounding
~20x. Fixing that needs cross-layer equalisation or quantization-aware training, not calibration.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from exporter.birdnet.convert import INPUT_NAME

# Conv and MatMul carry nearly all the multiply-adds; quantizing the element-wise swish/SE ops as
# well adds Q/DQ pairs around every one of the 58 sigmoids, which costs more than it saves (measured
# by bench/birdnet_cost.py).
DEFAULT_OP_TYPES = ("Conv", "MatMul")


def frontend_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that run before the first 2-D Conv (the spectrogram front end).

    The front end has 1-D Convs of its own (framing + DFT + mel, see framing.py); the CNN starts
    at the first convolution with a two-axis kernel.

    Raises:
        ValueError: the graph has no 2-D Conv.
    """
    names = []
    for node in model.graph.node:
        kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), [])
        if node.op_type == "Conv" and len(kernel) == 2:
            return names
        names.append(node.name)
    raise ValueError("the model has no 2-D Conv node; cannot tell the front end from the CNN")


class _WindowReader:
    """onnxruntime CalibrationDataReader over a [n, 144000] array, one window per call."""

    def __init__(self, windows: np.ndarray):
        self._iter = iter(np.asarray(windows, dtype=np.float32))

    def get_next(self):
        window = next(self._iter, None)
        return None if window is None else {INPUT_NAME: window[None]}


def quantize_birdnet_int8(
    fp32_path: Path,
    out_path: Path,
    calibration_windows: np.ndarray,
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES,
    per_channel: bool = True,
    keep_fp32_prefixes: tuple[str, ...] = (),
) -> Path:
    """Write an int8 QDQ copy of ``fp32_path`` (activations uint8, weights int8 per channel).

    Args:
        calibration_windows: real 3 s windows at 48 kHz, shape [n, 144000]; a few dozen suffice.
        keep_fp32_prefixes: node-name prefixes kept float32 besides the front end, e.g.
            ``("model/CONV_0", "model/POOL_0", "model/BLOCK_1", "model/BLOCK_2")`` for stages 3-4 only.

    Raises:
        ValueError: no calibration windows.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration_windows) == 0:
        raise ValueError("int8 calibration needs at least one real window")
    model = onnx.load(str(fp32_path))
    exclude = frontend_nodes(model)
    exclude += [n.name for n in model.graph.node if keep_fp32_prefixes and n.name.startswith(keep_fp32_prefixes)]
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # ONNX shape inference (every axis but the batch is static, so sympy-based symbolic inference
        # is not needed) lets the quantizer see each tensor; graph optimisation is skipped
        # so the front-end node names we exclude survive.
        quant_pre_process(str(fp32_path), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_path),
            _WindowReader(calibration_windows),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return Path(out_path)

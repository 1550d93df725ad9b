"""One branch graph: log-mel front end -> pooling -> standardization -> linear -> sigmoid.

Outputs `scores` (probabilities, so the manifest's activation is "none"), `embedding`
(the pooled features before standardization) and `mel` (the log-mel the TUI draws). The
head runs in float64 on the float32 `mel` the graph exposes, the same input and the same
arithmetic as the numpy model in trainer/tiny_head.py, so their scores agree to the
float32 rounding of the output.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from exporter.frontend import LogMelParams, log_mel_nodes, make_model

POOLINGS = ("mean,max",)
"""Poolings this builder knows; trainer.tiny_head.POOLING names the one a head used."""


def build_linear_head_model(
    params: LogMelParams,
    window_samples: int,
    mean: np.ndarray,
    scale: np.ndarray,
    weights: np.ndarray,
    bias: np.ndarray,
    pooling: str = "mean,max",
) -> onnx.ModelProto:
    """The branch ONNX for a pooled linear head over the in-graph log-mel.

    Args:
        params: the front end (built from the manifest dict it came from).
        window_samples: the branch's fixed window length.
        mean, scale: per-feature standardization, [features].
        weights: [features, labels]; bias: [labels].
        pooling: how each mel band is pooled over time (one of POOLINGS).

    Raises:
        ValueError: shapes that do not fit the front end, or an unknown pooling.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
    features = 2 * params.n_mels
    mean, scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
    weights, bias = np.asarray(weights, np.float64), np.asarray(bias, np.float64)
    if mean.shape != (features,) or scale.shape != (features,) or weights.shape[0] != features:
        raise ValueError(
            f"head shapes mean {mean.shape}, scale {scale.shape}, weights {weights.shape} do not fit "
            f"{features} pooled features ({params.n_mels} bands x {pooling})"
        )
    if bias.shape != (weights.shape[1],) or not (scale > 0).all():
        raise ValueError(f"bias {bias.shape} must match weights' {weights.shape[1]} labels, and every scale be > 0")
    labels = weights.shape[1]
    nodes, inits = log_mel_nodes(params, "waveform", "mel")
    inits += [
        numpy_helper.from_array(mean, "head/mean"),
        numpy_helper.from_array(scale, "head/scale"),
        numpy_helper.from_array(weights, "head/weights"),
        numpy_helper.from_array(bias, "head/bias"),
    ]
    nodes += [
        helper.make_node("Cast", ["mel"], ["head/mel64"], to=TensorProto.DOUBLE),
        helper.make_node("ReduceMean", ["head/mel64"], ["head/band_mean"], axes=[2], keepdims=0),
        helper.make_node("ReduceMax", ["head/mel64"], ["head/band_max"], axes=[2], keepdims=0),
        helper.make_node("Concat", ["head/band_mean", "head/band_max"], ["head/pooled"], axis=1),
        helper.make_node("Cast", ["head/pooled"], ["embedding"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["head/pooled", "head/mean"], ["head/centred"]),
        helper.make_node("Div", ["head/centred", "head/scale"], ["head/standard"]),
        helper.make_node("MatMul", ["head/standard", "head/weights"], ["head/product"]),
        helper.make_node("Add", ["head/product", "head/bias"], ["head/logits"]),
        helper.make_node("Sigmoid", ["head/logits"], ["head/probabilities"]),
        helper.make_node("Cast", ["head/probabilities"], ["scores"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "pooled_linear_head",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", window_samples])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", labels]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", features]),
            helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["batch", params.n_mels, params.n_frames(window_samples)]),
        ],
        inits,
    )
    return make_model(graph, f"log-mel ({params.n_mels} bands) -> {pooling} pooling -> linear -> sigmoid over {labels} labels")

"""The ONNX fusion of the default bundle: BirdNET's site scores plus a head on its embedding.

The device feeds the fusion graph what the manifest's `fusion.inputs` name, in that order
(device/engine/engine.py): BirdNET's `scores` (sigmoid probabilities over its site labels,
max-pooled over the crops of the 5 s window) and its `embedding` (mean over the crops). The
graph returns one probability per manifest label, in manifest order:

- a label BirdNET scores takes BirdNET's probability unchanged (its birds, and the Little
  Tinamou: BirdNET learnt it from many recordings, the head would have one 8 s clip);
- a label only the head knows (frogs) takes the head's calibrated probability:
  sigmoid(a * (((embedding - mean) / scale) @ W + b) + c), computed in float64 exactly as
  `exporter.head_artefacts.EmbeddingHead.scores` does, so the two agree to float32 rounding.

- a label both score is refused unless it is named in `combined` (label -> odds factor k):
  then, and only then, the graph takes the larger of the head's calibrated probability and
  BirdNET's score moved onto the head's scale, k p / (k p + (1 - p)) (i.e. sigmoid(logit(p) +
  log k), exactly 0 and 1 at p = 0 and 1). The trainer fits k out of fold so that BirdNET's own threshold
  lands on the head's (trainer/birdnet_families.py); today that is Gryllidae and Tettigoniidae,
  whose BirdNET score is the family maximum over BirdNET's own crickets and katydids
  (exporter/birdnet/restrict.py). Any other overlap is still refused: the choice of source is a
  decision to make (and justify) in the artefact, not in the graph builder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from exporter.frontend import make_model

SCORES_INPUT = "birdnet_scores"
EMBEDDING_INPUT = "birdnet_embedding"
OUTPUT = "scores"


def source_order(bird_labels: Sequence[str], head_labels: Sequence[str], manifest_labels: Sequence[str],
                 combined: Sequence[str] = ()) -> np.ndarray:
    """For each manifest label, its column in [BirdNET scores ++ head scores ++ combined scores].

    Args:
        combined: the labels both score whose two scores the graph combines (in this order).

    Raises:
        ValueError: a manifest label nobody scores, a label both score that is not `combined`, a
            `combined` label one source lacks, or a scored label the manifest lacks (each named).
    """
    both = set(bird_labels) & set(head_labels)
    refused = sorted(both - set(combined))
    if refused:
        raise ValueError(f"labels {refused} are scored by BirdNET and by the head; pick one source for each "
                         "or combine them explicitly")
    lacking = [label for label in combined if label not in both]
    if lacking:
        raise ValueError(f"labels {lacking} are to be combined but are not scored by both BirdNET and the head")
    columns = {label: i for i, label in enumerate([*bird_labels, *head_labels]) if label not in both}
    columns.update({label: len(bird_labels) + len(head_labels) + k for k, label in enumerate(combined)})
    unscored = [label for label in manifest_labels if label not in columns]
    if unscored:
        raise ValueError(f"manifest labels {unscored[:5]} are scored by neither BirdNET nor the head")
    unlisted = sorted(set(columns) - set(manifest_labels))
    if unlisted:
        raise ValueError(f"scored labels {unlisted[:5]} are not in the manifest")
    return np.array([columns[label] for label in manifest_labels], dtype=np.int64)


def build_fusion_model(
    bird_labels: Sequence[str],
    head_labels: Sequence[str],
    manifest_labels: Sequence[str],
    mean: np.ndarray,
    scale: np.ndarray,
    weights: np.ndarray,
    bias: np.ndarray,
    calibration: Sequence[float],
    combined: Mapping[str, float] | None = None,
) -> onnx.ModelProto:
    """The fusion graph: inputs `birdnet_scores` [batch, BirdNET's labels], `birdnet_embedding`
    [batch, dim]; output `scores` [batch, manifest labels].

    Args:
        bird_labels: BirdNET's site labels, in its output order.
        head_labels: the head's labels, in its weight columns' order.
        manifest_labels: every manifest label, in manifest order.
        mean, scale: per-feature standardization [dim]; weights [dim, head labels]; bias [head labels].
        calibration: (a, c) of the head's Platt scaling.
        combined: label -> odds factor k (> 0) for each label both score (see the module doc).

    Raises:
        ValueError: shapes that disagree, a non-positive scale or odds factor, or labels
            `source_order` refuses.
    """
    combined = dict(combined or {})
    order = source_order(bird_labels, head_labels, manifest_labels, list(combined))
    if not all(np.isfinite(k) and k > 0 for k in combined.values()):
        raise ValueError(f"odds factors {combined} must be finite and > 0")
    mean, scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
    weights, bias = np.asarray(weights, np.float64), np.asarray(bias, np.float64)
    dim = mean.shape[0]
    if scale.shape != (dim,) or weights.shape != (dim, len(head_labels)) or bias.shape != (len(head_labels),):
        raise ValueError(f"head shapes mean {mean.shape}, scale {scale.shape}, weights {weights.shape}, "
                         f"bias {bias.shape} do not fit {dim} features and {len(head_labels)} labels")
    if not (scale > 0).all():
        raise ValueError("every feature scale must be > 0")
    a, c = (float(v) for v in calibration)
    inits = [
        numpy_helper.from_array(mean, "head/mean"),
        numpy_helper.from_array(scale, "head/scale"),
        numpy_helper.from_array(weights, "head/weights"),
        numpy_helper.from_array(bias, "head/bias"),
        numpy_helper.from_array(np.array(a, np.float64), "head/platt_a"),
        numpy_helper.from_array(np.array(c, np.float64), "head/platt_c"),
        numpy_helper.from_array(order, "fusion/order"),
    ]
    sources = [SCORES_INPUT, "head/probabilities"]
    nodes = [
        helper.make_node("Cast", [EMBEDDING_INPUT], ["head/embedding64"], to=TensorProto.DOUBLE),
        helper.make_node("Sub", ["head/embedding64", "head/mean"], ["head/centred"]),
        helper.make_node("Div", ["head/centred", "head/scale"], ["head/standard"]),
        helper.make_node("MatMul", ["head/standard", "head/weights"], ["head/product"]),
        helper.make_node("Add", ["head/product", "head/bias"], ["head/logits"]),
        helper.make_node("Mul", ["head/logits", "head/platt_a"], ["head/scaled"]),
        helper.make_node("Add", ["head/scaled", "head/platt_c"], ["head/calibrated"]),
        helper.make_node("Sigmoid", ["head/calibrated"], ["head/probabilities64"]),
        helper.make_node("Cast", ["head/probabilities64"], ["head/probabilities"], to=TensorProto.FLOAT),
    ]
    if combined:
        bird_cols, head_cols, factors = zip(*combined_columns(bird_labels, head_labels, combined))
        k = np.array(factors, np.float64)
        inits += [numpy_helper.from_array(np.array(bird_cols, np.int64), "both/birdnet_columns"),
                  numpy_helper.from_array(np.array(head_cols, np.int64), "both/head_columns"),
                  numpy_helper.from_array(k, "both/odds"), numpy_helper.from_array(np.array(1.0, np.float64), "both/one")]
        nodes += [
            helper.make_node("Cast", [SCORES_INPUT], ["both/birdnet64"], to=TensorProto.DOUBLE),
            helper.make_node("Gather", ["both/birdnet64", "both/birdnet_columns"], ["both/p"], axis=1),
            helper.make_node("Mul", ["both/p", "both/odds"], ["both/kp"]),
            helper.make_node("Sub", ["both/one", "both/p"], ["both/q"]),
            helper.make_node("Add", ["both/kp", "both/q"], ["both/denominator"]),  # k p + (1 - p) > 0
            helper.make_node("Div", ["both/kp", "both/denominator"], ["both/shifted"]),
            helper.make_node("Gather", ["head/probabilities64", "both/head_columns"], ["both/head"], axis=1),
            helper.make_node("Max", ["both/head", "both/shifted"], ["both/combined64"]),
            helper.make_node("Cast", ["both/combined64"], ["both/combined"], to=TensorProto.FLOAT),
        ]
        sources.append("both/combined")
    nodes += [helper.make_node("Concat", sources, ["fusion/sources"], axis=1),
              helper.make_node("Gather", ["fusion/sources", "fusion/order"], [OUTPUT], axis=1)]
    graph = helper.make_graph(
        nodes,
        "birdnet_plus_embedding_head",
        [
            helper.make_tensor_value_info(SCORES_INPUT, TensorProto.FLOAT, ["batch", len(bird_labels)]),
            helper.make_tensor_value_info(EMBEDDING_INPUT, TensorProto.FLOAT, ["batch", dim]),
        ],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", len(manifest_labels)])],
        inits,
    )
    return make_model(
        graph,
        f"{len(bird_labels)} BirdNET scores passed through + a calibrated linear head on the {dim}-d "
        f"embedding for {len(head_labels)} labels" + (f", {len(combined)} labels the larger of both "
                                                     f"(head; BirdNET odds x k)" if combined else "")
        + f" -> {len(manifest_labels)} manifest labels",
    )


def combined_columns(bird_labels: Sequence[str], head_labels: Sequence[str],
                     combined: Mapping[str, float]) -> list[tuple[int, int, float]]:
    """(BirdNET column, head column, odds factor) of each combined label, in `combined` order."""
    return [(list(bird_labels).index(label), list(head_labels).index(label), float(k)) for label, k in combined.items()]


def fusion_reference(bird_scores: np.ndarray, head_scores: np.ndarray, order: np.ndarray,
                     combined: Sequence[tuple[int, int, float]] = ()) -> np.ndarray:
    """What the graph computes, from BirdNET's scores and the head's (numpy) probabilities.

    Args:
        combined: `combined_columns(...)`, for a graph built with `combined`.
    """
    from exporter.head_artefacts import combine

    bird, head = np.asarray(bird_scores, np.float64), np.asarray(head_scores, np.float64)
    both = [combine(head[:, h], bird[:, b], k)[:, None] for b, h, k in combined]
    return np.concatenate([bird, head, *both], axis=1)[:, order]

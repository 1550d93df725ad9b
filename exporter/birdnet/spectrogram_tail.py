"""Peephole: BirdNET's spectrogram tail computed in the layout the CNN reads, its constants folded.

After the framed convolution (`framing.py`) each of BirdNET's two spectrograms runs, as lowered
operator for operator: Transpose to [B, T, 96] -> Mul(x, x) -> Pow(c) -> reverse the mel axis ->
Transpose back -> Unsqueeze; the two are concatenated on a last axis of 2 (NHWC), the batch norm
scales and shifts that axis, and a Transpose makes it NCHW for the first convolution. Element-wise
ops broadcasting over an innermost axis of 2 are onnxruntime's slow path: the batch norm and its
Transpose were 7 of the model's 57 ms per window (profiled, one thread), as much as the
2048-tap spectrogram itself.

The same values, computed directly in NCHW: the reversal of the mel axis is a reversal of the
convolution's output channels, so its kernels are stored reversed; the batch norm's scale `a > 0`
moves inside the power, `a * (x * x) ** c == ((s * x) * (s * x)) ** c` with `s = a ** (1 / (2c))`,
so it scales the kernels too; its shift is one scalar Add; each spectrogram is Unsqueezed to
[B, 1, 96, T] and the two are concatenated on the channel axis. The power is `Exp(c * Log(x * x))`,
which onnxruntime vectorises (its Pow calls `std::pow` per element); `x * x == 0` gives
`Log = -inf` and `Exp(-inf) = 0`, the same zero Pow gives. The conversion's checks (the
classifier's recomputed logits here, LiteRT's outputs at every bundle build) hold the result.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

INT64_MIN = -(2**63)


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.consts = {t.name: t for t in self.graph.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def const(self, name: str) -> np.ndarray | None:
        return numpy_helper.to_array(self.consts[name]) if name in self.consts else None

    def only_consumer(self, name: str, op_type: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None


def _attr(node: onnx.NodeProto, name: str, default=None):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _scalar(g: _Graph, node: onnx.NodeProto) -> tuple[float, str] | None:
    """(c, x) of a node `x op c` whose other input is a one-element constant."""
    sides = [i for i, n in enumerate(node.input) if n in g.consts]
    if len(sides) != 1 or g.const(node.input[sides[0]]).size != 1:
        return None
    return float(g.const(node.input[sides[0]]).reshape(())), node.input[1 - sides[0]]


def _spectrogram_chain(g: _Graph, unsqueeze: onnx.NodeProto) -> dict | None:
    """The nodes from a framed Conv to the Unsqueeze(axis 3) that feeds the concatenation."""
    if unsqueeze.op_type != "Unsqueeze" or list(g.const(unsqueeze.input[1]).reshape(-1)) != [3]:
        return None
    producers = {o: n for n in g.graph.node for o in n.output}
    back = producers.get(unsqueeze.input[0])
    reverse = producers.get(back.input[0]) if back is not None and back.op_type == "Transpose" else None
    if back is None or list(_attr(back, "perm", [])) != [0, 2, 1] or reverse is None or reverse.op_type != "Slice":
        return None
    slice_args = [g.const(n) for n in reverse.input[1:]]
    if any(a is None for a in slice_args) or [int(a.reshape(-1)[0]) for a in slice_args] != [-1, INT64_MIN, 2, -1]:
        return None
    power = producers.get(reverse.input[0])
    exponent = _scalar(g, power) if power is not None and power.op_type == "Pow" else None
    square = producers.get(exponent[1]) if exponent else None
    if square is None or square.op_type != "Mul" or square.input[0] != square.input[1]:
        return None
    node, conv = square, None
    for _ in range(4):  # Reshape, Reshape, Transpose back to the Conv
        node = producers.get(node.input[0])
        if node is None:
            return None
        if node.op_type == "Conv":
            conv = node
            break
        if node.op_type not in ("Reshape", "Transpose"):
            return None
    if conv is None or len(conv.input) != 2 or conv.input[1] not in g.consts:
        return None
    kernel = g.const(conv.input[1])
    if kernel.ndim != 3 or kernel.shape[1] != 1:
        return None
    return {"conv": conv, "kernel": kernel, "exponent": exponent[0], "unsqueeze": unsqueeze}


def fuse_spectrogram_tail(model: onnx.ModelProto) -> bool:
    """Rewrite the two spectrograms' tail in place (see the module docstring).

    Returns:
        True when the pattern was found and rewritten; False (the model untouched) otherwise.
    """
    g = _Graph(model)
    for concat in (n for n in g.graph.node if n.op_type == "Concat" and _attr(n, "axis") == 3):
        chains = [_spectrogram_chain(g, next((n for n in g.graph.node if concat_input in n.output), None))
                  for concat_input in concat.input]
        if len(chains) < 2 or any(c is None for c in chains):
            continue
        scale = g.only_consumer(concat.output[0], "Mul")
        shift = g.only_consumer(scale.output[0], "Add") if scale else None
        to_nchw = g.only_consumer(shift.output[0], "Transpose") if shift else None
        if to_nchw is None or list(_attr(to_nchw, "perm", [])) != [0, 3, 1, 2]:
            continue
        a = [g.const(n) for n in scale.input if n in g.consts]
        b = [g.const(n) for n in shift.input if n in g.consts]
        if len(a) != 1 or len(b) != 1 or a[0].size != len(chains) or b[0].size != len(chains):
            continue
        a, b = a[0].astype(np.float64).reshape(-1), b[0].astype(np.float64).reshape(-1)
        if np.any(a <= 0):
            continue
        _rewrite(model, g, chains, a, b, concat, to_nchw)
        return True
    return False


def _rewrite(model, g: _Graph, chains: list[dict], a: np.ndarray, b: np.ndarray,
             concat: onnx.NodeProto, to_nchw: onnx.NodeProto) -> None:
    nodes, inits = [], []
    parts = []
    for i, chain in enumerate(chains):
        conv, c = chain["conv"], chain["exponent"]
        base = conv.name.rsplit("/", 1)[0] + "/nchw"
        s = a[i] ** (1.0 / (2.0 * c))
        kernel = (chain["kernel"].astype(np.float64)[::-1] * s).astype(np.float32)
        names = {k: f"{base}/{k}" for k in ("frames_weights", "spec", "square", "log", "scaled", "power", "exponent",
                                             "shift", "shifted", "axis", "channel")}
        inits += [numpy_helper.from_array(kernel, names["frames_weights"]),
                  numpy_helper.from_array(np.array(c, np.float32), names["exponent"]),
                  numpy_helper.from_array(np.array(b[i], np.float32), names["shift"]),
                  numpy_helper.from_array(np.array([1], np.int64), names["axis"])]
        nodes += [
            helper.make_node("Conv", [conv.input[0], names["frames_weights"]], [names["spec"]], names["spec"],
                             kernel_shape=list(_attr(conv, "kernel_shape")), strides=list(_attr(conv, "strides"))),
            helper.make_node("Mul", [names["spec"], names["spec"]], [names["square"]], names["square"]),
            helper.make_node("Log", [names["square"]], [names["log"]], names["log"]),
            helper.make_node("Mul", [names["log"], names["exponent"]], [names["scaled"]], names["scaled"]),
            helper.make_node("Exp", [names["scaled"]], [names["power"]], names["power"]),
            helper.make_node("Add", [names["power"], names["shift"]], [names["shifted"]], names["shifted"]),
            helper.make_node("Unsqueeze", [names["shifted"], names["axis"]], [names["channel"]], names["channel"]),
        ]
        parts.append(names["channel"])
    nodes.append(helper.make_node("Concat", parts, [to_nchw.output[0]], concat.name + "/nchw", axis=1))
    # Everything from the framed Convs to the Transpose is replaced, where the Transpose was (all
    # the new nodes' inputs are computed before it); the rest of the graph is kept.
    dead = _between(g, [c["conv"] for c in chains], to_nchw)
    at = sum(1 for n in g.graph.node[: list(g.graph.node).index(to_nchw)] if id(n) not in dead)
    kept = [n for n in g.graph.node if id(n) not in dead]
    new = kept[:at] + nodes + kept[at:]
    del g.graph.node[:]
    g.graph.node.extend(new)
    g.graph.initializer.extend(inits)
    used = {name for n in g.graph.node for name in n.input}
    keep = [t for t in g.graph.initializer if t.name in used]
    del g.graph.initializer[:]
    g.graph.initializer.extend(keep)


def _between(g: _Graph, starts: list[onnx.NodeProto], end: onnx.NodeProto) -> set[int]:
    """ids of the nodes on every path from `starts` to `end`, both ends included."""
    seen, stack = set(), list(starts)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node is end:
            continue
        for out in node.output:
            stack.extend(g.consumers.get(out, []))
    graph_outputs = {o.name for o in g.graph.output}
    after_end = {id(u) for o in end.output for u in g.consumers.get(o, [])}
    if after_end & seen or any(o in graph_outputs for n in g.graph.node if id(n) in seen and n is not end for o in n.output):
        raise ValueError("spectrogram tail: a path from the spectrograms bypasses the CNN's input")
    outside = [n for n in g.graph.node if id(n) in seen and n is not end and
               any(u is not None and id(u) not in seen for o in n.output for u in g.consumers.get(o, []))]
    if outside:
        raise ValueError(f"spectrogram tail: {outside[0].name} is read outside the rewritten nodes")
    return seen

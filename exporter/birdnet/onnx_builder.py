"""The ONNX side of the lowering: values with a layout, node and initializer bookkeeping.

TFLite stores images NHWC; ONNX convolutions want NCHW. Each emitted value therefore remembers its
layout, and a consumer asks for the layout it needs (``tfl`` or ``nchw``); a Transpose is inserted
once, on demand, and cached. Convolutions produce NCHW and element-wise ops keep whatever layout
they get, so the whole CNN runs NCHW with a single Transpose after the spectrogram.

A value may also carry a *pending linear map* on its last axis (``linear``, and ``imag`` for the
complex output of RFFT2D). The spectrogram is ``mel(real(rfft(frames)))``: two matrix products with
no non-linearity between them. Keeping the DFT pending until the mel FULLY_CONNECTED lets us emit one
[2048, 96] product instead of a [2048, 1025] DFT followed by a [1025, 96] filter bank: about 7x
fewer multiply-adds in the front end, computed in float64 once at conversion time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TFL, NCHW = "tfl", "nchw"
NHWC_TO_NCHW = (0, 3, 1, 2)
NCHW_TO_NHWC = (0, 2, 3, 1)


@dataclass(frozen=True)
class Value:
    """An emitted tensor: its ONNX name, layout, and an optional pending linear map on the last axis."""

    name: str
    layout: str = TFL
    linear: np.ndarray | None = None
    """Real part map [K_in, K_out]: the true tensor is ``name @ linear`` (``name`` has K_in last)."""
    imag: np.ndarray | None = None
    """Imaginary part map, present only on the complex output of RFFT2D."""

    @property
    def is_complex(self) -> bool:
        return self.imag is not None


class OnnxBuilder:
    """Accumulates nodes and initializers with unique, readable names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._used: set[str] = set()
        self._const_cache: dict[tuple, str] = {}

    def unique(self, hint: str) -> str:
        """A fresh name from ``hint`` (a TFLite layer name plus a role suffix)."""
        base = re.sub(r"[^A-Za-z0-9_./:-]", "_", hint) or "t"
        name, i = base, 1
        while name in self._used:
            i += 1
            name = f"{base}_{i}"
        self._used.add(name)
        return name

    def reserve(self, name: str) -> None:
        if name in self._used:
            raise ValueError(f"duplicate ONNX name {name!r}")
        self._used.add(name)

    def const(self, array: np.ndarray, hint: str) -> str:
        """An initializer holding ``array``; identical small integer constants (shapes, axes) are shared.

        Float constants are never shared: onnxruntime's quantizer renames a bias it meets twice by
        appending a digit, which can collide with an existing tensor name and rewire the graph.
        """
        array = np.ascontiguousarray(array)
        key = None
        if array.size <= 64 and array.dtype.kind in "iu":
            key = (array.dtype.str, array.shape, array.tobytes())
            if key in self._const_cache:
                return self._const_cache[key]
        name = self.unique(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        if key is not None:
            self._const_cache[key] = name
        return name

    def i64(self, values, hint: str) -> str:
        return self.const(np.asarray(values, dtype=np.int64), hint)

    def node(self, op_type: str, inputs: list[str], hint: str, n_out: int = 1, **attrs) -> str | list[str]:
        """Append a node; returns its output name (or names when ``n_out`` > 1)."""
        outs = [self.unique(hint if n_out == 1 else f"{hint}:{k}") for k in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=outs[0], **attrs))
        return outs[0] if n_out == 1 else outs

    def rename_output(self, old: str, new: str) -> None:
        """Give a produced tensor its public name (``logits``, ``embedding``) in place."""
        self.reserve(new)
        for node in self.nodes:
            for seq in (node.input, node.output):
                for k, name in enumerate(seq):
                    if name == old:
                        seq[k] = new

    def _live_nodes(self, wanted: set[str]) -> list[onnx.NodeProto]:
        """Nodes the outputs depend on, in order: peepholes leave the chains they replaced dead."""
        needed, live = set(wanted), []
        for node in reversed(self.nodes):
            if needed.intersection(node.output):
                live.append(node)
                needed.update(node.input)
        return live[::-1]

    def model(
        self,
        inputs: list[onnx.ValueInfoProto],
        outputs: list[onnx.ValueInfoProto],
        opset: int,
        ir_version: int,
        graph_name: str,
    ) -> onnx.ModelProto:
        nodes = self._live_nodes({o.name for o in outputs})
        used = {i for n in nodes for i in n.input}
        inits = [t for t in self.initializers if t.name in used]
        graph = helper.make_graph(nodes, graph_name, inputs, outputs, initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = ir_version
        return model


def float_input(name: str, shape: tuple[int, ...], batch_name: str = "batch") -> onnx.ValueInfoProto:
    """A float32 graph input/output whose -1 axes become the symbolic ``batch`` dimension."""
    dims = [batch_name if d < 0 else int(d) for d in shape]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def nhwc_const_to_nchw(array: np.ndarray) -> np.ndarray:
    """Lay out a constant that broadcasts against an NHWC tensor so it broadcasts against NCHW."""
    if array.ndim == 0:
        return array
    four = array.reshape((1,) * (4 - array.ndim) + array.shape)
    return four.transpose(NHWC_TO_NCHW)

"""Static shapes and folded values for every tensor of a TFLite graph.

BirdNET's front end computes its framing from the input's run-time shape (SHAPE -> SPLIT_V ->
FLOOR_DIV -> RANGE -> GATHER ...), and every squeeze-excitation block rebuilds its reshape target
from SHAPE -> STRIDED_SLICE -> PACK. With a fixed 144000-sample input all of that integer arithmetic
is known at conversion time except the batch size. We evaluate the graph abstractly (shapes for
activations, numpy values for integer and constant tensors) for two different batch sizes: whatever
differs between the two runs depends on the batch and must stay dynamic in the ONNX graph; the rest
is folded into constants. Two probes instead of symbolic algebra keep this short and exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exporter.birdnet.tflite_graph import TflGraph, TflOp

# Two batch sizes above 1, so that broadcasting against a size-1 axis cannot hide a batch axis.
PROBE_BATCHES = (2, 3)
# Values are only computed for tensors this small: shape arithmetic and frame indices, never audio.
MAX_FOLD_ELEMENTS = 1 << 20
_SAME, _VALID = 0, 1  # tflite.Padding


@dataclass(frozen=True)
class Abstract:
    """What one probe knows about a tensor: its concrete shape, and its value where foldable."""

    shape: tuple[int, ...]
    value: np.ndarray | None = None


@dataclass(frozen=True)
class StaticTensor:
    """A tensor's static description across probes."""

    shape: tuple[int, ...]
    """The shape, with -1 on axes that follow the batch size."""
    value: np.ndarray | None
    """The folded value when it is known and the same for every batch size, else None."""
    batch_dependent_value: bool
    """True when the value is known per probe but changes with the batch (reshape targets)."""
    probes: tuple[Abstract, ...]


class StaticGraph:
    """Static facts about every tensor of ``graph``, computed by probing it at two batch sizes."""

    def __init__(self, graph: TflGraph, input_shape: tuple[int, ...]):
        """Probe ``graph`` with its single input fixed to ``input_shape`` (batch axis first, any size)."""
        if len(graph.inputs) != 1:
            raise ValueError(f"expected a single model input, found {len(graph.inputs)}")
        self.graph = graph
        runs = [_probe(graph, (b, *input_shape[1:])) for b in PROBE_BATCHES]
        self.tensors: dict[int, StaticTensor] = {}
        for index in runs[0]:
            a, b = runs[0][index], runs[1][index]
            if len(a.shape) != len(b.shape):
                raise ValueError(f"tensor {graph.tensors[index].name}: rank changes with the batch size")
            shape = tuple(x if x == y else -1 for x, y in zip(a.shape, b.shape))
            value, dependent = None, False
            if a.value is not None and b.value is not None:
                if a.value.shape == b.value.shape and np.array_equal(a.value, b.value):
                    value = a.value
                else:
                    dependent = True
            self.tensors[index] = StaticTensor(shape, value, dependent, (a, b))

    def __getitem__(self, index: int) -> StaticTensor:
        return self.tensors[index]


def _probe(graph: TflGraph, input_shape: tuple[int, ...]) -> dict[int, Abstract]:
    known: dict[int, Abstract] = {}
    for t in graph.tensors:
        if t.data is not None:
            known[t.index] = Abstract(t.data.shape, t.data)
    known[graph.inputs[0]] = Abstract(tuple(input_shape))
    for op in graph.ops:
        rule = _RULES.get(op.kind)
        if rule is None:
            raise NotImplementedError(f"operator {op.index} {op.kind}: no conversion rule")
        ins = [known[i] if i >= 0 else None for i in op.inputs]
        try:
            outs = rule(op, ins, graph)
        except (ValueError, IndexError, TypeError) as exc:
            raise ValueError(f"operator {op.index} {op.kind}: cannot infer shapes ({exc})") from exc
        for index, out in zip(op.outputs, outs):
            value = out.value
            if value is not None and value.size > MAX_FOLD_ELEMENTS:
                value = None
            if value is not None:
                value = value.astype(graph.tensors[index].dtype, copy=False)
            known[index] = Abstract(tuple(int(d) for d in out.shape), value)
    return known


# --- rules: each returns one Abstract per output --------------------------------------------------


def _values(ins):
    return None if any(a is None or a.value is None for a in ins) else [a.value for a in ins]


def _elementwise(fn):
    def rule(op, ins, graph):
        vals = _values(ins)
        shape = np.broadcast_shapes(*(a.shape for a in ins))
        if vals is not None:
            v = np.asarray(fn(*vals))
            return [Abstract(v.shape, v)]
        return [Abstract(shape)]

    return rule


def _unary_shape(op, ins, graph):
    return [Abstract(ins[0].shape)]


def _dummy(a: Abstract) -> np.ndarray:
    """A zero-stride stand-in array of ``a``'s shape: numpy indexing on it yields result shapes."""
    if a.value is not None:
        return a.value
    return np.broadcast_to(np.zeros((), np.int8), a.shape)


def _reduce(fn):
    def rule(op, ins, graph):
        axes = tuple(int(a) % len(ins[0].shape) for a in np.atleast_1d(ins[1].value))
        keep = bool(op.options.get("KeepDims", False))
        if ins[0].value is not None:
            v = np.asarray(fn(ins[0].value, axis=axes, keepdims=keep))
            return [Abstract(v.shape, v)]
        shape = [1 if i in axes else d for i, d in enumerate(ins[0].shape)] if keep else [
            d for i, d in enumerate(ins[0].shape) if i not in axes
        ]
        return [Abstract(tuple(shape))]

    return rule


def _shape(op, ins, graph):
    v = np.array(ins[0].shape, np.int32)
    return [Abstract(v.shape, v)]


def _split_v(op, ins, graph):
    sizes = [int(s) for s in ins[1].value]
    axis = int(ins[2].value) % len(ins[0].shape)
    if -1 in sizes:
        sizes[sizes.index(-1)] = ins[0].shape[axis] - (sum(sizes) + 1)
    bounds = np.cumsum(sizes)[:-1]
    parts = np.split(_dummy(ins[0]), bounds, axis=axis)
    return [Abstract(p.shape, p if ins[0].value is not None else None) for p in parts]


def reshape_target(op: TflOp, ins, graph) -> tuple[int, ...]:
    """The concrete output shape of a RESHAPE in one probe (resolving its single -1)."""
    if len(ins) > 1 and ins[1] is not None and ins[1].value is not None:
        target = [int(d) for d in np.atleast_1d(ins[1].value)]
    else:
        target = [int(d) for d in op.options.get("NewShape", [])]
    total = int(np.prod(ins[0].shape))
    if -1 in target:
        rest = int(np.prod([d for d in target if d != -1]))
        target[target.index(-1)] = total // rest if rest else 0
    if int(np.prod(target)) != total:
        raise ValueError(f"cannot reshape {ins[0].shape} to {target}")
    return tuple(target)


def _reshape(op, ins, graph):
    target = reshape_target(op, ins, graph)
    v = ins[0].value.reshape(target) if ins[0].value is not None else None
    return [Abstract(target, v)]


def _pack(op, ins, graph):
    axis = int(op.options.get("Axis", 0))
    vals = _values(ins)
    if vals is not None:
        v = np.stack(vals, axis=axis)
        return [Abstract(v.shape, v)]
    shape = list(ins[0].shape)
    shape.insert(axis % (len(shape) + 1), len(ins))
    return [Abstract(tuple(shape))]


def _concat(op, ins, graph):
    axis = int(op.options.get("Axis", 0)) % len(ins[0].shape)
    vals = _values(ins)
    if vals is not None:
        v = np.concatenate(vals, axis=axis)
        return [Abstract(v.shape, v)]
    shape = list(ins[0].shape)
    shape[axis] = sum(a.shape[axis] for a in ins)
    return [Abstract(tuple(shape))]


def strided_slices(op: TflOp, begin, end, strides, rank: int) -> tuple[tuple[slice | int, ...], tuple[int, ...]]:
    """TF strided-slice semantics as numpy indices (plus which axes shrink away).

    Raises:
        NotImplementedError: ellipsis or new-axis masks (BirdNET uses neither).
    """
    o = op.options
    if o.get("EllipsisMask", 0) or o.get("NewAxisMask", 0) or o.get("Offset", False):
        raise NotImplementedError(f"operator {op.index} STRIDED_SLICE: ellipsis/new-axis/offset masks")
    index: list[slice | int] = []
    shrink = []
    for i in range(rank):
        if i >= len(begin):
            index.append(slice(None))
            continue
        b = None if o.get("BeginMask", 0) >> i & 1 else int(begin[i])
        e = None if o.get("EndMask", 0) >> i & 1 else int(end[i])
        s = int(strides[i])
        if o.get("ShrinkAxisMask", 0) >> i & 1:
            index.append(int(begin[i]))
            shrink.append(i)
        else:
            index.append(slice(b, e, s))
    return tuple(index), tuple(shrink)


def _strided_slice(op, ins, graph):
    index, _ = strided_slices(op, ins[1].value, ins[2].value, ins[3].value, len(ins[0].shape))
    out = _dummy(ins[0])[index]
    return [Abstract(np.shape(out), np.asarray(out) if ins[0].value is not None else None)]


def _range(op, ins, graph):
    vals = _values(ins)
    if vals is None:
        raise ValueError("RANGE bounds are not static")
    v = np.arange(int(vals[0]), int(vals[1]), int(vals[2]))
    return [Abstract(v.shape, v)]


def _gather(op, ins, graph):
    axis = int(op.options.get("Axis", 0)) % len(ins[0].shape)
    if op.options.get("BatchDims", 0):
        raise NotImplementedError("GATHER with batch_dims")
    idx = ins[1]
    if idx.value is None:
        raise ValueError("GATHER indices are not static")
    if ins[0].value is not None:
        v = np.take(ins[0].value, idx.value, axis=axis)
        return [Abstract(v.shape, v)]
    shape = ins[0].shape[:axis] + tuple(idx.value.shape) + ins[0].shape[axis + 1 :]
    return [Abstract(shape)]


def _expand_dims(op, ins, graph):
    axis = int(np.asarray(ins[1].value).reshape(-1)[0])
    return [Abstract(np.expand_dims(_dummy(ins[0]), axis).shape, _maybe(ins[0], lambda v: np.expand_dims(v, axis)))]


def _squeeze(op, ins, graph):
    dims = op.options.get("SqueezeDims") or [i for i, d in enumerate(ins[0].shape) if d == 1]
    axes = tuple(int(d) for d in dims)
    return [Abstract(np.squeeze(_dummy(ins[0]), axes).shape, _maybe(ins[0], lambda v: np.squeeze(v, axes)))]


def _transpose(op, ins, graph):
    perm = tuple(int(p) for p in ins[1].value)
    return [Abstract(tuple(ins[0].shape[p] for p in perm), _maybe(ins[0], lambda v: v.transpose(perm)))]


def _reverse(op, ins, graph):
    axes = tuple(int(a) for a in np.atleast_1d(ins[1].value))
    return [Abstract(ins[0].shape, _maybe(ins[0], lambda v: np.flip(v, axes)))]


def _maybe(a: Abstract, fn):
    return None if a.value is None else np.asarray(fn(a.value))


def _rfft2d(op, ins, graph):
    fft = [int(n) for n in ins[1].value]
    return [Abstract(ins[0].shape[:-2] + (fft[0], fft[1] // 2 + 1))]


def _fully_connected(op, ins, graph):
    units, depth = ins[1].shape
    if op.options.get("KeepNumDims", False):
        return [Abstract(ins[0].shape[:-1] + (units,))]
    return [Abstract((int(np.prod(ins[0].shape)) // depth, units))]


def conv_geometry(size: int, kernel: int, stride: int, dilation: int, padding: int) -> tuple[int, int, int]:
    """Output size and (before, after) padding of one spatial axis under TFLite's SAME/VALID rules.

    TF's SAME pads the extra odd pixel at the end (ONNX SAME_UPPER); we emit explicit pads instead.
    """
    effective = (kernel - 1) * dilation + 1
    if padding == _VALID:
        return (size - effective) // stride + 1, 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return out, total // 2, total - total // 2


def _conv(op, ins, graph):
    n, h, w, _ = ins[0].shape
    o = op.options
    kernel = ins[1].shape
    kh, kw = kernel[1], kernel[2]
    oh = conv_geometry(h, kh, o["StrideH"], o.get("DilationHFactor", 1), o["Padding"])[0]
    ow = conv_geometry(w, kw, o["StrideW"], o.get("DilationWFactor", 1), o["Padding"])[0]
    return [Abstract((n, oh, ow, kernel[3] if op.kind == "DEPTHWISE_CONV_2D" else kernel[0]))]


def _pool(op, ins, graph):
    n, h, w, c = ins[0].shape
    o = op.options
    oh = conv_geometry(h, o["FilterHeight"], o["StrideH"], 1, o["Padding"])[0]
    ow = conv_geometry(w, o["FilterWidth"], o["StrideW"], 1, o["Padding"])[0]
    return [Abstract((n, oh, ow, c))]


def _pad(op, ins, graph):
    pads = np.asarray(ins[1].value).reshape(-1, 2)
    shape = tuple(d + int(p[0]) + int(p[1]) for d, p in zip(ins[0].shape, pads))
    return [Abstract(shape, _maybe(ins[0], lambda v: np.pad(v, pads)))]


def _cast(op, ins, graph):
    return [Abstract(ins[0].shape, ins[0].value)]


_RULES = {
    "ADD": _elementwise(np.add),
    "SUB": _elementwise(np.subtract),
    "MUL": _elementwise(np.multiply),
    "DIV": _elementwise(np.divide),
    "FLOOR_DIV": _elementwise(np.floor_divide),
    "MAXIMUM": _elementwise(np.maximum),
    "MINIMUM": _elementwise(np.minimum),
    "POW": _elementwise(np.power),
    "LOGISTIC": _unary_shape,
    "RELU": _unary_shape,
    "TANH": _unary_shape,
    "REDUCE_MIN": _reduce(np.min),
    "REDUCE_MAX": _reduce(np.max),
    "REDUCE_PROD": _reduce(np.prod),
    "SUM": _reduce(np.sum),
    "MEAN": _reduce(np.mean),
    "SHAPE": _shape,
    "SPLIT_V": _split_v,
    "RESHAPE": _reshape,
    "PACK": _pack,
    "CONCATENATION": _concat,
    "STRIDED_SLICE": _strided_slice,
    "RANGE": _range,
    "GATHER": _gather,
    "EXPAND_DIMS": _expand_dims,
    "SQUEEZE": _squeeze,
    "TRANSPOSE": _transpose,
    "REVERSE_V2": _reverse,
    "RFFT2D": _rfft2d,
    "CAST": _cast,
    "FULLY_CONNECTED": _fully_connected,
    "CONV_2D": _conv,
    "DEPTHWISE_CONV_2D": _conv,
    "AVERAGE_POOL_2D": _pool,
    "MAX_POOL_2D": _pool,
    "PAD": _pad,
}

"""Read a TFLite flatbuffer into plain Python objects the converter can walk.

Why not TensorFlow: the default bundle must be buildable on an operator machine (or a Pi) without a
500 MB TensorFlow install. The flatbuffer schema is all we need, and the small pure-Python ``tflite``
package (generated from that schema) reads it. This module is the only one that touches that package,
so every other module sees dataclasses and numpy arrays.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

try:
    import tflite
except ImportError as exc:  # pragma: no cover - exercised only where the extra is missing
    raise ImportError(
        "reading a .tflite model needs the 'tflite' package (pip install 'tflite>=2.18'); "
        "it is pure Python and pulls no TensorFlow"
    ) from exc

# TFLite tensor type enum -> numpy dtype. COMPLEX64 has no data in BirdNET (only RFFT2D outputs) but
# the converter must know a tensor is complex to lower RFFT2D correctly.
_DTYPES: dict[int, np.dtype] = {
    tflite.TensorType.FLOAT32: np.dtype(np.float32),
    tflite.TensorType.FLOAT16: np.dtype(np.float16),
    tflite.TensorType.INT32: np.dtype(np.int32),
    tflite.TensorType.INT64: np.dtype(np.int64),
    tflite.TensorType.UINT8: np.dtype(np.uint8),
    tflite.TensorType.INT8: np.dtype(np.int8),
    tflite.TensorType.BOOL: np.dtype(np.bool_),
    tflite.TensorType.COMPLEX64: np.dtype(np.complex64),
}
_OPCODE_NAMES = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
_OPTION_CLASS_NAMES = {v: k for k, v in vars(tflite.BuiltinOptions).items() if not k.startswith("_")}
# Accessors generated for flatbuffer tables that are not option values.
_SKIP_ACCESSOR = re.compile(r"^(Init|GetRootAs.*|.*BufferHasIdentifier|.*IsNone|.*Length)$")


@dataclass(frozen=True)
class TflTensor:
    """One tensor of the graph."""

    index: int
    name: str
    shape: tuple[int, ...]
    """Shape signature: -1 marks a dimension that is only known at run time (the batch, frame counts)."""
    dtype: np.dtype
    data: np.ndarray | None = field(default=None, repr=False, compare=False)
    """The constant value (weights, shape constants), or None for activations."""


@dataclass(frozen=True)
class TflOp:
    """One operator: its builtin name, tensor indices (-1 = optional input left out) and options."""

    index: int
    kind: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict[str, object]


@dataclass(frozen=True)
class TflGraph:
    """The first (and for BirdNET only) subgraph of a model."""

    tensors: tuple[TflTensor, ...]
    ops: tuple[TflOp, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def consumers(self, tensor: int) -> list[TflOp]:
        """Operators reading ``tensor``, in graph order."""
        return [op for op in self.ops if tensor in op.inputs]

    def producer(self, tensor: int) -> TflOp | None:
        """The operator writing ``tensor`` (None for inputs and constants)."""
        for op in self.ops:
            if tensor in op.outputs:
                return op
        return None


def read_tflite(path: Path) -> TflGraph:
    """Parse a .tflite file.

    Raises:
        ValueError: the file is not a TFLite flatbuffer, holds several subgraphs, or uses a custom op
            or tensor type this reader does not know (naming which).
    """
    buf = Path(path).read_bytes()
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise ValueError(f"{path}: not a TFLite flatbuffer (missing the 'TFL3' identifier)")
    model = tflite.Model.GetRootAsModel(buf, 0)
    if model.SubgraphsLength() != 1:
        raise ValueError(f"{path}: expected one subgraph, found {model.SubgraphsLength()}")
    graph = model.Subgraphs(0)
    opcodes = [_opcode_name(model.OperatorCodes(i), path) for i in range(model.OperatorCodesLength())]
    tensors = tuple(_read_tensor(model, graph, i, path) for i in range(graph.TensorsLength()))
    ops = []
    for j in range(graph.OperatorsLength()):
        op = graph.Operators(j)
        ops.append(
            TflOp(
                index=j,
                kind=opcodes[op.OpcodeIndex()],
                inputs=tuple(int(i) for i in op.InputsAsNumpy()) if op.InputsLength() else (),
                outputs=tuple(int(i) for i in op.OutputsAsNumpy()),
                options=_read_options(op),
            )
        )
    return TflGraph(
        tensors=tensors,
        ops=tuple(ops),
        inputs=tuple(int(i) for i in graph.InputsAsNumpy()),
        outputs=tuple(int(i) for i in graph.OutputsAsNumpy()),
    )


def _opcode_name(code, path: Path) -> str:
    # Builtin codes above 127 live in BuiltinCode(); older files only fill DeprecatedBuiltinCode().
    value = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    if value == tflite.BuiltinOperator.CUSTOM:
        raise ValueError(f"{path}: custom operator {code.CustomCode()!r} cannot be converted")
    return _OPCODE_NAMES.get(value, f"UNKNOWN_{value}")


def _read_tensor(model, graph, index: int, path: Path) -> TflTensor:
    t = graph.Tensors(index)
    if t.Type() not in _DTYPES:
        raise ValueError(f"{path}: tensor {index} ({t.Name().decode()}) has unsupported type {t.Type()}")
    dtype = _DTYPES[t.Type()]
    if t.ShapeSignatureLength():
        shape = tuple(int(d) for d in t.ShapeSignatureAsNumpy())
    else:
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
    data = None
    buffer = model.Buffers(t.Buffer())
    if buffer is not None and buffer.DataLength():
        raw = buffer.DataAsNumpy().tobytes()
        static_shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        data = np.frombuffer(raw, dtype=dtype).reshape(static_shape).copy()
    elif t.Buffer() > 0 and t.ShapeLength() and 0 in t.ShapeAsNumpy():
        # An empty constant (e.g. the [] target of a reshape to a scalar) owns a buffer with no bytes.
        data = np.zeros(tuple(int(d) for d in t.ShapeAsNumpy()), dtype)
    return TflTensor(index=index, name=t.Name().decode(), shape=shape, dtype=dtype, data=data)


def _read_options(op) -> dict[str, object]:
    """Every scalar and array field of the op's options table, keyed by the schema's field name."""
    table = op.BuiltinOptions()
    if table is None:
        return {}
    cls_name = _OPTION_CLASS_NAMES.get(op.BuiltinOptionsType())
    cls = getattr(tflite, cls_name, None) if cls_name else None
    if cls is None:
        return {}
    options = cls()
    options.Init(table.Bytes, table.Pos)
    out: dict[str, object] = {}
    for name, fn in vars(cls).items():
        if name.startswith("_") or _SKIP_ACCESSOR.match(name) or not callable(fn):
            continue
        params = list(inspect.signature(fn).parameters)
        if params == ["self"]:
            value = getattr(options, name)()
            if name.endswith("AsNumpy"):
                name = name[: -len("AsNumpy")]
                value = np.asarray(value).tolist() if not isinstance(value, int) else []
            out[name] = value
    return out

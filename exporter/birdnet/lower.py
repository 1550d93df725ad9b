"""Lower a TFLite graph to ONNX, operator by operator.

Everything integer (shape arithmetic, frame indices) was folded by :mod:`exporter.birdnet.static`;
what is left to emit is float data flow. Each handler maps one TFLite builtin to ONNX nodes; the
layout and pending-linear machinery lives in :mod:`exporter.birdnet.onnx_builder`.
Unsupported operators or option combinations raise ``NotImplementedError`` naming the operator.
"""

from __future__ import annotations

import numpy as np
import onnx

from exporter.birdnet.framing import fold_framed_linear
from exporter.birdnet.lower_movement import SAME_ORDER_NCHW, MovementOps
from exporter.birdnet.onnx_builder import (
    NCHW,
    NCHW_TO_NHWC,
    NHWC_TO_NCHW,
    TFL,
    OnnxBuilder,
    Value,
    float_input,
    nhwc_const_to_nchw,
)
from exporter.birdnet.static import StaticGraph, conv_geometry
from exporter.birdnet.tflite_graph import TflGraph, TflOp

# Opset 17 runs on every onnxruntime the device accepts (>= 1.17 supports up to opset 20) and keeps
# Reduce* axes as attributes. IR version 8 is what onnxruntime 1.17 reads; newer onnx packages would
# otherwise stamp an IR version an older Pi-side runtime refuses.
OPSET = 17
IR_VERSION = 8


class Lowering(MovementOps):
    """One conversion run: walks ``graph`` in order and emits ONNX nodes into a builder."""

    def __init__(self, graph: TflGraph, static: StaticGraph, fold_dft: bool = True, frames_as_conv: bool = True):
        """Lower ``graph``; the two flags switch off the front-end folds (to measure what they buy).

        Args:
            fold_dft: fold the DFT into the mel filter bank (one matrix instead of two products).
            frames_as_conv: emit framing + folded matrix as a strided Conv (see framing.py).
        """
        self.fold_dft = fold_dft
        self.frames_as_conv = frames_as_conv and fold_dft
        self.g = graph
        self.s = static
        self.b = OnnxBuilder()
        self.values: dict[int, Value] = {}
        self._layout_cache: dict[tuple[str, str], str] = {}
        self._materialized: dict[str, str] = {}

    # --- public ------------------------------------------------------------------------------------

    def run(self, input_name: str, outputs: dict[int, str], graph_name: str) -> onnx.ModelProto:
        """Emit the graph. ``outputs`` maps TFLite tensor indices to public output names."""
        (inp,) = self.g.inputs
        self.b.reserve(input_name)
        self.values[inp] = Value(input_name)
        for op in self.g.ops:
            if all(self._folded(i) for i in op.outputs):
                continue
            handler = getattr(self, f"_op_{op.kind.lower()}", None)
            if handler is None:
                raise NotImplementedError(f"operator {op.index} {op.kind}: no ONNX lowering")
            handler(op)
        out_infos = []
        for index, public in outputs.items():
            name = self.tfl(index)
            produced = {o for n in self.b.nodes for o in n.output}
            if name not in produced or name in {v for v in outputs.values()}:
                # Inputs and constants cannot be renamed; give the output its own node.
                name = self.b.node("Identity", [name], public + "_identity")
            self.b.rename_output(name, public)
            out_infos.append(float_input(public, self.s[index].shape))
        in_info = float_input(input_name, self.s[inp].shape)
        return self.b.model([in_info], out_infos, OPSET, IR_VERSION, graph_name)

    # --- value access ------------------------------------------------------------------------------

    def _folded(self, index: int) -> bool:
        st = self.s[index]
        return st.value is not None or st.batch_dependent_value

    def static_value(self, index: int, what: str) -> np.ndarray:
        v = self.s[index].value
        if v is None:
            raise NotImplementedError(f"{what} (tensor {self.g.tensors[index].name}) is not a conversion-time constant")
        return v

    def _hint(self, index: int) -> str:
        # TFLite joins the names of fused tensors with ';'; the first one names the layer.
        return self.g.tensors[index].name.split(";")[0]

    def value(self, index: int) -> Value:
        if index in self.values:
            return self.values[index]
        st = self.s[index]
        if st.value is None:
            raise NotImplementedError(f"tensor {self._hint(index)} is used before it is produced")
        dtype = np.float32 if st.value.dtype.kind == "f" else st.value.dtype
        return Value(self.b.const(st.value.astype(dtype), self._hint(index)))

    def materialize(self, v: Value, hint: str) -> Value:
        """Apply a pending linear map (one MatMul) so the value can feed any operator."""
        if v.is_complex:
            raise NotImplementedError(f"{hint}: complex tensors are only supported when cast to their real part")
        if v.linear is None:
            return v
        key = f"{v.name}@{id(v.linear)}"
        if key not in self._materialized:
            w = self.b.const(v.linear.astype(np.float32), hint + "/dft")
            self._materialized[key] = self.b.node("MatMul", [v.name, w], hint)
        return Value(self._materialized[key], v.layout)

    def in_layout(self, index: int, layout: str) -> str:
        """Tensor ``index`` as an ONNX name in ``layout``, transposing (once, cached) if needed."""
        v = self.materialize(self.value(index), self._hint(index))
        rank = len(self.s[index].shape)
        if v.layout == layout or rank != 4:
            return v.name
        key = (v.name, layout)
        if key not in self._layout_cache:
            perm = NHWC_TO_NCHW if layout == NCHW else NCHW_TO_NHWC
            self._layout_cache[key] = self.b.node("Transpose", [v.name], f"{v.name}/{layout}", perm=list(perm))
        return self._layout_cache[key]

    def tfl(self, index: int) -> str:
        return self.in_layout(index, TFL)

    def nchw(self, index: int) -> str:
        return self.in_layout(index, NCHW)

    def _set(self, op: TflOp, name: str, layout: str = TFL, k: int = 0) -> None:
        self.values[op.outputs[k]] = Value(name, layout)

    def _shape(self, index: int) -> tuple[int, ...]:
        return self.s[index].shape

    def _spatial(self, index: int, op: TflOp) -> tuple[int, int]:
        _, h, w, _ = self._shape(index)
        if h < 0 or w < 0:
            raise NotImplementedError(f"operator {op.index} {op.kind}: spatial size depends on the batch")
        return h, w

    def _activation(self, op: TflOp, name: str) -> str:
        act = int(op.options.get("FusedActivationFunction", 0))
        hint = self._hint(op.outputs[0])
        if act == 0:
            return name
        if act == 1:
            return self.b.node("Relu", [name], hint + "/relu")
        if act in (2, 3):
            lo, hi = (-1.0, 1.0) if act == 2 else (0.0, 6.0)
            lo_n = self.b.const(np.array(lo, np.float32), "clip_lo")
            hi_n = self.b.const(np.array(hi, np.float32), "clip_hi")
            return self.b.node("Clip", [name, lo_n, hi_n], hint + "/clip")
        if act == 4:
            return self.b.node("Tanh", [name], hint + "/tanh")
        raise NotImplementedError(f"operator {op.index} {op.kind}: fused activation {act}")

    # --- element-wise ------------------------------------------------------------------------------

    def _binary(self, op: TflOp, onnx_op: str) -> None:
        a, c = op.inputs[:2]
        hint = self._hint(op.outputs[0])
        consts = [self.s[i].value is not None for i in (a, c)]
        runtime = [i for i, k in zip((a, c), consts) if not k]
        four = [len(self._shape(i)) == 4 for i in runtime]
        layout = TFL
        if all(four) and any(self.value(i).layout == NCHW for i in runtime):
            layout = NCHW
        names = []
        for i, is_const in zip((a, c), consts):
            if is_const:
                arr = self.s[i].value.astype(np.float32)
                if layout == NCHW:
                    arr = nhwc_const_to_nchw(arr)
                names.append(self.b.const(arr, f"{hint}/{self._hint(i).split('/')[-1]}"))
            else:
                names.append(self.in_layout(i, layout))
        out = self.b.node(onnx_op, names, hint)
        self._set(op, self._activation(op, out), layout)

    def _op_add(self, op):
        self._binary(op, "Add")

    def _op_sub(self, op):
        self._binary(op, "Sub")

    def _op_mul(self, op):
        self._binary(op, "Mul")

    def _op_div(self, op):
        self._binary(op, "Div")

    def _op_pow(self, op):
        self._binary(op, "Pow")

    def _op_maximum(self, op):
        self._binary(op, "Max")

    def _op_minimum(self, op):
        self._binary(op, "Min")

    def _unary(self, op: TflOp, onnx_op: str) -> None:
        v = self.materialize(self.value(op.inputs[0]), self._hint(op.inputs[0]))
        self._set(op, self.b.node(onnx_op, [v.name], self._hint(op.outputs[0])), v.layout)

    def _op_logistic(self, op):
        self._unary(op, "Sigmoid")

    def _op_relu(self, op):
        self._unary(op, "Relu")

    def _op_tanh(self, op):
        self._unary(op, "Tanh")

    # --- reductions --------------------------------------------------------------------------------

    def _reduce(self, op: TflOp, onnx_op: str) -> None:
        x = op.inputs[0]
        rank = len(self._shape(x))
        axes = sorted(int(a) % rank for a in np.atleast_1d(self.static_value(op.inputs[1], "reduction axes")))
        keep = bool(op.options.get("KeepDims", False))
        v = self.value(x)
        layout = TFL
        if rank == 4 and v.layout == NCHW and v.linear is None:
            mapped = [SAME_ORDER_NCHW[a] for a in axes]
            left = [a for a in range(4) if a not in axes]
            left_mapped = [SAME_ORDER_NCHW[a] for a in left]
            if keep or left_mapped == sorted(left_mapped):
                layout, axes = NCHW, sorted(mapped)
        name = self.in_layout(x, layout)
        out = self.b.node(onnx_op, [name], self._hint(op.outputs[0]), axes=axes, keepdims=int(keep))
        self._set(op, out, layout if keep else TFL)

    def _op_mean(self, op):
        self._reduce(op, "ReduceMean")

    def _op_reduce_min(self, op):
        self._reduce(op, "ReduceMin")

    def _op_reduce_max(self, op):
        self._reduce(op, "ReduceMax")

    # --- spectral ----------------------------------------------------------------------------------

    def _op_rfft2d(self, op: TflOp) -> None:
        x = op.inputs[0]
        fft = [int(n) for n in self.static_value(op.inputs[1], "fft_length")]
        shape = self._shape(x)
        if fft[0] != 1 or shape[-2] != 1 or shape[-1] != fft[1]:
            raise NotImplementedError(f"operator {op.index} RFFT2D: only a 1 x N transform of length-N rows is supported")
        n = fft[1]
        k = np.arange(n // 2 + 1)
        angle = 2.0 * np.pi * np.outer(np.arange(n), k) / n
        self.values[op.outputs[0]] = Value(self.tfl(x), TFL, np.cos(angle), -np.sin(angle))

    # --- dense and convolution ---------------------------------------------------------------------

    def _op_fully_connected(self, op: TflOp) -> None:
        x, w_index = op.inputs[:2]
        bias = op.inputs[2] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        weights = self.static_value(w_index, "fully-connected weights").astype(np.float64)
        units, depth = weights.shape
        hint = self._hint(op.outputs[0])
        if op.options.get("KeepNumDims", False):
            raise NotImplementedError(f"operator {op.index} FULLY_CONNECTED with keep_num_dims")
        v = self.value(x)
        folded = self.fold_dft and v.linear is not None and not v.is_complex and len(self._shape(x)) == 2
        if folded:
            # Fold the pending DFT into the filter bank: one [K_in, units] product, in float64.
            matrix = v.linear @ weights.T
            name = v.name
        else:
            matrix = weights.T
            name = self.tfl(x)
            if len(self._shape(x)) != 2:
                name = self.b.node("Reshape", [name, self.b.i64([-1, depth], hint + "/flat")], hint + "/flat")
        out = fold_framed_linear(self.b, name, matrix, hint) if folded and self.frames_as_conv else None
        if out is None:
            out = self.b.node("MatMul", [name, self.b.const(matrix.astype(np.float32), hint + "/weights")], hint)
        if bias is not None:
            bias_name = self.b.const(self.static_value(bias, "bias").astype(np.float32), hint + "/bias")
            out = self.b.node("Add", [out, bias_name], hint + "/bias")
        self._set(op, self._activation(op, out))

    def _conv_like(self, op: TflOp, weights: np.ndarray, group: int, kernel: tuple[int, int]) -> None:
        x = op.inputs[0]
        o = op.options
        h, w = self._spatial(x, op)
        dil = (o.get("DilationHFactor", 1), o.get("DilationWFactor", 1))
        _, ht, hb = conv_geometry(h, kernel[0], o["StrideH"], dil[0], o["Padding"])
        _, wl, wr = conv_geometry(w, kernel[1], o["StrideW"], dil[1], o["Padding"])
        hint = self._hint(op.outputs[0])
        # Parameters are named after the op's output: TFLite shares bias tensors between layers, and
        # one initializer per node keeps per-node quantization (and its naming) unambiguous.
        ins = [self.nchw(x), self.b.const(weights.astype(np.float32), hint + "/weights")]
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            ins.append(self.b.const(self.static_value(op.inputs[2], "conv bias").astype(np.float32), hint + "/bias"))
        out = self.b.node(
            "Conv", ins, hint, strides=[o["StrideH"], o["StrideW"]], pads=[ht, wl, hb, wr],
            dilations=list(dil), group=group, kernel_shape=list(kernel),
        )
        self._set(op, self._activation(op, out), NCHW)

    def _op_conv_2d(self, op: TflOp) -> None:
        w = self.static_value(op.inputs[1], "conv weights")  # [O, KH, KW, I]
        c_in = self._shape(op.inputs[0])[3]
        self._conv_like(op, w.transpose(0, 3, 1, 2), c_in // w.shape[3], (w.shape[1], w.shape[2]))

    def _op_depthwise_conv_2d(self, op: TflOp) -> None:
        w = self.static_value(op.inputs[1], "depthwise weights")  # [1, KH, KW, C * M]
        c_in = self._shape(op.inputs[0])[3]
        self._conv_like(op, w.transpose(3, 0, 1, 2), c_in, (w.shape[1], w.shape[2]))

    def _pool(self, op: TflOp, onnx_op: str) -> None:
        x = op.inputs[0]
        o = op.options
        h, w = self._spatial(x, op)
        kernel = (o["FilterHeight"], o["FilterWidth"])
        _, ht, hb = conv_geometry(h, kernel[0], o["StrideH"], 1, o["Padding"])
        _, wl, wr = conv_geometry(w, kernel[1], o["StrideW"], 1, o["Padding"])
        attrs = dict(kernel_shape=list(kernel), strides=[o["StrideH"], o["StrideW"]], pads=[ht, wl, hb, wr])
        if onnx_op == "AveragePool":
            attrs["count_include_pad"] = 0  # TF's SAME average ignores the padded cells
        out = self.b.node(onnx_op, [self.nchw(x)], self._hint(op.outputs[0]), **attrs)
        self._set(op, self._activation(op, out), NCHW)

    def _op_average_pool_2d(self, op):
        self._pool(op, "AveragePool")

    def _op_max_pool_2d(self, op):
        self._pool(op, "MaxPool")

"""Data-movement operators of the lowering: reshapes, slices, gathers, padding, concatenation.

A mixin of :class:`exporter.birdnet.lower.Lowering`, split out to keep each module readable; it
uses the Lowering's value access (``value``, ``tfl``, ``in_layout``, ``static_value``, ``_set``).
Each handler keeps NCHW where the element order allows it and otherwise asks for TFLite's layout.
"""

from __future__ import annotations

import numpy as np

from exporter.birdnet.onnx_builder import NCHW, NHWC_TO_NCHW, TFL, Value
from exporter.birdnet.static import strided_slices
from exporter.birdnet.tflite_graph import TflOp

INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min
SAME_ORDER_NCHW = {0: 0, 1: 2, 2: 3, 3: 1}
"""NHWC axis -> NCHW axis."""


class MovementOps:
    """TFLite data-movement builtins as ONNX nodes."""

    def _reshape_dims(self, shape: tuple[int, ...], op: TflOp) -> list[int]:
        if sum(d < 0 for d in shape) > 1:
            raise NotImplementedError(f"operator {op.index} {op.kind}: more than one dynamic axis in {shape}")
        return [int(d) for d in shape]

    def _op_reshape(self, op: TflOp) -> None:
        x, out_index = op.inputs[0], op.outputs[0]
        hint = self._hint(out_index)
        target = self._shape(out_index)
        v = self.value(x)
        if v.linear is not None and not v.is_complex and target[-1] == v.linear.shape[1]:
            dims = self._reshape_dims(target[:-1] + (v.linear.shape[0],), op)
            out = self.b.node("Reshape", [v.name, self.b.i64(dims, hint + "/shape")], hint)
            self.values[out_index] = Value(out, TFL, v.linear)
            return
        in_shape = self._shape(x)
        if v.layout == NCHW and len(in_shape) == 4 and v.linear is None and _same_flat_order(in_shape):
            name = v.name
        else:
            name = self.tfl(x)
        layout = TFL
        dims = self._reshape_dims(target, op)
        if len(target) == 4 and _same_flat_order(target):
            dims, layout = [dims[p] for p in NHWC_TO_NCHW], NCHW
        out = self.b.node("Reshape", [name, self.b.i64(dims, hint + "/shape")], hint)
        self._set(op, out, layout)

    def _op_squeeze(self, op: TflOp) -> None:
        x = op.inputs[0]
        rank = len(self._shape(x))
        dims = op.options.get("SqueezeDims") or [i for i, d in enumerate(self._shape(x)) if d == 1]
        axes = sorted(int(d) % rank for d in dims)
        hint = self._hint(op.outputs[0])
        v = self.value(x)
        if v.linear is not None and rank - 1 not in axes:
            out = self.b.node("Squeeze", [v.name, self.b.i64(axes, hint + "/axes")], hint)
            self.values[op.outputs[0]] = Value(out, TFL, v.linear, v.imag)
            return
        out = self.b.node("Squeeze", [self.tfl(x), self.b.i64(axes, hint + "/axes")], hint)
        self._set(op, out)

    def _op_expand_dims(self, op: TflOp) -> None:
        x = op.inputs[0]
        axis = int(np.asarray(self.static_value(op.inputs[1], "expand axis")).reshape(-1)[0])
        axis = axis % (len(self._shape(x)) + 1)
        hint = self._hint(op.outputs[0])
        out = self.b.node("Unsqueeze", [self.tfl(x), self.b.i64([axis], hint + "/axes")], hint)
        self._set(op, out)

    def _op_transpose(self, op: TflOp) -> None:
        perm = [int(p) for p in self.static_value(op.inputs[1], "transpose permutation")]
        out = self.b.node("Transpose", [self.tfl(op.inputs[0])], self._hint(op.outputs[0]), perm=perm)
        self._set(op, out)

    def _op_reverse_v2(self, op: TflOp) -> None:
        x = op.inputs[0]
        rank = len(self._shape(x))
        axes = [int(a) % rank for a in np.atleast_1d(self.static_value(op.inputs[1], "reverse axes"))]
        hint = self._hint(op.outputs[0])
        n = len(axes)
        inputs = [
            self.tfl(x),
            self.b.i64([-1] * n, hint + "/starts"),
            self.b.i64([INT64_MIN] * n, hint + "/ends"),
            self.b.i64(axes, hint + "/axes"),
            self.b.i64([-1] * n, hint + "/steps"),
        ]
        self._set(op, self.b.node("Slice", inputs, hint))

    def _op_concatenation(self, op: TflOp) -> None:
        ins = list(op.inputs)
        rank = len(self._shape(ins[0]))
        axis = int(op.options.get("Axis", 0)) % rank
        runtime = [i for i in ins if self.s[i].value is None]
        layout = TFL
        if rank == 4 and any(self.value(i).layout == NCHW for i in runtime):
            layout, axis = NCHW, SAME_ORDER_NCHW[axis]
        names = []
        for i in ins:
            if self.s[i].value is not None and layout == NCHW:
                names.append(self.b.const(self.s[i].value.astype(np.float32).transpose(NHWC_TO_NCHW), self._hint(i)))
            else:
                names.append(self.in_layout(i, layout))
        out = self.b.node("Concat", names, self._hint(op.outputs[0]), axis=axis)
        self._set(op, self._activation(op, out), layout)

    def _op_gather(self, op: TflOp) -> None:
        x, idx = op.inputs[:2]
        axis = int(op.options.get("Axis", 0)) % len(self._shape(x))
        indices = self.static_value(idx, "gather indices")
        hint = self._hint(op.outputs[0])
        out = self.b.node("Gather", [self.tfl(x), self.b.const(indices, hint + "/indices")], hint, axis=axis)
        self._set(op, out)

    def _op_strided_slice(self, op: TflOp) -> None:
        x = op.inputs[0]
        rank = len(self._shape(x))
        starts, ends, axes, steps, shrink = [], [], [], [], ()
        per_probe = []
        for k, probe in enumerate(self.s[x].probes):
            b, e, st = (self.s[i].probes[k].value for i in op.inputs[1:4])
            index, shrink = strided_slices(op, b, e, st, rank)
            per_probe.append([(i if isinstance(i, int) else i.indices(probe.shape[a])) for a, i in enumerate(index)])
        for a in range(rank):
            p0, p1 = per_probe[0][a], per_probe[1][a]
            if isinstance(p0, int):
                if p0 != p1:
                    raise NotImplementedError(f"operator {op.index} STRIDED_SLICE: batch-dependent index")
                starts.append(p0)
                ends.append(p0 + 1 if p0 != -1 else INT64_MAX)
                axes.append(a)
                steps.append(1)
                continue
            full = [(0, self.s[x].probes[k].shape[a], 1) for k in range(2)]
            if p0 == full[0] and p1 == full[1]:
                continue
            if p0 != p1:
                raise NotImplementedError(f"operator {op.index} STRIDED_SLICE: batch-dependent bounds on axis {a}")
            starts.append(p0[0])
            ends.append(p0[1] if p0[1] >= 0 else INT64_MIN)
            axes.append(a)
            steps.append(p0[2])
        hint = self._hint(op.outputs[0])
        name = self.tfl(x)
        if axes:
            parts = {"starts": starts, "ends": ends, "axes": axes, "steps": steps}
            ins = [name] + [self.b.i64(v, f"{hint}/{n}") for n, v in parts.items()]
            name = self.b.node("Slice", ins, hint)
        if shrink:
            name = self.b.node("Squeeze", [name, self.b.i64(list(shrink), hint + "/shrink")], hint + "/squeeze")
        self._set(op, name)

    def _op_pad(self, op: TflOp) -> None:
        x = op.inputs[0]
        pads = np.asarray(self.static_value(op.inputs[1], "paddings")).reshape(-1, 2)
        v = self.value(x)
        layout = NCHW if len(pads) == 4 and v.layout == NCHW and v.linear is None else TFL
        if layout == NCHW:
            pads = pads[list(NHWC_TO_NCHW)]
        hint = self._hint(op.outputs[0])
        onnx_pads = [int(p) for p in pads[:, 0]] + [int(p) for p in pads[:, 1]]
        out = self.b.node("Pad", [self.in_layout(x, layout), self.b.i64(onnx_pads, hint + "/pads")], hint, mode="constant")
        self._set(op, out, layout)

    def _op_cast(self, op: TflOp) -> None:
        x = op.inputs[0]
        v = self.value(x)
        out_dtype = self.g.tensors[op.outputs[0]].dtype
        if v.is_complex and out_dtype == np.float32:
            # TFLite's complex -> float CAST keeps the real part (tf.cast semantics).
            self.values[op.outputs[0]] = Value(v.name, v.layout, v.linear)
            return
        if out_dtype == self.g.tensors[x].dtype:
            self.values[op.outputs[0]] = v
            return
        raise NotImplementedError(f"operator {op.index} CAST to {out_dtype} at run time")


def _same_flat_order(nhwc_shape: tuple[int, ...]) -> bool:
    """NHWC and NCHW hold the same element order when the image is 1x1 or has a single channel."""
    _, h, w, c = nhwc_shape
    return h * w == 1 or c == 1

"""A site-restricted BirdNET: the same network whose ``logits`` hold only the site's classes.

Two ways to restrict, both exact:

- ``slice`` (the default): keep only the chosen columns of the classifier weights and bias. The
  classifier becomes [1024, n_site] instead of [1024, 6522], and the file shrinks by ~26 MB
  (the 6522-class classifier is half of the 51 MB model) - what matters for shipping bundles to Pis.
- ``gather``: keep the full classifier and append a Gather over the output axis. Same output,
  no size saving; kept to measure what restricting the output alone buys (nothing, as measured).

The ``embedding`` output is untouched, so site heads trained on it keep working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper

from exporter.birdnet.convert import EMBEDDING_NAME, LOGITS_NAME


def restrict_to_classes(
    src: Path, dst: Path, indices: list[int] | tuple[int, ...], method: Literal["slice", "gather"] = "slice"
) -> Path:
    """Write a copy of ``src`` whose ``logits`` are ``logits[:, indices]`` of the original.

    Raises:
        ValueError: an index is out of range or repeated, or (``slice``) the logits are not
            produced by ``MatMul(embedding, W) + b`` with constant W and b.
    """
    model = onnx.load(str(src))
    graph = model.graph
    out = _output(graph, LOGITS_NAME)
    n_classes = out.type.tensor_type.shape.dim[1].dim_value
    idx = np.asarray(list(indices), dtype=np.int64)
    if idx.size == 0 or len(set(idx.tolist())) != idx.size or idx.min() < 0 or idx.max() >= n_classes:
        raise ValueError(f"{src}: class indices must be distinct and within 0..{n_classes - 1}")
    if method == "slice":
        _slice_classifier(graph, idx, src)
    elif method == "gather":
        _gather_output(graph, idx)
    else:
        raise ValueError(f"unknown restriction method {method!r}")
    out.type.tensor_type.shape.dim[1].dim_value = int(idx.size)
    props = {p.key: p.value for p in model.metadata_props}
    props["restricted_classes"] = str(int(idx.size))
    props["restricted_method"] = method
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return Path(dst)


def _output(graph: onnx.GraphProto, name: str) -> onnx.ValueInfoProto:
    for o in graph.output:
        if o.name == name:
            return o
    raise ValueError(f"the model has no {name!r} output")


def _slice_classifier(graph: onnx.GraphProto, idx: np.ndarray, src: Path) -> None:
    producers = {o: n for n in graph.node for o in n.output}
    inits = {t.name: t for t in graph.initializer}
    add = producers.get(LOGITS_NAME)
    matmul = producers.get(add.input[0]) if add is not None and add.op_type == "Add" else None
    if matmul is None or matmul.op_type != "MatMul" or matmul.input[0] != EMBEDDING_NAME:
        raise ValueError(f"{src}: logits are not MatMul(embedding, W) + b; cannot slice the classifier")
    w_name, b_name = matmul.input[1], add.input[1]
    if w_name not in inits or b_name not in inits:
        raise ValueError(f"{src}: classifier weights are not constants")
    for name, take in ((w_name, lambda a: a[:, idx]), (b_name, lambda a: a[idx])):
        if sum(name in n.input for n in graph.node) != 1:
            raise ValueError(f"{src}: classifier tensor {name!r} is shared with another node")
        sliced = numpy_helper.from_array(np.ascontiguousarray(take(numpy_helper.to_array(inits[name]))), name)
        inits[name].CopyFrom(sliced)


def _gather_output(graph: onnx.GraphProto, idx: np.ndarray) -> None:
    full = LOGITS_NAME + "_all"
    for node in graph.node:
        for k, name in enumerate(node.output):
            if name == LOGITS_NAME:
                node.output[k] = full
        for k, name in enumerate(node.input):
            if name == LOGITS_NAME:
                node.input[k] = full
    graph.initializer.append(numpy_helper.from_array(idx, LOGITS_NAME + "_classes"))
    graph.node.append(
        helper.make_node("Gather", [full, LOGITS_NAME + "_classes"], [LOGITS_NAME], name="site_classes", axis=1)
    )

"""A site-restricted BirdNET: the same network whose ``logits`` hold only the site's classes.

Two ways to restrict, both exact:

- ``slice`` (the default): keep only the chosen columns of the classifier weights and bias. The
  classifier becomes [1024, n_site] instead of [1024, 6522], and the file shrinks by ~26 MB
  (the 6522-class classifier is half of the 51 MB model) - what matters for shipping bundles to Pis.
- ``gather``: keep the full classifier and append a Gather over the output axis. Same output,
  no size saving; kept to measure what restricting the output alone buys (nothing, as measured).

The ``embedding`` output is untouched, so site heads trained on it keep working.

Context outputs: BirdNET also scores sounds that are not species (``CONTEXT_CLASSES``: Human
vocal, Dog, Engine, ...). Given ``context``, the restricted model keeps those columns as a SECOND
output, ``context_logits`` (``MatMul(embedding, W[:, context]) + b[context]`` with ``slice``, a
second Gather with ``gather``): the device scores them every window for its privacy filter and
stores them per detection, never as labels. Ten columns of 1024 weights add 41 KB and one small
MatMul: size and speed barely change (``python -m bench.default_cost``).

Family columns: given ``families`` (lists of class indices, e.g. BirdNET's four *Gryllus*
species), ``logits`` gains one further column per family after the site classes: the maximum
of those classes' logits (``ReduceMax`` over their columns of the classifier). The device applies
BirdNET's sigmoid to every column and max-pools over crops; the sigmoid is monotone, so the
column's probability is exactly the maximum of those species' probabilities: a family score
computed in the bundle (trainer/birdnet_families.py, exporter/fusion.py). Twenty-two columns
add 90 KB.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper

from exporter.birdnet.convert import EMBEDDING_NAME, LOGITS_NAME
from exporter.birdnet.labels import species_indices

CONTEXT_NAME = "context_logits"
"""The graph output holding the context classes' logits (the manifest's ``outputs.context.name``)."""
CONTEXT_CLASSES = (
    "Human vocal", "Human non-vocal", "Human whistle", "Dog", "Engine", "Siren", "Gun", "Fireworks",
    "Power tools", "Noise",
)
"""BirdNET V2.4's non-species classes that matter on a trail, by their exact label (BirdNET writes
them as ``"Human vocal_Human vocal"``): people talking (the privacy filter), a guide's whistle,
dogs, and the loud sounds BirdNET-Go users report false alarms under. Matched by the whole
scientific name, never a substring: a search for "Power" or "Owl" would take ``Ninox strenua``
(Powerful Owl), a bird."""


def context_indices(labels, names: tuple[str, ...] = CONTEXT_CLASSES) -> list[int]:
    """BirdNET's class index of each context class, in ``names`` order.

    Args:
        labels: ``exporter.birdnet.labels.read_birdnet_labels()``.

    Raises:
        ValueError: a name is not exactly one BirdNET label's scientific name.
    """
    return species_indices(labels, names)


def restrict_to_classes(
    src: Path, dst: Path, indices: list[int] | tuple[int, ...], method: Literal["slice", "gather"] = "slice",
    context: list[int] | tuple[int, ...] | None = None,
    families: list[list[int]] | tuple[tuple[int, ...], ...] | None = None,
) -> Path:
    """Write a copy of ``src`` whose ``logits`` are ``logits[:, indices]`` of the original,
    followed with ``families`` by one column per family, ``logits[:, family].max(axis=1)``,
    and, with ``context``, whose second output ``context_logits`` is ``logits[:, context]``.

    Raises:
        ValueError: an index is out of range or repeated (within ``indices``, within
            ``context`` or within a family), or (``slice``) the logits are not produced by
            ``MatMul(embedding, W) + b`` with constant W and b.
    """
    model = onnx.load(str(src))
    graph = model.graph
    out = _output(graph, LOGITS_NAME)
    n_classes = out.type.tensor_type.shape.dim[1].dim_value
    idx = _indices(indices, n_classes, src, "class")
    ctx = None if context is None else _indices(context, n_classes, src, "context class")
    fams = [_indices(f, n_classes, src, "family class") for f in families or ()]
    if method not in ("slice", "gather"):
        raise ValueError(f"unknown restriction method {method!r}")
    if method == "slice":
        _slice_classifier(graph, idx, src, ctx, fams)
    else:
        _gather_output(graph, idx, ctx)
    if fams:
        _append_families(graph, fams, method)
    out.type.tensor_type.shape.dim[1].dim_value = int(idx.size) + len(fams)
    if ctx is not None:
        context_out = copy.deepcopy(out)
        context_out.name = CONTEXT_NAME
        context_out.type.tensor_type.shape.dim[1].dim_value = int(ctx.size)
        graph.output.append(context_out)
    props = {p.key: p.value for p in model.metadata_props}
    props["restricted_classes"] = str(int(idx.size))
    props["restricted_method"] = method
    if ctx is not None:
        props["context_classes"] = str(int(ctx.size))
    if fams:
        props["family_columns"] = json.dumps([f.tolist() for f in fams])
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return Path(dst)


def _indices(values, n_classes: int, src: Path, what: str) -> np.ndarray:
    idx = np.asarray(list(values), dtype=np.int64)
    if idx.size == 0 or len(set(idx.tolist())) != idx.size or idx.min() < 0 or idx.max() >= n_classes:
        raise ValueError(f"{src}: {what} indices must be distinct and within 0..{n_classes - 1}")
    return idx


def _output(graph: onnx.GraphProto, name: str) -> onnx.ValueInfoProto:
    for o in graph.output:
        if o.name == name:
            return o
    raise ValueError(f"the model has no {name!r} output")


def _slice_classifier(graph: onnx.GraphProto, idx: np.ndarray, src: Path, ctx: np.ndarray | None,
                      fams: list[np.ndarray]) -> None:
    producers = {o: n for n in graph.node for o in n.output}
    inits = {t.name: t for t in graph.initializer}
    add = producers.get(LOGITS_NAME)
    matmul = producers.get(add.input[0]) if add is not None and add.op_type == "Add" else None
    if matmul is None or matmul.op_type != "MatMul" or matmul.input[0] != EMBEDDING_NAME:
        raise ValueError(f"{src}: logits are not MatMul(embedding, W) + b; cannot slice the classifier")
    w_name, b_name = matmul.input[1], add.input[1]
    if w_name not in inits or b_name not in inits:
        raise ValueError(f"{src}: classifier weights are not constants")
    for name in (w_name, b_name):
        if sum(name in n.input for n in graph.node) != 1:
            raise ValueError(f"{src}: classifier tensor {name!r} is shared with another node")
    weights, bias = numpy_helper.to_array(inits[w_name]), numpy_helper.to_array(inits[b_name])
    if ctx is not None:  # the context columns come out of the full classifier, before it is sliced
        w_ctx, b_ctx, product = CONTEXT_NAME + "_W", CONTEXT_NAME + "_b", CONTEXT_NAME + "_matmul"
        graph.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(weights[:, ctx]), w_ctx),
                                  numpy_helper.from_array(np.ascontiguousarray(bias[ctx]), b_ctx)])
        graph.node.extend([helper.make_node("MatMul", [EMBEDDING_NAME, w_ctx], [product], name="context_classifier"),
                           helper.make_node("Add", [product, b_ctx], [CONTEXT_NAME], name="context_bias")])
    if fams:  # the family species' columns, also from the full classifier: [batch, all family species]
        every = np.concatenate(fams)
        graph.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(weights[:, every]), FAMILY_PREFIX + "W"),
                                  numpy_helper.from_array(np.ascontiguousarray(bias[every]), FAMILY_PREFIX + "b")])
        graph.node.extend([
            helper.make_node("MatMul", [EMBEDDING_NAME, FAMILY_PREFIX + "W"], [FAMILY_PREFIX + "product"],
                             name="family_classifier"),
            helper.make_node("Add", [FAMILY_PREFIX + "product", FAMILY_PREFIX + "b"], [FAMILY_PREFIX + "species"],
                             name="family_bias")])
    inits[w_name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(weights[:, idx]), w_name))
    inits[b_name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(bias[idx]), b_name))


FAMILY_PREFIX = "family_"


def _append_families(graph: onnx.GraphProto, fams: list[np.ndarray], method: str) -> None:
    """`logits` := Concat(site logits, ReduceMax over each family's species logits)."""
    site = LOGITS_NAME + "_site"
    for node in graph.node:
        for k, name in enumerate(node.output):
            if name == LOGITS_NAME:
                node.output[k] = site
    # slice: the family MatMul holds the species columns family after family; gather: the full logits
    source = FAMILY_PREFIX + "species" if method == "slice" else LOGITS_NAME + "_all"
    starts = np.cumsum([0] + [f.size for f in fams])
    columns = []
    for k, fam in enumerate(fams):
        cols = np.arange(starts[k], starts[k + 1]) if method == "slice" else fam
        name = f"{FAMILY_PREFIX}{k}"
        graph.initializer.append(numpy_helper.from_array(cols.astype(np.int64), name + "_columns"))
        graph.node.extend([
            helper.make_node("Gather", [source, name + "_columns"], [name + "_logits"], name=name + "_gather", axis=1),
            helper.make_node("ReduceMax", [name + "_logits"], [name + "_max"], name=name + "_max", axes=[1],
                             keepdims=1)])
        columns.append(name + "_max")
    graph.node.append(helper.make_node("Concat", [site, *columns], [LOGITS_NAME], name="site_and_families", axis=1))


def _gather_output(graph: onnx.GraphProto, idx: np.ndarray, ctx: np.ndarray | None) -> None:
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
    if ctx is not None:
        graph.initializer.append(numpy_helper.from_array(ctx, CONTEXT_NAME + "_classes"))
        graph.node.append(helper.make_node("Gather", [full, CONTEXT_NAME + "_classes"], [CONTEXT_NAME],
                                           name="context_classes", axis=1))

"""The bundle's fusion from a trained `meta_mlp` ("explorer-meta-onnx/1", trainer/meta_export.py).

The artefact's `meta.onnx` takes every branch the meta was trained with plus a `present` [K]
flag vector. A bundle holds only some of those branches (the subset its budget allows), so its
fusion graph is the meta graph with `present` fixed as a constant (1 for a branch the bundle
has, 0 for the others) and each absent branch's input a zero tensor (the meta masks it away);
each present branch's input is the bundle branch's scores, reordered onto the meta's labels.
The meta was trained with branch dropout, and `meta.json` states its calibration on that exact
subset (measured on held-out rows).

Labels: a label the meta scores takes the meta's output. A label outside the meta's takes the
max of the sources' own scores for it (the heads' branch scores, the default model's fused
scores): the rule the bundle used before a meta existed, so no label loses its score.

The default model (`--with-default`): when the meta was trained with a branch named as the
default bundle's BirdNET branch, that input is the default model's fused scores (BirdNET plus
its embedding head, over the default manifest's labels), computed inside the graph. When it was
not, the default model stays outside the meta and each label takes the max of the meta's and
the default's scores (as `exporter.bundle_from.combined_fusion` does for heads).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from exporter.bundle_writer import ParityResult
from exporter.frontend import make_model

FORMAT = "explorer-meta-onnx/1"
MODEL_FILE, INFO_FILE, REFERENCE_FILE = "meta.onnx", "meta.json", "reference.npz"
PRESENT_INPUT, OUTPUT = "present", "scores"
PARITY_TOLERANCE = 1e-5
"""Probability: both sides run the same float32 arithmetic; measured differences are ~1e-7."""


class MetaError(ValueError):
    """A meta artefact folder that is incomplete or inconsistent (names the file and key)."""


@dataclass
class MetaArtefact:
    path: Path
    info: dict
    labels: list[str]
    branches: list[str]
    model: onnx.ModelProto
    inputs: dict[str, np.ndarray]
    """Reference inputs per branch, `[N, C]` in the meta's label order."""
    present: np.ndarray
    """`[S, K]` reference subsets."""
    scores: np.ndarray
    """`[S, N, C]` torch's output on each subset."""

    def calibration(self, present: Sequence[str]) -> dict | None:
        """The held-out calibration row of exactly this subset of branches, or None."""
        wanted = sorted(present)
        return next((row for row in self.info.get("calibration", []) if sorted(row["branches"]) == wanted), None)


def load_meta(path: Path) -> MetaArtefact:
    """The artefact at `path` (or in `path/fusion/`, a fit-meta run folder).

    Raises:
        MetaError: a file missing, another format, or reference arrays that do not fit.
    """
    path = Path(path)
    if not (path / INFO_FILE).is_file() and (path / "fusion" / INFO_FILE).is_file():
        path = path / "fusion"
    for name in (MODEL_FILE, INFO_FILE, REFERENCE_FILE):
        if not (path / name).is_file():
            raise MetaError(f"{path}: no {name}; not an {FORMAT} folder (explorer-train fit-meta writes one)")
    info = json.loads((path / INFO_FILE).read_text(encoding="utf-8"))
    if info.get("format") != FORMAT:
        raise MetaError(f"{path / INFO_FILE}: format {info.get('format')!r} is not {FORMAT!r}")
    labels, branches = list(info.get("labels") or []), list(info.get("branches") or [])
    if not labels or not branches:
        raise MetaError(f"{path / INFO_FILE}: 'labels' and 'branches' must be non-empty")
    with np.load(path / REFERENCE_FILE) as ref:
        arrays = dict(ref)
    try:
        inputs = {b: arrays[f"input/{b}"] for b in branches}
        present, scores = arrays["present"], arrays["scores"]
    except KeyError as exc:
        raise MetaError(f"{path / REFERENCE_FILE}: no array {exc}") from None
    rows = len(next(iter(inputs.values())))
    if present.shape[1:] != (len(branches),) or scores.shape != (len(present), rows, len(labels)):
        raise MetaError(f"{path / REFERENCE_FILE}: present {present.shape} / scores {scores.shape} do not fit "
                        f"{len(branches)} branches, {rows} rows, {len(labels)} labels")
    model = onnx.load(str(path / MODEL_FILE))
    names = [i.name for i in model.graph.input]
    if names != [*branches, PRESENT_INPUT] or [o.name for o in model.graph.output] != [OUTPUT]:
        raise MetaError(f"{path / MODEL_FILE}: inputs {names} are not {[*branches, PRESENT_INPUT]} -> {OUTPUT}")
    return MetaArtefact(path, info, labels, branches, model, inputs, present, scores)


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def meta_parity(artefact: MetaArtefact) -> ParityResult:
    """onnxruntime's `meta.onnx` against torch's output on every reference subset."""
    session = _session(artefact.model)
    got = np.stack([session.run([OUTPUT], {**artefact.inputs, PRESENT_INPUT: flags.astype(np.float32)})[0]
                    for flags in artefact.present])
    return ParityResult(branch="fusion", output=OUTPUT, max_abs_diff=float(np.abs(got - artefact.scores).max()),
                        tolerance=PARITY_TOLERANCE, unit="probability", reference="torch meta_mlp",
                        windows=int(len(artefact.scores[0])) * len(artefact.present), recordings=())


@dataclass
class DefaultSource:
    """The default bundle's fusion, embedded in the bundle's fusion graph."""

    model: onnx.ModelProto
    labels: list[str]
    """The default manifest's labels (its fusion output's order)."""
    branch: str
    """The default bundle's BirdNET branch name: a meta branch of this name is the default model."""


def build_meta_fusion(artefact: MetaArtefact, heads: Sequence[tuple[str, Sequence[str]]],
                      manifest_labels: Sequence[str], default: DefaultSource | None = None
                      ) -> tuple[onnx.ModelProto, list[str]]:
    """The bundle's fusion graph and the meta branches it fixes present.

    Inputs: the default fusion's (prefixed "default/") when `default`, then `<head>_scores`
    `[batch, head labels]` per head; output `scores` `[batch, manifest labels]`.

    Raises:
        ValueError: a head the meta was not trained with, a present branch lacking meta labels,
            no meta branch in the bundle, or a manifest label no source scores (each named).
    """
    unknown = [name for name, _ in heads if name not in artefact.branches]
    if unknown:
        raise ValueError(f"heads {unknown} are not branches of the meta fusion {artefact.branches} "
                         f"({artefact.path}); fit-meta names each branch as the bundle does")
    nodes, inits, inputs = [], [], []
    sources: dict[str, tuple[str, list[str]]] = {}
    if default is not None:
        inner = onnx.compose.add_prefix(default.model, "default/")
        nodes += list(inner.graph.node)
        inits += list(inner.graph.initializer)
        inputs += list(inner.graph.input)
        sources[default.branch] = (inner.graph.output[0].name, list(default.labels))
    for name, labels in heads:
        inputs.append(helper.make_tensor_value_info(f"{name}_scores", TensorProto.FLOAT, ["batch", len(labels)]))
        sources[name] = (f"{name}_scores", list(labels))
    present = [b for b in artefact.branches if b in sources]
    if not present:
        raise ValueError(f"the bundle has none of the meta's branches {artefact.branches}")
    meta = onnx.compose.add_prefix(artefact.model, "meta/")
    for b in present:
        tensor, labels = sources[b]
        lacking = [label for label in artefact.labels if label not in labels]
        if lacking:
            raise ValueError(f"branch {b} does not score the meta's labels {lacking[:5]}")
        inits.append(numpy_helper.from_array(np.array([labels.index(x) for x in artefact.labels], np.int64),
                                             f"meta_in/{b}_columns"))
        nodes.append(helper.make_node("Gather", [tensor, f"meta_in/{b}_columns"], [f"meta/{b}"], axis=1))
    for b in artefact.branches:
        if b not in sources:  # absent: zeros shaped like a present input (masked by present = 0)
            nodes += [helper.make_node("Shape", [f"meta/{present[0]}"], [f"meta_in/{b}_shape"]),
                      helper.make_node("ConstantOfShape", [f"meta_in/{b}_shape"], [f"meta/{b}"],
                                       value=numpy_helper.from_array(np.zeros(1, np.float32)))]
    flags = np.array([1.0 if b in sources else 0.0 for b in artefact.branches], np.float32)
    inits.append(numpy_helper.from_array(flags, f"meta/{PRESENT_INPUT}"))
    nodes += list(meta.graph.node)
    inits += list(meta.graph.initializer)
    columns_of = [("meta/" + OUTPUT, artefact.labels, True)]
    if default is not None and default.branch not in artefact.branches:
        columns_of.append((sources[default.branch][0], default.labels, True))  # today's max with the default
    columns_of += [(tensor, labels, False) for b, (tensor, labels) in sources.items()
                   if b != getattr(default, "branch", None) or default.branch in artefact.branches]
    meta_labels = set(artefact.labels)
    columns: dict[str, list[int]] = {}
    offset = 0
    for _, labels, over_meta in columns_of:
        for i, label in enumerate(labels):
            if over_meta or label not in meta_labels:
                columns.setdefault(label, []).append(offset + i)
        offset += len(labels)
    missing = [label for label in manifest_labels if label not in columns]
    if missing:
        raise ValueError(f"manifest labels {missing[:5]} are scored by no source")
    nodes.append(helper.make_node("Concat", [t for t, _, _ in columns_of], ["fused/sources"], axis=1))
    picked = []
    for s in range(max(len(c) for c in columns.values())):  # a label with fewer sources repeats its first
        index = np.array([columns[x][s] if s < len(columns[x]) else columns[x][0] for x in manifest_labels], np.int64)
        inits.append(numpy_helper.from_array(index, f"fused/slot{s}"))
        nodes.append(helper.make_node("Gather", ["fused/sources", f"fused/slot{s}"], [f"fused/picked{s}"], axis=1))
        picked.append(f"fused/picked{s}")
    nodes.append(helper.make_node("Max", picked, [OUTPUT]) if len(picked) > 1
                 else helper.make_node("Identity", picked, [OUTPUT]))
    graph = helper.make_graph(nodes, "meta_mlp_fusion", inputs,
                              [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", len(manifest_labels)])],
                              inits)
    doc = (f"meta_mlp over {present} (absent, fixed 0: {[b for b in artefact.branches if b not in sources]}); "
           f"labels outside the meta's {len(artefact.labels)}: max of the sources")
    return make_model(graph, doc), present


def fusion_parity(model: onnx.ModelProto, artefact: MetaArtefact, heads: Sequence[tuple[str, Sequence[str]]],
                  manifest_labels: Sequence[str]) -> ParityResult:
    """The bundle's fusion graph (heads only) on the reference inputs against torch's meta on that subset.

    Each head's input is the reference scores put in its own label order (0.5 for a label the
    meta lacks); the meta's labels of the output are compared.
    """
    names = {name for name, _ in heads}
    flags = np.array([b in names for b in artefact.branches], np.float32)
    which = next((s for s, row in enumerate(artefact.present) if np.array_equal(row, flags)), None)
    if which is None:
        raise ValueError(f"{artefact.path}: no reference for the subset {sorted(names)}")
    feeds = {}
    for name, labels in heads:
        ref = artefact.inputs[name]
        feeds[f"{name}_scores"] = np.stack([ref[:, artefact.labels.index(x)] if x in artefact.labels
                                            else np.full(len(ref), 0.5, np.float32) for x in labels], axis=1)
    got = _session(model).run([OUTPUT], feeds)[0]
    cols = [list(manifest_labels).index(x) for x in artefact.labels]
    return ParityResult(branch="fusion", output=OUTPUT, max_abs_diff=float(np.abs(got[:, cols] - artefact.scores[which]).max()),
                        tolerance=PARITY_TOLERANCE, unit="probability",
                        reference=f"torch meta_mlp on {'+'.join(sorted(names))}", windows=int(len(got)), recordings=())


def meta_thresholds(artefact: MetaArtefact, present: Sequence[str]) -> dict[str, float]:
    """The per-label thresholds tuned on held-out rows for this subset ({} when not measured)."""
    row = artefact.calibration(present) or {}
    return {k: float(v) for k, v in (row.get("thresholds") or {}).items()}

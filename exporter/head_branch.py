"""A trained head's artefact folder turned into one waveform-fed branch graph, and its proof.

The trainer writes an "explorer-head-onnx/1" folder (trainer/onnx_export.py): `body.onnx`
(the head's body: log-mel or waveform in, logits out), `head.json` and `reference.npz` (real
windows and the torch logits on them). This module reads those files only (the exporter never
imports the trainer) and builds the branch the device runs:

    waveform [batch, window] float32
      -> the device's front end, `exporter.frontend.log_mel_nodes` from the manifest parameters
         (STFT, mel and log in float64, output cast to float32; mel heads only), exposed as `mel`
      -> the body (every name prefixed "body/")
      -> `logits`, and `scores` = Sigmoid(logits) (the manifest's activation is then "none")
      (-> `embedding` when the body has one)

`branch_parity` runs the composed graph in onnxruntime on the reference windows and compares
its logits with torch's: the relative error is max |onnx - torch| / max |torch| per window (the
logits' own scale: an elementwise ratio is meaningless at a logit of 0), its maximum over the
windows must stay under 1e-4 (the issue's bound), and the top-1 label must agree on every window.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from exporter.bundle_writer import ParityResult
from exporter.frontend import IR_VERSION, OPSET, LogMelParams, log_mel_nodes, log_mel_reference

FORMAT = "explorer-head-onnx/1"
BODY_FILE, HEAD_FILE, REFERENCE_FILE = "body.onnx", "head.json", "reference.npz"
FRONT_END_PREFIX = "log_mel/"
BODY_PREFIX = "body/"
LOGITS_TOLERANCE = 1e-4
"""Relative logit error ONNX vs torch (the issue's bound). Measured on 8 real windows, 206 labels,
untrained weights: raw_cnn 3.0e-7, panns_mlp (CNN14) 4.0e-7, effnet_b3_lora 3.2e-5 (its logits
are ~1e-4 untrained, so float32 rounding weighs more); the tiny test heads 2e-7 to 5e-6. The two
float64 front ends agree to ~1e-12; what remains is float32 rounding in the body and the
occasional last-bit difference of the float32 cast of the mel."""
MEL_TOLERANCE_DB = 1e-3
"""The graph's log-mel vs numpy's float64 rfft; measured ~4e-6 dB (see exporter/frontend.py)."""


class ArtefactError(ValueError):
    """A head artefact folder the exporter cannot use; names the file, the key and the reason."""


@dataclass(frozen=True)
class HeadArtefact:
    """One artefact folder, read and checked."""

    path: Path
    info: dict[str, Any]
    waveform: np.ndarray
    """[N, window] float32 real reference windows."""
    logits: np.ndarray
    """[N, C] torch logits on them."""
    targets: np.ndarray | None
    recordings: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.info["name"]

    @property
    def labels(self) -> list[str]:
        return list(self.info["labels"])

    @property
    def params(self) -> LogMelParams:
        return LogMelParams.from_manifest(self.info["front_end"])

    @property
    def window_samples(self) -> int:
        return int(self.info["window_samples"])

    @property
    def is_mel(self) -> bool:
        return self.info["input_kind"] == "mel"

    @property
    def body_path(self) -> Path:
        return self.path / BODY_FILE

    @property
    def embedding_dim(self) -> int | None:
        return self.info.get("embedding_dim") or None


def load_artefact(folder: Path) -> HeadArtefact:
    """Read and check an "explorer-head-onnx/1" folder.

    Raises:
        ArtefactError: a file is missing, the format is another, a key is missing, or the
            reference arrays disagree with the labels or the window (each named).
    """
    folder = Path(folder)
    for name in (BODY_FILE, HEAD_FILE, REFERENCE_FILE):
        if not (folder / name).is_file():
            raise ArtefactError(f"{folder / name}: missing (an {FORMAT} folder holds {BODY_FILE}, {HEAD_FILE}, "
                                f"{REFERENCE_FILE}; write one with `explorer-train onnx CHECKPOINT --out DIR`)")
    try:
        info = json.loads((folder / HEAD_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtefactError(f"{folder / HEAD_FILE}: not JSON ({exc.msg}, line {exc.lineno})") from None
    if info.get("format") != FORMAT:
        raise ArtefactError(f"{folder / HEAD_FILE}: format {info.get('format')!r} is not {FORMAT!r}")
    for key in ("name", "input_kind", "labels", "front_end", "window_samples"):
        if key not in info:
            raise ArtefactError(f"{folder / HEAD_FILE}: key {key!r} missing")
    if info["input_kind"] not in ("mel", "waveform"):
        raise ArtefactError(f"{folder / HEAD_FILE}: input_kind {info['input_kind']!r} is not 'mel' or 'waveform'")
    with np.load(folder / REFERENCE_FILE) as ref:
        waveform = np.asarray(ref["waveform"], np.float32)
        logits = np.asarray(ref["logits"], np.float32)
        targets = np.asarray(ref["targets"], np.float32) if "targets" in ref else None
        recordings = tuple(str(r) for r in ref["recordings"]) if "recordings" in ref else ()
    n, c = len(waveform), len(info["labels"])
    if waveform.ndim != 2 or waveform.shape[1] != info["window_samples"] or n == 0:
        raise ArtefactError(f"{folder / REFERENCE_FILE}: waveform {waveform.shape} is not [N>0, {info['window_samples']}]")
    if logits.shape != (n, c) or (targets is not None and targets.shape != (n, c)):
        raise ArtefactError(f"{folder / REFERENCE_FILE}: logits {logits.shape} (targets "
                            f"{None if targets is None else targets.shape}) are not [{n}, {c} labels]")
    return HeadArtefact(folder, info, waveform, logits, targets, recordings)


def _named(nodes: list[onnx.NodeProto], prefix: str) -> list[onnx.NodeProto]:
    """Give every node a unique name under `prefix` (quantization excludes nodes by name)."""
    for i, node in enumerate(nodes):
        node.name = f"{prefix}{i}_{node.op_type}"
    return nodes


def _fold_weight_identities(graph: onnx.GraphProto) -> None:
    """Drop Identity nodes that only forward an initializer (the TorchScript exporter writes one per
    shared or deduplicated weight), pointing their consumers at the initializer itself: the
    quantizer finds a Conv's bias only when it is an initializer."""
    weights = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {}
    for node in list(graph.node):
        if node.op_type == "Identity" and node.input[0] in weights and node.output[0] not in outputs:
            alias[node.output[0]] = node.input[0]
            graph.node.remove(node)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]


def compose_branch(artefact: HeadArtefact) -> onnx.ModelProto:
    """The branch graph: `waveform` [batch, window] -> `scores`, `logits` (+ `mel`, `embedding`).

    Raises:
        ArtefactError: the body's input or outputs are not the ones head.json states.
    """
    body = onnx.load(str(artefact.body_path))
    inputs = [i.name for i in body.graph.input if i.name not in {t.name for t in body.graph.initializer}]
    expected_input = "mel" if artefact.is_mel else "waveform"
    outputs = [o.name for o in body.graph.output]
    if inputs != [expected_input] or "logits" not in outputs:
        raise ArtefactError(f"{artefact.body_path}: takes {inputs} and gives {outputs}; a {artefact.info['input_kind']} "
                            f"head's body takes ['{expected_input}'] and gives 'logits'")
    _fold_weight_identities(body.graph)
    body = onnx.compose.add_prefix(body, BODY_PREFIX)
    _named(list(body.graph.node), BODY_PREFIX)
    window, classes = artefact.window_samples, len(artefact.labels)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    graph_outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", classes]),
                     helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])]
    if artefact.is_mel:
        params = artefact.params
        front, front_inits = log_mel_nodes(params, "waveform", "mel", FRONT_END_PREFIX)
        nodes += _named(front, FRONT_END_PREFIX)
        inits += front_inits
        inits.append(numpy_helper.from_array(np.array([1], np.int64), FRONT_END_PREFIX + "channel_axis"))
        nodes.append(helper.make_node("Unsqueeze", ["mel", FRONT_END_PREFIX + "channel_axis"], [BODY_PREFIX + "mel"],
                                      name=FRONT_END_PREFIX + "to_body"))
        graph_outputs.append(helper.make_tensor_value_info("mel", TensorProto.FLOAT,
                                                           ["batch", params.n_mels, params.n_frames(window)]))
    else:
        nodes.append(helper.make_node("Identity", ["waveform"], [BODY_PREFIX + "waveform"], name="to_body"))
    nodes += list(body.graph.node)
    inits += list(body.graph.initializer)
    nodes += [helper.make_node("Identity", [BODY_PREFIX + "logits"], ["logits"], name="out/logits"),
              helper.make_node("Sigmoid", ["logits"], ["scores"], name="out/scores")]
    if BODY_PREFIX + "embedding" in {o.name for o in body.graph.output}:
        nodes.append(helper.make_node("Identity", [BODY_PREFIX + "embedding"], ["embedding"], name="out/embedding"))
        graph_outputs.append(helper.make_tensor_value_info("embedding", TensorProto.FLOAT,
                                                           ["batch", artefact.embedding_dim or "dim"]))
    graph = helper.make_graph(
        nodes, f"{artefact.name}_branch",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", window])],
        graph_outputs, inits, value_info=list(body.graph.value_info),
    )
    opsets = {o.domain: o.version for o in body.opset_import}
    if opsets.get("", OPSET) != OPSET:
        raise ArtefactError(f"{artefact.body_path}: opset {opsets['']} is not {OPSET} (the Pi's pinned opset)")
    opsets[""] = OPSET
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name="elsilencio-exporter")
    model.ir_version = IR_VERSION
    model.doc_string = (f"head {artefact.name} ({artefact.info['input_kind']}) with the device front end; "
                        f"front end: {artefact.info['front_end'] if artefact.is_mel else 'none (waveform body)'}")
    onnx.checker.check_model(model, full_check=True)
    return model


def session(path_or_bytes: Path | bytes, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime session on `threads` intra-op threads, sequential, as the device opens it."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    source = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_outputs(sess: ort.InferenceSession, waveform: np.ndarray, names: list[str], batch: int = 8) -> list[np.ndarray]:
    """`names` for `waveform` [N, window], `batch` windows per call (memory stays bounded)."""
    parts = [sess.run(names, {"waveform": np.ascontiguousarray(waveform[s:s + batch], np.float32)})
             for s in range(0, len(waveform), batch)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(names))]


def relative_error(values: np.ndarray, reference: np.ndarray) -> float:
    """max over windows of max |values - reference| / max |reference| (the row's logit scale)."""
    values, reference = np.asarray(values, np.float64), np.asarray(reference, np.float64)
    scale = np.maximum(np.abs(reference).max(axis=1), 1e-12)
    return float((np.abs(values - reference).max(axis=1) / scale).max())


def top1_agreement(values: np.ndarray, reference: np.ndarray) -> float:
    return float((np.argmax(values, axis=1) == np.argmax(reference, axis=1)).mean())


def branch_parity(artefact: HeadArtefact, model: Path | bytes, branch: str | None = None,
                  tolerance: float = LOGITS_TOLERANCE) -> list[ParityResult]:
    """The composed graph against torch's reference logits (and numpy's log-mel for mel heads)."""
    sess = session(model)
    names = ["logits", "mel"] if artefact.is_mel else ["logits"]
    results = run_outputs(sess, artefact.waveform, names)
    logits = results[0]
    common = dict(branch=branch or artefact.name, windows=len(artefact.waveform),
                  recordings=tuple(sorted({Path(r).name for r in artefact.recordings})))
    out = [
        ParityResult(output="logits", max_abs_diff=relative_error(logits, artefact.logits), tolerance=tolerance,
                     unit="relative (max |diff| / max |torch logit| per window)",
                     reference="torch (front end float64, body float32)", **common),
        ParityResult(output="logits", max_abs_diff=1.0 - top1_agreement(logits, artefact.logits), tolerance=0.0,
                     unit="fraction of windows whose top-1 label differs", reference="torch top-1", **common),
    ]
    if artefact.is_mel:
        mel = log_mel_reference(artefact.waveform, artefact.params)
        out.append(ParityResult(output="mel", max_abs_diff=float(np.abs(results[1] - mel).max()),
                                tolerance=MEL_TOLERANCE_DB, unit="dB", reference="numpy float64 rfft log-mel", **common))
    return out

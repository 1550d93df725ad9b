"""One onnxruntime session per bundle branch, with an explicit thread budget.

A `BranchSession` checks at load time that the device can feed the branch (its input is a
float waveform whose length matches the manifest's window) and that the outputs the
manifest names exist (with as many scores as the manifest lists labels, context outputs
included), so a bad bundle is refused before the first window, not during it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from device.bundle.manifest import Branch, BundleError

_FLOAT_TYPES = ("tensor(float)",)


def session_options(threads: int) -> ort.SessionOptions:
    """Sequential execution on exactly `threads` intra-op threads (no hidden thread pools)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn a Pi's battery between windows; let them sleep.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def _fixed(dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def open_session(path: Path, threads: int, where: str) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad models
        raise BundleError(f"{where}: onnxruntime cannot load {Path(path).name}: {exc}") from None


@dataclass
class BranchOutput:
    scores: np.ndarray
    """Probabilities over `Branch.score_labels`, one row per crop: [crops, labels]."""
    embedding: np.ndarray | None = None
    mel: np.ndarray | None = None
    context: np.ndarray | None = None
    """Probabilities over `Branch.context_labels` (BirdNET's Human vocal, Engine...), one row per
    crop: [crops, context labels]; None when the branch declares no context output."""


def activate(raw: np.ndarray, activation: str) -> np.ndarray:
    """A manifest `activation` applied to a graph output: probabilities, float32."""
    raw = raw.astype(np.float32, copy=False)
    if activation == "sigmoid":
        return (1.0 / (1.0 + np.exp(-np.clip(raw, -60, 60)))).astype(np.float32)
    if activation == "softmax":
        shifted = np.exp(raw - raw.max(axis=-1, keepdims=True))
        return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)
    return np.clip(raw, 0.0, 1.0)


class BranchSession:
    """A loaded branch: feeds `[crops, window_samples]` float32 waveforms, returns probabilities."""

    def __init__(self, bundle_dir: Path, branch: Branch, threads: int):
        self.branch = branch
        self.threads = threads
        where = f"branch {branch.name}"
        self.session = open_session(Path(bundle_dir) / branch.file, threads, where)
        inputs = {i.name: i for i in self.session.get_inputs()}
        if branch.input.name not in inputs:
            raise BundleError(f"{where}: the graph has no input {branch.input.name!r} (it has {sorted(inputs)})")
        if len(inputs) != 1:
            raise BundleError(f"{where}: the device feeds one waveform input, the graph wants {sorted(inputs)}")
        graph_input = inputs[branch.input.name]
        if graph_input.type not in _FLOAT_TYPES:
            raise BundleError(f"{where}: input {graph_input.name!r} is {graph_input.type}, the device feeds float32")
        shape = list(graph_input.shape)
        if len(shape) != 2:
            raise BundleError(f"{where}: input shape {shape} is not [batch, samples]")
        samples = _fixed(shape[1])
        if samples is not None and samples != branch.input.window_samples:
            raise BundleError(
                f"{where}: the graph takes {samples} samples, the manifest says {branch.input.window_samples}"
            )
        self.batch = _fixed(shape[0])
        outputs = {o.name: o for o in self.session.get_outputs()}
        wanted = [branch.scores_output, branch.embedding_output, branch.mel_output, branch.context_output]
        missing = [name for name in wanted if name and name not in outputs]
        if missing:
            raise BundleError(f"{where}: the graph has no output(s) {missing} (it has {sorted(outputs)})")
        for name, labels, what in ((branch.scores_output, branch.score_labels, "labels"),
                                   (branch.context_output, branch.context_labels, "context labels")):
            width = _fixed(list(outputs[name].shape)[-1]) if name else None
            if width is not None and width != len(labels):
                raise BundleError(
                    f"{where}: output {name!r} has {width} scores, the manifest lists {len(labels)} {what}"
                )
        self.output_names = list(dict.fromkeys(name for name in wanted if name))

    def _run(self, crops: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, {self.branch.input.name: crops})

    def run(self, crops: np.ndarray) -> BranchOutput:
        """Run `[crops, window_samples]` float32 waveforms at the branch's rate."""
        if self.batch is None or self.batch == len(crops):
            results = self._run(crops)
        else:  # a graph with a fixed batch of 1: one crop at a time
            parts = [self._run(crops[i : i + 1]) for i in range(len(crops))]
            results = [np.concatenate([p[k] for p in parts]) for k in range(len(self.output_names))]
        named = dict(zip(self.output_names, results))
        branch = self.branch
        scores = activate(named[branch.scores_output].reshape(len(crops), -1), branch.activation)
        embedding = named.get(branch.embedding_output) if branch.embedding_output else None
        mel = named.get(branch.mel_output) if branch.mel_output else None
        context = None
        if branch.context_output:
            context = activate(named[branch.context_output].reshape(len(crops), -1), branch.context_activation)
        return BranchOutput(scores=scores, embedding=embedding, mel=mel, context=context)

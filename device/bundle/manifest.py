"""The bundle manifest: the one place for every fact the runtime needs about a model.

A bundle is a directory holding `manifest.json`, the ONNX files it names and a detached
signature (`manifest.sig.json`). This module parses and validates the manifest; it never
touches the ONNX files (see `verify.py` for hashes and signatures, `device/engine` for
sessions). Every refusal raises `BundleError` naming the key and the reason.

Schema version 1 (JSON):

    schema_version   1
    name, version    the bundle's identity ("elsilencio-default", "1.0.0")
    created_on       ISO-8601 UTC
    provenance       {training_run, data, metrics{}, exporter_version}
    license, attribution
    labels           [{primary_label, scientific_name, common_name, class_name,
                       training {recordings, seconds, sources[], note} (optional)}], a
                     subset of BirdCLEF 2025 taxonomy.csv in its order
    branches         [{name, file, sha256, precision, threads,
                       input {name, kind: "waveform", sample_rate_hz, window_samples,
                              min_sample_rate_hz (optional, default 8000),
                              front_end {kind, in_graph: true, ...parameters}},
                       outputs {scores {name, labels[], activation},
                                embedding {name, dim} | null, mel {name, bands} | null,
                                context {name, labels[], activation} (optional)},
                       cost {ms_1_thread, ms_2_threads, macs | null} (optional)}]
    fusion           {kind: "rule", rule: "max"|"mean", required_branches[]}
                     | {kind: "onnx", file, sha256, inputs [{branch, output}], output,
                        required_branches[]}: a graph whose inputs are branch outputs
                        ("scores": the branch's probabilities over its labels, max-pooled
                        over crops; "embedding": mean over crops), in that order, and
                        whose output is probabilities over every manifest label
    thresholds       {default, per_label {primary_label: threshold}}

`outputs.scores.activation` is what the DEVICE applies to that output to get probabilities:
"sigmoid" (the graph outputs logits), "softmax" (logits of mutually exclusive labels) or
"none" (the graph already outputs probabilities in [0, 1]).

`labels[].training` says how much audio taught the bundle that label and where it came from
(recordings: independent recordings, null when the source does not publish it, as for
BirdNET's own classes; seconds: their total length, null likewise; sources: where from): a
researcher sees which labels are thinly supported, and the guide's detail screen marks a label
with fewer than `device.bundle.labels.FEW_TRAINING_RECORDINGS` recordings.

`outputs.context` are a branch's non-species outputs (BirdNET's Human vocal, Dog, Engine, ...):
scored on every window and kept per detection as scores, never labels, never shown as species
(the privacy filter reads Human vocal). Their labels are free names (`CONTEXT_LABEL`), not
manifest labels; they are max-pooled over crops like scores.

`branches[].cost` is what one analysis window costs the branch, measured by the exporter on
its machine (median ms per window on one and on two onnxruntime threads, and the multiply-adds
of its Conv/MatMul/Gemm nodes, null when unknown), so a device can pick the subset of branches
that fits its real-time budget. Optional: bundles from before it stay valid.

`input.min_sample_rate_hz` is the lowest rate a RECORDING may have for this branch to hear it
(the device resamples every source to `sample_rate_hz`, but resampling adds no frequencies):
audio below it is refused, naming its rate and this minimum.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.bundle.fields import BranchCost, BundleError, _need, _parse_cost
from device.bundle.labels import Label, _parse_labels

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig.json"

KNOWN_PRECISIONS = ("fp32", "fp16", "int8")
KNOWN_ACTIVATIONS = ("sigmoid", "softmax", "none")
KNOWN_FUSION_RULES = ("max", "mean")
# The only input the device feeds: mono float32 waveform. Front ends live inside the graph,
# so the manifest records their parameters (for the exporter and for people) but the device
# never recomputes features itself.
KNOWN_INPUT_KINDS = ("waveform",)
# Rates the device's resampler is meant for; anything outside is a broken manifest.
MIN_RATE_HZ, MAX_RATE_HZ = 8_000, 192_000
DEFAULT_MIN_SAMPLE_RATE_HZ = 8_000
"""A branch's `input.min_sample_rate_hz` when the manifest gives none: the lowest rate real
recorders write (AudioMoth's lowest setting, telephone-band and old xeno-canto uploads). Its
Nyquist limit of 4 kHz still carries frog advertisement calls and many bird songs (the 9 kHz
Little Tinamou recording in the shared data is analysed), while a 1 Hz or 4 kHz file, resampled
up to 32 or 48 kHz, would show the model an empty spectrum and get meaningless scores."""
CONTEXT_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9 ._-]{0,63}$")
"""A context output's name, e.g. "Human vocal": letters first, no separators a CSV or a topic
would split on."""
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SAFE_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class FrontEnd:
    """What turns the waveform into features, inside the branch's ONNX graph."""

    kind: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class BranchInput:
    name: str
    kind: str
    sample_rate_hz: int
    window_samples: int
    front_end: FrontEnd | None
    min_sample_rate_hz: int = DEFAULT_MIN_SAMPLE_RATE_HZ
    """The lowest rate a source may be recorded at for this branch to use it."""

    @property
    def window_s(self) -> float:
        return self.window_samples / self.sample_rate_hz


@dataclass(frozen=True)
class Branch:
    name: str
    file: str
    sha256: str
    precision: str
    threads: int
    input: BranchInput
    scores_output: str
    score_labels: tuple[str, ...]
    activation: str
    embedding_output: str | None = None
    embedding_dim: int | None = None
    mel_output: str | None = None
    context_output: str | None = None
    """The graph output of the branch's context scores (`outputs.context`), or None."""
    context_labels: tuple[str, ...] = ()
    context_activation: str = "sigmoid"
    cost: BranchCost | None = None
    """The exporter's measured cost (`branches[].cost`), or None for a bundle without one."""


@dataclass(frozen=True)
class Fusion:
    kind: str
    required_branches: tuple[str, ...]
    rule: str | None = None
    file: str | None = None
    sha256: str | None = None
    inputs: tuple[tuple[str, str], ...] = ()
    """(branch, output kind) pairs feeding an ONNX fusion, in its input order."""
    output: str | None = None


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    name: str
    version: str
    created_on: str
    provenance: dict[str, Any]
    license: str
    attribution: str
    labels: tuple[Label, ...]
    branches: tuple[Branch, ...]
    fusion: Fusion
    default_threshold: float
    label_thresholds: dict[str, float] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def label_ids(self) -> tuple[str, ...]:
        return tuple(label.primary_label for label in self.labels)

    def threshold(self, primary_label: str) -> float:
        return self.label_thresholds.get(primary_label, self.default_threshold)

    def thresholds_array(self) -> list[float]:
        return [self.threshold(label) for label in self.label_ids]

    def label(self, primary_label: str) -> Label:
        for label in self.labels:
            if label.primary_label == primary_label:
                return label
        raise KeyError(primary_label)

    @property
    def context_labels(self) -> tuple[str, ...]:
        """Every branch's context outputs, in branch order, each name once."""
        return tuple(dict.fromkeys(name for b in self.branches for name in b.context_labels))

    def branch(self, name: str) -> Branch:
        for branch in self.branches:
            if branch.name == name:
                return branch
        raise KeyError(name)

    def files(self) -> dict[str, str]:
        """Every file the manifest pins, with its sha256."""
        pinned = {branch.file: branch.sha256 for branch in self.branches}
        if self.fusion.file:
            pinned[self.fusion.file] = self.fusion.sha256 or ""
        return pinned


def _safe_file(name: str, where: str) -> str:
    if not _SAFE_FILE.match(name) or name in (MANIFEST_FILE, SIGNATURE_FILE):
        raise BundleError(f"{where}: {name!r} is not a plain file name inside the bundle")
    return name


def _sha(value: str, where: str) -> str:
    if not _SHA256.match(value):
        raise BundleError(f"{where}: {value!r} is not a lowercase hex sha256")
    return value


def _probability(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BundleError(f"{where}: {value!r} is not a number")
    if not 0.0 <= float(value) <= 1.0:
        raise BundleError(f"{where}: {value} is outside [0, 1]")
    return float(value)


def _activation(output: dict, where: str) -> str:
    """An output's `activation` (default "sigmoid"), one of `KNOWN_ACTIVATIONS`."""
    activation = output.get("activation", "sigmoid")
    if activation not in KNOWN_ACTIVATIONS:
        raise BundleError(f"{where}.activation: {activation!r} is not one of {KNOWN_ACTIVATIONS}")
    return activation


def _parse_context(raw: Any, where: str) -> tuple[str | None, tuple[str, ...], str]:
    if raw is None:
        return None, (), "sigmoid"
    labels = _need(raw, "labels", list, where)
    if not labels or not all(isinstance(n, str) and CONTEXT_LABEL.match(n) for n in labels):
        raise BundleError(f"{where}.labels: expected a non-empty list of names like 'Human vocal'")
    if len(set(labels)) != len(labels):
        raise BundleError(f"{where}.labels: a name appears twice")
    return _need(raw, "name", str, where), tuple(labels), _activation(raw, where)


def _parse_front_end(raw: Any, where: str) -> FrontEnd | None:
    if raw is None:
        return None
    kind = _need(raw, "kind", str, where)
    if raw.get("in_graph") is not True:
        raise BundleError(
            f"{where}.in_graph: the device feeds raw waveforms only; front end {kind!r} must be inside the ONNX graph"
        )
    return FrontEnd(kind=kind, parameters={k: v for k, v in raw.items() if k not in ("kind", "in_graph")})


def _parse_branch(raw: Any, index: int, label_ids: set[str]) -> Branch:
    where = f"manifest.branches[{index}]"
    name = _need(raw, "name", str, where)
    where = f"manifest.branches[{name}]"
    raw_input = _need(raw, "input", dict, where)
    kind = _need(raw_input, "kind", str, f"{where}.input")
    if kind not in KNOWN_INPUT_KINDS:
        raise BundleError(f"{where}.input.kind: the device cannot feed {kind!r} (it feeds {KNOWN_INPUT_KINDS})")
    rate = _need(raw_input, "sample_rate_hz", int, f"{where}.input")
    if not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
        raise BundleError(f"{where}.input.sample_rate_hz: {rate} is outside [{MIN_RATE_HZ}, {MAX_RATE_HZ}]")
    window = _need(raw_input, "window_samples", int, f"{where}.input")
    if not 0.25 * rate <= window <= 60 * rate:
        raise BundleError(f"{where}.input.window_samples: {window} is not between 0.25 s and 60 s at {rate} Hz")
    min_rate = DEFAULT_MIN_SAMPLE_RATE_HZ
    if "min_sample_rate_hz" in raw_input:
        min_rate = _need(raw_input, "min_sample_rate_hz", int, f"{where}.input")
        if not 1 <= min_rate <= rate:
            raise BundleError(
                f"{where}.input.min_sample_rate_hz: {min_rate} is not between 1 and the branch's own rate ({rate} Hz)"
            )
    branch_input = BranchInput(
        name=_need(raw_input, "name", str, f"{where}.input"),
        kind=kind,
        sample_rate_hz=rate,
        window_samples=window,
        front_end=_parse_front_end(raw_input.get("front_end"), f"{where}.input.front_end"),
        min_sample_rate_hz=min_rate,
    )
    outputs = _need(raw, "outputs", dict, where)
    scores = _need(outputs, "scores", dict, f"{where}.outputs")
    score_labels = _need(scores, "labels", list, f"{where}.outputs.scores")
    if not score_labels:
        raise BundleError(f"{where}.outputs.scores.labels: empty")
    unknown = [label for label in score_labels if label not in label_ids]
    if unknown:
        raise BundleError(f"{where}.outputs.scores.labels: {unknown[:5]} are not in manifest.labels")
    if len(set(score_labels)) != len(score_labels):
        raise BundleError(f"{where}.outputs.scores.labels: a label appears twice")
    activation = _activation(scores, f"{where}.outputs.scores")
    embedding = outputs.get("embedding")
    mel = outputs.get("mel")
    context_output, context_labels, context_activation = _parse_context(outputs.get("context"),
                                                                         f"{where}.outputs.context")
    precision = _need(raw, "precision", str, where)
    if precision not in KNOWN_PRECISIONS:
        raise BundleError(f"{where}.precision: {precision!r} is not one of {KNOWN_PRECISIONS}")
    threads = _need(raw, "threads", int, where)
    if not 1 <= threads <= 64:
        raise BundleError(f"{where}.threads: {threads} is not between 1 and 64")
    return Branch(
        name=name,
        file=_safe_file(_need(raw, "file", str, where), f"{where}.file"),
        sha256=_sha(_need(raw, "sha256", str, where), f"{where}.sha256"),
        precision=precision,
        threads=threads,
        input=branch_input,
        scores_output=_need(scores, "name", str, f"{where}.outputs.scores"),
        score_labels=tuple(score_labels),
        activation=activation,
        embedding_output=_need(embedding, "name", str, f"{where}.outputs.embedding") if embedding else None,
        embedding_dim=_need(embedding, "dim", int, f"{where}.outputs.embedding") if embedding else None,
        mel_output=_need(mel, "name", str, f"{where}.outputs.mel") if mel else None,
        context_output=context_output,
        context_labels=context_labels,
        context_activation=context_activation,
        cost=_parse_cost(raw.get("cost"), f"{where}.cost"),
    )


def _parse_fusion(raw: Any, branch_names: set[str]) -> Fusion:
    where = "manifest.fusion"
    kind = _need(raw, "kind", str, where)
    required = raw.get("required_branches", sorted(branch_names))
    if not isinstance(required, list) or not required or any(b not in branch_names for b in required):
        raise BundleError(f"{where}.required_branches: {required!r} must be a non-empty list of branch names")
    if kind == "rule":
        rule = _need(raw, "rule", str, where)
        if rule not in KNOWN_FUSION_RULES:
            raise BundleError(f"{where}.rule: {rule!r} is not one of {KNOWN_FUSION_RULES}")
        return Fusion(kind=kind, rule=rule, required_branches=tuple(required))
    if kind == "onnx":
        inputs = []
        for i, item in enumerate(_need(raw, "inputs", list, where)):
            branch = _need(item, "branch", str, f"{where}.inputs[{i}]")
            output = _need(item, "output", str, f"{where}.inputs[{i}]")
            if branch not in branch_names or output not in ("scores", "embedding"):
                raise BundleError(f"{where}.inputs[{i}]: {branch}/{output} is not a branch output")
            inputs.append((branch, output))
        if set(required) != branch_names:
            raise BundleError(f"{where}.required_branches: an ONNX fusion needs every branch it reads")
        return Fusion(
            kind=kind,
            required_branches=tuple(required),
            file=_safe_file(_need(raw, "file", str, where), f"{where}.file"),
            sha256=_sha(_need(raw, "sha256", str, where), f"{where}.sha256"),
            inputs=tuple(inputs),
            output=_need(raw, "output", str, where),
        )
    raise BundleError(f"{where}.kind: {kind!r} is not 'rule' or 'onnx'")


def parse_manifest(raw: Any) -> Manifest:
    """Validate a decoded manifest.json and return it as a `Manifest`.

    Raises:
        BundleError: naming the first key that is missing, mistyped or inconsistent.
    """
    if not isinstance(raw, dict):
        raise BundleError("manifest: expected a JSON object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(f"manifest.schema_version: {version!r} is not a schema this device knows ({SCHEMA_VERSION})")
    labels = _parse_labels(raw.get("labels"))
    label_ids = {label.primary_label for label in labels}
    raw_branches = _need(raw, "branches", list, "manifest")
    if not raw_branches:
        raise BundleError("manifest.branches: empty")
    branches = tuple(_parse_branch(b, i, label_ids) for i, b in enumerate(raw_branches))
    names = [b.name for b in branches]
    if len(set(names)) != len(names):
        raise BundleError(f"manifest.branches: duplicate branch names in {names}")
    files = [b.file for b in branches]
    if len(set(files)) != len(files):
        raise BundleError(f"manifest.branches: two branches share a file in {files}")
    fusion = _parse_fusion(_need(raw, "fusion", dict, "manifest"), set(names))
    covered = {label for b in branches for label in b.score_labels}
    if fusion.kind == "rule" and covered != label_ids:
        # An ONNX fusion outputs every label itself (a head on an embedding can score labels no
        # branch does); a rule can only combine what the branches score.
        raise BundleError(f"manifest.labels: no branch scores {sorted(label_ids - covered)[:5]}")
    thresholds = _need(raw, "thresholds", dict, "manifest")
    default = _probability(_need(thresholds, "default", float, "manifest.thresholds"), "manifest.thresholds.default")
    per_label = thresholds.get("per_label", {})
    if not isinstance(per_label, dict):
        raise BundleError("manifest.thresholds.per_label: expected an object")
    for label, value in per_label.items():
        if label not in label_ids:
            raise BundleError(f"manifest.thresholds.per_label.{label}: not in manifest.labels")
        per_label[label] = _probability(value, f"manifest.thresholds.per_label.{label}")
    provenance = raw.get("provenance", {})
    if not isinstance(provenance, dict):
        raise BundleError("manifest.provenance: expected an object")
    return Manifest(
        schema_version=version,
        name=_need(raw, "name", str, "manifest"),
        version=_need(raw, "version", str, "manifest"),
        created_on=_need(raw, "created_on", str, "manifest"),
        provenance=provenance,
        license=_need(raw, "license", str, "manifest"),
        attribution=_need(raw, "attribution", str, "manifest"),
        labels=labels,
        branches=branches,
        fusion=fusion,
        default_threshold=default,
        label_thresholds=dict(per_label),
        raw=raw,
    )


def read_manifest(bundle_dir: Path) -> Manifest:
    """Read and validate `bundle_dir/manifest.json` (no hash or signature checks)."""
    path = Path(bundle_dir) / MANIFEST_FILE
    if not Path(bundle_dir).is_dir():
        raise BundleError(f"{bundle_dir}: no such bundle directory")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BundleError(f"{path}: missing") from None
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path}: not UTF-8 text ({exc.reason})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    return parse_manifest(raw)

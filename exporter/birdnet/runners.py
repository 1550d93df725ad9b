"""Two ways to run BirdNET on 3 s windows: our ONNX (onnxruntime) and the original TFLite (LiteRT).

Both return ``(logits [n, 6522], embedding [n, 1024])`` so parity checks and benchmarks compare like
with like. LiteRT (``ai-edge-litert``) is a development-side dependency only: the device runs ONNX.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import soundfile as sf

from device.audio.resample import resample
from exporter.birdnet.convert import EMBEDDING_NAME, INPUT_NAME, LOGITS_NAME, SAMPLE_RATE_HZ, WINDOW_SAMPLES


def load_audio_48k(path: Path) -> np.ndarray:
    """Read a recording as mono float32 at 48 kHz (channels averaged, the device's resampler:
    the parity checks then compare BirdNET on the very samples the device would feed it).

    Raises:
        ValueError: the file holds no samples.
    """
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    if audio.size == 0:
        raise ValueError(f"{path}: no audio samples")
    return resample(audio.mean(axis=1), int(rate), SAMPLE_RATE_HZ)


def windows_3s(audio: np.ndarray, max_windows: int | None = None) -> np.ndarray:
    """Cut consecutive, non-overlapping 3 s windows; a recording shorter than 3 s is zero-padded once.

    The trailing partial window of a longer recording is dropped: parity wants whole windows.
    """
    n = max(1, len(audio) // WINDOW_SAMPLES)
    if max_windows is not None:
        n = min(n, max_windows)
    if len(audio) < WINDOW_SAMPLES:
        audio = np.pad(audio, (0, WINDOW_SAMPLES - len(audio)))
    return np.ascontiguousarray(audio[: n * WINDOW_SAMPLES].reshape(n, WINDOW_SAMPLES), dtype=np.float32)


class OnnxBirdnet:
    """onnxruntime session over a converted model."""

    def __init__(self, onnx_path: Path, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits and (when the model has one) embedding for a batch of windows."""
        outs = dict(zip(self.output_names, self.session.run(None, {INPUT_NAME: windows})))
        return outs[LOGITS_NAME], outs.get(EMBEDDING_NAME)


class LiteRtBirdnet:
    """LiteRT interpreter over the original .tflite, exposing the embedding tensor too.

    Reading an intermediate tensor needs ``experimental_preserve_all_tensors``; it costs memory but
    not time on this model (measured: 33 ms per window with or without it).
    """

    def __init__(self, tflite_path: Path, threads: int = 1, with_embedding: bool = True):
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter_cls = Interpreter
        self.path = Path(tflite_path)
        self.threads = threads
        self.with_embedding = with_embedding
        self._batch = 0
        self.embedding_index: int | None = None
        if with_embedding:
            from exporter.birdnet.convert import classifier_tensors
            from exporter.birdnet.tflite_graph import read_tflite

            self.embedding_index = classifier_tensors(read_tflite(self.path))[0]
        self._make(1)

    def _make(self, batch: int) -> None:
        with warnings.catch_warnings():
            # LiteRT warns that preserving tensors is for debugging; reading the embedding is why we do.
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
            it = self._interpreter_cls(
                model_path=str(self.path),
                num_threads=self.threads,
                experimental_preserve_all_tensors=self.with_embedding,
            )
        self.input_index = it.get_input_details()[0]["index"]
        self.output_index = it.get_output_details()[0]["index"]
        if batch != 1:
            it.resize_tensor_input(self.input_index, [batch, WINDOW_SAMPLES])
        it.allocate_tensors()
        self.interpreter, self._batch = it, batch

    def run(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if len(windows) != self._batch:
            self._make(len(windows))
        it = self.interpreter
        it.set_tensor(self.input_index, np.ascontiguousarray(windows, dtype=np.float32))
        it.invoke()
        logits = it.get_tensor(self.output_index).copy()
        embedding = it.get_tensor(self.embedding_index).copy() if self.embedding_index is not None else None
        return logits, embedding

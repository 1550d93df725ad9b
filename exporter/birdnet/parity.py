"""Parity of the converted ONNX against the original TFLite on real recordings.

A conversion is trusted only after both models agree on real audio: logits within ``LOGITS_TOL``
(max abs), the same top-5 classes in the same order for every window, and the embedding within
``EMBEDDING_TOL``. A failed check raises :class:`ParityError` naming the output and the error size.

Zero-padded windows (recordings shorter than 3 s, padded with digital silence as birdnetlib does)
get their own, looser bounds. BirdNET's spectrogram is ``|mel(Re(DFT(frame)))| ** 0.46``, whose
slope is infinite at zero: over digital silence every implementation outputs its own rounding noise
(~1e-9) raised to 0.46 (~1e-4), and the network reacts to that noise floor. TFLite's FFT and our
matrix product round differently (both are ~100% off the float64 value there), so logits differ by
up to ~0.04 on such windows while the top-5 still match. Real audio (any microphone noise) never
sits at exact zero, and full windows agree to < 1e-3.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exporter.birdnet.convert import WINDOW_SAMPLES
from exporter.birdnet.runners import LiteRtBirdnet, OnnxBirdnet, load_audio_48k, windows_3s

LOGITS_TOL = 1e-3
"""Full windows; measured max 6.5e-4 over 96 windows of real audio (logits span about -25..+10)."""
EMBEDDING_TOL = 1e-3
"""Full windows; measured max 2.0e-4."""
PADDED_LOGITS_TOL = 0.1
"""Zero-padded windows: measured max 0.016 (birds/*.wav), 0.039 on a 0.72 s clip; see the module docstring."""
PADDED_EMBEDDING_TOL = 0.05
"""Zero-padded windows: measured max 0.0088."""
TOP_K = 5
# Recordings parity runs on, relative to the shared data folder: the site soundscape, BirdCLEF clips
# (frogs, an unknown), and bird songs at 9-48 kHz so resampling paths are exercised too.
DEFAULT_RECORDINGS = (
    "audio/elsilencio_soundscape/H02_20230420_074000.ogg",
    "audio/birdclef_train_audio/1.ogg",
    "audio/birdclef_train_audio/2.ogg",
    "audio/birdclef_train_audio/3.ogg",
    "audio/birdclef_train_audio/4.ogg",
    "audio/birds/spinetail.wav",
    "audio/birds/tico.wav",
    "audio/birds/Cryp.soui.wav",
    "audio/birds/Phae.long1.wav",
    "audio/birds/Phae.long2.wav",
    "audio/birds/Phae.long3.wav",
    "audio/birds/Phae.long4.wav",
)


class ParityError(AssertionError):
    """Two models disagree beyond tolerance on one output."""

    def __init__(self, output: str, error: float, tolerance: float, detail: str = ""):
        self.output, self.error, self.tolerance = output, error, tolerance
        msg = f"parity failed on {output!r}: max abs error {error:.3g} > tolerance {tolerance:.3g}"
        super().__init__(msg + (f" ({detail})" if detail else ""))


@dataclass
class ParityReport:
    """Measured agreement over all windows checked."""

    windows: int = 0
    files: list[str] = field(default_factory=list)
    logits_max_abs: float = 0.0
    """Over full (unpadded) windows."""
    embedding_max_abs: float = 0.0
    padded_windows: int = 0
    padded_logits_max_abs: float = 0.0
    """Over zero-padded windows (recordings shorter than 3 s)."""
    padded_embedding_max_abs: float = 0.0
    top5_agreement: float = 1.0
    """Share of windows whose top-5 classes match in order (1.0 required)."""
    per_file: dict[str, tuple[int, float, float]] = field(default_factory=dict)
    """file -> (windows, logits max abs, embedding max abs)."""


def compare_outputs(
    reference: tuple[np.ndarray, np.ndarray | None],
    candidate: tuple[np.ndarray, np.ndarray | None],
    logits_tol: float = LOGITS_TOL,
    embedding_tol: float | None = EMBEDDING_TOL,
    label: str = "",
) -> tuple[float, float, int]:
    """Compare one batch; returns (logits max abs, embedding max abs, windows with identical top-5).

    Raises:
        ParityError: logits or embedding beyond tolerance, or a top-5 mismatch (named ``logits/top5``).
    """
    ref_logits, ref_emb = reference
    logits, emb = candidate
    if ref_logits.shape != logits.shape:
        raise ParityError("logits", float("inf"), logits_tol, f"shape {logits.shape} != {ref_logits.shape}")
    err = float(np.abs(ref_logits - logits).max())
    if not err <= logits_tol:
        raise ParityError("logits", err, logits_tol, label)
    ref_top = np.argsort(-ref_logits, axis=1, kind="stable")[:, :TOP_K]
    top = np.argsort(-logits, axis=1, kind="stable")[:, :TOP_K]
    same = (ref_top == top).all(axis=1)
    if not same.all():
        bad = int(np.flatnonzero(~same)[0])
        raise ParityError(
            "logits/top5", err, logits_tol,
            f"{label} window {bad}: top-5 {top[bad].tolist()} != reference {ref_top[bad].tolist()}",
        )
    emb_err = 0.0
    if embedding_tol is not None and ref_emb is not None:
        if emb is None:
            raise ParityError("embedding", float("inf"), embedding_tol, "candidate has no embedding output")
        emb_err = float(np.abs(ref_emb - emb).max())
        if not emb_err <= embedding_tol:
            raise ParityError("embedding", emb_err, embedding_tol, label)
    return err, emb_err, int(same.sum())


def check_parity(
    onnx_path: Path,
    tflite_path: Path,
    recordings: list[Path],
    max_windows_per_file: int | None = 4,
    batch: int = 2,
    logits_tol: float = LOGITS_TOL,
    embedding_tol: float | None = EMBEDDING_TOL,
    padded_logits_tol: float = PADDED_LOGITS_TOL,
    padded_embedding_tol: float = PADDED_EMBEDDING_TOL,
) -> ParityReport:
    """Run both models on every recording (3 s windows, 48 kHz) and compare, window batch by batch.

    Args:
        batch: windows per call; 2 matches the device (two crops per 5 s window) and exercises the
            dynamic batch axis.

    Raises:
        ParityError: on the first disagreement beyond tolerance (naming the output and error).
        FileNotFoundError: a recording is missing.
    """
    onnx_model = OnnxBirdnet(onnx_path)
    reference = LiteRtBirdnet(tflite_path, with_embedding=embedding_tol is not None)
    report = ParityReport()
    agree = 0
    for path in recordings:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: recording not found")
        audio = load_audio_48k(path)
        padded = len(audio) < WINDOW_SAMPLES
        windows = windows_3s(audio, max_windows_per_file)
        tols = (padded_logits_tol, padded_embedding_tol) if padded else (logits_tol, embedding_tol)
        if tols[1] is not None and embedding_tol is None:
            tols = (tols[0], None)
        file_logits = file_emb = 0.0
        for start in range(0, len(windows), batch):
            chunk = windows[start : start + batch]
            label = f"{path.name} windows {start}..{start + len(chunk) - 1}" + (" (zero-padded)" if padded else "")
            err, emb_err, same = compare_outputs(reference.run(chunk), onnx_model.run(chunk), *tols, label)
            file_logits, file_emb = max(file_logits, err), max(file_emb, emb_err)
            agree += same
        report.windows += len(windows)
        report.files.append(path.name)
        report.per_file[path.name] = (len(windows), file_logits, file_emb)
        if padded:
            report.padded_windows += len(windows)
            report.padded_logits_max_abs = max(report.padded_logits_max_abs, file_logits)
            report.padded_embedding_max_abs = max(report.padded_embedding_max_abs, file_emb)
        else:
            report.logits_max_abs = max(report.logits_max_abs, file_logits)
            report.embedding_max_abs = max(report.embedding_max_abs, file_emb)
    report.top5_agreement = agree / report.windows if report.windows else 1.0
    return report


def default_recordings(shared_data: Path) -> list[Path]:
    """The parity recordings inside the shared data folder."""
    return [Path(shared_data) / rel for rel in DEFAULT_RECORDINGS]

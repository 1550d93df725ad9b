"""A clip's spectrogram as a PNG, from numpy alone (no matplotlib on the server).

What a researcher checks a detection by: the call's shape in time and frequency. A short-time
Fourier transform (Hann window) of the clip's mono mix, in decibels over the loudest bin, drawn
with low frequencies at the bottom and coloured through a perceptual ramp, written as an RGB
PNG with zlib (the format needs nothing else: a header, the filtered rows deflated, a trailer).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf

N_FFT = 512
"""16 ms at 32 kHz: resolves a frog's pulses and a bird's notes alike; 257 rows tall."""
HOP = 128
MAX_COLUMNS = 1600
"""Wider than any screen shows: a longer clip gets a larger hop instead."""
DYNAMIC_RANGE_DB = 80.0
"""Everything more than 80 dB under the loudest bin is drawn as silence (the noise floor of a
16-bit recording, and what the eye can tell apart)."""
RAMP = np.array([  # dark blue -> purple -> orange -> pale yellow (magma-like, readable in greyscale)
    (0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21), (250, 193, 39),
    (252, 253, 191)], dtype=np.float64)


class SpectrogramError(ValueError):
    """The clip could not be read as audio; says which file and why."""


def spectrogram_png(path: Path) -> bytes:
    """The PNG of the audio file at `path`.

    Raises:
        SpectrogramError: the file is not audio soundfile reads, or holds no samples.
    """
    try:
        samples, _rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise SpectrogramError(f"clip {path.name}: cannot be read as audio ({exc})") from None
    if samples.shape[0] == 0:
        raise SpectrogramError(f"clip {path.name}: holds no samples")
    return encode_png(colour(decibels(samples.mean(axis=1))))


def decibels(signal: np.ndarray) -> np.ndarray:
    """|STFT| in dB over the loudest bin, clipped to the dynamic range: (frequencies, frames)."""
    if signal.size < N_FFT:
        signal = np.pad(signal, (0, N_FFT - signal.size))
    hop = max(HOP, -(-(signal.size - N_FFT) // MAX_COLUMNS))
    frames = 1 + (signal.size - N_FFT) // hop
    index = np.arange(N_FFT)[None, :] + hop * np.arange(frames)[:, None]
    spectrum = np.abs(np.fft.rfft(signal[index] * np.hanning(N_FFT), axis=1)).T
    power = 20 * np.log10(np.maximum(spectrum, 1e-10))
    return np.clip(power - power.max(), -DYNAMIC_RANGE_DB, 0.0)


def colour(db: np.ndarray) -> np.ndarray:
    """dB (0 loudest) as RGB rows, top row the highest frequency: (height, width, 3) uint8."""
    level = (db[::-1] + DYNAMIC_RANGE_DB) / DYNAMIC_RANGE_DB * (len(RAMP) - 1)
    low = np.clip(np.floor(level).astype(int), 0, len(RAMP) - 2)
    share = (level - low)[..., None]
    return np.round(RAMP[low] * (1 - share) + RAMP[low + 1] * share).astype(np.uint8)


def encode_png(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of `rgb` (height, width, 3): every row filtered with 'none', deflated."""
    height, width, _ = rgb.shape
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rgb.reshape(height, width * 3)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
            + chunk(b"IEND", b""))

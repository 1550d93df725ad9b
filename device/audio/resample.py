"""Rate conversion from a source's native rate to the rate a model branch expects.

Polyphase filtering (`scipy.signal.resample_poly`) is exact for rational ratios, needs no
FFT of the whole signal (so its cost grows linearly with the window), and has no edge
wrap-around, unlike `scipy.signal.resample`. Windows are resampled one by one, so the same
few rate pairs recur thousands of times: the reduced ratio is cached.
"""

from __future__ import annotations

from functools import lru_cache
from math import gcd

import numpy as np
from scipy.signal import firwin, resample_poly


@lru_cache(maxsize=64)
def ratio(from_hz: int, to_hz: int) -> tuple[int, int]:
    """The (up, down) factors that turn `from_hz` into `to_hz`, reduced by their gcd.

    E.g. 44100 -> 32000 is (320, 441); 48000 -> 32000 is (2, 3).
    """
    if from_hz <= 0 or to_hz <= 0:
        raise ValueError(f"sample rates must be positive, got {from_hz} -> {to_hz}")
    common = gcd(int(from_hz), int(to_hz))
    return int(to_hz) // common, int(from_hz) // common


@lru_cache(maxsize=64)
def _low_pass(up: int, down: int, dtype: str) -> np.ndarray:
    """The anti-aliasing filter `resample_poly` designs on every call with its defaults (a
    Kaiser-windowed sinc, beta 5, 10 zero crossings per side at the lower rate), designed once
    per ratio: the design was 0.8 ms of a live window's 4 ms of resampling. Given the same taps
    in the input's dtype, `resample_poly` returns bit-identical samples (tested)."""
    max_rate = max(up, down)
    taps = firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0)).astype(dtype)
    taps.setflags(write=False)  # shared by every call; resample_poly copies before scaling it
    return taps


def resampled_length(n: int, from_hz: int, to_hz: int) -> int:
    """How many samples `resample` returns for `n` input samples (ceil(n * up / down))."""
    up, down = ratio(from_hz, to_hz)
    return -(-n * up // down)


def resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """`samples` (1-D) at `to_hz`, as float32; no copy when the rates are equal and it is float32.

    Args:
        samples: Mono audio at `from_hz`.
        from_hz: Its rate.
        to_hz: The rate wanted.

    Returns:
        float32 samples, `resampled_length(len(samples), from_hz, to_hz)` of them.
    """
    if from_hz == to_hz:
        return np.asarray(samples, dtype=np.float32)
    up, down = ratio(from_hz, to_hz)
    samples = np.asarray(samples)
    if samples.dtype.kind == "f":
        out = resample_poly(samples, up, down, window=_low_pass(up, down, samples.dtype.str))
    else:
        out = resample_poly(samples, up, down)
    return out.astype(np.float32, copy=False)


TAIL_MARGIN_S = 0.005
"""Audio resampled before a tail's first sample and then dropped: the polyphase filter
(`resample_poly`'s default, 10 input samples either side per output at these ratios) never
reaches the zeros it pads a segment with, so the tail equals the whole window's resampled tail."""


def resample_tail(samples: np.ndarray, from_hz: int, to_hz: int, start: int) -> np.ndarray:
    """`resample(samples, from_hz, to_hz)[start:]`, resampling only the part it needs.

    A live window whose first crop is carried from the window before (device/engine/carry.py)
    needs only its last 3 s at the model's rate; this saves resampling the other 2.

    Args:
        start: The first output sample wanted, at `to_hz`.
    """
    if from_hz == to_hz or start <= 0:
        return resample(samples, from_hz, to_hz)[max(start, 0):]
    up, down = ratio(from_hz, to_hz)
    margin = max(down, round(TAIL_MARGIN_S * from_hz))
    first = max(0, (start * down // up - margin) // down * down)  # a multiple of `down`: outputs align
    return resample(samples[first:], from_hz, to_hz)[start - first * up // down:]

"""Turning whatever a file or sound card delivers into the samples the pipeline expects.

Every block leaves its source as float32 mono in [-1, 1] with no NaN or Inf in it: a single
NaN would turn every mel band of its window into NaN and silently blank the model's output.
"""

from __future__ import annotations

import numpy as np


def to_mono(frames: np.ndarray) -> np.ndarray:
    """Average the channels of a [frames, channels] array into a float32 mono vector.

    Averaging (rather than taking the first channel) keeps a call that is loud on one
    channel only, as happens with stereo recorders whose microphones face apart.
    """
    if frames.ndim == 1:
        return np.asarray(frames, dtype=np.float32)
    if frames.shape[1] == 1:
        return np.ascontiguousarray(frames[:, 0], dtype=np.float32)
    return frames.mean(axis=1, dtype=np.float32)


def sanitize(samples: np.ndarray) -> int:
    """Replace NaN and Inf by zeros and clip to [-1, 1], in place; return how many were non-finite.

    Float WAVs may carry values past full scale; clipping keeps the `Window` contract
    ([-1, 1]) so features downstream cannot overflow.
    """
    finite = np.isfinite(samples)
    bad = int(samples.size - np.count_nonzero(finite))
    if bad:
        samples[~finite] = 0.0
    np.clip(samples, -1.0, 1.0, out=samples)
    return bad

"""A live stream's crops computed once: the last crop of one window is the first of the next.

BirdNET takes 3 s; an analysis window is 5 s, so each window runs two crops (0-3 s and 2-5 s,
`engine.make_crops`). Live, windows start every 2.5 s, and window k's last crop (2-5 s, stream
time 2.5k + 2 .. 2.5k + 5) is stream time -0.5 .. 2.5 s of window k + 1: a crop that still covers
that window's start and reaches past the start of its own last crop. Taking it as window k + 1's
first crop, instead of cutting a new one at 0 s, halves BirdNET's work per live window (one new
crop instead of two) and keeps every instant of every window inside at least one crop; the
window's crops then span 5.5 s of stream time instead of 5. Scores are still max-pooled and
embeddings averaged over the window's two crops.

A crop is carried only when it is the same audio: the next window has the same rate and length,
starts where the carried crop still covers its first sample and reaches its next crop (in the
live default: 0.5 s before it, within [0, crop - next crop start] = [0, 1] s), and its samples
over the span both windows share are equal to the previous window's (so a different stream, a
dropped window, or a window from another file with the same name and offset is never mixed in).
File analysis (5 s hop) never qualifies: its windows share no audio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from device.domain import Window
from device.engine.session import BranchOutput


@dataclass(frozen=True)
class CarriedCrop:
    """The last crop of one window of one branch, with what identifies its audio."""

    rate_hz: int
    """The native rate of the window it came from."""
    window_length: int
    """That window's length in native samples."""
    stream_start: float
    """Where the crop starts, in seconds of the source (the window's `start_s` plus its offset)."""
    shared: np.ndarray
    """The window's native samples from the crop's start to the window's end (a copy): the most
    a window that may take the crop can share with it."""
    output: BranchOutput
    """The branch's output on that crop alone (one row)."""


def row(output: BranchOutput, i: int) -> BranchOutput:
    """Crop `i` of a branch output, as a one-crop output."""
    pick = (lambda a: None if a is None else np.asarray(a)[i : i + 1])
    return BranchOutput(scores=pick(output.scores), embedding=pick(output.embedding), mel=pick(output.mel),
                        context=pick(output.context))


def stack(first: BranchOutput, rest: BranchOutput) -> BranchOutput:
    """One output with `first`'s crop followed by `rest`'s."""
    join = (lambda a, b: None if a is None or b is None else np.concatenate([np.asarray(a), np.asarray(b)]))
    return BranchOutput(scores=join(first.scores, rest.scores), embedding=join(first.embedding, rest.embedding),
                        mel=join(first.mel, rest.mel), context=join(first.context, rest.context))


def usable(carried: CarriedCrop | None, window: Window, crop_s: float, next_crop_s: float) -> bool:
    """Whether `carried` can stand for `window`'s first crop (see the module docstring).

    Args:
        crop_s: The branch's crop length in seconds.
        next_crop_s: Where the window's second crop starts, seconds into the window.
    """
    if carried is None or carried.rate_hz != window.sample_rate_hz or carried.window_length != len(window.samples):
        return False
    lead = window.start_s - carried.stream_start  # how far before the window the carried crop starts
    slack = 0.5 / window.sample_rate_hz
    if not (-slack <= lead <= crop_s - next_crop_s + slack):
        return False
    offset = round(lead * window.sample_rate_hz)  # where the window starts within `shared`
    overlap = len(carried.shared) - max(offset, 0)
    if overlap <= 0 or overlap > window.real_samples:
        return False  # nothing shared, or the stream ends inside what would be shared
    return bool(np.array_equal(window.samples[:overlap], carried.shared[max(offset, 0):]))


def carry(window: Window, output: BranchOutput, crop_start: int, crop_rate: int) -> CarriedCrop:
    """What the next window may take from this one's last crop.

    Args:
        crop_start: The last crop's offset in the window, in samples at the branch's rate.
        crop_rate: The branch's rate.
    """
    native_start = min(len(window.samples), round(crop_start * window.sample_rate_hz / crop_rate))
    return CarriedCrop(
        rate_hz=window.sample_rate_hz,
        window_length=len(window.samples),
        stream_start=window.start_s + native_start / window.sample_rate_hz,
        shared=np.array(window.samples[native_start:], dtype=np.float32, copy=True),
        output=row(output, len(output.scores) - 1),
    )

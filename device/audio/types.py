"""The few types every audio input speaks: a block of samples, a source of blocks, and its error.

Files, the microphone and the watch folder all produce `AudioBlock`s through the
`AudioSource` protocol, so the windowing and engine code downstream never asks where the
sound came from. Implementations live beside this module (files.py, mic.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterator, Protocol, runtime_checkable

import numpy as np


class AudioError(ValueError):
    """Audio the device cannot use. The message names the file or device and the problem.

    A ValueError because it is always about bad input (a corrupt file, a missing device),
    never a bug in the caller.
    """


@dataclass(frozen=True)
class AudioBlock:
    """A run of consecutive mono samples from one source, at the source's native rate."""

    samples: np.ndarray
    """float32 mono samples in [-1, 1] (non-finite input already replaced by zeros)."""
    sample_rate_hz: int
    """The rate `samples` is at; a source never changes it between blocks."""
    start_sample: int
    """Offset of the first sample within the source, in samples at `sample_rate_hz`.
    Consecutive blocks are contiguous unless audio was lost (a dropped block, a
    microphone reconnect): then the next block starts later, and the gap is visible."""
    started_on: datetime
    """Aware UTC wall-clock time of the first sample."""

    @property
    def end_sample(self) -> int:
        """Offset one past the last sample (the next contiguous block starts here)."""
        return self.start_sample + len(self.samples)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate_hz

    def time_of(self, sample: int) -> datetime:
        """Wall-clock UTC time of source sample `sample`, extrapolated from this block's anchor."""
        return self.started_on + timedelta(seconds=(sample - self.start_sample) / self.sample_rate_hz)


@runtime_checkable
class AudioSource(Protocol):
    """Anything that yields audio blocks: a file, a microphone."""

    name: str
    """What the audio comes from: a file path, or `mic:<device name>`."""
    sample_rate_hz: int
    """The native rate of every block this source yields."""

    def blocks(self) -> Iterator[AudioBlock]:
        """Yield blocks in order until the source ends or is closed."""
        ...

    def close(self) -> None:
        """Release the file or device; `blocks()` then ends. Safe to call twice."""
        ...

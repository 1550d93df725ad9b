"""Cutting a stream of blocks into fixed-length analysis windows on a fixed hop grid.

Blocks arrive in whatever size the file reader or sound card chose; models want windows of
exactly `window_samples`, starting every `hop_samples`. A hop below the window length
overlaps windows, which recovers calls cut at window edges (live default 2.5 s hop over
5 s windows). Only the audio the next window still needs is kept, so memory stays at one
window however long the source runs.

`cut_windows` is the one loop that turns a source's blocks into domain `Window`s: the live
pipeline, whole-file analysis and the watch folder all cut through it, so the grid, the
padding of the last window and the refusal of unusable sample rates are written once.
"""

from __future__ import annotations

import logging
from collections import deque
from datetime import datetime, timedelta
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from device.audio.types import AudioBlock, AudioError
from device.domain import Window

log = logging.getLogger(__name__)


class _Triple(NamedTuple):
    start_sample: int
    """Offset of the window's first sample within the source."""
    samples: np.ndarray
    """`window_samples` float32 samples (a copy: the caller may keep it)."""
    started_on: datetime
    """UTC time of the first sample."""


class Cut(_Triple):
    """One window: unpacks as `(start_sample, samples, started_on)`, and also carries
    `sample_rate_hz` and `valid_samples` (how many leading samples are real audio; the
    rest is zero padding at the end of a stream or before a loss)."""

    sample_rate_hz: int
    valid_samples: int

    def __new__(cls, start_sample: int, samples: np.ndarray, started_on: datetime, sample_rate_hz: int,
                valid_samples: int) -> "Cut":
        cut = super().__new__(cls, start_sample, samples, started_on)
        cut.sample_rate_hz = sample_rate_hz
        cut.valid_samples = valid_samples
        return cut


class Windower:
    """Emits every complete window of a block stream, aligned to sample offsets in the source.

    Windows start at the first block's `start_sample` and then every `hop_samples`. When
    audio is lost between blocks (a dropped block, a microphone reconnect), the missing
    samples are filled with silence up to the end of the window already under way, so the
    audio before the loss is still analysed; a longer loss restarts the grid at the next
    block. Both are counted in `lost_samples` and `filled_samples`.
    """

    def __init__(self, sample_rate_hz: int, window_samples: int, hop_samples: int) -> None:
        """
        Args:
            sample_rate_hz: The rate of every block pushed (checked).
            window_samples: Samples per window.
            hop_samples: Samples between window starts; may exceed the window (then the
                samples between windows are skipped).
        """
        if sample_rate_hz <= 0 or window_samples <= 0 or hop_samples <= 0:
            raise ValueError(
                f"Windower needs positive rate, window and hop, got {sample_rate_hz}, {window_samples}, {hop_samples}"
            )
        self.sample_rate_hz = int(sample_rate_hz)
        self.window_samples = int(window_samples)
        self.hop_samples = int(hop_samples)
        self.lost_samples = 0
        """Samples missing between blocks (gaps in `start_sample`)."""
        self.filled_samples = 0
        """Zeros put in place of lost samples to complete a window."""
        self._reset()

    def _reset(self) -> None:
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start: int | None = None  # source offset of _buffer[0]
        self._next_start = 0  # source offset of the next window to emit
        self._emitted_end = 0  # end of the last emitted window
        self._anchors: deque[tuple[int, datetime]] = deque()  # (start_sample, started_on) per block

    @property
    def buffered_samples(self) -> int:
        """Samples held for windows not yet complete (always below one window)."""
        return len(self._buffer)

    @property
    def _received_end(self) -> int:
        return (self._buffer_start or 0) + len(self._buffer)

    def push(self, block: AudioBlock) -> list[Cut]:
        """Add a block; return every window it completes, oldest first.

        Raises:
            ValueError: The block is at another rate, or overlaps audio already pushed
                (blocks must come in source order).
        """
        if block.sample_rate_hz != self.sample_rate_hz:
            raise ValueError(f"block at {block.sample_rate_hz} Hz pushed into a {self.sample_rate_hz} Hz Windower")
        if self._buffer_start is None:
            self._buffer_start = self._next_start = self._emitted_end = block.start_sample
        if block.start_sample < self._received_end:
            raise ValueError(
                f"block starting at sample {block.start_sample} overlaps audio already pushed (up to {self._received_end})"
            )
        emitted: list[Cut] = []
        if block.start_sample > self._received_end:
            emitted += self._bridge_gap(block.start_sample)
        self._anchors.append((block.start_sample, block.started_on))
        self._buffer = np.concatenate([self._buffer, np.asarray(block.samples, dtype=np.float32)])
        emitted += self._emit_complete()
        return emitted

    def _bridge_gap(self, resume_at: int) -> list[Cut]:
        """Fill lost samples with zeros up to the end of the window under way; jump past the rest."""
        gap_from = self._received_end
        self.lost_samples += resume_at - gap_from
        fill_to = min(resume_at, self._next_start + self.window_samples)
        emitted: list[Cut] = []
        if self._next_start < gap_from and fill_to > gap_from:
            # Real audio waits in a window that the gap interrupts: complete it with silence.
            self._buffer = np.concatenate([self._buffer, np.zeros(fill_to - gap_from, dtype=np.float32)])
            self.filled_samples += fill_to - gap_from
            emitted = self._emit_complete(real_end=gap_from if fill_to < resume_at else None)
        if self._received_end < resume_at:
            if self._next_start < resume_at:
                log.info("audio lost: %d samples before sample %d; windows restart there", resume_at - gap_from, resume_at)
                self._next_start = resume_at
            self._buffer = np.zeros(0, dtype=np.float32)
            self._buffer_start = resume_at
        return emitted

    def _emit_complete(self, real_end: int | None = None) -> list[Cut]:
        """Emit the complete windows; audio from `real_end` on is padding (a bridged loss)."""
        real_end = self._received_end if real_end is None else real_end
        emitted: list[Cut] = []
        start0 = self._buffer_start
        while self._next_start + self.window_samples <= self._received_end:
            offset = self._next_start - start0
            samples = self._buffer[offset : offset + self.window_samples].copy()
            real = min(self.window_samples, real_end - self._next_start)
            emitted.append(Cut(self._next_start, samples, self._time_of(self._next_start), self.sample_rate_hz, real))
            self._emitted_end = self._next_start + self.window_samples
            self._next_start += self.hop_samples
        # Keep only what the next window needs (nothing when the hop skips past the buffer).
        cut = min(self._next_start, self._received_end) - start0
        if cut > 0:
            self._buffer = self._buffer[cut:].copy()
            self._buffer_start = start0 + cut
        while len(self._anchors) > 1 and self._anchors[1][0] <= self._next_start:
            self._anchors.popleft()
        return emitted

    def _time_of(self, sample: int) -> datetime:
        """UTC time of `sample`, from the anchor of the latest block starting at or before it."""
        anchor_sample, anchor_time = self._anchors[0]
        for start, started_on in self._anchors:
            if start > sample:
                break
            anchor_sample, anchor_time = start, started_on
        return anchor_time + timedelta(seconds=(sample - anchor_sample) / self.sample_rate_hz)

    def flush(self) -> list[Cut]:
        """End the stream: the last partial window, zero-padded, if it holds unanalysed audio.

        Returns:
            One `Cut` whose `valid_samples` says how many samples are real, or nothing when
            every pushed sample is already inside an emitted window. The Windower is then
            empty, and a later push starts a new grid at its block.
        """
        result = []
        if self._buffer_start is not None:
            received_end = self._received_end
            if received_end > max(self._emitted_end, self._next_start):
                offset = self._next_start - self._buffer_start
                real = self._buffer[offset:]
                samples = np.zeros(self.window_samples, dtype=np.float32)
                samples[: len(real)] = real
                result.append(Cut(self._next_start, samples, self._time_of(self._next_start), self.sample_rate_hz, len(real)))
        self._reset()
        return result


def check_rate(source_name: str, sample_rate_hz: int, min_rate_hz: int) -> None:
    """Refuse audio recorded below the lowest rate the analysis can use.

    Resampling a 1 Hz or 4 kHz recording up to a model's rate invents no frequencies: the
    model would be shown an empty spectrum above the recording's Nyquist limit and its
    scores would mean nothing. Such a file is bad input, named like any other.

    Raises:
        AudioError: `sample_rate_hz` is below `min_rate_hz`; names the source, its rate and
            the minimum.
    """
    if sample_rate_hz < min_rate_hz:
        raise AudioError(
            f"{source_name}: sample rate {sample_rate_hz} Hz is below {min_rate_hz} Hz, the lowest rate this "
            f"bundle's branches can use (its audio above {sample_rate_hz / 2:g} Hz is missing); nothing was analysed"
        )


def cut_windows(
    blocks: Iterable[AudioBlock], window_s: float, hop_s: float, source_name: str, min_rate_hz: int = 0
) -> Iterator[Window]:
    """The analysis windows of a stream of blocks, in order, the last one zero-padded.

    The grid is set by the first block's rate (`round(window_s * rate)` samples every
    `round(hop_s * rate)`); memory stays at one window however long the stream is. When
    `blocks` ends (the source ended, or the caller's generator stopped it), the partial
    window still holding unanalysed audio is yielded, padded.

    Args:
        blocks: One source's blocks, at one rate, in source order.
        window_s: Seconds per window.
        hop_s: Seconds between window starts.
        source_name: What the audio came from (each Window's `source`, and the error's subject).
        min_rate_hz: The lowest sample rate the caller can analyse (`Engine.min_sample_rate_hz`),
            checked once, on the first block.

    Yields:
        `Window`s numbered from 0 (`Window.index`).

    Raises:
        AudioError: the source's rate is below `min_rate_hz` (before any window is cut).
    """
    windower = None
    index = 0
    for block in blocks:
        if windower is None:
            rate = block.sample_rate_hz
            check_rate(source_name, rate, min_rate_hz)
            windower = Windower(rate, round(window_s * rate), round(hop_s * rate))
        for cut in windower.push(block):
            yield _window(cut, source_name, index)
            index += 1
    if windower is not None:
        for cut in windower.flush():
            yield _window(cut, source_name, index)
            index += 1


def _window(cut: Cut, source_name: str, index: int) -> Window:
    return Window(
        samples=cut.samples,
        sample_rate_hz=cut.sample_rate_hz,
        start_s=cut.start_sample / cut.sample_rate_hz,
        started_on=cut.started_on,
        source=source_name,
        valid_samples=cut.valid_samples,
        index=index,
    )

"""The live microphone as an `AudioSource`, kept alive through unplugs and driver hiccups.

Three threads, each waiting on one thing only:
- PortAudio's capture thread runs `_callback`, which copies the sound card's buffer into a
  bounded `DropOldestQueue` and returns. It never waits on the analysis, the disk or a lock
  held by slow code, so a slow consumer costs counted drops, not a stalled sound card.
- A supervisor thread watches the stream. When the device disappears (PortAudio ends the
  stream, or no audio arrives for `STALL_S`), it reopens it with exponential back-off up to
  `reconnect_max_s` (settings.audio.reconnect_max_s), logging each attempt.
- The consumer iterates `blocks()`, which stamps sample offsets and UTC times and feeds the
  level meter that `status()` reports.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterator

import numpy as np
import sounddevice as sd

from device.audio.devices import find_input_device, list_input_devices, rescan_devices
from device.audio.queue import DropOldestQueue, QueueSnapshot
from device.audio.samples import sanitize, to_mono
from device.audio.types import AudioBlock, AudioError

__all__ = ["MicStatus", "MicrophoneSource", "find_input_device", "list_input_devices"]

log = logging.getLogger(__name__)

QUEUE_S = 10.0
"""Seconds of audio the capture queue holds by default: enough to ride out a slow inference
burst on a Pi 5, small enough that a stuck consumer costs seconds of memory, not hours."""

RECONNECT_FIRST_S = 0.5
"""First wait before reopening a lost device; doubled per failed attempt up to reconnect_max_s.
A USB microphone re-enumerates in about half a second after a glitch."""

STALL_S = 3.0
"""No callback for this long while capturing means the device is gone even if PortAudio has
not said so (some ALSA drivers just stop delivering). At least 6 blocks are always allowed."""

CLIP_LEVEL = 0.999
"""Samples at or above this magnitude count as clipped (full scale of 16-bit input is 0.99997)."""

MAX_CLOCK_DRIFT_S = 0.5
"""Re-anchor block timestamps to the wall clock when the sound card's sample clock has drifted
this far from it (cheap card clocks are off by ~50 ppm: 0.18 s an hour)."""

_SILENCE_DBFS = -120.0


@dataclass(frozen=True)
class MicStatus:
    """What a meter or the TUI shows about the microphone; a copy taken under a lock."""

    state: str
    """'capturing', 'reconnecting' or 'stopped'."""
    device: str
    sample_rate_hz: int
    attempts: int
    """Reopen attempts since the device was last lost (0 while capturing)."""
    reconnects: int
    """Times the device was lost and reopened since the source started."""
    last_error: str | None
    """Why the device was last lost or could not be reopened."""
    level_dbfs: float
    """RMS level of the latest block, dB relative to full scale."""
    peak: float
    """Largest magnitude in the latest block (1.0 is full scale)."""
    clipped_samples: int
    """Samples at full scale since the start: the gain is too high if this keeps rising."""
    overflows: int
    """Callbacks the sound card flagged as input overflow (audio lost in the driver)."""
    nonfinite_samples: int
    queue: QueueSnapshot


@dataclass(frozen=True)
class _Chunk:
    """What the capture callback hands over: the samples and where they sit in their stream."""

    stream: int
    """Which (re)opened stream captured it; a new one starts a new run of sample offsets."""
    offset: int
    """Frames captured by this stream before this chunk."""
    arrived: float
    """time.time() when the callback ran (just after the chunk's last sample was heard)."""
    samples: np.ndarray


class MicrophoneSource:
    """Capture from an input device at its native rate, as `AudioBlock`s of `block_s` seconds."""

    def __init__(
        self,
        spec: str | int = "default",
        block_s: float = 0.5,
        queue_blocks: int | None = None,
        reconnect_max_s: float = 30.0,
        channels: int = 1,
    ) -> None:
        """Find the device and start capturing.

        Args:
            spec: `default`, a device index, or part of a device name (see find_input_device).
            block_s: Seconds per sound-card callback and per block.
            queue_blocks: Blocks waiting for the consumer before the oldest is dropped
                (default: `QUEUE_S` of audio).
            reconnect_max_s: Longest wait between attempts to reopen a lost device.
            channels: Channels to open (averaged to mono); some USB cards only open in stereo.

        Raises:
            AudioError: No device matches `spec`, or it cannot be opened.
        """
        if not block_s > 0:
            raise ValueError(f"block_s must be positive, got {block_s}")
        self._device = find_input_device(spec)
        # Reopen by name: indices shift when the device list is rescanned.
        self._respec = spec if str(spec).strip().lower() == "default" else self._device.name
        self.sample_rate_hz = self._device.default_samplerate_hz
        self.name = f"mic:{self._device.name}"
        self.block_frames = max(1, round(self.sample_rate_hz * block_s))
        self.channels = channels
        self.reconnect_max_s = float(reconnect_max_s)
        self._stall_s = max(STALL_S, 6 * block_s)
        maxsize = queue_blocks if queue_blocks is not None else max(2, math.ceil(QUEUE_S / block_s))
        self._queue: DropOldestQueue[_Chunk] = DropOldestQueue(maxsize, self.name)
        self._lock = threading.Lock()  # guards the status fields below, never taken by the callback
        self._state = "capturing"
        self._attempts = 0
        self._reconnects = 0
        self._last_error: str | None = None
        self._level_dbfs = _SILENCE_DBFS
        self._peak = 0.0
        self._clipped = 0
        self._nonfinite = 0
        # Written by the capture callback only (single writer, read without a lock).
        self._overflows = 0
        self._last_callback = time.monotonic()
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._lost_reason = ""
        self._generation = 0
        self._stream: sd.InputStream | None = None
        self._open_stream()
        self._supervisor = threading.Thread(target=self._supervise, name=f"{self.name} supervisor", daemon=True)
        self._supervisor.start()

    # -- capture thread -------------------------------------------------------------------

    def _make_callback(self, generation: int):
        offset = 0

        def callback(indata: np.ndarray, frames: int, time_info, status: sd.CallbackFlags) -> None:
            nonlocal offset
            if status.input_overflow:
                self._overflows += 1
            self._last_callback = time.monotonic()
            self._queue.put(_Chunk(generation, offset, time.time(), to_mono(indata).copy()))
            offset += frames

        return callback

    def _on_finished(self, generation: int) -> None:
        # PortAudio ends a stream by itself only when the device failed.
        if generation == self._generation and not self._stop.is_set():
            self._lost_reason = "the stream ended (device disconnected or failed)"
            self._lost.set()

    # -- supervisor thread ----------------------------------------------------------------

    def _open_stream(self) -> None:
        self._generation += 1
        generation = self._generation
        self._lost.clear()
        try:
            stream = sd.InputStream(
                device=self._device.index,
                samplerate=self.sample_rate_hz,
                channels=self.channels,
                dtype="float32",
                blocksize=self.block_frames,
                callback=self._make_callback(generation),
                finished_callback=lambda: self._on_finished(generation),
            )
        except (sd.PortAudioError, ValueError) as exc:
            raise AudioError(
                f"{self.name}: cannot capture {self.channels} ch at {self.sample_rate_hz} Hz ({exc})"
            ) from None
        self._last_callback = time.monotonic()
        try:
            stream.start()
        except sd.PortAudioError as exc:
            stream.close(ignore_errors=True)
            raise AudioError(f"{self.name}: cannot start capturing ({exc})") from None
        self._stream = stream

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.abort()
                stream.close()
            except sd.PortAudioError as exc:  # already gone with its device
                log.debug("%s: closing the lost stream: %s", self.name, exc)

    def _supervise(self) -> None:
        while not self._stop.is_set():
            reason = self._wait_for_loss()
            if reason is None:
                return
            self._close_stream()
            log.warning("%s: lost (%s); reconnecting", self.name, reason)
            with self._lock:
                self._state = "reconnecting"
                self._last_error = reason
                self._attempts = 0
            self._reconnect()

    def _wait_for_loss(self) -> str | None:
        """Block until the stream is lost (returns why) or the source is closed (None)."""
        while not self._stop.is_set():
            if self._lost.wait(0.2):
                return self._lost_reason
            silent_s = time.monotonic() - self._last_callback
            if silent_s > self._stall_s:
                return f"no audio from the device for {silent_s:.1f} s"
        return None

    def _reconnect(self) -> None:
        delay = RECONNECT_FIRST_S
        while not self._stop.wait(delay):
            with self._lock:
                self._attempts += 1
                attempt = self._attempts
            try:
                rescan_devices()
                device = find_input_device(self._respec)
                self._device = device
                self._open_stream()
            except (AudioError, sd.PortAudioError) as exc:
                with self._lock:
                    self._last_error = str(exc)
                log.warning("%s: reconnect attempt %d failed, next in %.1f s: %s", self.name, attempt,
                            min(delay * 2, self.reconnect_max_s), exc)
                delay = min(delay * 2, self.reconnect_max_s)
                continue
            with self._lock:
                self._state = "capturing"
                self._attempts = 0
                self._reconnects += 1
            log.warning("%s: capturing again after %d attempt(s) (device %s)", self.name, attempt, device.describe())
            return

    # -- consumer -------------------------------------------------------------------------

    def blocks(self) -> Iterator[AudioBlock]:
        """Yield captured blocks until `close()`; blocks queued before it are still yielded.

        Block offsets count samples since the source started, at `sample_rate_hz`. Audio
        dropped from the queue or lost while reconnecting leaves a gap in the offsets.
        """
        stream: int | None = None  # generation of the stream being read
        base = 0  # source offset of that stream's frame 0
        frame0_on: datetime | None = None  # UTC time of that stream's frame 0
        source_t0: datetime | None = None  # UTC time of source offset 0
        next_sample = 0
        while True:
            try:
                chunk = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            rate = self.sample_rate_hz
            # When the chunk's first sample was heard, by the wall clock (callback time - its length).
            heard = datetime.fromtimestamp(chunk.arrived, tz=timezone.utc) - timedelta(seconds=len(chunk.samples) / rate)
            if chunk.stream != stream:
                # A (re)opened stream: place it after everything yielded, at its wall-clock offset.
                stream = chunk.stream
                frame0_on = heard - timedelta(seconds=chunk.offset / rate)
                if source_t0 is None:
                    source_t0 = frame0_on
                base = max(next_sample - chunk.offset, round((frame0_on - source_t0).total_seconds() * rate))
            started_on = frame0_on + timedelta(seconds=chunk.offset / rate)
            if abs((heard - started_on).total_seconds()) > MAX_CLOCK_DRIFT_S:
                frame0_on = heard - timedelta(seconds=chunk.offset / rate)
                started_on = heard
            start_sample = base + chunk.offset
            self._meter(chunk.samples)
            next_sample = start_sample + len(chunk.samples)
            yield AudioBlock(chunk.samples, rate, start_sample, started_on)

    def _meter(self, samples: np.ndarray) -> None:
        bad = sanitize(samples)
        magnitude = np.abs(samples)
        peak = float(magnitude.max()) if len(samples) else 0.0
        rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0
        with self._lock:
            self._peak = peak
            self._level_dbfs = 20 * math.log10(rms) if rms > 0 else _SILENCE_DBFS
            self._clipped += int(np.count_nonzero(magnitude >= CLIP_LEVEL))
            self._nonfinite += bad
        if bad:
            log.warning("%s: %d NaN/Inf samples from the device replaced by zeros", self.name, bad)

    # -- any thread -----------------------------------------------------------------------

    def status(self) -> MicStatus:
        """A consistent copy of the capture state, safe to call from any thread."""
        with self._lock:
            return MicStatus(
                state=self._state,
                device=self._device.name,
                sample_rate_hz=self.sample_rate_hz,
                attempts=self._attempts,
                reconnects=self._reconnects,
                last_error=self._last_error,
                level_dbfs=self._level_dbfs,
                peak=self._peak,
                clipped_samples=self._clipped,
                overflows=self._overflows,
                nonfinite_samples=self._nonfinite,
                queue=self._queue.snapshot(),
            )

    def close(self) -> None:
        """Stop capturing and reconnecting; `blocks()` ends once the queue is drained."""
        self._stop.set()
        if self._supervisor.is_alive() and threading.current_thread() is not self._supervisor:
            self._supervisor.join(timeout=5)
        self._close_stream()
        with self._lock:
            self._state = "stopped"

    def __enter__(self) -> "MicrophoneSource":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

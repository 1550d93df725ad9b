"""Recordings on disk as an `AudioSource`: streamed block by block, whatever their format.

libsndfile (through soundfile) decodes WAV, FLAC, OGG/Vorbis and MP3 at any rate and channel
count. The file is read one block at a time, so an hour-long recording costs one block of
memory, not 460 MB of float32. Damaged files never stop a run silently: what can be decoded
is analysed and the problem is named (file and reason) in an `AudioError` or a warning.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Iterator

import soundfile as sf

from device.audio.samples import sanitize, to_mono
from device.audio.types import AudioBlock, AudioError

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
"""What field recorders and phones write and libsndfile 1.2 decodes (lower case)."""

_NAME_TIME = re.compile(r"(?<!\d)(\d{8})_(\d{6})(?!\d)")
"""`YYYYMMDD_HHMMSS` as AudioMoth, Song Meter and BirdCLEF soundscape names carry it."""

_SHORT_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
"""libsndfile's log line when a WAV header promises more data bytes than the file holds."""

_OGG_NO_END = "lacks an end-of-stream bit"
"""libsndfile's log note when an Ogg stream stops before its last page (a cut-off copy)."""

_SHORTFALL_TOLERANCE = 0.01
"""Fraction of the header's frame count a decode may fall short of before the file is called
truncated: MP3 frame counts come from the Xing header and are estimates."""


def recording_started_on(path: Path, duration_s: float, name_tz: tzinfo = timezone.utc) -> datetime:
    """When the recording's first sample was heard, as aware UTC.

    A `YYYYMMDD_HHMMSS` in the file name wins (e.g. `H02_20230420_074000.ogg`). It is read
    as UTC by default because AudioMoth, which recorded the BirdCLEF soundscapes, names its
    files in UTC unless it was configured for local time; pass `name_tz` for recorders set
    to local time. Without such a name, the file's modification time minus its duration is
    used: a recorder writes the file as it records, so the last write marks the last
    sample (a copy that did not keep the mtime shifts this, and nothing in the file can tell).

    Args:
        path: The recording.
        duration_s: Its duration, to step back from the mtime.
        name_tz: The zone the recorder wrote names in.
    """
    match = _NAME_TIME.search(Path(path).name)
    if match:
        try:
            named = datetime.strptime(match.group(1) + match.group(2), "%Y%m%d%H%M%S")
        except ValueError:
            named = None  # 8+6 digits that are not a date: fall back to the mtime
        if named is not None:
            return named.replace(tzinfo=name_tz).astimezone(timezone.utc)
    modified = datetime.fromtimestamp(Path(path).stat().st_mtime, tz=timezone.utc)
    return modified - timedelta(seconds=duration_s)


def _open(path: Path) -> sf.SoundFile:
    """Open `path` with libsndfile, or raise an AudioError saying why it cannot be audio."""
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if not path.is_file():
        raise AudioError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        handle = sf.SoundFile(path)
    except sf.LibsndfileError as exc:
        text = exc.error_string or str(exc)
        if "not recognised" in text.lower():
            problem = "not a readable audio file (format not recognised; expected WAV, FLAC, OGG or MP3)"
        else:
            problem = f"unreadable audio ({text})"
        raise AudioError(f"{path}: {problem}") from None
    except OSError as exc:
        raise AudioError(f"{path}: cannot open ({exc.strerror or exc})") from None
    if handle.samplerate <= 0 or handle.channels <= 0:
        handle.close()
        raise AudioError(f"{path}: malformed header ({handle.samplerate} Hz, {handle.channels} channels)")
    return handle


class FileSource:
    """A recording streamed as `AudioBlock`s of `block_s` seconds (the last one shorter).

    Attributes:
        name: The file path, as text.
        sample_rate_hz: The file's own rate (no resampling happens here).
        channels: Channel count in the file (blocks are downmixed to mono).
        frames: Frames the header promises (for MP3 an estimate).
        started_on: Aware UTC time of the first sample (see `recording_started_on`).
        nonfinite_samples: NaN/Inf samples replaced by zeros so far.
        decoded_samples: Frames decoded so far.
        truncated: True once the file turned out shorter than its header says.
    """

    def __init__(
        self,
        path: str | Path,
        block_s: float = 1.0,
        realtime: bool = False,
        name_tz: tzinfo = timezone.utc,
    ) -> None:
        """Open `path` and read its header.

        Args:
            path: A WAV, FLAC, OGG or MP3 file.
            block_s: Seconds per block; bounds the memory the stream holds.
            realtime: Release blocks at wall-clock pace, as if the file were a live
                microphone (for demos and for testing the live path with a recording).
            name_tz: Zone of a `YYYYMMDD_HHMMSS` file name (see `recording_started_on`).

        Raises:
            AudioError: The file is missing, empty, not audio, or its header is corrupt.
        """
        if not block_s > 0:
            raise ValueError(f"block_s must be positive, got {block_s}")
        self.path = Path(path)
        self.name = str(self.path)
        self._file = _open(self.path)
        self.sample_rate_hz = int(self._file.samplerate)
        self.channels = int(self._file.channels)
        self.frames = int(self._file.frames)
        self.block_frames = max(1, round(self.sample_rate_hz * block_s))
        self.realtime = realtime
        self.started_on = recording_started_on(self.path, self.frames / self.sample_rate_hz, name_tz)
        self.nonfinite_samples = 0
        self.decoded_samples = 0
        self.truncated = False
        self._closed = threading.Event()
        self._io = threading.Lock()  # close() from another thread must not free a file mid-read

    @property
    def duration_s(self) -> float:
        """Duration the header promises, in seconds."""
        return self.frames / self.sample_rate_hz

    def blocks(self) -> Iterator[AudioBlock]:
        """Decode the file block by block.

        Yields:
            Contiguous blocks from sample 0, downmixed to float32 mono, NaN/Inf zeroed.

        Raises:
            AudioError: Decoding failed part-way (a truncated or corrupt file), after the
                blocks before the damage were yielded.
        """
        if self._closed.is_set():
            return
        if self._file.tell() != 0:
            self._file.seek(0)
        self.decoded_samples = 0
        paced_from = time.monotonic()
        while not self._closed.is_set():
            try:
                with self._io:
                    if self._closed.is_set():
                        return
                    frames = self._file.read(self.block_frames, dtype="float32", always_2d=True)
            except (sf.SoundFileError, RuntimeError) as exc:
                self.truncated = True
                at_s = self.decoded_samples / self.sample_rate_hz
                reason = getattr(exc, "error_string", "") or str(exc) or type(exc).__name__
                raise AudioError(
                    f"{self.path}: decoding failed at {at_s:.1f} s of {self.duration_s:.1f} s "
                    f"(truncated or corrupt file: {reason}); the blocks before it were delivered"
                ) from None
            if len(frames) == 0:
                break
            samples = to_mono(frames)
            self._count_nonfinite(sanitize(samples))
            block = AudioBlock(
                samples=samples,
                sample_rate_hz=self.sample_rate_hz,
                start_sample=self.decoded_samples,
                started_on=self.started_on + timedelta(seconds=self.decoded_samples / self.sample_rate_hz),
            )
            self.decoded_samples += len(samples)
            if self.realtime:
                # Release a block when its last sample would have been heard live.
                due = paced_from + self.decoded_samples / self.sample_rate_hz
                if self._closed.wait(max(0.0, due - time.monotonic())):
                    return
            yield block
        with self._io:
            if not self._closed.is_set():
                self._check_complete()

    def _count_nonfinite(self, bad: int) -> None:
        if not bad:
            return
        if self.nonfinite_samples == 0:
            log.warning(
                "%s: NaN/Inf samples at %.1f s replaced by zeros (the run goes on; total reported at the end)",
                self.path, self.decoded_samples / self.sample_rate_hz,
            )
        self.nonfinite_samples += bad

    def _check_complete(self) -> None:
        """After the last block: warn when the file was shorter than promised or had NaNs."""
        if self.nonfinite_samples:
            log.warning("%s: %d NaN/Inf samples were replaced by zeros", self.path, self.nonfinite_samples)
        info = self._file.extra_info
        short = _SHORT_DATA.search(info)
        shortfall = self.frames - self.decoded_samples
        reason = None
        if short and int(short.group(1)) > int(short.group(2)):
            reason = f"its header promises {int(short.group(1))} data bytes, the file holds {int(short.group(2))}"
        elif _OGG_NO_END in info:
            reason = "the Ogg stream stops before its last page"
        elif shortfall > max(1, self.frames * _SHORTFALL_TOLERANCE):
            reason = f"its header promises {self.duration_s:.1f} s"
        if reason:
            self.truncated = True
            log.warning(
                "%s: truncated: %s; analysed the %.1f s that could be decoded",
                self.path, reason, self.decoded_samples / self.sample_rate_hz,
            )

    def close(self) -> None:
        """Close the file; a paced `blocks()` in another thread ends at its next wait."""
        self._closed.set()
        with self._io:
            self._file.close()

    def __enter__(self) -> "FileSource":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""A virtual microphone for tests: PulseAudio's pipe source, fed with real recordings.

`.ci/pulse-mic.sh` starts PulseAudio (if needed) with `module-pipe-source`: the bytes written
into its FIFO are what PortAudio's `pulse`/`default` inputs capture. `feed_recording` decodes
a recording from ../shared/data, resamples it to the pipe's format and writes it at real-time
pace from a background thread, so `MicrophoneSource` captures real audio through the real
sounddevice -> PortAudio -> ALSA -> PulseAudio path.

Use: `vm = ensure_virtual_mic()` (or the `virtual_mic` fixture), then
`feeder = feed_recording(path, vm.fifo, rate_hz=vm.rate_hz)` and `feeder.stop()` at the end.
Nothing reads the pipe source's audio until a stream opens, so audio fed before that is lost
(and PulseAudio may discard up to ~1.5 s at the start of the first stream): compare captured
audio against the fed recording by searching for the best lag, never by position.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from device.audio.resample import resample

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "pulse-mic.sh"

FEED_CHUNK_S = 0.05
"""Seconds written per FIFO write: small enough to pace smoothly, large enough to be cheap."""

FEED_AHEAD_S = 0.2
"""Seconds the feeder runs ahead of the wall clock, so a late wake-up never starves the
source (a starved pipe source sends nothing, which the microphone sees as a stall)."""


@dataclass(frozen=True)
class VirtualMic:
    fifo: Path
    source: str
    """PulseAudio source name (pactl), not the PortAudio device name."""
    rate_hz: int
    """What the FIFO expects: s16le mono at this rate."""
    server: str
    portaudio_inputs: tuple[str, ...]
    """Input device names PortAudio shows (e.g. 'pulse', 'default')."""


def ensure_virtual_mic() -> VirtualMic:
    """Start PulseAudio and the pipe source if they are not up; make PortAudio see them.

    Raises:
        RuntimeError: The script failed (its output says why: usually a missing apt package).
    """
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{SCRIPT} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    values: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition("=")
        values.setdefault(key, []).append(value)
    os.environ.setdefault("PULSE_SERVER", values["PULSE_SERVER"][0])
    import sounddevice as sd

    from device.audio.devices import rescan_devices

    if not any(d["max_input_channels"] > 0 and d["name"] == "pulse" for d in sd.query_devices()):
        rescan_devices()  # PortAudio listed devices before PulseAudio was up
    inputs = tuple(value.split(":")[1] for value in values.get("PORTAUDIO_INPUT", []) if ":" in value)
    return VirtualMic(
        fifo=Path(values["FIFO"][0]),
        source=values["SOURCE"][0],
        rate_hz=int(values["RATE"][0]),
        server=values["PULSE_SERVER"][0],
        portaudio_inputs=inputs,
    )


@pytest.fixture(scope="session")
def virtual_mic() -> VirtualMic:
    return ensure_virtual_mic()


LOCK = Path("/tmp/explorer-virtual-mic.lock")
"""Held while a test feeds or unplugs the virtual microphone: two test runs on one machine
would otherwise write into the same FIFO and unload each other's source."""


@contextlib.contextmanager
def exclusive_virtual_mic(timeout_s: float = 300.0):
    """Wait (up to `timeout_s`) until no other process is using the virtual microphone."""
    with open(LOCK, "w") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another test run held {LOCK} for {timeout_s} s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pipe_source_module(source: str) -> str | None:
    """The PulseAudio module id of the pipe source named `source`, if it is loaded."""
    listing = subprocess.run(["pactl", "list", "short", "modules"], capture_output=True, text=True, check=True)
    for line in listing.stdout.splitlines():
        fields = line.split("\t")
        if len(fields) > 2 and fields[1] == "module-pipe-source" and f"source_name={source}" in fields[2]:
            return fields[0]
    return None


def unload_pipe_source(source: str) -> None:
    """Unplug the virtual microphone (PulseAudio kills the streams recording from it)."""
    module = pipe_source_module(source)
    if module is None:
        raise RuntimeError(f"pipe source {source} is not loaded")
    subprocess.run(["pactl", "unload-module", module], check=True)


class Feeder:
    """A background thread writing a recording into the FIFO at real-time pace."""

    def __init__(self, samples: np.ndarray, rate_hz: int, fifo: Path, realtime: bool, loop: bool) -> None:
        self.samples = samples
        """The fed audio as float32 at `rate_hz` (what the microphone should hear)."""
        self.rate_hz = rate_hz
        self.fifo = Path(fifo)
        self.realtime = realtime
        self.loop = loop
        self.written = 0
        """Samples written so far (all passes)."""
        self.reopened = 0
        """Times the FIFO had to be opened again (its reader went away and came back)."""
        self.error: BaseException | None = None
        self._pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._thread = threading.Thread(target=self._run, name=f"feed {fifo}", daemon=True)
        self._thread.start()

    def _open(self) -> int | None:
        """Open the FIFO for writing once a reader (the pipe source) has it open."""
        while not self._stop.is_set():
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:  # ENXIO: no reader yet; ENOENT: module not loaded
                if exc.errno not in (errno.ENXIO, errno.ENOENT):
                    raise
                self._stop.wait(0.02)
                continue
            os.set_blocking(fd, True)
            return fd
        return None

    def _run(self) -> None:
        try:
            self._feed()
        except BaseException as exc:  # reported through .error and join()
            self.error = exc

    def _feed(self) -> None:
        chunk = max(2, int(self.rate_hz * FEED_CHUNK_S)) * 2
        position = 0
        fd = self._open()
        paced_from, paced_bytes = time.monotonic(), 0
        while fd is not None and not self._stop.is_set():
            if not self._running.is_set():  # paused: the microphone hears nothing at all
                while not self._running.wait(0.05):
                    if self._stop.is_set():
                        break
                paced_from, paced_bytes = time.monotonic(), 0
                continue
            if position >= len(self._pcm):
                if not self.loop:
                    break
                position = 0
            data = self._pcm[position : position + chunk]
            try:
                os.write(fd, data)
            except BrokenPipeError:
                os.close(fd)
                fd = self._open()
                self.reopened += 1
                paced_from, paced_bytes = time.monotonic(), 0
                continue
            position += len(data)
            paced_bytes += len(data)
            self.written += len(data) // 2
            if self.realtime:
                due = paced_from + paced_bytes / 2 / self.rate_hz - FEED_AHEAD_S
                self._stop.wait(max(0.0, due - time.monotonic()))
        if fd is not None:
            os.close(fd)

    def pause(self) -> None:
        """Stop writing (the pipe source then delivers nothing, like a stalled sound card)."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        self.join()

    def join(self, timeout: float | None = 10) -> None:
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error


def feed_recording(
    path: Path, fifo: Path, realtime: bool = True, rate_hz: int = 32000, loop: bool = False
) -> Feeder:
    """Write a real recording into the virtual microphone's FIFO from a background thread.

    Args:
        path: A recording (any format, rate and channel count soundfile reads).
        fifo: The pipe source's FIFO.
        realtime: Pace writes at the recording's own speed, as a microphone would hear it.
        rate_hz: The FIFO's rate (the script's RATE); the recording is resampled to it.
        loop: Start over at the end, until `stop()`.

    Returns:
        The running Feeder; its `samples` are the audio fed, at `rate_hz`.
    """
    data, file_rate = sf.read(path, dtype="float32", always_2d=True)
    samples = resample(data.mean(axis=1), file_rate, rate_hz)
    return Feeder(samples, rate_hz, fifo, realtime, loop)

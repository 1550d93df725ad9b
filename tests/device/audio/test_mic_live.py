"""MicrophoneSource, live: a real recording played into PulseAudio's virtual microphone is
captured through sounddevice -> PortAudio -> ALSA -> PulseAudio and must match what was fed.
The reconnect path is exercised for real by unloading and reloading the source.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import correlate

from device.audio import mic
from device.audio.mic import MicStatus, MicrophoneSource
from device.audio.resample import resample
from device.audio.types import AudioBlock, AudioSource

CAPTURE_S = 5.0
"""Audio captured per check: long enough for a soundscape's calls to make a unique match."""


def best_match(captured: np.ndarray, fed: np.ndarray) -> tuple[float, int]:
    """Peak normalised cross-correlation of `captured` against every position in `fed`."""
    fed = np.concatenate([fed, fed[: len(captured)]])  # the feeder loops
    dots = correlate(fed, captured, mode="valid", method="fft")
    energy = np.concatenate([[0.0], np.cumsum(fed.astype(np.float64) ** 2)])
    window = energy[len(captured) :] - energy[: -len(captured)]
    ncc = dots / (np.sqrt(np.maximum(window, 1e-12)) * np.linalg.norm(captured))
    lag = int(np.argmax(ncc))
    return float(ncc[lag]), lag


def wait_for(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


class Collector:
    """Iterates a source's blocks() on its own thread, as the pipeline's capture loop does."""

    def __init__(self, source: MicrophoneSource) -> None:
        self.blocks: list[AudioBlock] = []
        self.thread = threading.Thread(target=lambda: self.blocks.extend(source.blocks()), daemon=True)
        self.thread.start()

    def seconds(self, rate: int, since: int = 0) -> float:
        return sum(len(b.samples) for b in self.blocks[since:]) / rate


@pytest.fixture(scope="module")
def feeder(virtual_mic, pulse, soundscape: Path):
    with pulse.exclusive_virtual_mic():
        pulse.ensure_virtual_mic()  # another run may have left the source unplugged
        running = pulse.feed_recording(soundscape, virtual_mic.fifo, rate_hz=virtual_mic.rate_hz, loop=True)
        yield running
        running.stop()


def as_fed(blocks: list[AudioBlock], rate: int, to_hz: int) -> np.ndarray:
    return resample(np.concatenate([b.samples for b in blocks]), rate, to_hz)


def test_captured_audio_is_the_recording_fed_in(virtual_mic, feeder, audio_dir: Path) -> None:
    source = MicrophoneSource("pulse", block_s=0.25)
    try:
        assert isinstance(source, AudioSource)
        assert source.name == "mic:pulse" and source.status().state == "capturing"
        collector = Collector(source)
        assert wait_for(lambda: collector.seconds(source.sample_rate_hz) >= CAPTURE_S, 20)
        status = source.status()
    finally:
        source.close()
    collector.thread.join(5)
    assert not collector.thread.is_alive()  # blocks() ends after close()
    assert source.status().state == "stopped"

    blocks = collector.blocks
    frames = source.block_frames
    assert all(b.sample_rate_hz == source.sample_rate_hz and len(b.samples) == frames for b in blocks)
    for before, after in zip(blocks, blocks[1:]):
        assert after.start_sample == before.end_sample  # nothing dropped, nothing reordered
        assert after.started_on > before.started_on
    assert blocks[-1].started_on.tzinfo is not None

    # The signal check: the capture matches the soundscape at one lag, and nothing else.
    captured = as_fed(blocks, source.sample_rate_hz, virtual_mic.rate_hz)
    score, _ = best_match(captured, feeder.samples)
    print(f"NCC with the recording fed in: {score:.3f}")
    assert score > 0.9, f"captured audio does not match the recording fed in (NCC {score:.3f})"
    other, _ = sf.read(audio_dir / "other" / "1min.wav", dtype="float32")
    unrelated, _ = best_match(captured, other)
    print(f"NCC with an unrelated recording: {unrelated:.3f}")
    assert unrelated < 0.5, f"an unrelated recording matched too (NCC {unrelated:.3f})"

    # The meter saw the soundscape: a real level, no clipping, no overflows, no drops.
    assert -40 < status.level_dbfs < -3 and 0 < status.peak < 1
    assert status.clipped_samples == 0 and status.overflows == 0 and status.queue.drops == 0


def test_a_slow_consumer_costs_counted_drops_visible_as_gaps(virtual_mic, feeder) -> None:
    source = MicrophoneSource("pulse", block_s=0.1, queue_blocks=3)
    try:
        time.sleep(1.5)  # nobody reads: the capture thread must not wait, the queue overflows
        dropped = source.status().queue.drops
        assert dropped >= 5
        blocks = []
        for block in source.blocks():
            blocks.append(block)
            if len(blocks) == 5:
                break
    finally:
        source.close()
    final = source.status().queue
    assert final.max_depth == 3 and final.puts >= dropped + 3
    # Offsets count every captured frame, so the dropped audio shows as a gap.
    assert blocks[0].start_sample >= dropped * source.block_frames
    assert blocks[0].start_sample % source.block_frames == 0


def test_an_unplugged_microphone_is_reconnected(virtual_mic, pulse, feeder) -> None:
    source = MicrophoneSource("pulse", block_s=0.25, reconnect_max_s=1.0)
    states: list[MicStatus] = []
    try:
        collector = Collector(source)
        assert wait_for(lambda: collector.seconds(source.sample_rate_hz) >= 1.0, 10)
        try:
            pulse.unload_pipe_source(virtual_mic.source)  # the microphone disappears
            assert wait_for(lambda: source.status().state == "reconnecting", 5)
            assert wait_for(lambda: source.status().attempts >= 2, 5)  # it keeps trying
            states.append(source.status())
        finally:
            pulse.ensure_virtual_mic()  # plugged back in
        assert wait_for(lambda: source.status().state == "capturing", 10)
        states.append(source.status())
        resumed = len(collector.blocks)
        assert wait_for(lambda: collector.seconds(source.sample_rate_hz, since=resumed) >= 3.0, 20)
    finally:
        source.close()
    collector.thread.join(5)

    lost, back = states
    assert lost.state == "reconnecting" and lost.reconnects == 0
    assert "ended" in lost.last_error or "cannot capture" in lost.last_error
    assert back.state == "capturing" and back.attempts == 0 and back.reconnects == 1
    assert feeder.reopened >= 1

    # The gap is visible in the offsets, and the audio after it is the recording again.
    starts = [(b.start_sample, b.end_sample) for b in collector.blocks]
    gaps = [after[0] - before[1] for before, after in zip(starts, starts[1:]) if after[0] != before[1]]
    assert len(gaps) == 1 and gaps[0] > 0
    score, _ = best_match(
        as_fed(collector.blocks[resumed:], source.sample_rate_hz, virtual_mic.rate_hz), feeder.samples
    )
    assert score > 0.9, f"audio after the reconnect does not match the recording (NCC {score:.3f})"


def test_a_device_that_stops_delivering_is_reopened(virtual_mic, feeder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mic, "STALL_S", 1.0)  # a sound card silent this long is treated as gone
    source = MicrophoneSource("pulse", block_s=0.1, reconnect_max_s=1.0)
    try:
        collector = Collector(source)
        assert wait_for(lambda: collector.seconds(source.sample_rate_hz) >= 0.5, 10)
        feeder.pause()  # PortAudio reports nothing: the callbacks just stop
        try:
            assert wait_for(lambda: source.status().state == "reconnecting", 5)
            stalled = source.status()
        finally:
            feeder.resume()
        resumed = len(collector.blocks)
        assert wait_for(lambda: collector.seconds(source.sample_rate_hz, since=resumed) >= 1.0, 10)
        assert wait_for(lambda: source.status().state == "capturing", 5)
    finally:
        source.close()
    collector.thread.join(5)
    assert "no audio from the device" in stalled.last_error
    assert source.status().reconnects >= 1

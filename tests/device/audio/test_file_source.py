"""FileSource: real recordings in every format, streamed in bounded memory; bad files named."""

from __future__ import annotations

import logging
import os
import threading
import time
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import correlate

from device.audio.files import FileSource, recording_started_on
from device.audio.resample import resample
from device.audio.types import AudioBlock, AudioError, AudioSource


def read_all(source: FileSource) -> tuple[list[AudioBlock], np.ndarray]:
    blocks = list(source.blocks())
    return blocks, np.concatenate([b.samples for b in blocks]) if blocks else np.zeros(0, np.float32)


def assert_contiguous(blocks: list[AudioBlock], block_frames: int) -> None:
    expected = 0
    for block in blocks:
        assert block.start_sample == expected
        assert block.samples.dtype == np.float32 and block.samples.ndim == 1
        assert 0 < len(block.samples) <= block_frames
        expected = block.end_sample
    assert all(len(b.samples) == block_frames for b in blocks[:-1])


@pytest.fixture(scope="module")
def clip(soundscape: Path) -> tuple[np.ndarray, int]:
    """The first 10 s of the real soundscape, as decoded float32."""
    data, rate = sf.read(soundscape, dtype="float32", frames=10 * 32000)
    return data, rate


def test_ogg_streams_as_contiguous_mono_blocks_with_times_from_the_name(soundscape: Path) -> None:
    with FileSource(soundscape, block_s=1.0) as source:
        assert isinstance(source, AudioSource)
        assert source.sample_rate_hz == 32000 and source.name == str(soundscape)
        assert source.started_on == datetime(2023, 4, 20, 7, 40, 0, tzinfo=timezone.utc)
        blocks, samples = read_all(source)
    assert_contiguous(blocks, 32000)
    assert len(samples) == source.frames == 60 * 32000
    reference, _ = sf.read(soundscape, dtype="float32")
    np.testing.assert_allclose(samples, np.clip(reference, -1, 1), atol=1e-6)
    assert blocks[7].started_on == source.started_on + timedelta(seconds=7)
    assert blocks[7].time_of(blocks[7].start_sample + 16000) == source.started_on + timedelta(seconds=7.5)
    assert source.nonfinite_samples == 0 and not source.truncated


@pytest.mark.parametrize(
    "suffix, fmt, subtype, tolerance",
    [
        (".flac", "FLAC", "PCM_16", 2e-4),
        (".wav", "WAV", "PCM_24", 1e-6),
        (".ogg", "OGG", "VORBIS", None),
        (".mp3", "MP3", "MPEG_LAYER_III", None),
    ],
)
def test_stereo_files_in_every_format_are_downmixed_by_averaging(
    tmp_path: Path, clip: tuple[np.ndarray, int], suffix: str, fmt: str, subtype: str, tolerance: float | None
) -> None:
    data, rate = clip
    stereo = np.stack([data, 0.5 * data], axis=1)  # a call louder on the left
    path = tmp_path / f"stereo{suffix}"
    sf.write(path, stereo, rate, format=fmt, subtype=subtype)
    with FileSource(path, block_s=0.5) as source:
        assert source.channels == 2
        blocks, samples = read_all(source)
    assert_contiguous(blocks, 16000)
    expected = (np.clip(data, -1, 1) + 0.5 * data) / 2  # the recording peaks past full scale
    if tolerance is not None:  # lossless: sample exact up to quantisation
        assert len(samples) == len(expected)
        np.testing.assert_allclose(samples, expected, atol=tolerance)
    else:  # lossy: the codec delays and smears, so compare as signals
        n = min(len(samples), len(expected))
        lag = int(np.argmax(correlate(samples[:rate], expected[:rate], method="fft"))) - (rate - 1)
        a = samples[max(lag, 0) : n]
        b = expected[max(-lag, 0) : max(-lag, 0) + len(a)]
        a = a[: len(b)]
        assert np.corrcoef(a, b)[0, 1] > 0.9  # MP3 drops the quiet high band: not 0.99
        assert abs(np.corrcoef(a[rate:], b[:-rate])[0, 1]) < 0.3  # while another second does not match
        assert abs(len(samples) - len(expected)) < rate * 0.1


@pytest.mark.parametrize(
    "rate, recording",
    [
        (8000, "birds/Cryp.soui.wav"),
        (9000, "birds/Cryp.soui.wav"),  # native rate
        (11025, "other/pellucens.wav"),  # native rate
        (22050, "birds/tico.wav"),  # native rate
        (96000, "birds/spinetail.wav"),
    ],
)
def test_odd_sample_rates_keep_their_rate_and_length(tmp_path: Path, audio_dir: Path, rate: int, recording: str) -> None:
    data, native = sf.read(audio_dir / recording, dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if native != rate:
        mono = resample(mono, native, rate)
        path = tmp_path / f"at_{rate}.wav"
        sf.write(path, mono, rate, subtype="FLOAT")
    else:
        path = audio_dir / recording
    with FileSource(path, block_s=0.5) as source:
        assert source.sample_rate_hz == rate
        assert source.block_frames == round(rate * 0.5)
        blocks, samples = read_all(source)
    assert_contiguous(blocks, round(rate * 0.5))
    assert all(b.sample_rate_hz == rate for b in blocks)
    assert len(samples) == len(mono)
    np.testing.assert_allclose(samples, np.clip(mono, -1, 1), atol=1e-4)


def test_a_long_recording_streams_in_bounded_memory(audio_dir: Path) -> None:
    path = audio_dir / "birdclef_unlabeled" / "SampleAudio.ogg"
    tracemalloc.start()
    try:
        with FileSource(path, block_s=1.0) as source:
            total, longest, squares = 0, 0, 0.0
            for block in source.blocks():
                total += len(block.samples)
                longest = max(longest, len(block.samples))
                squares += float(np.sum(np.square(block.samples, dtype=np.float64)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total / source.sample_rate_hz > 380  # the whole 382 s were decoded...
    whole_file_bytes = total * 4
    assert peak < whole_file_bytes / 20  # ...holding a few blocks, not the 49 MB recording
    assert peak < 4 * 1024 * 1024
    assert longest == source.block_frames
    assert squares > 0


def test_start_time_falls_back_to_mtime_minus_duration(tmp_path: Path, audio_dir: Path) -> None:
    recording = audio_dir / "other" / "birds_10s.wav"
    copy = tmp_path / "walk in the forest.wav"
    copy.write_bytes(recording.read_bytes())
    written = datetime(2024, 3, 1, 6, 30, 10, tzinfo=timezone.utc)
    os.utime(copy, (written.timestamp(), written.timestamp()))
    with FileSource(copy) as source:
        assert source.started_on == written - timedelta(seconds=source.duration_s)
    # Eight and six digits that are not a date do not count as one.
    odd = tmp_path / "take_20231399_996199.wav"
    odd.write_bytes(recording.read_bytes())
    os.utime(odd, (written.timestamp(), written.timestamp()))
    assert recording_started_on(odd, 10.0) == written - timedelta(seconds=10)


def test_name_times_can_be_read_in_a_local_zone(soundscape: Path) -> None:
    bogota = timezone(timedelta(hours=-5))
    assert recording_started_on(soundscape, 60.0, name_tz=bogota) == datetime(2023, 4, 20, 12, 40, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("station, species\nH02, littin1\n" * 50), "not a readable audio file"),
        (lambda p: p.mkdir(), "not a regular file"),
        (lambda p: None, "no such file"),
    ],
    ids=["zero-length", "text", "directory", "missing"],
)
def test_unusable_files_raise_an_error_naming_file_and_problem(tmp_path: Path, make, problem: str) -> None:
    path = tmp_path / "H02_20230420_074000.wav"
    make(path)
    with pytest.raises(AudioError) as error:
        FileSource(path)
    assert str(path) in str(error.value) and problem in str(error.value)


def test_a_corrupt_header_is_refused_with_the_file_named(tmp_path: Path, soundscape: Path) -> None:
    damaged = bytearray(soundscape.read_bytes())
    damaged[40:2000] = bytes(range(256)) * 7 + bytes(range(168))  # overwrite the Vorbis headers
    path = tmp_path / "damaged.ogg"
    path.write_bytes(bytes(damaged))
    with pytest.raises(AudioError, match="damaged.ogg: unreadable audio"):
        FileSource(path)


def test_a_flac_cut_mid_stream_yields_what_decodes_then_names_the_damage(tmp_path: Path, clip) -> None:
    data, rate = clip
    whole = tmp_path / "whole.flac"
    sf.write(whole, data, rate, subtype="PCM_16")
    cut = tmp_path / "cut.flac"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    blocks = []
    with FileSource(cut, block_s=0.5) as source:
        with pytest.raises(AudioError) as error:
            for block in source.blocks():
                blocks.append(block)
    message = str(error.value)
    assert str(cut) in message and "decoding failed at" in message and "truncated or corrupt" in message
    assert source.truncated
    decoded = np.concatenate([b.samples for b in blocks])
    assert 2 * rate < len(decoded) < len(data)  # a good part was analysed...
    np.testing.assert_allclose(decoded, data[: len(decoded)], atol=2e-4)  # ...and it is the real start


@pytest.mark.parametrize("suffix, subtype", [(".wav", "PCM_16"), (".ogg", "VORBIS"), (".mp3", "MPEG_LAYER_III")])
def test_truncated_files_are_analysed_as_far_as_they_go_and_reported(
    tmp_path: Path, clip, caplog: pytest.LogCaptureFixture, suffix: str, subtype: str
) -> None:
    data, rate = clip
    whole = tmp_path / f"whole{suffix}"
    sf.write(whole, data, rate, subtype=subtype)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="device.audio.files"):
        with FileSource(cut) as source:
            _, samples = read_all(source)
    assert 0.3 * len(data) < len(samples) < 0.7 * len(data)
    assert source.truncated
    assert any(str(cut) in r.getMessage() and "truncated" in r.getMessage() for r in caplog.records)


def test_nan_and_inf_samples_become_zeros_counted_and_reported(
    tmp_path: Path, clip, caplog: pytest.LogCaptureFixture
) -> None:
    data, rate = clip
    poisoned = data.copy()
    bad = np.random.default_rng(7).choice(len(data), size=300, replace=False)
    poisoned[bad[:100]] = np.nan
    poisoned[bad[100:200]] = np.inf
    poisoned[bad[200:]] = -np.inf
    path = tmp_path / "poisoned.wav"
    sf.write(path, poisoned, rate, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="device.audio.files"):
        with FileSource(path) as source:
            blocks, samples = read_all(source)
    assert len(blocks) == 10  # the run went on to the end
    assert np.isfinite(samples).all()
    assert source.nonfinite_samples == 300
    assert (samples[bad] == 0).all()
    keep = np.ones(len(data), bool)
    keep[bad] = False
    np.testing.assert_array_equal(samples[keep], np.clip(data[keep], -1, 1))
    messages = [r.getMessage() for r in caplog.records]
    assert any("poisoned.wav" in m and "300 NaN/Inf samples" in m for m in messages)


def test_realtime_paces_blocks_at_wall_clock_speed(audio_dir: Path) -> None:
    path = audio_dir / "birds" / "Phae.long2.wav"  # 1.7 s
    with FileSource(path, block_s=0.25, realtime=True) as source:
        began = time.monotonic()
        arrivals = []
        for block in source.blocks():
            arrivals.append((time.monotonic() - began, block.end_sample / source.sample_rate_hz))
    # A block is never released before its last sample would have been heard live.
    assert all(elapsed >= heard - 0.01 for elapsed, heard in arrivals)
    assert arrivals[-1][1] > 1.6


def test_close_from_another_thread_ends_a_paced_stream(soundscape: Path) -> None:
    source = FileSource(soundscape, block_s=0.5, realtime=True)
    received = []
    reader = threading.Thread(target=lambda: received.extend(source.blocks()))
    reader.start()
    time.sleep(1.2)
    source.close()
    reader.join(timeout=5)
    assert not reader.is_alive()
    assert 1 <= len(received) < 10  # stopped long before the 60 s were played

"""Windower: exact sample alignment on real audio, with and without overlap; flush; losses."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from device.audio.types import AudioBlock
from device.audio.windows import Windower

RATE = 32000
T0 = datetime(2023, 4, 20, 7, 40, tzinfo=timezone.utc)
MICROSECOND = timedelta(microseconds=1)
"""datetime's resolution: a time derived from a block's anchor may round differently."""


@pytest.fixture(scope="module")
def audio(soundscape: Path) -> np.ndarray:
    data, rate = sf.read(soundscape, dtype="float32")
    assert rate == RATE
    return data


def blocks_of(audio: np.ndarray, sizes: list[int], start: int = 0) -> list[AudioBlock]:
    """Cut `audio` into blocks of the given sizes (cycled), as a source would yield them."""
    blocks, offset, i = [], 0, 0
    while offset < len(audio):
        size = sizes[i % len(sizes)]
        piece = audio[offset : offset + size]
        blocks.append(AudioBlock(piece, RATE, start + offset, T0 + timedelta(seconds=(start + offset) / RATE)))
        offset += size
        i += 1
    return blocks


def run(windower: Windower, blocks: list[AudioBlock]) -> list:
    cuts = []
    for block in blocks:
        cuts += windower.push(block)
        assert windower.buffered_samples < windower.window_samples  # at most one window kept
    return cuts


@pytest.mark.parametrize(
    "window_s, hop_s",
    [(5.0, 5.0), (5.0, 2.5), (3.0, 1.0), (5.0, 7.0)],
    ids=["no-overlap", "half-overlap", "two-thirds-overlap", "hop-past-window"],
)
@pytest.mark.parametrize("sizes", [[7919], [16000], [250_000], [1, 999, 32000, 3]], ids=["prime", "half-second", "huge", "ragged"])
def test_windows_are_exact_slices_of_the_source(audio: np.ndarray, window_s: float, hop_s: float, sizes: list[int]) -> None:
    window, hop = round(window_s * RATE), round(hop_s * RATE)
    cuts = run(Windower(RATE, window, hop), blocks_of(audio, sizes))
    expected_starts = list(range(0, len(audio) - window + 1, hop))
    assert [c.start_sample for c in cuts] == expected_starts
    for start, samples, started_on in cuts:  # the brief's (start, samples, started_on) triple
        np.testing.assert_array_equal(samples, audio[start : start + window])
        assert abs(started_on - (T0 + timedelta(seconds=start / RATE))) <= MICROSECOND
    assert all(c.valid_samples == window and c.sample_rate_hz == RATE for c in cuts)


def test_a_source_that_does_not_start_at_zero_keeps_its_offsets(audio: np.ndarray) -> None:
    cuts = run(Windower(RATE, 5 * RATE, 5 * RATE), blocks_of(audio[: 20 * RATE], [16000], start=123_456))
    assert [c.start_sample for c in cuts] == [123_456 + k * 5 * RATE for k in range(4)]
    np.testing.assert_array_equal(cuts[1].samples, audio[5 * RATE : 10 * RATE])


def test_flush_pads_the_last_partial_window_and_says_how_much_is_real(audio: np.ndarray) -> None:
    clip = audio[: int(62.3 * RATE)] if len(audio) >= 62.3 * RATE else np.concatenate([audio, audio[: int(2.3 * RATE)]])
    windower = Windower(RATE, 5 * RATE, 5 * RATE)
    cuts = run(windower, blocks_of(clip, [16000]))
    assert len(cuts) == 12
    (last,) = windower.flush()
    assert last.start_sample == 60 * RATE and last.valid_samples == len(clip) - 60 * RATE
    np.testing.assert_array_equal(last.samples[: last.valid_samples], clip[60 * RATE :])
    assert not last.samples[last.valid_samples :].any() and len(last.samples) == 5 * RATE
    assert last.started_on == T0 + timedelta(seconds=60)


def test_flush_emits_nothing_when_every_sample_is_already_in_a_window(audio: np.ndarray) -> None:
    exact = Windower(RATE, 5 * RATE, 5 * RATE)
    run(exact, blocks_of(audio, [16000]))  # 60 s = 12 whole windows
    assert exact.flush() == []
    overlapped = Windower(RATE, 5 * RATE, round(2.5 * RATE))
    cuts = run(overlapped, blocks_of(audio, [16000]))
    assert cuts[-1].start_sample + 5 * RATE == len(audio)  # the last window ends at the end
    assert overlapped.flush() == []  # the pending hop holds only audio already analysed


def test_flush_with_overlap_covers_the_tail_beyond_the_last_window(audio: np.ndarray) -> None:
    clip = audio[: 61 * RATE] if len(audio) >= 61 * RATE else audio[: 56 * RATE]
    windower = Windower(RATE, 5 * RATE, round(2.5 * RATE))
    cuts = run(windower, blocks_of(clip, [16000]))
    (last,) = windower.flush()
    assert last.start_sample == cuts[-1].start_sample + round(2.5 * RATE)
    assert last.start_sample + last.valid_samples == len(clip)
    np.testing.assert_array_equal(last.samples[: last.valid_samples], clip[last.start_sample :])


def test_a_short_loss_is_bridged_with_silence_on_the_same_grid(audio: np.ndarray) -> None:
    blocks = blocks_of(audio[: 20 * RATE], [16000])
    del blocks[13]  # one half-second block dropped by a full queue (6.5 s .. 7 s)
    windower = Windower(RATE, 5 * RATE, 5 * RATE)
    cuts = run(windower, blocks)
    assert [c.start_sample for c in cuts] == [0, 5 * RATE, 10 * RATE, 15 * RATE]
    expected = audio[5 * RATE : 10 * RATE].copy()
    expected[int(1.5 * RATE) : 2 * RATE] = 0
    np.testing.assert_array_equal(cuts[1].samples, expected)
    assert windower.lost_samples == windower.filled_samples == 16000


def test_a_long_loss_finishes_the_window_under_way_and_restarts_the_grid(audio: np.ndarray) -> None:
    before = blocks_of(audio[: 7 * RATE], [16000])
    after = blocks_of(audio[30 * RATE : 45 * RATE], [16000], start=30 * RATE + 777)  # a reconnect
    windower = Windower(RATE, 5 * RATE, round(2.5 * RATE))
    cuts = run(windower, before + after)
    starts = [c.start_sample for c in cuts]
    # 0 s completes normally; the window under way at 2.5 s is finished with silence
    # (4.5 s of it real), which also covers the 5..7 s the next window would have held.
    half = round(2.5 * RATE)
    assert starts[:2] == [0, half]
    assert cuts[1].valid_samples == 7 * RATE - half
    np.testing.assert_array_equal(cuts[1].samples[: cuts[1].valid_samples], audio[half : 7 * RATE])
    assert not cuts[1].samples[cuts[1].valid_samples :].any()
    # Then the grid restarts at the first block after the loss.
    resume = 30 * RATE + 777
    assert starts[2:] == list(range(resume, resume + 15 * RATE - 5 * RATE + 1, half))
    np.testing.assert_array_equal(cuts[2].samples, audio[30 * RATE : 35 * RATE])
    assert abs(cuts[2].started_on - (T0 + timedelta(seconds=resume / RATE))) <= MICROSECOND
    assert windower.lost_samples == resume - 7 * RATE


def test_blocks_out_of_order_or_at_another_rate_are_refused(audio: np.ndarray) -> None:
    windower = Windower(RATE, 5 * RATE, 5 * RATE)
    first, second = blocks_of(audio[:32000], [16000])
    windower.push(second)
    with pytest.raises(ValueError, match="overlaps"):
        windower.push(first)
    with pytest.raises(ValueError, match="44100 Hz"):
        windower.push(AudioBlock(audio[:100], 44100, 64000, T0))

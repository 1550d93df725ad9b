"""How analysis windows are cut into each branch's own window (BirdNET: 3 s in 5 s)."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from device.engine.engine import crop_starts, make_crops, split_threads


def test_three_second_crops_cover_a_five_second_window():
    assert crop_starts(5 * 48000, 3 * 48000) == [0, 2 * 48000]
    assert crop_starts(3 * 48000, 3 * 48000) == [0]
    assert crop_starts(10 * 48000, 3 * 48000) == [0, 112000, 224000, 336000]


def test_crops_are_the_audio_itself_and_cover_every_sample(shared_data):
    audio, rate = sf.read(shared_data / "audio/elsilencio_soundscape/H02_20230420_074000.ogg", dtype="float32")
    window = audio[: 5 * rate]
    crops = make_crops(window, 3 * rate)
    assert crops.shape == (2, 3 * rate)
    np.testing.assert_array_equal(crops[0], window[: 3 * rate])
    np.testing.assert_array_equal(crops[1], window[2 * rate :])
    covered = np.zeros(len(window), dtype=bool)
    for start in crop_starts(len(window), 3 * rate):
        covered[start : start + 3 * rate] = True
    assert covered.all()


def test_a_short_window_is_zero_padded_and_padding_only_crops_are_left_out(shared_data):
    audio, rate = sf.read(shared_data / "audio/other/orni.wav", dtype="float32")  # 0.72 s
    padded = make_crops(audio, 3 * rate)
    assert padded.shape == (1, 3 * rate) and not padded[0, len(audio) :].any()
    window = np.zeros(5 * rate, dtype=np.float32)
    window[: len(audio)] = audio
    assert make_crops(window, 3 * rate, valid=len(audio)).shape == (1, 3 * rate)
    assert make_crops(window, 3 * rate, valid=int(2.5 * rate)).shape == (2, 3 * rate)


def test_a_thread_budget_is_shared_by_manifest_hints():
    from types import SimpleNamespace as Branch

    branches = (Branch(name="birdnet", threads=2), Branch(name="head", threads=1))
    assert split_threads(branches, 0) == {"birdnet": 2, "head": 1}
    assert split_threads(branches, 6) == {"birdnet": 4, "head": 2}
    assert split_threads(branches, 1) == {"birdnet": 1, "head": 1}

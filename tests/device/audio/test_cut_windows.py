"""`cut_windows`: the one loop from a source's blocks to domain Windows (pipeline, analysis, watch folder)."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import soundfile as sf

from device.audio.files import FileSource
from device.audio.types import AudioError
from device.audio.windows import Windower, cut_windows

FROG = "audio/birdclef_train_audio/3.ogg"  # 32 kHz, 38.3 s
TINAMOU = "audio/birds/Cryp.soui.wav"  # 9 kHz


@pytest.mark.parametrize("window_s, hop_s", [(5.0, 5.0), (5.0, 2.5)])
def test_windows_are_the_windowers_cuts_numbered_and_named(shared_data, window_s, hop_s):
    path = shared_data / FROG
    with FileSource(path) as source:
        windows = list(cut_windows(source.blocks(), window_s, hop_s, source.name))
    with FileSource(path) as source:
        windower = Windower(source.sample_rate_hz, round(window_s * 32000), round(hop_s * 32000))
        cuts = [cut for block in source.blocks() for cut in windower.push(block)] + windower.flush()
    assert len(windows) == len(cuts) > 0
    for i, (window, cut) in enumerate(zip(windows, cuts)):
        assert (window.index, window.source, window.sample_rate_hz) == (i, str(path), 32000)
        assert window.start_s == cut.start_sample / 32000 and window.started_on == cut.started_on
        assert window.valid_samples == cut.valid_samples
        np.testing.assert_array_equal(window.samples, cut.samples)
    assert windows[-1].real_samples < len(windows[-1].samples)  # the last one is padded


def test_a_stream_stopped_early_still_gives_its_window_under_way(shared_data):
    with FileSource(shared_data / FROG) as source:  # 1 s blocks: stop after 7 s (what `Pipeline.stop` does)
        windows = list(cut_windows(islice(source.blocks(), 7), 5.0, 5.0, source.name))
    assert [w.start_s for w in windows] == [0.0, 5.0]
    assert windows[1].real_samples == 2 * 32000


def test_a_rate_below_the_minimum_is_refused_before_any_window(shared_data, tmp_path):
    audio, rate = sf.read(shared_data / FROG, dtype="float32")
    sf.write(tmp_path / "one_hz.wav", audio[:10], 1)
    with FileSource(tmp_path / "one_hz.wav") as source:
        windows = cut_windows(source.blocks(), 5.0, 5.0, source.name, min_rate_hz=8000)
        with pytest.raises(AudioError, match=r"one_hz.wav: sample rate 1 Hz is below 8000 Hz"):
            next(windows)
    with FileSource(shared_data / TINAMOU) as source:  # exactly at the minimum is fine
        assert len(list(cut_windows(source.blocks(), 5.0, 5.0, source.name, min_rate_hz=9000))) == 2

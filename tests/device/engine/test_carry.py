"""A live stream's shared crop (device/engine/carry.py) on the real default bundle: a 2.5 s-hop
window's first crop is the window before's last, run once, and the window's scores are what the
two crops give when run one by one; nothing is carried between windows that do not share that
audio (file analysis, another recording, a dropped window, the stream's padded end)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from device.analysis import file_windows
from device.audio.resample import resample
from device.bundle.verify import verify_bundle
from device.engine.engine import Engine
from device.home import ExplorerHome

SOUNDSCAPE = "audio/elsilencio_soundscape/H02_20230420_074000.ogg"
FROG = "audio/colombian_frogs/Boana_pugnax.wav"
"""6.5 s at 44.1 kHz: its last 2.5 s-hop window is padded."""
OTHER = "audio/birdclef_train_audio/2.ogg"
"""Another 32 kHz recording (Allobates femoralis), the soundscape's rate."""
CROP = 144_000
"""BirdNET's 3 s at 48 kHz."""
TOL = 1e-5
"""A crop run alone against the same crop in a batch of two: measured 2e-7 on probabilities."""


@pytest.fixture(scope="module")
def engine_and_bundle(default_home_template):
    home = ExplorerHome.resolve(default_home_template)
    verified = verify_bundle(home.active_bundle(), home.trusted_keys)
    return verified


def fresh(verified) -> Engine:
    return Engine(verified, threads=1)


def crop_alone(engine: Engine, window, start_s: float):
    """BirdNET's output on one 3 s crop of `window` starting `start_s` into it, run by itself."""
    audio = resample(window.samples, window.sample_rate_hz, 48_000)
    start = round(start_s * 48_000)
    return engine.sessions["birdnet"].run(audio[None, start : start + CROP])


def birdnet_scores(engine: Engine, prediction) -> np.ndarray:
    """The BirdNET branch's probabilities in a prediction, in the branch's own label order."""
    columns = [engine.labels.index(label) for label in engine.sessions["birdnet"].branch.score_labels]
    return prediction.branch_scores["birdnet"][columns]


def test_each_live_window_runs_one_new_crop_and_scores_what_its_two_crops_give(engine_and_bundle, shared_data):
    engine = fresh(engine_and_bundle)
    windows = list(file_windows(shared_data / SOUNDSCAPE, 5.0, 2.5))[:8]
    predictions = [engine.predict(w) for w in windows]
    assert engine.counters.carried_crops == len(windows) - 1  # every window after the first
    reference = fresh(engine_and_bundle)
    for before, window, got in zip(windows, windows[1:], predictions[1:]):
        first = crop_alone(reference, before, 2.0)  # stream time -0.5 .. 2.5 s of `window`
        last = crop_alone(reference, window, 2.0)
        want = np.maximum(first.scores[0], last.scores[0])
        assert np.abs(birdnet_scores(engine, got) - want).max() < TOL
        assert np.abs(got.embedding - (first.embedding[0] + last.embedding[0]) / 2).max() < TOL
        assert got.context["Human vocal"] == pytest.approx(
            max(first.context[0][0], last.context[0][0]), abs=TOL)
    # The first window had no window before it: its own two crops, 0-3 s and 2-5 s.
    first_window = fresh(engine_and_bundle).predict(windows[0])
    np.testing.assert_allclose(first_window.scores, predictions[0].scores, atol=TOL)


def test_windows_that_share_no_audio_carry_nothing(engine_and_bundle, shared_data):
    engine = fresh(engine_and_bundle)
    files = list(file_windows(shared_data / SOUNDSCAPE, 5.0))[:4]  # file analysis: a 5 s hop
    for w in files:
        engine.predict(w)
    assert engine.counters.carried_crops == 0

    live = list(file_windows(shared_data / SOUNDSCAPE, 5.0, 2.5))[:6]
    engine = fresh(engine_and_bundle)
    engine.predict(live[0])
    engine.predict(live[2])  # window 1 was dropped: 5 s later, the crop no longer covers its start
    assert engine.counters.carried_crops == 0
    # Another recording's window at the same offset, rate and length is other audio.
    other = next(iter(file_windows(shared_data / OTHER, 5.0, 2.5)))
    assert other.sample_rate_hz == live[0].sample_rate_hz and len(other.samples) == len(live[0].samples)
    engine.predict(live[3])  # the next window after live[2]: carried
    assert engine.counters.carried_crops == 1
    engine.predict(replace(other, start_s=live[4].start_s, index=4, source=live[4].source))
    assert engine.counters.carried_crops == 1
    # Nothing of the other recording is carried into the soundscape's next window either.
    np.testing.assert_allclose(engine.predict(live[5]).scores, fresh(engine_and_bundle).predict(live[5]).scores,
                               atol=TOL)
    assert engine.counters.carried_crops == 1


def test_the_padded_end_of_a_stream_takes_the_crop_before_it_and_passes_none_on(engine_and_bundle, shared_data):
    windows = list(file_windows(shared_data / FROG, 5.0, 2.5))
    assert len(windows) == 2 and windows[1].real_samples < len(windows[1].samples)  # ends 4 s into it
    engine = fresh(engine_and_bundle)
    engine.predict(windows[0])
    assert engine.carrying == ("birdnet",)
    last = engine.predict(windows[1])
    assert engine.counters.carried_crops == 1  # what it shares with window 0 is real audio
    reference = fresh(engine_and_bundle)
    want = np.maximum(crop_alone(reference, windows[0], 2.0).scores[0], crop_alone(reference, windows[1], 2.0).scores[0])
    assert np.abs(birdnet_scores(engine, last) - want).max() < TOL
    assert engine.carrying == ()  # its own last crop holds padding: no window after it may take it

    # A window whose real audio is shorter than what it would share cuts its own crops.
    short = replace(windows[1], samples=np.where(np.arange(len(windows[1].samples)) < 32_000, windows[1].samples, 0)
                    .astype(np.float32), valid_samples=32_000)
    engine = fresh(engine_and_bundle)
    engine.predict(windows[0])
    engine.predict(short)
    assert engine.counters.carried_crops == 0

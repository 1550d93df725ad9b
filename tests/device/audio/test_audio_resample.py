"""resample(): polyphase rate conversion of real recordings, with the ratio reduced and cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import welch

from device.audio.resample import ratio, resample, resample_tail, resampled_length


def test_ratios_are_reduced_by_their_gcd() -> None:
    assert ratio(44100, 32000) == (320, 441)
    assert ratio(48000, 32000) == (2, 3)
    assert ratio(9000, 32000) == (32, 9)
    assert ratio(32000, 32000) == (1, 1)
    with pytest.raises(ValueError):
        ratio(0, 32000)


def test_the_ratio_is_cached_across_windows(audio_dir: Path) -> None:
    data, rate = sf.read(audio_dir / "colombian_frogs" / "Boana_boans.wav", dtype="float32")
    ratio.cache_clear()
    for start in range(0, 5 * rate, rate):
        resample(data[start : start + rate], rate, 32000)
    info = ratio.cache_info()
    assert info.misses == 1 and info.hits == 4


def test_equal_rates_return_the_input_itself(soundscape: Path) -> None:
    data, rate = sf.read(soundscape, dtype="float32", frames=32000)
    assert resample(data, rate, rate) is data


@pytest.mark.parametrize("to_hz", [32000, 48000, 22050])
def test_a_real_frog_call_keeps_its_spectrum_and_length(audio_dir: Path, to_hz: int) -> None:
    path = audio_dir / "colombian_frogs" / "Dendropsophus_microcephalus.wav"
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    out = resample(mono, rate, to_hz)
    assert out.dtype == np.float32
    assert len(out) == resampled_length(len(mono), rate, to_hz)
    assert abs(len(out) / to_hz - len(mono) / rate) < 1 / to_hz
    # Energy per band below the lower Nyquist is the same before and after (within 1 dB).
    f_in, p_in = welch(mono, rate, nperseg=2048)
    f_out, p_out = welch(out, to_hz, nperseg=round(2048 * to_hz / rate))
    for low, high in [(500, 2000), (2000, 4000), (4000, 8000)]:
        band_in = p_in[(f_in >= low) & (f_in < high)].mean()
        band_out = p_out[(f_out >= low) & (f_out < high)].mean()
        assert abs(10 * np.log10(band_out / band_in)) < 1.0, (low, high)


def test_a_round_trip_through_a_higher_rate_gives_back_the_recording(soundscape: Path) -> None:
    data, rate = sf.read(soundscape, dtype="float32", frames=5 * 32000)
    back = resample(resample(data, 32000, 48000), 48000, 32000)
    assert len(back) == len(data)
    # Up then down passes everything below 0.9 x 16 kHz; the soundscape has little above.
    error = np.sqrt(np.mean((back[100:-100] - data[100:-100]) ** 2)) / np.sqrt(np.mean(data**2))
    assert error < 0.05


@pytest.mark.parametrize("recording", ["audio/elsilencio_soundscape/H02_20230420_074000.ogg",  # 32 kHz
                                       "audio/colombian_frogs/Boana_pugnax.wav",  # 44.1 kHz
                                       "audio/insects/Rthoptera_coryphoda_albidicollis.flac"])  # 96 kHz
def test_a_tail_resampled_alone_is_the_whole_windows_tail_bit_for_bit(shared_data, recording):
    audio, rate = sf.read(shared_data / recording, dtype="float32")
    window = np.zeros(5 * rate, dtype=np.float32)
    window[: min(len(audio), len(window))] = audio[: len(window)]
    whole = resample(window, rate, 48_000)
    for start in (1, 4_799, 96_000, 96_001, len(whole) - 1):
        np.testing.assert_array_equal(resample_tail(window, rate, 48_000, start), whole[start:])


@pytest.mark.parametrize("recording", ["audio/elsilencio_soundscape/H02_20230420_074000.ogg",  # 32 kHz
                                       "audio/colombian_frogs/Boana_pugnax.wav",  # 44.1 kHz
                                       "audio/insects/Rthoptera_coryphoda_albidicollis.flac"])  # 96 kHz
def test_the_filter_designed_once_gives_resample_polys_own_samples_bit_for_bit(shared_data, recording):
    from scipy.signal import resample_poly

    audio, rate = sf.read(shared_data / recording, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1).astype(np.float32)[: 5 * rate]
    for to_hz in (48_000, 32_000):
        if to_hz == rate:
            continue
        up, down = ratio(rate, to_hz)
        for samples in (mono, mono.astype(np.float64)):
            want = resample_poly(samples, up, down).astype(np.float32)  # scipy designing its filter itself
            np.testing.assert_array_equal(resample(samples, rate, to_hz), want)

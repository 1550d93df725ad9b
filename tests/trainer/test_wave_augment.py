"""Batch augmentation in torch on real windows: call mixing's target union, the background's SNR
measured by the numpy augmentation's own level function, masks on exactly the asked bands,
rolls, gains, and one seed giving one augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.trainer.fit_fixtures import tiny_backgrounds, tiny_cache
from trainer.augment import active_power as numpy_active_power
from trainer.wave_augment import (
    NONE, AugmentConfig, WaveAugment, add_background, mask_band, mix_calls, partners, random_gain, random_masks,
    time_shift,
)

RATE = 32_000


@pytest.fixture(scope="module")
def windows(tmp_path_factory):
    """Four real 1 s call windows (frog, cicada, cricket, katydid) and four soundscape windows."""
    examples, cache, _ = tiny_cache(tmp_path_factory)
    background = tiny_backgrounds(tmp_path_factory)[0].clip_id
    calls = [next(e for e in examples if e.primary == label) for label in ("21211", "50186", "52884", "48124")]
    wave = torch.from_numpy(np.stack([cache.window(e.clip_id, 16_000, RATE) for e in calls]))
    ambience = torch.from_numpy(np.stack([cache.window(background, k * RATE, RATE) for k in range(4)]))
    return wave, ambience


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_call_mixing_sums_partners_and_takes_the_union_of_their_targets(windows):
    wave, _ = windows
    targets = torch.eye(4, 5)
    targets[0, 4] = 0.5  # a secondary label
    weights = torch.tensor([1.0, 0.2, 0.4, 0.6])
    mixed, mixed_targets, mixed_weights = mix_calls(wave, targets, weights, generator(3), p=1.0)
    partner = partners(4, generator(3), "cpu")
    assert not torch.any(partner == torch.arange(4))
    assert torch.allclose(mixed, wave + wave[partner])
    assert torch.equal(mixed_targets, torch.maximum(targets, targets[partner]))
    assert torch.equal(mixed_weights, torch.maximum(weights, weights[partner]))
    assert (mixed_targets.sum(dim=1) >= 2).all()
    untouched = mix_calls(wave, targets, weights, generator(3), p=0.0)
    assert torch.equal(untouched[0], wave) and torch.equal(untouched[1], targets)


@pytest.mark.parametrize("snr", [0.0, 6.0, 20.0])
def test_the_background_lies_at_the_asked_snr(windows, snr):
    wave, ambience = windows
    present = torch.tensor([True, True, True, False])
    out = add_background(wave, ambience, present, torch.full((4,), snr), RATE)
    for row in range(3):
        call = wave[row].double().numpy()
        added = (out[row] - wave[row]).double().numpy()
        measured = 10 * np.log10(numpy_active_power(call, RATE) / np.mean(added**2))
        assert abs(measured - snr) < 0.5, (row, measured)
    assert torch.equal(out[3], wave[3])
    silent = add_background(torch.zeros(1, RATE), ambience[:1], torch.tensor([True]), torch.tensor([10.0]), RATE)
    assert torch.equal(silent, ambience[:1])  # no call to set a level by: the soundscape as recorded


def test_masks_fill_exactly_the_asked_bands_with_the_floor(windows):
    wave, _ = windows
    from trainer.torch_frontend import LogMel
    from exporter.frontend import default_params

    mel = LogMel(default_params())(wave).unsqueeze(1)  # [4, 1, 64, 101]
    floor = mel.amin(dim=(1, 2, 3))
    starts, widths = torch.tensor([0, 10, 30, 50]), torch.tensor([5, 0, 12, 14])
    frames = mask_band(mel, 3, starts, widths)
    bands = mask_band(mel, 2, starts, widths)
    for row in range(4):
        hit = slice(int(starts[row]), int(starts[row] + widths[row]))
        assert torch.all(frames[row, 0, :, hit] == floor[row]) and torch.all(bands[row, 0, hit, :] == floor[row])
        keep = torch.ones(mel.shape[3], dtype=torch.bool)
        keep[hit] = False
        assert torch.equal(frames[row, 0][:, keep], mel[row, 0][:, keep])
        keep = torch.ones(mel.shape[2], dtype=torch.bool)
        keep[hit] = False
        assert torch.equal(bands[row, 0][keep], mel[row, 0][keep])
    masked = random_masks(mel, generator(1), 3, count=2, max_share=0.1, p=1.0)
    columns = (masked != mel).any(dim=2).squeeze(1)  # [4, frames] changed columns
    assert columns.sum(dim=1).max() <= 2 * 10 and columns.any()
    assert torch.equal(random_masks(mel, generator(1), 3, count=2, max_share=0.1, p=0.0), mel)


def test_shift_rolls_each_row_and_gain_scales_it(windows):
    wave, _ = windows
    shifted = time_shift(wave, generator(5), p=1.0)
    for row in range(4):  # the roll is the circular cross-correlation's peak, and is exact
        correlation = torch.fft.irfft(torch.fft.rfft(shifted[row].double()) * torch.fft.rfft(wave[row].double()).conj(),
                                      n=RATE)
        assert torch.equal(torch.roll(wave[row], int(correlation.argmax())), shifted[row])
    assert torch.equal(time_shift(wave, generator(5), p=0.0), wave)
    louder = random_gain(wave, generator(2), (-12.0, 6.0))
    ratio_db = 20 * torch.log10(louder.abs().amax(dim=1) / wave.abs().amax(dim=1))
    assert torch.all(ratio_db >= -12.0 - 1e-4) and torch.all(ratio_db <= 6.0 + 1e-4)
    assert len(set(ratio_db.round(decimals=3).tolist())) == 4


def test_one_seed_gives_one_augmentation(windows):
    wave, ambience = windows
    augment = WaveAugment(AugmentConfig(mix_p=0.5, shift_p=0.5, mask_p=1.0))
    targets, weights, present = torch.eye(4), torch.ones(4), torch.tensor([True, False, True, True])
    a = augment.wave(wave, targets, weights, generator(9), ambience, present)
    b = augment.wave(wave, targets, weights, generator(9), ambience, present)
    c = augment.wave(wave, targets, weights, generator(10), ambience, present)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], c[0])
    clean = WaveAugment(NONE).wave(wave, targets, weights, generator(9))
    assert torch.equal(clean[0], wave) and torch.equal(clean[1], targets)


def test_the_config_names_a_bad_key_or_value():
    assert AugmentConfig.from_dict({"snr_db": [3, 9]}).snr_db == (3.0, 9.0)
    assert AugmentConfig.from_dict(NONE.to_dict()) == NONE
    with pytest.raises(ValueError, match="unknown keys \\['mixup'\\]"):
        AugmentConfig.from_dict({"mixup": 0.5})
    with pytest.raises(ValueError, match="mix_p: 1.5"):
        AugmentConfig.from_dict({"mix_p": 1.5})
    with pytest.raises(ValueError, match="gain_db"):
        AugmentConfig.from_dict({"gain_db": [6, -6]})

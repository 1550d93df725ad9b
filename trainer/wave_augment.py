"""Augmentation of a training batch where it trains (the GPU), in torch: waveforms, then mels.

The numpy augmentation of the embedding head (`trainer/augment.py`) renders each mixed window on
the CPU; at thousands of windows a second that would starve a GPU, so here every op works on the
whole `[B, S]` batch tensor at once, drawing from one seeded `torch.Generator` (on the batch's
device), so one (seed, epoch) gives one augmentation whatever the number of data workers.

Waveform ops, in the order `WaveAugment.wave` applies them:

- **time shift**: a circular roll by a uniform offset (a call anywhere in the window);
- **call mixing**: a share of the rows gets another row's waveform added, and the union (max) of
  both rows' targets: BirdCLEF soundscapes hold several species at once, train clips mostly one;
- **background**: a real soundscape window (`backgrounds` of `trainer.fit.fit`, loaded by the data
  workers) under the call at a uniform SNR. The call's level is its active power (the loudest
  `ACTIVE_SHARE` of `ACTIVE_FRAME_S` frames, as `trainer.augment.active_power`: calls are mostly
  silence between notes, and the plain mean power would understate them), the background's its
  mean power (ambience is steady);
- **gain**: a uniform level change in dB (recordists' gains differ by tens of dB).

Mel ops (`WaveAugment.mel`, between the head's `features` and `body`): SpecAugment's time and
frequency masks (Park et al. 2019), filled with each example's floor (its quietest bin, the
front end's `top_db` floor: silence in dB, where a 0 fill would be a loud band).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch

ACTIVE_FRAME_S = 0.02
ACTIVE_SHARE = 0.2
"""The call level's frames and share: `trainer.augment`'s constants (its docstring says why)."""


@dataclass(frozen=True)
class AugmentConfig:
    """What `WaveAugment` does; every probability 0 turns its op off (`NONE`)."""

    shift_p: float = 0.5
    """Rows rolled by a uniform offset."""
    mix_p: float = 0.5
    """Rows that get another row's call added (the BirdCLEF 2025 winners mixed about half)."""
    background_p: float = 0.5
    """Rows the data workers load a soundscape window for (only when there are backgrounds)."""
    snr_db: tuple[float, float] = (0.0, 20.0)
    """Call-to-background ratio range: a call barely above the forest to one near the recorder
    (`trainer.augment.SNR_DB`'s span)."""
    gain_db: tuple[float, float] = (-12.0, 6.0)
    """Level change range: quieter and slightly louder than the clip as recorded."""
    mask_p: float = 0.5
    """Rows whose mel gets masks."""
    time_masks: int = 2
    time_mask_max: float = 0.1
    """Widest time mask as a share of the frames (SpecAugment's LD policy: 2 masks)."""
    freq_masks: int = 2
    freq_mask_max: float = 0.15
    """Widest frequency mask as a share of the mel bands (27 of SpecAugment's 80 is 0.34; 0.15
    leaves most of a call's harmonics)."""

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> "AugmentConfig":
        """The config from `FitConfig.augment` (missing keys keep their defaults).

        Raises:
            ValueError: an unknown key, or a probability outside 0..1, or a reversed range.
        """
        raw = dict(raw or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"augment: unknown keys {unknown} (known: {', '.join(sorted(known))})")
        for key in ("snr_db", "gain_db"):
            if key in raw:
                raw[key] = tuple(float(v) for v in raw[key])
                if len(raw[key]) != 2 or raw[key][0] > raw[key][1]:
                    raise ValueError(f"augment.{key}: {raw[key]} must be a (low, high) pair")
        config = cls(**raw)
        for key in ("shift_p", "mix_p", "background_p", "mask_p", "time_mask_max", "freq_mask_max"):
            if not 0.0 <= getattr(config, key) <= 1.0:
                raise ValueError(f"augment.{key}: {getattr(config, key)} must be in 0..1")
        return config

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


NONE = AugmentConfig(shift_p=0.0, mix_p=0.0, background_p=0.0, gain_db=(0.0, 0.0), mask_p=0.0)
"""No augmentation (validation, and tests that need the clean signal)."""


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def _chosen(n: int, p: float, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) < p


def time_shift(wave: torch.Tensor, generator: torch.Generator, p: float = 1.0) -> torch.Tensor:
    """Each chosen row rolled right by a uniform offset in [0, S) (samples pushed past the end
    come back at the start)."""
    rows, samples = wave.shape
    shift = torch.randint(0, samples, (rows,), generator=generator, device=wave.device)
    shift = torch.where(_chosen(rows, p, generator, wave.device), shift, torch.zeros_like(shift))
    index = (torch.arange(samples, device=wave.device)[None, :] - shift[:, None]) % samples
    return torch.gather(wave, 1, index)


def partners(rows: int, generator: torch.Generator, device) -> torch.Tensor:
    """A random cyclic derangement: row i's partner is never i (for more than one row)."""
    order = torch.randperm(rows, generator=generator, device=device)
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)
    return partner


def mix_calls(wave: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, generator: torch.Generator,
              p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chosen rows get their partner's waveform added and the max of both targets (and weights:
    a mix holds a well-rated call as fully as the clip alone)."""
    rows = wave.shape[0]
    if rows < 2 or p <= 0:
        return wave, targets, weights
    partner = partners(rows, generator, wave.device)
    chosen = _chosen(rows, p, generator, wave.device)
    mixed = wave + chosen[:, None].to(wave.dtype) * wave[partner]
    targets = torch.where(chosen[:, None], torch.maximum(targets, targets[partner]), targets)
    weights = torch.where(chosen, torch.maximum(weights, weights[partner]), weights)
    return mixed, targets, weights


def active_power(wave: torch.Tensor, rate: int = 32_000) -> torch.Tensor:
    """Per row, the mean power of its loudest `ACTIVE_SHARE` of `ACTIVE_FRAME_S` frames."""
    frame = max(1, int(ACTIVE_FRAME_S * rate))
    rows, samples = wave.shape
    count = samples // frame
    if count == 0:
        return wave.square().mean(dim=1)
    power = wave[:, : count * frame].reshape(rows, count, frame).square().mean(dim=2)
    top = max(1, int(round(ACTIVE_SHARE * count)))
    return power.topk(top, dim=1).values.mean(dim=1)


def add_background(wave: torch.Tensor, background: torch.Tensor, present: torch.Tensor, snr_db: torch.Tensor,
                   rate: int = 32_000) -> torch.Tensor:
    """Rows with `present` get their background scaled so that the call's active power over the
    background's mean power is `snr_db` (per row). A silent call (a padded window's empty part,
    digital silence) gets the background at its recorded level; a silent background adds nothing."""
    call = active_power(wave, rate)
    ambience = background.square().mean(dim=1)
    wanted = call / torch.pow(10.0, snr_db / 10.0)
    scale = torch.where(call > 0, torch.sqrt(wanted / ambience.clamp_min(1e-20)), torch.ones_like(call))
    scale = torch.where(present & (ambience > 0), scale, torch.zeros_like(scale))
    return wave + scale[:, None] * background


def random_gain(wave: torch.Tensor, generator: torch.Generator, gain_db: tuple[float, float]) -> torch.Tensor:
    gain = _uniform(wave.shape[0], gain_db[0], gain_db[1], generator, wave.device)
    return wave * torch.pow(10.0, gain / 20.0)[:, None]


def mask_band(mel: torch.Tensor, axis: int, starts: torch.Tensor, widths: torch.Tensor,
              fill: torch.Tensor | None = None) -> torch.Tensor:
    """`mel` [B, 1, F, T] with rows' [start, start + width) along `axis` (2: mel bands, 3: frames)
    set to `fill` (per row; default each row's minimum)."""
    if fill is None:
        fill = mel.amin(dim=(1, 2, 3))
    size = mel.shape[axis]
    index = torch.arange(size, device=mel.device)[None, :]
    band = (index >= starts[:, None]) & (index < (starts + widths)[:, None])  # [B, size]
    shape = [mel.shape[0], 1, 1, 1]
    shape[axis] = size
    return torch.where(band.reshape(shape), fill.reshape(-1, 1, 1, 1).to(mel.dtype), mel)


def random_masks(mel: torch.Tensor, generator: torch.Generator, axis: int, count: int, max_share: float,
                 p: float) -> torch.Tensor:
    """`count` masks along `axis` on the chosen rows, each of a uniform width 0..max_share of the
    axis at a uniform position (SpecAugment)."""
    rows, size = mel.shape[0], mel.shape[axis]
    widest = int(math.floor(max_share * size))
    if count <= 0 or widest <= 0 or p <= 0:
        return mel
    chosen = _chosen(rows, p, generator, mel.device)
    fill = mel.amin(dim=(1, 2, 3))
    for _ in range(count):
        widths = torch.randint(0, widest + 1, (rows,), generator=generator, device=mel.device)
        starts = (torch.rand(rows, generator=generator, device=mel.device) * (size - widths + 1)).long()
        mel = mask_band(mel, axis, starts, torch.where(chosen, widths, torch.zeros_like(widths)), fill)
    return mel


class WaveAugment:
    """The batch augmentation of one training run (module docstring for the ops)."""

    def __init__(self, config: AugmentConfig, rate: int = 32_000):
        self.config = config
        self.rate = rate

    def wave(self, wave: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, generator: torch.Generator,
             background: torch.Tensor | None = None, present: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(waveforms, targets, weights) of the augmented batch."""
        c = self.config
        if c.shift_p > 0:
            wave = time_shift(wave, generator, c.shift_p)
        wave, targets, weights = mix_calls(wave, targets, weights, generator, c.mix_p)
        if background is not None and present is not None and background.numel() and bool(present.any()):
            snr = _uniform(wave.shape[0], c.snr_db[0], c.snr_db[1], generator, wave.device)
            wave = add_background(wave, background, present, snr, self.rate)
        if c.gain_db != (0.0, 0.0):
            wave = random_gain(wave, generator, c.gain_db)
        return wave, targets, weights

    def mel(self, mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Time then frequency masks on a `[B, 1, n_mels, frames]` batch."""
        c = self.config
        mel = random_masks(mel, generator, 3, c.time_masks, c.time_mask_max, c.mask_p)
        return random_masks(mel, generator, 2, c.freq_masks, c.freq_mask_max, c.mask_p)

"""Training windows: clean device windows and augmented mixes, rendered from labelled clips.

Windows are described by frozen `WindowPlan`s (hashable, so their embeddings can be cached)
and rendered by `AudioStore`. A *clean* window is exactly what the device analyses: 5 s at
the file's native rate, zero-padded at the end of the audio. A *mixed* window is the
augmentation: a call (time-shifted, at a chosen SNR) laid over a real soundscape segment,
sometimes with a second species' call, at a random gain, rendered directly at 48 kHz.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from device.audio.resample import resample
from device.audio.samples import sanitize, to_mono
from trainer.labelled import LabelledClip

WINDOW_S = 5.0
"""The device's analysis window (and BirdCLEF's scoring unit)."""
MODEL_RATE_HZ = 48_000
"""BirdNET's rate: mixed windows are rendered here (the device resamples every window to it)."""
SNR_DB = (0.0, 6.0, 12.0, 20.0)
"""Call-to-background ratios for mixed windows: from a call barely above the forest (0 dB, as a
distant frog in a chorus) to a call well above it (20 dB, near the recorder)."""
GAIN_DB = (-24.0, -3.0)
"""Peak level range of a mixed window (dBFS): quiet field recordings to near full scale."""
SECOND_CALL_P = 0.25
"""Share of positive mixed windows that also carry another species' call (multi-label)."""
ACTIVE_FRAME_S = 0.02
ACTIVE_SHARE = 0.2
"""A call's level is the power of its loudest 20 % of 20 ms frames: frog recordings are mostly
silence between notes, so the plain RMS would understate the call and overstate the SNR."""
TAIL_S = (0.02, 0.1, 0.3, 0.6, 1.0, 1.5)
"""Extra file-end windows per negative, with this much audio before the zero padding: the
grid gives each negative one tail of whatever length it happens to have (see `plan_clean`)."""
MIN_REAL_S = 2.0
"""A clean window starting later than this before a clip's end would be mostly padding."""


@dataclass(frozen=True)
class Layer:
    """One sound laid into a mixed window."""

    clip: int
    """Index into the clip list."""
    offset_s: float
    """Where the excerpt starts, from the clip's start."""
    length_s: float
    place_s: float
    """Where it starts inside the window."""
    snr_db: float | None = None
    """Level relative to the background (None for the background itself)."""


@dataclass(frozen=True)
class WindowPlan:
    """How to make one training window: a clean device window, or a mix of layers."""

    kind: str
    """"clean" or "mix"."""
    labels: tuple[str, ...]
    layers: tuple[Layer, ...]
    """clean: one layer (the window's start in its clip); mix: background first, then calls."""
    gain_db: float = 0.0
    """mix only: the window's peak level in dBFS."""

    def groups(self, clips: list[LabelledClip]) -> frozenset[str]:
        return frozenset(clips[layer.clip].group_id for layer in self.layers)


def plan_clean(clips: list[LabelledClip], durations: list[float], hop_positive_s: float, hop_negative_s: float,
               tails_s: tuple[float, ...] = TAIL_S) -> list[WindowPlan]:
    """Device windows through each clip every `hop` seconds, zero-padded past its end as the
    device pads the last window of a file.

    A negative gets every window the device would cut, down to a tail of a few milliseconds:
    BirdNET's embedding of a mostly silent crop is unlike any real sound, and a head that never
    saw one named a frog on it (0.98 on a 1 s tail, 0.23 on pure digital silence, before these
    windows were added). A positive's window holding less than `MIN_REAL_S` of its clip is not
    cut: it may hold no call at all.
    """
    plans = []
    for i, (clip, duration) in enumerate(zip(clips, durations)):
        if clip.label:
            starts = np.arange(0.0, max(duration - min(duration, MIN_REAL_S), 0.0) + 1e-9, hop_positive_s)
        else:
            starts = np.arange(0.0, max(duration, 1e-3), hop_negative_s)
        for start in starts:
            length = min(WINDOW_S, duration - start)
            labels = (clip.label,) if clip.label else ()
            plans.append(WindowPlan("clean", labels, (Layer(i, float(start), length, 0.0),)))
        if not clip.label:
            for tail in tails_s:
                if tail < duration:
                    plans.append(WindowPlan("clean", (), (Layer(i, round(duration - tail, 3), tail, 0.0),)))
    return plans


def plan_mixes(clips: list[LabelledClip], durations: list[float], per_positive_group: int, per_negative_clip: int,
               seed: int = 0) -> list[WindowPlan]:
    """Random mixes: each positive group `per_positive_group` times, each short negative (a call
    of a species outside the label space) `per_negative_clip` times, over background segments."""
    rng = random.Random(seed)
    backgrounds = [i for i, c in enumerate(clips) if c.background and durations[i] >= WINDOW_S]
    if not backgrounds:
        return []
    positives = [i for i, c in enumerate(clips) if c.label]
    by_group: dict[str, list[int]] = {}
    for i in positives:
        by_group.setdefault(clips[i].group_id, []).append(i)
    calls = [i for i, c in enumerate(clips) if not c.label and not c.background]

    def excerpt(i: int) -> Layer:
        length = min(durations[i], WINDOW_S * rng.uniform(0.4, 1.0)) if durations[i] > WINDOW_S else durations[i]
        offset = rng.uniform(0.0, durations[i] - length)
        place = rng.uniform(0.0, WINDOW_S - length) if length < WINDOW_S else 0.0
        return Layer(i, round(offset, 3), round(length, 3), round(place, 3), rng.choice(SNR_DB))

    def background() -> Layer:
        i = rng.choice(backgrounds)
        return Layer(i, round(rng.uniform(0.0, durations[i] - WINDOW_S), 3), WINDOW_S, 0.0)

    plans = []
    for group in sorted(by_group):
        for _ in range(per_positive_group):
            first = excerpt(rng.choice(by_group[group]))
            layers, labels = [background(), first], [clips[first.clip].label]
            others = [i for i in positives if clips[i].label != labels[0]]
            if others and rng.random() < SECOND_CALL_P:
                second = excerpt(rng.choice(others))
                layers.append(second)
                labels.append(clips[second.clip].label)
            plans.append(WindowPlan("mix", tuple(labels), tuple(layers), round(rng.uniform(*GAIN_DB), 2)))
    for i in calls:
        for _ in range(per_negative_clip):
            plans.append(WindowPlan("mix", (), (background(), excerpt(i)), round(rng.uniform(*GAIN_DB), 2)))
    return plans


def active_power(samples: np.ndarray, rate: int) -> float:
    """Mean power of the loudest `ACTIVE_SHARE` of `ACTIVE_FRAME_S` frames (see the constant)."""
    frame = max(1, int(ACTIVE_FRAME_S * rate))
    count = len(samples) // frame
    if count == 0:
        return float(np.mean(samples.astype(np.float64) ** 2)) if len(samples) else 0.0
    power = np.mean(samples[: count * frame].astype(np.float64).reshape(count, frame) ** 2, axis=1)
    top = max(1, int(round(ACTIVE_SHARE * count)))
    return float(np.sort(power)[-top:].mean())


class AudioStore:
    """Decodes each recording once (mono, as the device reads it) and renders windows from it."""

    def __init__(self, clips: list[LabelledClip]):
        self.clips = clips
        self._native: dict[Path, tuple[np.ndarray, int]] = {}
        self._model_rate: dict[Path, np.ndarray] = {}

    def native(self, path: Path) -> tuple[np.ndarray, int]:
        if path not in self._native:
            frames, rate = sf.read(str(path), dtype="float32", always_2d=True)
            samples = np.ascontiguousarray(to_mono(frames))
            sanitize(samples)
            self._native[path] = (samples, int(rate))
        return self._native[path]

    def at_model_rate(self, path: Path) -> np.ndarray:
        if path not in self._model_rate:
            samples, rate = self.native(path)
            self._model_rate[path] = resample(samples, rate, MODEL_RATE_HZ)
        return self._model_rate[path]

    def clean(self, plan: WindowPlan) -> tuple[np.ndarray, int, int]:
        """(samples, rate, valid): the window as the device cuts it, at the file's native rate."""
        (layer,) = plan.layers
        clip = self.clips[layer.clip]
        samples, rate = self.native(clip.path)
        first = int(round((clip.start_s + layer.offset_s) * rate))
        last = len(samples) if clip.end_s is None else min(len(samples), int(round(clip.end_s * rate)))
        window = int(round(WINDOW_S * rate))
        real = samples[first : min(last, first + window)]
        out = np.zeros(window, dtype=np.float32)
        out[: len(real)] = real
        return out, rate, len(real)

    def _excerpt(self, layer: Layer) -> np.ndarray:
        clip = self.clips[layer.clip]
        samples = self.at_model_rate(clip.path)
        first = int(round((clip.start_s + layer.offset_s) * MODEL_RATE_HZ))
        return samples[first : first + int(round(layer.length_s * MODEL_RATE_HZ))].astype(np.float64)

    def mix(self, plan: WindowPlan) -> np.ndarray:
        """The mixed window at 48 kHz (full length, no padding: it is all real audio)."""
        window = int(round(WINDOW_S * MODEL_RATE_HZ))
        background = np.zeros(window)
        bg = self._excerpt(plan.layers[0])
        background[: len(bg)] = bg
        out = background.copy()
        bg_power = max(float(np.mean(background**2)), 1e-12)
        for layer in plan.layers[1:]:
            call = self._excerpt(layer)
            call_power = active_power(call, MODEL_RATE_HZ)
            if call_power <= 0:
                continue
            call = call * np.sqrt(bg_power * 10 ** (layer.snr_db / 10) / call_power)
            place = int(round(layer.place_s * MODEL_RATE_HZ))
            span = min(len(call), window - place)
            out[place : place + span] += call[:span]
        peak = float(np.abs(out).max())
        if peak > 0:
            out *= 10 ** (plan.gain_db / 20) / peak
        return np.clip(out, -1.0, 1.0).astype(np.float32)

"""Shared helpers for the trainer's torch tests: a tiny real audio cache and a tiny mel head.

`tiny_cache(tmp_path_factory)` -> (examples, cache, labels): five labels of the shared recordings
that have more than one recording group (Allobates femoralis 21211, Tettigoniidae 48124,
Gryllidae 52884, Cicadidae 50186) plus the raccoons (41663, one source: training only), six real
negatives, and the first 15 s of the El Silencio soundscape as a background (`tiny_backgrounds`),
each clip cut to its first `CLIP_S` seconds so the cache builds in a few seconds. Built once
per test process and shared (read-only) by every test that asks.

`TinyMelHead` is a `trainer.heads.base.Head` with one small conv, registered under "tiny_mel"
by `register_tiny_head(monkeypatch)` so `build_head` and `load_head` find it as they find the
real heads.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from trainer.audio_cache import AudioCache, build_cache, items_from_examples
from trainer.heads.base import Head
from trainer.labelled import Example, clips_from_recordings, example_from_clip

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
LABELS = ("21211", "41663", "48124", "50186", "52884")
NEGATIVES = (
    "audio/negatives/minetest_sounds_rain_light.ogg", "audio/negatives/minetest_sounds_wind.ogg",
    "audio/negatives/minetest_sounds_squirrel_01.ogg", "audio/negatives/minetest_sounds_bee.ogg",
    "audio/negatives/minetest_sounds_leopard_saw_01.ogg", "audio/birds/spinetail.wav",
)
BACKGROUND = "audio/elsilencio_soundscape/H02_20230420_074000.ogg"
CLIP_S = 6.0
"""Seconds kept of each clip: a few 1 s training windows each, and a fast cache build."""
BACKGROUND_S = 15.0
WINDOW = 32_000
"""1 s windows at 32 kHz: the tests' head input (the real heads take 5 s)."""

_built: dict[str, tuple[list[Example], AudioCache, list[str], list[Example]]] = {}


def _examples(data_dir: Path) -> tuple[list[Example], list[Example]]:
    clips = clips_from_recordings(data_dir)
    chosen, backgrounds = [], []
    for clip in clips:
        relative = clip.path.relative_to(data_dir).as_posix()
        if relative == BACKGROUND:
            backgrounds.append(example_from_clip(replace(clip, end_s=BACKGROUND_S)))
        elif (clip.label in LABELS) or relative in NEGATIVES:
            chosen.append(example_from_clip(replace(clip, end_s=CLIP_S, background=False)))
    return chosen, backgrounds


def _build(tmp_path_factory) -> tuple[list[Example], AudioCache, list[str], list[Example]]:
    if "tiny" not in _built:
        examples, backgrounds = _examples(SHARED_DATA)
        root = tmp_path_factory.mktemp("tiny-audio-cache")
        report = build_cache(root, items_from_examples(examples + backgrounds))
        assert not report.skipped, report.skipped
        _built["tiny"] = (examples, AudioCache(root), list(LABELS), backgrounds)
    return _built["tiny"]


def tiny_cache(tmp_path_factory) -> tuple[list[Example], AudioCache, list[str]]:
    """(examples, cache, labels) of the module docstring; the cache also holds the backgrounds."""
    examples, cache, labels, _ = _build(tmp_path_factory)
    return list(examples), cache, list(labels)


def tiny_backgrounds(tmp_path_factory) -> list[Example]:
    """The background examples (in `tiny_cache`'s cache)."""
    return list(_build(tmp_path_factory)[3])


class TinyMelHead(Head):
    """log-mel -> conv 3x3 (8) -> batch norm (optional) -> ReLU -> mean pool -> dropout -> linear: small
    enough for a few CPU steps, with the state (batch-norm statistics, dropout draws) that makes
    bit-exact resumption worth testing."""

    name = "tiny_mel"
    input_kind = "mel"

    def __init__(self, labels, front_end=None, window_samples: int = WINDOW, channels: int = 8,
                 batch_norm: bool = True):
        super().__init__(labels, front_end, window_samples)
        self.channels, self.batch_norm = int(channels), bool(batch_norm)
        self.conv = nn.Conv2d(1, self.channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(self.channels) if self.batch_norm else nn.Identity()
        self.drop = nn.Dropout(0.2)
        self.out = nn.Linear(self.channels, self.num_classes)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        x = (x + 40.0) / 20.0  # dB to about unit scale
        x = torch.relu(self.norm(self.conv(x))).mean(dim=(2, 3))
        return self.out(self.drop(x))

    def head_config(self):
        return {"channels": self.channels, "batch_norm": self.batch_norm}


def register_tiny_head(monkeypatch) -> None:
    """Put "tiny_mel" in the head registry for one test."""
    from trainer.heads import HEADS

    monkeypatch.setitem(HEADS, "tiny_mel", "tests.trainer.fit_fixtures:TinyMelHead")

"""What the head tests share: real windows read as the device reads them, a tiny labelled batch,
a few optimiser steps, and the two checks every head passes (a rebuild from its config, and
channels_last + bf16 autocast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from device.audio.resample import resample
from trainer.heads import build_head

RATE = 32_000
LABELS = ["21211", "555086", "littin1"]
CLIPS = [  # 1 s real windows and their (made-up for the overfit) multi-hot targets
    ("audio/birdclef_train_audio/3.ogg", 10.0, [1, 0, 0]),
    ("audio/colombian_frogs/Boana_boans.wav", 1.0, [0, 1, 0]),
    ("audio/birds/Cryp.soui.wav", 2.0, [0, 0, 1]),
    ("audio/elsilencio_soundscape/H02_20230420_074000.ogg", 30.0, [0, 0, 0]),
]


def read_window(shared_data: Path, path: str, start_s: float = 0.0, samples: int = 160_000) -> np.ndarray:
    """`samples` float32 mono samples at 32 kHz from `start_s`, resampled as the device does,
    zero-padded past the end of the file (as the device pads a file's last window)."""
    audio, rate = sf.read(shared_data / path, dtype="float32", always_2d=True)
    audio = resample(audio.mean(axis=1), rate, RATE)
    out = np.zeros(samples, np.float32)
    piece = audio[int(start_s * RATE):][:samples]
    out[: len(piece)] = piece
    return out


def tiny_batch(shared_data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1 s windows of CLIPS and their targets."""
    waves = np.stack([read_window(shared_data, path, start, RATE) for path, start, _ in CLIPS])
    return torch.from_numpy(waves), torch.tensor([t for *_, t in CLIPS], dtype=torch.float32)


def train(head, waves, targets, steps=6, lr=1e-2):
    torch.manual_seed(0)
    optimiser = torch.optim.AdamW(head.trainable_parameters(), lr=lr)
    head.train()
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(waves), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses


def assert_rebuilds(name: str, head, waves, targets) -> dict:
    """After two steps (batch-norm statistics moved off their init), `build_head(name, **config())`
    plus the state dict gives the same outputs; returns the config as a checkpoint stores it."""
    train(head, waves, targets, steps=2)
    config = json.loads(json.dumps(head.config()))  # plain data, as a checkpoint stores it
    rebuilt = build_head(name, **config)
    rebuilt.load_state_dict(head.state_dict())
    head.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(head(waves), rebuilt(waves))
    return config


def assert_channels_last_and_bf16(head, waves, targets) -> None:
    """channels_last gives the float32 outputs; bf16 autocast gives finite, close outputs and
    finite gradients on every trainable parameter."""
    head.eval()
    with torch.no_grad():
        mel = head.features(waves)
        reference = head.body(mel)
        head.to(memory_format=torch.channels_last)  # a no-op on 3-D weights (raw_cnn), not an error
        last = head.body(mel.contiguous(memory_format=torch.channels_last) if mel.dim() == 4 else mel)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = head(waves)
    torch.testing.assert_close(last, reference, rtol=1e-4, atol=1e-5)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    assert (low.float() - reference).abs().max() < 0.1 * reference.abs().max() + 0.05
    head.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(waves).float(), targets)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.trainable_parameters())

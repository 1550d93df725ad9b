"""`raw_cnn` (trainer/heads/raw_cnn.py) at a tiny size on real 1 s windows: finite logits per
window, the loss falls, a rebuild from its config gives the same outputs, channels_last and bf16
autocast run."""

from __future__ import annotations


import pytest
import torch

from tests.trainer.heads.common import LABELS, assert_channels_last_and_bf16, assert_rebuilds, tiny_batch, train
from trainer.heads.raw_cnn import RawAudioCNN

TINY = {"width": 8, "depth": 1, "stages": 3, "dropout": 0.0}


@pytest.fixture(scope="module")
def batch(shared_data):
    return tiny_batch(shared_data)


def test_forward_gives_finite_logits_and_an_embedding(batch):
    torch.manual_seed(0)
    waves, _ = batch
    head = RawAudioCNN(LABELS, **TINY).eval()
    assert head.input_kind == "waveform" and head.features(waves) is waves
    logits = head(waves)
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    assert head.embedding(waves).shape == (4, head.embedding_dim) == (4, 32)
    both = head.logits_and_embedding(waves)
    assert torch.equal(both[0], logits) and torch.equal(both[1], head.embedding(waves))
    two_seconds = torch.cat([waves[:2], waves[2:]], dim=1)  # any length the strides can pool
    assert head(two_seconds).shape == (2, 3)


def test_a_few_steps_lower_the_loss_on_a_tiny_batch(batch):
    torch.manual_seed(0)
    waves, targets = batch
    losses = train(RawAudioCNN(LABELS, **TINY), waves, targets)
    assert losses[-1] < 0.8 * losses[0], losses


def test_rebuilt_from_its_config_it_gives_the_same_outputs(batch):
    torch.manual_seed(0)
    waves, targets = batch
    config = assert_rebuilds("raw_cnn", RawAudioCNN(LABELS, **TINY), waves, targets)
    assert config["width"] == 8 and config["stages"] == 3


def test_channels_last_and_bf16_autocast(batch):
    torch.manual_seed(0)
    waves, targets = batch
    assert_channels_last_and_bf16(RawAudioCNN(LABELS, **TINY), waves, targets)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="odd"):
        RawAudioCNN(LABELS, kernel_size=8)
    with pytest.raises(ValueError, match="at least 1"):
        RawAudioCNN(LABELS, depth=0)

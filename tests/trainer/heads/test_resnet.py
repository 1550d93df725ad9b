"""`resnet50` (trainer/heads/resnet.py) at a tiny size (timm resnet10t beside a narrow frozen CNN14)
on real 1 s windows: finite logits, the loss falls with the CNN14 untouched, a rebuild from its
config gives the same outputs, channels_last and bf16 autocast run; the default is ResNet-50 beside
the full CNN14."""

from __future__ import annotations


import pytest
import torch

from tests.trainer.heads.common import LABELS, assert_channels_last_and_bf16, assert_rebuilds, tiny_batch, train
from trainer.heads.resnet import ResNet50Panns

TINY = {"model_name": "resnet10t", "timm_kwargs": {"channels": [16, 32, 64, 128], "stem_width": 8},
        "width_divisor": 16, "dropout": 0.0}


@pytest.fixture(scope="module")
def batch(shared_data):
    return tiny_batch(shared_data)


def test_the_default_is_resnet50_beside_the_full_cnn14():
    with torch.device("meta"):  # shapes only, no 105 M-parameter init
        head = ResNet50Panns(LABELS)
    assert head.resnet.num_features == 2048 and head.cnn14.embedding_dim == 2048
    assert head.classifier.in_features == 4096 and head.classifier.out_features == 3
    assert head.resnet.conv1.in_channels == 1
    assert not any(p.requires_grad for p in head.cnn14.parameters())
    with pytest.raises(ValueError, match="in_chans"):
        ResNet50Panns(LABELS, timm_kwargs={"in_chans": 3})


def test_forward_gives_finite_logits_and_the_joint_embedding(batch):
    torch.manual_seed(0)
    waves, _ = batch
    head = ResNet50Panns(LABELS, **TINY).eval()
    logits = head(waves)
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    mel = head.features(waves)
    embedding = head.embedding(mel)
    assert embedding.shape == (4, 128 + 128)
    assert torch.equal(embedding[:, -128:], head.cnn14(mel))  # the frozen CNN14's part
    both = head.logits_and_embedding(mel)
    assert torch.equal(both[0], logits) and torch.equal(both[1], embedding)


def test_a_few_steps_lower_the_loss_and_leave_the_cnn14_alone(batch):
    torch.manual_seed(0)
    waves, targets = batch
    head = ResNet50Panns(LABELS, **TINY)
    frozen = {k: v.clone() for k, v in head.cnn14.state_dict().items()}
    losses = train(head, waves, targets)
    assert losses[-1] < 0.8 * losses[0], losses
    assert not head.cnn14.training and all(p.grad is None for p in head.cnn14.parameters())
    assert all(torch.equal(v, frozen[k]) for k, v in head.cnn14.state_dict().items())


def test_rebuilt_from_its_config_it_gives_the_same_outputs(batch):
    torch.manual_seed(0)
    waves, targets = batch
    config = assert_rebuilds("resnet50", ResNet50Panns(LABELS, **TINY), waves, targets)
    assert config["model_name"] == "resnet10t" and config["cnn14_checkpoint"] is None
    assert config["timm_kwargs"] == {"channels": [16, 32, 64, 128], "stem_width": 8}


def test_channels_last_and_bf16_autocast(batch):
    torch.manual_seed(0)
    waves, targets = batch
    assert_channels_last_and_bf16(ResNet50Panns(LABELS, **TINY), waves, targets)

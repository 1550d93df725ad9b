"""PANNs CNN14 (trainer/heads/panns.py): the public checkpoint format loads strictly into the full
layout, bad files fail naming the file and the keys, the frozen extractor never trains, and the
`panns_mlp` head trains, rebuilds from its config and runs channels_last and under bf16 autocast."""

from __future__ import annotations

import hashlib

import pytest
import torch

from tests.trainer.heads.common import LABELS, assert_channels_last_and_bf16, assert_rebuilds, tiny_batch, train
from trainer.heads.panns import Cnn14, Cnn14CheckpointError, PannsMLP, load_cnn14, load_cnn14_into

TINY = {"width_divisor": 16, "hidden": 32, "dropout": 0.0}
@pytest.fixture(scope="module")
def batch(shared_data):
    return tiny_batch(shared_data)


def public_state(width_divisor: int = 1) -> dict[str, torch.Tensor]:
    """A CNN14 state dict with every tensor drawn at random (so a fresh init cannot pass for it),
    plus the torchlibrosa front-end buffers the public file carries."""
    generator = torch.Generator().manual_seed(431)
    state = {}
    with torch.device("meta"):  # shapes only
        shapes = Cnn14(width_divisor=width_divisor).state_dict()
    for key, value in shapes.items():
        if value.is_floating_point():
            state[key] = torch.rand(value.shape, generator=generator) + (0.5 if "running_var" in key else -0.5)
        else:
            state[key] = torch.tensor(int(torch.randint(1, 10**6, (), generator=generator)))
    state["spectrogram_extractor.stft.conv_real.weight"] = torch.randn(513, 1, 1024, generator=generator)
    state["spectrogram_extractor.stft.conv_imag.weight"] = torch.randn(513, 1, 1024, generator=generator)
    state["logmel_extractor.melW"] = torch.rand(513, 64, generator=generator)
    return state


@pytest.fixture(scope="module")
def public_checkpoint(tmp_path_factory):
    """The released format at the FULL layout: {"model": state dict, "iteration": 0}, 323 MB."""
    state = public_state()
    path = tmp_path_factory.mktemp("panns") / "Cnn14_mAP=0.431.pth"
    torch.save({"model": state, "iteration": 0}, path)
    return path, state


def test_the_public_format_loads_every_weight_into_the_full_layout(public_checkpoint):
    path, state = public_checkpoint
    model = load_cnn14(path)
    own = model.state_dict()
    assert not model.training and model.embedding_dim == 2048
    assert own["conv_block6.conv2.weight"].shape == (2048, 2048, 3, 3)
    assert own["fc_audioset.weight"].shape == (527, 2048)
    network = {k: v for k, v in state.items() if not k.startswith(("spectrogram_", "logmel_"))}
    assert set(own) == set(network)  # the front-end buffers are ignored, nothing else is
    for key, value in network.items():
        assert torch.equal(own[key], value), key


def test_panns_mlp_takes_the_checkpoint_and_records_its_source(public_checkpoint):
    path, state = public_checkpoint
    head = PannsMLP(LABELS, hidden=0, cnn14_checkpoint=path)
    assert torch.equal(head.cnn14.conv_block3.bn2.running_var, state["conv_block3.bn2.running_var"])
    assert torch.equal(head.cnn14.fc1.weight, state["fc1.weight"])
    assert head.cnn14_source == {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    # The weights travel in the state dict, so a rebuild elsewhere needs no file.
    assert head.config()["cnn14_checkpoint"] is None
    assert [name for name, p in head.named_parameters() if p.requires_grad] == ["mlp.1.weight", "mlp.1.bias"]


def test_the_full_checkpoint_into_another_layout_names_the_mis_shaped_keys(public_checkpoint):
    path, _ = public_checkpoint
    with pytest.raises(Cnn14CheckpointError) as error:
        load_cnn14_into(Cnn14(width_divisor=2), path)
    message = str(error.value)
    assert str(path) in message and "mis-shaped" in message
    assert "conv_block1.conv1.weight [64, 1, 3, 3] (the model has [32, 1, 3, 3])" in message


def save_tiny(path, state):
    torch.save({"model": state, "iteration": 0}, path)
    return path


def test_a_missing_key_is_named(tmp_path):
    state = public_state(width_divisor=16)
    del state["conv_block4.bn1.running_mean"]
    path = save_tiny(tmp_path / "Cnn14_mAP=0.431.pth", state)
    with pytest.raises(Cnn14CheckpointError, match=r"missing keys: conv_block4\.bn1\.running_mean") as error:
        load_cnn14_into(Cnn14(width_divisor=16), path)
    assert str(path) in str(error.value)


def test_an_unexpected_key_is_named(tmp_path):
    state = {**public_state(width_divisor=16), "att_block.cla.weight": torch.zeros(3)}
    path = save_tiny(tmp_path / "extra.pth", state)
    with pytest.raises(Cnn14CheckpointError, match=r"unexpected keys: att_block\.cla\.weight"):
        load_cnn14_into(Cnn14(width_divisor=16), path)


def test_a_wrong_shape_is_named(tmp_path):
    state = public_state(width_divisor=16)
    state["fc1.weight"] = state["fc1.weight"][:, :-1]
    path = save_tiny(tmp_path / "shape.pth", state)
    with pytest.raises(Cnn14CheckpointError, match=r"fc1\.weight \[128, 127\] \(the model has \[128, 128\]\)"):
        load_cnn14_into(Cnn14(width_divisor=16), path)


def test_missing_batch_counters_are_tolerated(tmp_path):
    state = {k: v for k, v in public_state(width_divisor=16).items() if "num_batches_tracked" not in k}
    model = load_cnn14_into(Cnn14(width_divisor=16), save_tiny(tmp_path / "old.pth", state))
    assert torch.equal(model.bn0.running_mean, state["bn0.running_mean"])


@pytest.mark.parametrize("content", ["state dict", "tensor", "model not a state dict"])
def test_not_the_public_format_says_so(tmp_path, content):
    state = public_state(width_divisor=16)
    raw = {"state dict": state, "tensor": torch.zeros(2), "model not a state dict": {"model": [1, 2]}}[content]
    path = tmp_path / "wrong.pth"
    torch.save(raw, path)
    with pytest.raises(Cnn14CheckpointError, match="wrong.pth") as error:
        load_cnn14_into(Cnn14(width_divisor=16), path)
    assert "'model'" in str(error.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_cnn14(tmp_path / "nothere.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(Cnn14CheckpointError, match="text.pth: unreadable"):
        load_cnn14(tmp_path / "text.pth")


def with_data_statistics(head: PannsMLP, waves: torch.Tensor) -> PannsMLP:
    """Give a random CNN14 BatchNorm statistics of real log-mels, as a trained one has: with the
    init's (mean 0, variance 1) dB inputs near -60 make every embedding almost the same."""
    with torch.no_grad():
        for module in head.cnn14.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # a plain average over what is seen
        head.cnn14.train()
        head.cnn14(head.features(waves))
        head.cnn14.eval()
    return head


def test_the_frozen_extractor_gets_no_gradient_and_does_not_change(batch):
    torch.manual_seed(0)
    waves, targets = batch
    head = with_data_statistics(PannsMLP(LABELS, **TINY), waves)
    before = {k: v.clone() for k, v in head.cnn14.state_dict().items()}
    mlp_before = head.mlp[1].weight.clone()
    losses = train(head, waves, targets)
    assert head.training and not head.cnn14.training  # BN statistics stay the frozen ones
    assert all(p.grad is None for p in head.cnn14.parameters())
    for key, value in head.cnn14.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not torch.equal(head.mlp[1].weight, mlp_before)
    assert losses[-1] < 0.8 * losses[0], losses


def test_forward_gives_finite_logits_per_window(batch):
    torch.manual_seed(0)
    waves, _ = batch
    head = PannsMLP(LABELS, **TINY).eval()
    logits = head(waves)
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    mel = head.features(waves)
    assert head.embedding(mel).shape == (4, head.embedding_dim) == (4, 128)
    both = head.logits_and_embedding(mel)
    assert torch.equal(both[0], logits) and torch.equal(both[1], head.embedding(mel))


def test_rebuilt_from_its_config_it_gives_the_same_outputs(batch):
    torch.manual_seed(0)
    waves, targets = batch
    assert_rebuilds("panns_mlp", PannsMLP(LABELS, **TINY), waves, targets)


def test_channels_last_and_bf16_autocast(batch):
    torch.manual_seed(0)
    waves, targets = batch
    assert_channels_last_and_bf16(PannsMLP(LABELS, **TINY), waves, targets)

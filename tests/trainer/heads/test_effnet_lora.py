"""effnet_b3_lora: LoRA starts equal to the frozen base, trains only adapters and the classifier,
leaves the base untouched, merges exactly, and loads (or refuses) ImageNet weight files.

Run on timm's `tinynet_e` (the smallest EfficientNet, 0.8 M weights) and 1 s windows of real
recordings, so the whole file takes seconds on a shared CPU; `efficientnet_b3` differs only in size.
"""

from __future__ import annotations

import copy
import csv
import warnings

import numpy as np
import pytest
import soundfile as sf
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from device.audio.resample import resample
from trainer.heads import build_head
from trainer.heads.effnet_lora import EfficientNetLoRA, standardise
from trainer.heads.lora import LoRA

TINY = "tinynet_e"
RATE = 32_000
WINDOW = RATE  # 1 s windows keep the test fast; the head takes any length
CLIPS = ("audio/colombian_frogs/Boana_boans.wav", "audio/colombian_frogs/Engystomops_pustulosus.wav",
         "audio/birds/Cryp.soui.wav", "audio/birdclef_train_audio/3.ogg")


def tiny_head(labels, **config) -> EfficientNetLoRA:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the from-scratch warning (tested on its own below)
        return EfficientNetLoRA(labels, window_samples=WINDOW, model_name=TINY, **config)


def read_windows(shared_data, clips, offset_s: float) -> np.ndarray:
    """1 s of each clip at 32 kHz from `offset_s` (or its last second when shorter)."""
    windows = []
    for clip in clips:
        audio, rate = sf.read(shared_data / clip, dtype="float32", always_2d=True)
        audio = resample(audio.mean(axis=1), rate, RATE)
        start = min(int(offset_s * RATE), len(audio) - WINDOW)
        windows.append(audio[start:start + WINDOW])
    return np.stack(windows)


@pytest.fixture(scope="module")
def batch(shared_data):
    """Four 1 s windows of four real recordings (three species) and their one-hot targets."""
    rows = {r["path"]: r for r in csv.DictReader(open(shared_data / "recordings.csv", newline=""))}
    labels = sorted({rows[c]["primary_label"] for c in CLIPS})
    targets = [[float(label == rows[clip]["primary_label"]) for label in labels] for clip in CLIPS]
    return labels, torch.from_numpy(read_windows(shared_data, CLIPS, 0.5)), torch.tensor(targets)


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory, shared_data):
    """A stand-in for an ImageNet weights file in timm's format (3-channel stem, 1000 classes).

    No real ImageNet weights are here (nothing is downloaded), and a random network's identity
    batch-norm statistics make its features vanish, so the statistics are measured on real mel
    windows (other offsets than the training batch's), as pretraining would have left them.
    """
    torch.manual_seed(3)
    model = timm.create_model(TINY, pretrained=False).train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a plain average over the calibration batch
    mel = tiny_head(["x"]).features(torch.from_numpy(read_windows(shared_data, CLIPS, 2.5)))
    with torch.no_grad():
        model(standardise(mel).repeat(1, 3, 1, 1))  # what the summed 1-channel stem sees
    path = tmp_path_factory.mktemp("imagenet") / "tinynet_e.pth"
    torch.save(model.state_dict(), path)
    return path


def bce(head, waveform, targets) -> float:
    head.eval()
    with torch.no_grad():
        return F.binary_cross_entropy_with_logits(head(waveform), targets).item()


@pytest.fixture(scope="module")
def trained(batch, imagenet_file):
    """A tiny head on the stand-in ImageNet base, before and after 8 AdamW steps on the real batch."""
    labels, waveform, targets = batch
    head = tiny_head(labels, pretrained_path=imagenet_file)
    base_before = {k: v.clone() for k, v in head.base_state_dict().items()}
    loss_before = bce(head, waveform, targets)
    optimiser = torch.optim.AdamW(head.trainable_parameters(), lr=1e-4)
    torch.manual_seed(1)
    for _ in range(8):
        head.train()
        loss = F.binary_cross_entropy_with_logits(head(waveform), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return head, base_before, loss_before, bce(head, waveform, targets)


def test_at_init_the_adapted_net_equals_its_frozen_base(batch):
    labels, waveform, _ = batch
    head = tiny_head(labels).eval()
    plain = timm.create_model(TINY, pretrained=False, in_chans=1, num_classes=len(labels)).eval()
    plain.load_state_dict(head.base_state_dict())
    with torch.no_grad():
        mel = head.features(waveform)
        assert torch.equal(head.body(mel), plain(head.standardise(mel)))
    pointwise = [n for n, m in plain.named_modules() if isinstance(m, torch.nn.Conv2d)
                 and m.kernel_size == (1, 1) and n.rsplit(".", 1)[-1] in ("conv_pw", "conv_pwl", "conv_head")]
    assert head.adapted == pointwise and len(pointwise) > 10


def test_only_the_adapters_and_the_classifier_train(batch):
    labels, _, _ = batch
    head = tiny_head(labels, lora_rank=8)
    trainable = {n for n, p in head.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if ".lora_" in n or n.startswith("model.classifier.")}
    assert {"model.classifier.weight", "model.classifier.bias"} <= trainable
    adapters = [m for m in head.modules() if isinstance(m, LoRA)]
    expected = sum(8 * (m.base.in_channels + m.base.out_channels) for m in adapters)
    classifier = head.model.classifier.weight.numel() + head.model.classifier.bias.numel()
    assert sum(p.numel() for p in head.trainable_parameters()) == expected + classifier
    assert sum(p.numel() for p in head.lora_parameters()) == expected


def test_rank_sets_the_adapter_size_and_alpha_only_the_scale(batch):
    labels, _, _ = batch
    r4, r8 = tiny_head(labels, lora_rank=4), tiny_head(labels, lora_rank=8, lora_alpha=4.0)
    n4, n8 = (sum(p.numel() for p in h.lora_parameters()) for h in (r4, r8))
    assert n8 == 2 * n4 > 0
    assert n8 == sum(p.numel() for p in tiny_head(labels, lora_rank=8, lora_alpha=64.0).lora_parameters())
    scales = {m.scaling for m in r8.modules() if isinstance(m, LoRA)}
    assert scales == {0.5} and {m.scaling for m in r4.modules() if isinstance(m, LoRA)} == {16.0 / 4}


def test_a_few_steps_lower_the_loss_and_leave_the_base_untouched(trained):
    head, base_before, loss_before, loss_after = trained
    # Measured: BCE 0.693 (the zero classifier) -> 0.489 in 8 steps on these four windows.
    assert loss_after < 0.8 * loss_before
    after = head.base_state_dict()
    assert after.keys() == base_before.keys()
    changed = [k for k in after
               if not k.startswith("classifier.") and not torch.equal(after[k], base_before[k])]
    assert changed == []  # weights and batch-norm statistics alike
    assert any(m.lora_b.abs().max() > 0 for m in head.modules() if isinstance(m, LoRA))


def test_merging_folds_the_adapters_into_the_base_with_equal_outputs(trained, batch):
    head, _, _, _ = trained
    _, waveform, _ = batch
    merged = copy.deepcopy(head).merge_lora().eval()
    assert not any(isinstance(m, LoRA) for m in merged.modules()) and merged.merged
    with torch.no_grad():
        mel = head.features(waveform)
        before, after = head.eval().body(mel), merged.body(mel)
        # Folding the update into a float32 weight rounds it: measured 1.4e-6 at most on logits
        # up to 4.7. Merged in float64 the two are the same function.
        exact = copy.deepcopy(head).double()
        exact_before = exact.body(mel[:2].double())
        exact_after = exact.merge_lora().body(mel[:2].double())
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    assert (exact_after - exact_before).abs().max() < 1e-9
    plain = timm.create_model(TINY, pretrained=False, in_chans=1, num_classes=len(head.labels)).eval()
    plain.load_state_dict(merged.model.state_dict())  # merged is timm's own layout


def test_config_rebuilds_the_same_head(trained, batch):
    head, _, _, _ = trained
    _, waveform, _ = batch
    config = head.config()
    assert config["lora_rank"] == 8 and config["model_name"] == TINY and config["pretrained_path"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rebuilt = build_head("effnet_b3_lora", **config)
    rebuilt.load_state_dict(head.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(waveform), head.eval()(waveform))


def test_channels_last_and_bf16_autocast_on_the_cpu(batch, imagenet_file):
    labels, waveform, targets = batch
    head = tiny_head(labels, pretrained_path=imagenet_file).to(memory_format=torch.channels_last).train()
    torch.manual_seed(2)  # as after some training: non-zero adapters and classifier
    for p in head.lora_parameters() + [head.model.classifier.weight]:
        torch.nn.init.normal_(p, std=0.05)
    # half a second of frames: bf16 convolutions are slow on a CPU
    mel = head.features(waveform[:2])[..., :50].contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head.body(mel)
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets[:2])
    loss.backward()
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    grads = [p.grad for p in head.trainable_parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.grad.abs().max() > 0 for p in head.lora_parameters()[:2])
    head.eval()
    with torch.no_grad():
        reference = head.body(mel)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = head.body(mel).float()
    assert reference.abs().max() > 0.05
    assert (low - reference).abs().max() <= 0.1 * reference.abs().max() + 0.02


def test_imagenet_weights_load_from_a_timm_file_with_the_stem_summed(tmp_path, batch):
    labels, _, _ = batch
    torch.manual_seed(3)
    imagenet = timm.create_model(TINY, pretrained=False).state_dict()  # 3-channel stem, 1000 classes
    for path, save in ((tmp_path / "tinynet_e.pth", lambda s, p: torch.save(s, p)),
                       (tmp_path / "tinynet_e.safetensors", lambda s, p: save_file(s, str(p)))):
        save(imagenet, path)
        head = tiny_head(labels, pretrained_path=path)
        base = head.base_state_dict()
        stem = imagenet["conv_stem.weight"].sum(1, keepdim=True)
        torch.testing.assert_close(base["conv_stem.weight"], stem)
        assert torch.equal(base["blocks.1.0.conv_pw.weight"], imagenet["blocks.1.0.conv_pw.weight"])
        assert torch.equal(base["bn2.running_var"], imagenet["bn2.running_var"])
        assert base["classifier.weight"].shape == (len(labels), imagenet["classifier.weight"].shape[1])
        assert head.config()["pretrained_from"] == str(path) and head.config()["pretrained_path"] is None


def test_a_torchvision_efficientnet_file_loads_by_tensor_order(tmp_path, batch):
    torchvision = pytest.importorskip("torchvision")
    labels, _, _ = batch
    path = tmp_path / "efficientnet_b0_torchvision.pth"
    state = torchvision.models.efficientnet_b0(weights=None).state_dict()
    torch.save(state, path)
    head = EfficientNetLoRA(labels, model_name="efficientnet_b0", pretrained_path=path)
    base = head.base_state_dict()
    assert torch.equal(base["blocks.6.0.conv_pwl.weight"], state["features.7.0.block.3.0.weight"])
    torch.testing.assert_close(base["conv_stem.weight"], state["features.0.0.weight"].sum(1, keepdim=True))


def test_a_file_of_another_model_is_refused_naming_the_file_and_keys(tmp_path, batch):
    labels, _, _ = batch
    other = tmp_path / "mobilenet.pth"
    torch.save(timm.create_model("mobilenetv3_small_050", pretrained=False).state_dict(), other)
    with pytest.raises(ValueError, match=r"mobilenet\.pth.*keys missing \(e\.g\. \['blocks"):
        tiny_head(labels, pretrained_path=other)
    deeper = tmp_path / "tinynet_d.pth"  # tinynet_e's keys and more
    torch.save(timm.create_model("tinynet_d", pretrained=False).state_dict(), deeper)
    with pytest.raises(ValueError, match=r"tinynet_d\.pth: .* 0 keys missing .*\(e\.g\. \['blocks\.5"):
        tiny_head(labels, pretrained_path=deeper)
    state = timm.create_model(TINY, pretrained=False).state_dict()
    state["blocks.1.0.conv_pw.weight"] = torch.zeros(7, 3, 1, 1)
    torch.save(state, tmp_path / "reshaped.pth")
    with pytest.raises(ValueError, match=r"reshaped\.pth: 1 tensors have the wrong shape.*blocks\.1\.0"):
        tiny_head(labels, pretrained_path=tmp_path / "reshaped.pth")
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        tiny_head(labels, pretrained_path=tmp_path / "nowhere.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: not a readable state dict"):
        tiny_head(labels, pretrained_path=junk)


def test_without_weights_the_head_says_it_starts_from_scratch(batch):
    labels, _, _ = batch
    with pytest.warns(UserWarning, match="from scratch"):
        EfficientNetLoRA(labels, model_name=TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt from a checkpoint's config: no warning
        EfficientNetLoRA(labels, model_name=TINY, pretrained_from="imagenet.pth")
    with pytest.raises(ValueError, match="no Linear or 1x1 Conv2d layer named"):
        EfficientNetLoRA(labels, model_name=TINY, pretrained_from="x", lora_targets=("conv_dw_typo",))
    with pytest.raises(ValueError, match="classifier"):
        EfficientNetLoRA(labels, model_name=TINY, pretrained_from="x", lora_targets=("classifier",))


def test_a_random_base_lets_only_its_batch_norm_statistics_follow_the_data(batch):
    labels, waveform, targets = batch
    head = tiny_head(labels)  # no weights file: from scratch
    assert head.adapt_batchnorm and head.config()["adapt_batchnorm"] is True
    before = {k: v.clone() for k, v in head.base_state_dict().items()}
    optimiser = torch.optim.AdamW(head.trainable_parameters(), lr=1e-4)
    head.train()
    loss = F.binary_cross_entropy_with_logits(head(waveform), targets)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    after = head.base_state_dict()
    moved = {k for k in after if not k.startswith("classifier.") and not torch.equal(after[k], before[k])}
    assert moved and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in moved)

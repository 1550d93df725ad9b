"""The training loop on real recordings at tiny sizes: the loss falls, a killed run resumes to the
same weights bit for bit, early stopping, retraining from a checkpoint, pseudo-labels, bf16 on
the CPU, class-balanced draws, the focal loss by hand, and the errors a user meets."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

from tests.trainer.fit_fixtures import register_tiny_head, tiny_backgrounds, tiny_cache
from trainer.checkpoint import load_head, read_checkpoint
from trainer.data import (
    BatchProgress, CacheWindows, balance_weights, epoch_keys, epoch_windows, to_float, validation_rows,
)
from trainer.fit import FitConfig, fit
from trainer.losses import bce_loss, focal_loss, make_loss
from trainer.scoring import evaluate
from trainer.splits import split_by_recording
from trainer.wave_augment import NONE


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_cache(tmp_path_factory) + (tiny_backgrounds(tmp_path_factory),)


@pytest.fixture(autouse=True)
def tiny_head(monkeypatch):
    register_tiny_head(monkeypatch)


def config(**changes) -> FitConfig:
    base = FitConfig(head="tiny_mel", epochs=2, batch_size=4, lr=3e-3, workers=0, steps_per_epoch=3,
                     precision="fp32", patience=0, device="cpu")
    return replace(base, **changes)


def weights(path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


class Interrupt(Exception):
    pass


def test_a_short_real_run_lowers_the_loss(tiny, tmp_path):
    examples, cache, labels, _ = tiny
    seen = []
    result = fit(config(epochs=3, steps_per_epoch=6, lr=1e-2, augment=NONE.to_dict(), report=True), examples, cache,
                 tmp_path, labels=labels, on_epoch=seen.append, progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert result.history[-1]["val"]["val_loss"] < result.history[0]["val"]["val_loss"]
    assert [r.epoch for r in seen] == [1, 2, 3] and all(r.checkpoint == tmp_path / "last.pt" for r in seen)
    assert result.best_path.is_file() and result.last_path.is_file()
    assert set(result.thresholds) == set(labels) and 0.0 <= result.best_metric <= 1.0
    model, meta = load_head(result.best_path)
    assert meta["epoch"] == result.best_epoch and meta["thresholds"] == result.thresholds
    assert meta["evaluation"]["birdclef"] == pytest.approx(result.best_metric)
    assert model.labels == labels and not model.training
    saved = np.load(result.scores_path)
    assert list(saved["labels"]) == labels and saved["scores"].shape == saved["targets"].shape
    again = evaluate(saved["scores"], saved["targets"], labels)
    assert again.birdclef == pytest.approx(result.best_metric) and again.thresholds == result.thresholds
    assert (result.report / "report.md").is_file()


def test_the_raw_waveform_cnn_trains_through_the_same_loop(tiny, tmp_path):
    examples, cache, labels, backgrounds = tiny
    run = config(head="raw_cnn", epochs=2, steps_per_epoch=4, lr=1e-2, augment=NONE.to_dict(),
                 head_config={"window_samples": 32_000, "width": 8, "depth": 1, "stages": 2})
    result = fit(run, examples, cache, tmp_path, labels=labels, backgrounds=backgrounds, progress=False)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    model, meta = load_head(result.last_path)
    assert meta["head"] == "raw_cnn" and model.width == 8


def test_a_run_killed_after_an_epoch_resumes_to_the_uninterrupted_weights(tiny, tmp_path):
    """Full augmentation (backgrounds, mixing, masks), dropout and batch norm; the resumed run
    loads its windows with two worker processes, the uninterrupted one in-process."""
    examples, cache, labels, backgrounds = tiny
    whole = fit(config(), examples, cache, tmp_path / "whole", labels=labels, backgrounds=backgrounds, progress=False)

    def kill_after_first(result):
        if result.epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(config(workers=2), examples, cache, tmp_path / "killed", labels=labels, backgrounds=backgrounds,
            on_epoch=kill_after_first, progress=False)
    assert read_checkpoint(tmp_path / "killed" / "last.pt")["epoch"] == 1
    resumed = fit(config(workers=2), examples, cache, tmp_path / "killed", labels=labels, backgrounds=backgrounds,
                  progress=False)
    assert resumed.resumed_from == 1 and resumed.epochs_run == 2
    a, b = weights(whole.last_path), weights(resumed.last_path)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert [h["train_loss"] for h in whole.history] == [h["train_loss"] for h in resumed.history]
    assert whole.history[1]["val"] == resumed.history[1]["val"]


def test_early_stopping_stops_after_patience_epochs_without_improvement(tiny, tmp_path):
    """lr 0 and no batch norm: the model never changes, so the metric never improves after epoch 1."""
    examples, cache, labels, _ = tiny
    run = config(epochs=6, lr=0.0, patience=2, steps_per_epoch=1, head_config={"batch_norm": False})
    result = fit(run, examples, cache, tmp_path, labels=labels, progress=False)
    assert result.epochs_run == 3 and result.stopped_early and result.best_epoch == 1
    assert read_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    assert read_checkpoint(tmp_path / "last.pt")["stopped"] is True
    called = []
    again = fit(run, examples, cache, tmp_path, labels=labels, on_epoch=called.append, progress=False)
    assert called == [] and again.epochs_run == 3 and again.resumed_from == 3


def test_retraining_starts_from_the_checkpoint_weights(tiny, tmp_path):
    examples, cache, labels, _ = tiny
    first = fit(config(epochs=1, head_config={"batch_norm": False}), examples, cache, tmp_path / "a", labels=labels,
                progress=False)
    retrain = config(epochs=1, lr=0.0, head_config={"batch_norm": False}, init_from=str(first.best_path), seed=7)
    second = fit(retrain, examples, cache, tmp_path / "b", labels=labels, progress=False)
    a, b = weights(first.best_path), weights(second.last_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="labels differ"):
        fit(replace(retrain, init_from=str(first.best_path)), [e for e in examples if e.primary != "41663"], cache,
            tmp_path / "c", labels=[lb for lb in labels if lb != "41663"], progress=False)


def test_a_resumed_run_refuses_another_configuration(tiny, tmp_path):
    examples, cache, labels, _ = tiny
    fit(config(epochs=1, steps_per_epoch=1), examples, cache, tmp_path, labels=labels, progress=False)
    with pytest.raises(ValueError, match=r"another configuration .*'lr'"):
        fit(config(epochs=1, steps_per_epoch=1, lr=1.0), examples, cache, tmp_path, labels=labels, progress=False)


def test_bf16_autocast_and_channels_last_train_on_the_cpu(tiny, tmp_path):
    examples, cache, labels, _ = tiny
    result = fit(config(epochs=1, precision="bf16", channels_last=True), examples, cache, tmp_path, labels=labels,
                 progress=False)
    assert math.isfinite(result.history[0]["train_loss"])
    state = weights(result.last_path)
    assert all(v.dtype == torch.float32 for k, v in state.items() if v.is_floating_point())
    model, _ = load_head(result.last_path)
    out = model(torch.from_numpy(cache.window(examples[0].clip_id, 0, model.window_samples))[None])
    assert torch.isfinite(out).all() and out.shape == (1, len(labels))


@dataclass
class Pseudo:
    clip_ids: list
    starts: np.ndarray
    targets: np.ndarray
    labels: list


def test_pseudo_labelled_soundscape_windows_are_mixed_in_at_their_share(tiny, tmp_path):
    examples, cache, labels, backgrounds = tiny
    clip = backgrounds[0].clip_id
    starts = np.arange(0, cache.length(clip) - 32_000, 32_000)
    rng = np.random.default_rng(0)
    pseudo = Pseudo([clip] * len(starts), starts, rng.random((len(starts), len(labels) + 1)), ["extra"] + labels)
    windows = epoch_windows(20, len(starts), 0.25, 3, 4)
    assert windows == (9, 3)
    keys = epoch_keys(0, 0, 20, len(starts), windows, None)
    assert (keys[:, 0] >= 20).sum() == 3 and len(keys) == 12
    result = fit(config(epochs=1, pseudo_fraction=0.5), examples, cache, tmp_path, labels=labels, pseudo=pseudo,
                 progress=False)
    assert math.isfinite(result.history[0]["train_loss"])
    with pytest.raises(ValueError, match="no column for training labels"):
        fit(config(epochs=1, pseudo_fraction=0.5), examples, cache, tmp_path / "x", labels=labels,
            pseudo=replace(pseudo, labels=["extra", "a", "b", "c", "d", "e"]), progress=False)


def test_class_balanced_draws_favour_rare_labels(tiny):
    examples, _, _, _ = tiny
    split = split_by_recording(examples, 0.2, 0)
    train = [examples[i] for i in split.train]
    share = Counter(e.primary or "" for e in train)
    keys = epoch_keys(0, 0, len(train), 0, (4000, 0), balance_weights(train))
    drawn = Counter(train[i].primary or "" for i in keys[:, 0])
    rarest, commonest = min(share, key=share.get), max(share, key=share.get)
    assert drawn[rarest] / 4000 > 1.3 * share[rarest] / len(train)
    assert drawn[commonest] / 4000 < share[commonest] / len(train)
    again = epoch_keys(0, 0, len(train), 0, (4000, 0), balance_weights(train))
    later = epoch_keys(1, 0, len(train), 0, (4000, 0), balance_weights(train))
    assert np.array_equal(keys, again) and not np.array_equal(keys[:, 0], later[:, 0])


def test_focal_loss_equals_a_hand_computation():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    targets = torch.tensor([[1.0, 0.5], [0.0, 1.0]])
    gamma = 2.0
    expected = []
    for x, t in zip(logits.flatten().tolist(), targets.flatten().tolist()):
        p = 1.0 / (1.0 + math.exp(-x))
        cross = -(t * math.log(p) + (1 - t) * math.log(1 - p))
        p_t = p * t + (1 - p) * (1 - t)
        expected.append(cross * (1 - p_t) ** gamma)
    assert focal_loss(logits, targets, gamma=gamma).item() == pytest.approx(sum(expected) / 4, rel=1e-6)
    assert focal_loss(logits, targets, gamma=0.0).item() == pytest.approx(bce_loss(logits, targets).item(), rel=1e-6)
    weighted = focal_loss(logits, targets, torch.tensor([1.0, 3.0]), gamma=gamma).item()
    assert weighted == pytest.approx((sum(expected[:2]) / 2 + 3 * sum(expected[2:]) / 2) / 4, rel=1e-6)
    assert make_loss("focal", 2.0)(logits, targets).item() == pytest.approx(sum(expected) / 4, rel=1e-6)
    with pytest.raises(ValueError, match="unknown loss 'l2'"):
        make_loss("l2")


def test_errors_name_the_problem(tiny, tmp_path):
    examples, cache, labels, _ = tiny
    with pytest.raises(ValueError, match=r"label '41663' is not in the label list"):
        fit(config(), examples, cache, tmp_path / "a", labels=[lb for lb in labels if lb != "41663"], progress=False)
    with pytest.raises(ValueError, match=r"have no example to train on: \['99999'\]"):
        fit(config(), examples, cache, tmp_path / "b", labels=labels + ["99999"], progress=False)
    raccoons = [e for e in examples if e.primary == "41663"]
    with pytest.raises(ValueError, match="no validation rows"):
        fit(config(), raccoons, cache, tmp_path / "c", progress=False)
    ghost = replace(examples[0], clip_id="never-cached.ogg#0.000-6.000")
    with pytest.raises(KeyError, match="never-cached.ogg"):
        fit(config(), examples + [ghost], cache, tmp_path / "d", labels=labels, progress=False)
    with pytest.raises(ValueError, match="precision 'fp8'"):
        fit(config(precision="fp8"), examples, cache, tmp_path / "e", labels=labels, progress=False)
    with pytest.raises(ValueError, match="augment: unknown keys"):
        fit(config(augment={"mixup": 1}), examples, cache, tmp_path / "f", labels=labels, progress=False)


def test_validation_windows_are_fixed_consecutive_windows_of_each_clip(tiny):
    examples, cache, labels, _ = tiny
    clips = [e for e in examples if e.primary == "21211"][:2]
    rows = validation_rows(clips, labels, cache, 32_000, 3, 0.5)
    assert rows.clip_ids == [clips[0].clip_id] * 3 + [clips[1].clip_id] * 3
    assert rows.starts.tolist() == [0, 32_000, 64_000] * 2 and rows.primary == ["21211"] * 6
    assert (rows.targets[:, labels.index("21211")] == 1).all() and rows.targets.sum() == 6
    windows = CacheWindows(cache, rows, 32_000, seed=0)
    for k in (0, 2, 5):  # int16 through the loader, float on the device: AudioCache.window's values exactly
        item = windows[(k, 0, 0)]
        assert item["wave"].dtype == torch.int16
        expected = cache.window(rows.clip_ids[k], int(rows.starts[k]), 32_000)
        assert np.array_equal(to_float(item["wave"]).numpy(), expected)
    padded = CacheWindows(cache, validation_rows(clips[:1], labels, cache, 150_000, 2, 0.5), 150_000, seed=0)[(1, 0, 0)]
    assert (padded["wave"][192_000 - 150_000:] == 0).all()  # a 6 s clip: the second 150,000-sample window is padded


def test_progress_without_tqdm_prints_plain_lines(capsys):
    bar = BatchProgress(True)
    bar.tqdm = None
    assert list(bar(range(20), 20, "epoch 1/2")) == list(range(20))
    bar.line("epoch 1: done")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "epoch 1/2: 2/20 batches" and lines[-2] == "epoch 1/2: 20/20 batches"
    assert lines[-1] == "epoch 1: done" and len(lines) == 11
    assert list(BatchProgress(False)(range(3), 3, "quiet")) == [0, 1, 2] and capsys.readouterr().err == ""

"""Soft pseudo-labels on the real El Silencio soundscape, and a tiny noisy-student run.

The teacher is a real head (a small RawAudioCNN on 1 s windows) so every number here is what the
trainer computes on real audio; the expected targets are recomputed independently, window by
window, straight from the cached samples.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tests.trainer.fit_fixtures import SHARED_DATA, WINDOW, tiny_backgrounds, tiny_cache
from trainer.audio_cache import AudioCache, build_cache, items_from_examples
from trainer.fit import FitConfig
from trainer.heads import build_head
from trainer.labelled import Example
from trainer.pseudo import PSEUDO_FRACTION, PseudoLabels, noisy_student, pseudo_label, window_starts

TINY_RAW = {"window_samples": WINDOW, "width": 8, "depth": 1, "stages": 2, "dropout": 0.0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    examples, cache, labels = tiny_cache(tmp_path_factory)
    return examples, cache, labels, tiny_backgrounds(tmp_path_factory)


@pytest.fixture(scope="module")
def both_soundscapes(tmp_path_factory):
    """The shared data's two unlabelled soundscapes (El Silencio's site recording and the
    BirdCLEF-format one), their first 15 s and 10 s, in a cache of their own."""
    soundscapes = [
        Example(clip_id="elsilencio-15s", path=SHARED_DATA / "audio/elsilencio_soundscape/H02_20230420_074000.ogg",
                primary=None, end_s=15.0, background=True),
        Example(clip_id="birdclef-unlabeled-10s", path=SHARED_DATA / "audio/birdclef_unlabeled/SampleAudio.ogg",
                primary=None, end_s=10.0, background=True),
    ]
    root = tmp_path_factory.mktemp("soundscape-cache")
    assert not build_cache(root, items_from_examples(soundscapes)).skipped
    return AudioCache(root), soundscapes


def test_every_window_of_both_shared_soundscapes_gets_a_soft_target(data, both_soundscapes):
    labels = data[2]
    cache, soundscapes = both_soundscapes
    model = teacher(labels, 5)
    pseudo = pseudo_label([model], cache, soundscapes, window_samples=WINDOW, hop_samples=WINDOW)
    assert pseudo.clip_ids == ["elsilencio-15s"] * 15 + ["birdclef-unlabeled-10s"] * 10
    assert pseudo.targets.shape == (25, len(labels)) and np.isfinite(pseudo.targets).all()
    assert ((pseudo.targets > 0) & (pseudo.targets < 1)).all()  # soft, never hard 0/1
    later = direct_probabilities(model, cache, "birdclef-unlabeled-10s", [9 * WINDOW])
    np.testing.assert_allclose(pseudo.targets[-1], later[0] ** pseudo.power, rtol=1e-5)


def teacher(labels, seed: int):
    torch.manual_seed(seed)
    return build_head("raw_cnn", labels=labels, **TINY_RAW).eval()


def direct_probabilities(model, cache, clip_id: str, starts) -> np.ndarray:
    with torch.no_grad():
        windows = torch.from_numpy(np.stack([cache.window(clip_id, s, WINDOW) for s in starts]))
        return torch.sigmoid(model(windows)).numpy()


def test_window_starts_cover_a_clip_and_pad_a_short_one():
    assert window_starts(5 * WINDOW, WINDOW, WINDOW) == [0, WINDOW, 2 * WINDOW, 3 * WINDOW, 4 * WINDOW]
    assert window_starts(3 * WINDOW, WINDOW, WINDOW // 2) == [0, 16_000, 32_000, 48_000, 64_000]
    assert window_starts(WINDOW // 3, WINDOW, WINDOW) == [0]


def test_soft_targets_are_the_ensemble_mean_probability_raised_to_the_power(data):
    _, cache, labels, soundscapes = data
    models = [teacher(labels, 1), teacher(labels, 2)]
    clip = soundscapes[0].clip_id
    pseudo = pseudo_label(models, cache, soundscapes, window_samples=WINDOW, hop_samples=WINDOW, power=2.0,
                          batch_size=4)
    starts = window_starts(cache.length(clip), WINDOW, WINDOW)
    assert len(starts) == 15  # the first 15 s of the real soundscape, in 1 s windows
    assert pseudo.clip_ids == [clip] * 15 and pseudo.starts.tolist() == starts and pseudo.labels == labels
    mean = sum(direct_probabilities(m, cache, clip, starts) for m in models) / 2
    np.testing.assert_allclose(pseudo.targets, mean ** 2, rtol=1e-5, atol=1e-7)
    assert pseudo.targets.dtype == np.float32 and pseudo.power == 2.0
    raw = pseudo_label(models, cache, soundscapes, window_samples=WINDOW, hop_samples=WINDOW, power=1.0)
    assert (pseudo.targets <= raw.targets + 1e-7).all()  # a power > 1 only ever lowers a probability
    low = raw.targets < 0.5
    assert (pseudo.targets[low] < 0.5 * raw.targets[low] + 1e-7).all()  # and halves every score below 0.5


def test_a_confidence_floor_drops_the_windows_the_teacher_is_unsure_of(data):
    _, cache, labels, soundscapes = data
    model = teacher(labels, 3)
    everything = pseudo_label([model], cache, soundscapes, window_samples=WINDOW, hop_samples=WINDOW, power=1.0)
    top = everything.targets.max(axis=1)
    floor = float(np.median(top))
    kept = pseudo_label([model], cache, soundscapes, window_samples=WINDOW, hop_samples=WINDOW, power=1.0,
                        min_confidence=floor)
    assert kept.starts.tolist() == everything.starts[top >= floor].tolist()
    assert 0 < len(kept) < len(everything)


def test_an_ensemble_must_share_its_labels_and_soundscapes_must_be_cached(data):
    _, cache, labels, soundscapes = data
    with pytest.raises(ValueError, match="different labels"):
        pseudo_label([teacher(labels, 1), teacher(labels[::-1], 1)], cache, soundscapes, window_samples=WINDOW)
    missing = [type(soundscapes[0])(clip_id="nowhere.ogg", path=soundscapes[0].path, primary=None)]
    with pytest.raises(ValueError, match="none of the 1 soundscapes is in the cache"):
        pseudo_label([teacher(labels, 1)], cache, missing, window_samples=WINDOW)


def test_pseudo_labels_round_trip_through_npz_and_json(data, tmp_path):
    _, cache, labels, soundscapes = data
    pseudo = pseudo_label([teacher(labels, 4)], cache, soundscapes, window_samples=WINDOW, hop_samples=WINDOW // 2,
                          teachers=["seed 4"])
    path = pseudo.save(tmp_path / "round1" / "pseudo")
    back = PseudoLabels.load(path)
    assert back.clip_ids == pseudo.clip_ids and back.labels == labels and back.teachers == ["seed 4"]
    np.testing.assert_array_equal(back.starts, pseudo.starts)
    np.testing.assert_array_equal(back.targets, pseudo.targets)
    assert back.window_samples == WINDOW and back.power == pseudo.power
    path.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match="pseudo.json: pseudo labels missing"):
        PseudoLabels.load(path)


def test_noisy_student_trains_on_the_soundscape_and_keeps_a_round_only_if_not_worse(data, tmp_path):
    examples, cache, labels, soundscapes = data
    config = FitConfig(head="raw_cnn", head_config=TINY_RAW, epochs=1, batch_size=4, steps_per_epoch=3, lr=3e-3,
                       precision="fp32", workers=0, device="cpu", patience=0, seed=0)
    seen = []
    result = noisy_student(config, examples, cache, soundscapes, 1, tmp_path, labels=labels,
                           hop_samples=WINDOW, on_round=seen.append)
    assert [r.round for r in result.rounds] == [0, 1] and seen == result.rounds
    first, second = result.rounds
    pseudo = PseudoLabels.load(second.pseudo)
    assert len(pseudo) == 15 and pseudo.teachers == [str(first.checkpoint)]
    student = torch.load(second.checkpoint, map_location="cpu", weights_only=False)
    assert student["fit_config"]["pseudo_fraction"] == PSEUDO_FRACTION  # the student trained with them mixed in
    assert torch.load(first.checkpoint, map_location="cpu", weights_only=False)["fit_config"]["pseudo_fraction"] == 0
    assert second.kept == (second.metric >= first.metric)
    assert result.best == (second.checkpoint if second.kept else first.checkpoint)
    assert not math.isnan(first.metric)
    recorded = json.loads((tmp_path / "rounds.json").read_text())
    assert [r["kept"] for r in recorded] == [True, second.kept]

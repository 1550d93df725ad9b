"""Splits, targets and weights, tested on the real BirdCLEF 2025 train.csv (28,594 rows)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from trainer.birdclef import read_taxonomy, read_train_csv
from trainer.labelled import Example
from trainer.splits import (
    BalancedSampler, balanced_weights, rating_weights, split_by_recording, targets, validation_count,
)


@pytest.fixture(scope="module")
def real(shared_data):
    taxonomy = read_taxonomy(shared_data / "taxonomy.csv")
    examples, _ = read_train_csv(shared_data / "train_metadata.csv", {t.label for t in taxonomy}, Path("train_audio"))
    return [t.label for t in taxonomy], examples


@pytest.fixture(scope="module")
def split0(real):
    return split_by_recording(real[1], fraction=0.2, seed=0)


def groups_by_label(examples: list[Example], indices) -> dict[str, set[str]]:
    out = defaultdict(set)
    for i in indices:
        out[examples[i].primary].add(examples[i].group_id)
    return out


def test_no_recording_is_on_both_sides(real, split0):
    _, examples = real
    assert len(split0.train) + len(split0.validation) == len(examples)
    assert not set(split0.train) & set(split0.validation)
    train = {examples[i].group_id for i in split0.train}
    validation = {examples[i].group_id for i in split0.validation}
    assert not train & validation
    # the copies of one recording under several labels' folders count as one recording
    assert {examples[i].group_id for i in split0.validation if examples[i].group == "iNat1020465"} in (
        set(), {"iNat1020465"})


def test_every_label_is_on_both_sides_at_its_rounded_share(real, split0):
    _, examples = real
    every = groups_by_label(examples, range(len(examples)))
    held = groups_by_label(examples, split0.validation)
    trained = groups_by_label(examples, split0.train)
    shared = Counter(g for groups in every.values() for g in groups)
    assert min(len(g) for g in every.values()) == 2, "the real file's rarest labels have two recordings"
    for label, groups in every.items():
        assert held[label] and trained[label], label
        want = validation_count(len(groups), 0.2)
        # a label sharing a recording with another label may miss its share by those recordings
        slack = sum(shared[g] > 1 for g in groups)
        assert abs(len(held[label]) - want) <= slack, (label, len(groups), len(held[label]))
        assert abs(want - 0.2 * len(groups)) <= 0.5 or want in (1, len(groups) - 1)
    assert split0.single_group_labels == ()
    assert abs(len(split0.validation) / len(examples) - 0.2) < 0.01


def test_the_fraction_is_configurable(real):
    _, examples = real
    split = split_by_recording(examples, fraction=0.1, seed=0)
    every = groups_by_label(examples, range(len(examples)))
    held = groups_by_label(examples, split.validation)
    assert sum(len(held[label]) == validation_count(len(g), 0.1) for label, g in every.items()) >= 200
    assert abs(len(split.validation) / len(examples) - 0.1) < 0.01
    assert validation_count(993, 0.1) == 99 and validation_count(2, 0.1) == 1 and validation_count(5, 0.5) == 3
    with pytest.raises(ValueError, match="fraction 1.0 must be in"):
        split_by_recording(examples, fraction=1.0)


def test_the_same_seed_gives_the_same_split_and_another_seed_another(real, split0):
    _, examples = real
    again = split_by_recording(examples, fraction=0.2, seed=0)
    assert again == split0
    other = split_by_recording(examples, fraction=0.2, seed=1)
    overlap = len(set(other.validation) & set(split0.validation)) / len(split0.validation)
    # two independent draws of a fifth share about a fifth of their recordings (labels with 2-4
    # recordings share more: one of two is held out either way half the time)
    assert 0.15 < overlap < 0.35, overlap


def test_a_label_with_one_recording_stays_in_training_and_is_reported(real):
    _, examples = real
    ours = [e for e in examples if e.primary in ("grekis", "trokin")]
    lone = next(e for e in examples if e.primary == "21211")
    split = split_by_recording(ours + [lone], seed=3)
    assert split.single_group_labels == ("21211",)
    assert len(ours) in split.train
    assert "labels with one recording (training only): 21211" in split.report()


def test_chunks_of_one_recording_stay_together(shared_data):
    """A labelled list cut into chunks (several examples per group) splits by group."""
    base = Example(clip_id="", path=shared_data / "audio/birdclef_unlabeled/SampleAudio.ogg", primary="a")
    examples = [replace(base, clip_id=f"r{r}#{k}", group=f"r{r}", start_s=30.0 * k, end_s=30.0 * (k + 1))
                for r in range(10) for k in range(5)]
    split = split_by_recording(examples, fraction=0.3, seed=0)
    held = {examples[i].group for i in split.validation}
    assert len(held) == 3 and len(split.validation) == 15
    assert not held & {examples[i].group for i in split.train}


def test_targets_take_primary_as_one_and_secondary_as_a_partial_positive(real):
    labels, examples = real
    chosen = [next(e for e in examples if e.secondary == ("grekis",)), next(e for e in examples if not e.secondary)]
    got = targets(chosen, labels, secondary_weight=0.3)
    first = chosen[0]
    assert got.dtype == np.float32 and got.shape == (2, 206)
    assert got[0, labels.index(first.primary)] == 1.0 and got[0, labels.index("grekis")] == pytest.approx(0.3)
    assert np.count_nonzero(got[0]) == 2 and np.count_nonzero(got[1]) == 1
    off = targets(chosen, labels, secondary_weight=0.0)
    assert np.count_nonzero(off[0]) == 1
    negative = Example(clip_id="rain", path=Path("rain.wav"), primary=None)
    assert not targets([negative], labels).any()
    with pytest.raises(ValueError, match="dodo1"):
        targets([replace(first, secondary=("dodo1",))], labels)


def test_rating_weights_leave_unrated_recordings_at_full_weight(real):
    _, examples = real
    weights = rating_weights(examples)
    ratings = np.array([e.rating or 0.0 for e in examples])
    assert np.all(weights[ratings == 0] == 1.0)
    assert np.allclose(weights[ratings > 0], ratings[ratings > 0] / 5)
    assert weights.min() == pytest.approx(0.1), "the real file's lowest rating is 0.5"
    assert np.all(rating_weights(examples, unrated=0.6)[ratings == 0] == 0.6)


def perplexity(shares: np.ndarray) -> float:
    """exp(entropy): how many equally common labels the distribution is worth."""
    shares = shares[shares > 0]
    return float(math.exp(-(shares * np.log(shares)).sum()))


def test_balanced_sampling_flattens_the_real_label_distribution(real, split0):
    """Measured on the real training side (22,841 recordings, 206 labels): the file's labels are
    worth 112 equally common ones, the 50 rarest hold 1.0 % of the recordings. Power 0.5 should
    make them worth 163.5 and give the rarest 5.5 % of the draws; power 1, all 206 and 24.3 %.

    Tolerances come from drawing one epoch (22,841 draws): the plug-in perplexity of a sample is
    biased low by about (labels - 1) / (2 draws) = 0.45 % and varies far less, so 1 %; a share p
    varies by sqrt(p (1 - p) / draws), 0.0015 at 5.5 % and 0.0028 at 24 %, so four of those.
    """
    _, examples = real
    train = [examples[i] for i in split0.train]
    names, label_of = np.unique([e.primary for e in train], return_inverse=True)
    counts = np.bincount(label_of)
    rarest = np.argsort(counts, kind="stable")[:50]
    assert perplexity(counts / counts.sum()) == pytest.approx(112.1, abs=0.1)
    assert counts[rarest].sum() / counts.sum() == pytest.approx(0.0103, abs=0.0001)
    for power, want_perplexity, want_rare in ((0.5, 163.5, 0.0551), (1.0, 206.0, 0.2427)):
        weights = balanced_weights(train, power)
        expected = np.bincount(label_of, weights=weights)
        assert perplexity(expected) == pytest.approx(want_perplexity, abs=0.1)
        assert expected[rarest].sum() == pytest.approx(want_rare, abs=0.0001)
        drawn = np.bincount(label_of[BalancedSampler(weights, seed=0).indices()], minlength=len(names))
        shares = drawn / drawn.sum()
        assert perplexity(shares) == pytest.approx(want_perplexity, rel=0.01)
        assert shares[rarest].sum() == pytest.approx(want_rare, abs=4 * math.sqrt(want_rare * (1 - want_rare) / len(train)))
    assert np.allclose(balanced_weights(train, 0.0), 1 / len(train)), "power 0 keeps the file's distribution"


def test_the_sampler_is_seeded_per_epoch(real, split0):
    _, examples = real
    weights = balanced_weights([examples[i] for i in split0.train])
    sampler = BalancedSampler(weights, num_samples=1000, seed=7)
    first = list(sampler)
    assert len(first) == len(sampler) == 1000 and first == list(BalancedSampler(weights, 1000, seed=7))
    sampler.set_epoch(1)
    assert list(sampler) != first and list(sampler) == BalancedSampler(weights, 1000, seed=7).indices(1).tolist()
    assert list(BalancedSampler(weights, 1000, seed=8)) != first
    with pytest.raises(ValueError, match="non-negative"):
        BalancedSampler(np.array([1.0, -1.0]))

"""Validation splits, training targets and example weights.

Splits are by recording group (`Example.group_id`): every chunk cut from one recording, and every
copy of one recording filed under several labels, lands on one side, so validation never scores
audio the model trained on. They are stratified by primary label: each label with n >= 2 groups
sends round(n * fraction) of them (at least one, at most n - 1) to validation; a label with one
group keeps it in training (a model can never learn a label it never trained on) and the split
reports it. The draw is seeded per label, so one seed gives one split and adding a label's
recordings moves no other label's.

A group can hold several primary labels (a recording filed under several species). Labels are
placed rarest first; a group placed for one label counts toward every label it holds, and a later
label only tops up its validation share with its groups not yet placed. Only those labels can
miss their rounded share, by at most the groups they share (a label all of whose groups were
placed for others could even end on one side; in the real train.csv, where 10 recordings are
filed under 2-4 labels each, every label gets exactly its rounded share).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from trainer.labelled import Example

VALIDATION_FRACTION = 0.2
"""A fifth of each label's recordings: the BirdCLEF 2025 public notebooks' usual 5-fold holdout."""
SECONDARY_WEIGHT = 0.5
"""Target of a secondary label. Secondary labels are the recordist's "also heard": the species is
in the recording but not necessarily in every 5 s window cut from it, so 1.0 would overstate it;
0.5 is the common BirdCLEF choice. 0 turns them off."""
UNRATED_WEIGHT = 1.0
"""Weight of an unrated example (BirdCLEF's rating 0; a plain list's None). 7,390 of the real
file's 7,978 zeros are iNat and CSA rows, which are never rated: a low weight for "unrated" would
down-weight two whole collections, not poor recordings."""
BALANCE_POWER = 0.5
"""Class-balanced sampling draws an example of a label with n examples with probability
proportional to n ** -power, so a label's share of the draws goes as n ** (1 - power): 0 keeps the
file's distribution, 1 makes every label equally likely. 0.5 takes the real file's 993:2 largest
to smallest labels to about 22:1, so rare labels are seen often without repeating their few
recordings hundreds of times per epoch."""
NEGATIVE = ""
"""The stratum (and the balancing class) of examples with no primary label."""


@dataclass(frozen=True)
class Split:
    """Indices into the example list on each side, and what the split could not stratify."""

    train: tuple[int, ...]
    validation: tuple[int, ...]
    single_group_labels: tuple[str, ...]
    """Labels with one recording group: all in training, none validated."""
    seed: int
    fraction: float

    def report(self) -> str:
        single = ", ".join(self.single_group_labels) or "none"
        return (f"split seed {self.seed}, fraction {self.fraction:g}: {len(self.train)} training and "
                f"{len(self.validation)} validation examples; labels with one recording (training only): {single}")


def validation_count(groups: int, fraction: float) -> int:
    """How many of a label's `groups` go to validation: round half up, at least 1, at most n - 1."""
    if groups < 2:
        return 0
    return min(groups - 1, max(1, math.floor(groups * fraction + 0.5)))


def _label_rng(seed: int, label: str) -> np.random.Generator:
    """A generator for one label's draw: independent of the other labels and of their order."""
    return np.random.default_rng([seed, zlib.crc32(label.encode("utf-8"))])


def split_by_recording(examples: list[Example], fraction: float = VALIDATION_FRACTION, seed: int = 0) -> Split:
    """A seeded, stratified validation split by recording group (module docstring).

    Args:
        examples: The training set (BirdCLEF rows, a labelled list, or both).
        fraction: The share of each label's groups held out, in (0, 1).
        seed: Same seed, same split.

    Raises:
        ValueError: `fraction` is not in (0, 1).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction {fraction} must be in (0, 1)")
    members: dict[str, list[int]] = {}
    labels_of: dict[str, set[str]] = {}
    for i, example in enumerate(examples):
        members.setdefault(example.group_id, []).append(i)
        labels_of.setdefault(example.group_id, set()).add(example.primary or NEGATIVE)
    groups_of: dict[str, list[str]] = {}
    for group in sorted(labels_of):
        for label in labels_of[group]:
            groups_of.setdefault(label, []).append(group)
    side: dict[str, bool] = {}  # group -> True when held out
    single = []
    for label in sorted(groups_of, key=lambda lb: (len(groups_of[lb]), lb)):
        groups = groups_of[label]
        if len(groups) < 2:
            single += [label] if label != NEGATIVE else []
            side.setdefault(groups[0], False)
            continue
        free = [g for g in groups if g not in side]
        free = [free[k] for k in _label_rng(seed, label).permutation(len(free))]
        held = sum(side.get(g, False) for g in groups)
        # at most n - 1 - held of the free groups: one always stays in training
        take = min(len(free), max(0, validation_count(len(groups), fraction) - held))
        for k, group in enumerate(free):
            side[group] = k < take
    validation = tuple(i for g, idx in members.items() if side[g] for i in idx)
    train = tuple(i for g, idx in members.items() if not side[g] for i in idx)
    return Split(tuple(sorted(train)), tuple(sorted(validation)), tuple(sorted(single)), seed, fraction)


def targets(examples: list[Example], labels: list[str], secondary_weight: float = SECONDARY_WEIGHT) -> np.ndarray:
    """The [examples, labels] float32 target matrix: 1 for the primary label, `secondary_weight`
    for each secondary one, 0 elsewhere (a negative's row is all 0).

    Raises:
        ValueError: an example names a label outside `labels` (named), or the weight is outside 0..1.
    """
    if not 0.0 <= secondary_weight <= 1.0:
        raise ValueError(f"secondary weight {secondary_weight} must be in 0..1")
    column = {label: k for k, label in enumerate(labels)}
    out = np.zeros((len(examples), len(labels)), dtype=np.float32)
    for i, example in enumerate(examples):
        for label in example.secondary:
            if label not in column:
                raise ValueError(f"{example.clip_id}: secondary label {label!r} is not in the label space")
            out[i, column[label]] = max(out[i, column[label]], secondary_weight)
        if example.primary:
            if example.primary not in column:
                raise ValueError(f"{example.clip_id}: primary label {example.primary!r} is not in the label space")
            out[i, column[example.primary]] = 1.0
    return out


def rating_weights(examples: list[Example], unrated: float = UNRATED_WEIGHT) -> np.ndarray:
    """Per-example loss weights from the rating: rating / 5 (a 5 counts fully, a 1 a fifth), and
    `unrated` for unrated examples (see `UNRATED_WEIGHT`)."""
    return np.array([unrated if not e.rating else e.rating / 5.0 for e in examples], dtype=np.float64)


def balancing_class(example: Example) -> str:
    return example.primary or NEGATIVE


def balanced_weights(examples: list[Example], power: float = BALANCE_POWER) -> np.ndarray:
    """Per-example sampling probabilities, n_label ** -power each, normalised to sum to 1
    (`BALANCE_POWER` says what the power does)."""
    counts: dict[str, int] = {}
    for example in examples:
        counts[balancing_class(example)] = counts.get(balancing_class(example), 0) + 1
    weights = np.array([counts[balancing_class(e)] ** -float(power) for e in examples], dtype=np.float64)
    return weights / weights.sum()


class BalancedSampler:
    """Seeded draws of example indices by `balanced_weights`, with replacement.

    The draw of epoch k depends only on (seed, epoch), so a run resumed at epoch k sees exactly
    the examples an uninterrupted run saw. Torch's `DataLoader` takes it as a `sampler` (it
    needs only `__iter__` and `__len__`).
    """

    def __init__(self, weights: np.ndarray, num_samples: int | None = None, seed: int = 0):
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 1 or len(weights) == 0 or not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError("sampling weights must be a non-empty vector of finite, non-negative numbers")
        if weights.sum() <= 0:
            raise ValueError("sampling weights sum to zero")
        self.p = weights / weights.sum()
        self.num_samples = len(weights) if num_samples is None else int(num_samples)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self, epoch: int | None = None) -> np.ndarray:
        """The draw for `epoch` (default: the current one)."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else int(epoch)])
        return rng.choice(len(self.p), size=self.num_samples, replace=True, p=self.p)

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples

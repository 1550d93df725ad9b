"""Training and validation windows read from the audio cache, as torch batches.

A window is named by a key (row, epoch, position): its row (a labelled example, or a
pseudo-labelled soundscape window), and the epoch and position it was drawn at. Everything
random about a window (its crop start, its background) is drawn from a generator seeded by
(seed, epoch, position), so an epoch's batches do not depend on how many data workers load
them or on which worker loads which window: a run resumed at epoch k, or rerun with another
worker count, sees the same windows.

- Training rows of labelled examples are random `window`-sample crops of the example's cached
  span (uniform starts as `AudioCache.random_window`; the example's [start_s, end_s] is what the
  cache holds), shipped as int16 and made float on the device (`to_float`);
  pseudo-labelled rows are fixed windows (the soundscape window their soft targets describe).
- Validation rows are fixed: the first `val_windows` consecutive windows of each clip (a
  recordist trims a train clip to its call, so the first 5 s is where the label most surely
  holds), the last one zero-padded as the device pads a file's last window.
- An epoch's order (`epoch_keys`) is a class-balanced draw (`trainer.splits.BalancedSampler`) or
  a shuffled pass, with pseudo rows mixed in at their share, cut into this rank's shard
  (`trainer.distributed.shard`).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainer import distributed
from trainer.audio_cache import INT16_SCALE, AudioCache
from trainer.labelled import Example
from trainer.splits import BalancedSampler, balanced_weights, rating_weights, targets

SCORES = "validation.npz"
"""The best epoch's validation scores in a fit's out_dir (`save_scores`)."""
RANDOM_START = -1
"""A row's start that means "a random crop of the clip"."""


@dataclass
class Rows:
    """Windows to read: clip, start in samples (`RANDOM_START`: a random crop), soft targets,
    loss weight, and (validation) the primary label for primary-label accuracy."""

    clip_ids: list[str]
    starts: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    primary: list[str | None]

    def __len__(self) -> int:
        return len(self.clip_ids)

    @staticmethod
    def concat(parts: Sequence["Rows"]) -> "Rows":
        return Rows([c for p in parts for c in p.clip_ids], np.concatenate([p.starts for p in parts]),
                    np.concatenate([p.targets for p in parts]), np.concatenate([p.weights for p in parts]),
                    [x for p in parts for x in p.primary])


def check_cached(examples: Sequence[Example], cache: AudioCache, what: str = "example") -> None:
    """Raises KeyError naming the clips (up to five) the cache does not hold, and why if it
    skipped them: a fit must not silently train on fewer clips than it was given."""
    missing = [e.clip_id for e in examples if e.clip_id not in cache]
    if not missing:
        return
    reasons = {s.clip_id: s.reason for s in cache.skipped}
    named = "; ".join(f"{c!r}" + (f" (skipped: {reasons[c]})" if c in reasons else "") for c in missing[:5])
    raise KeyError(f"{len(missing)} {what} clip(s) are not in the audio cache at {cache.root}: {named}"
                   f"{' ...' if len(missing) > 5 else ''}; build the cache from the same examples")


def labelled_rows(examples: Sequence[Example], labels: list[str], secondary_weight: float,
                  use_rating: bool) -> Rows:
    """Random-crop training rows of labelled examples."""
    weights = rating_weights(list(examples)) if use_rating else np.ones(len(examples))
    return Rows([e.clip_id for e in examples], np.full(len(examples), RANDOM_START, dtype=np.int64),
                targets(list(examples), labels, secondary_weight), weights.astype(np.float32),
                [e.primary for e in examples])


def validation_rows(examples: Sequence[Example], labels: list[str], cache: AudioCache, window: int,
                    windows_per_clip: int, secondary_weight: float) -> Rows:
    """Fixed windows: the first `windows_per_clip` consecutive windows of each clip (at least
    one, never one starting past the clip's end)."""
    target = targets(list(examples), labels, secondary_weight)
    clip_ids, starts, rows = [], [], []
    for i, example in enumerate(examples):
        count = max(1, min(int(windows_per_clip), math.ceil(cache.length(example.clip_id) / window)))
        for k in range(count):
            clip_ids.append(example.clip_id)
            starts.append(k * window)
            rows.append(i)
    return Rows(clip_ids, np.asarray(starts, dtype=np.int64), target[rows], np.ones(len(rows), np.float32),
                [examples[i].primary for i in rows])


def pseudo_rows(pseudo: Any, labels: list[str]) -> Rows:
    """Rows of pseudo-labelled windows: any object with `clip_ids` [N], `starts` [N] (samples),
    `targets` [N, C'] soft targets and `labels` [C'] naming their columns (a
    `trainer.pseudo.PseudoLabels`); columns are taken by label name.

    Raises:
        ValueError: a training label has no column, or the shapes disagree.
    """
    names = list(pseudo.labels)
    missing = [label for label in labels if label not in names]
    if missing:
        raise ValueError(f"pseudo-labels have no column for training labels {missing[:5]}")
    soft = np.asarray(pseudo.targets, dtype=np.float32)
    clip_ids, starts = list(pseudo.clip_ids), np.asarray(pseudo.starts, dtype=np.int64)
    if soft.ndim != 2 or soft.shape != (len(clip_ids), len(names)) or len(starts) != len(clip_ids):
        raise ValueError(f"pseudo-labels: targets {soft.shape}, {len(clip_ids)} clip ids and {len(starts)} starts "
                         f"must agree with {len(names)} labels")
    if np.any(starts < 0):
        raise ValueError("pseudo-labels: starts must be sample offsets >= 0")
    soft = soft[:, [names.index(label) for label in labels]]
    return Rows(clip_ids, starts, np.clip(soft, 0.0, 1.0), np.ones(len(clip_ids), np.float32), [None] * len(clip_ids))


def resolve_labels(examples: Sequence[Example], labels: Sequence[str] | None) -> list[str]:
    """The label list: given (a taxonomy), or every label the examples name, sorted.

    Raises:
        ValueError: an example names a label outside the given list; a label has no example.
    """
    named = {label for e in examples for label in e.labels}
    if labels is None:
        return sorted(named)
    labels = list(labels)
    known = set(labels)
    for example in examples:
        outside = [label for label in example.labels if label not in known]
        if outside:
            raise ValueError(f"{example.clip_id}: label {outside[0]!r} is not in the label list (taxonomy)")
    empty = [label for label in labels if label not in named]
    if empty:
        raise ValueError(f"{len(empty)} label(s) have no example to train on: {empty[:10]}; "
                         f"leave them out of the label list or bring their recordings")
    return labels


def check_validation(rows: Rows, labels: list[str]) -> None:
    """Raises ValueError when the validation rows cannot give the BirdCLEF metric (none at all,
    no positive, a label positive on every row), before any training time is spent."""
    if len(rows) == 0:
        raise ValueError("no validation rows: every label has a single recording group, so the split kept all in "
                         "training; bring a second recording of some label or lower nothing else")
    positive = rows.targets > 0
    if not positive.any():
        raise ValueError("no validation row has a positive label: the BirdCLEF metric is undefined")
    everywhere = [labels[j] for j in np.flatnonzero(positive.all(axis=0))]
    if everywhere:
        raise ValueError(f"labels {everywhere[:5]} are positive on every validation row (no negative to rank "
                         f"against): add negatives or other labels")


class CacheWindows(Dataset):
    """Windows by key (module docstring), each a dict of tensors: wave [S] int16, target [C],
    weight, background [S] int16 (or [0] when the run has no backgrounds) and present (whether it
    holds one). Samples stay int16 until the device (`to_float`): half the bytes through the
    workers' shared memory, the collation and the copy to the GPU."""

    def __init__(self, cache: AudioCache, rows: Rows, window: int, seed: int,
                 backgrounds: Sequence[str] = (), background_p: float = 0.0):
        self.cache: AudioCache | None = cache
        self.root = Path(cache.root)
        self.rows, self.window, self.seed = rows, int(window), int(seed)
        self.backgrounds, self.background_p = list(backgrounds), float(background_p)

    def __getstate__(self):  # a worker started by pickling opens its own map, never copies it
        state = dict(self.__dict__)
        state["cache"] = None
        return state

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        row, epoch, position = (int(k) for k in key)
        if self.cache is None:
            self.cache = AudioCache(self.root)
        rng = np.random.default_rng([self.seed, epoch, position])
        clip, start = self.rows.clip_ids[row], int(self.rows.starts[row])
        wave = self._window(clip, self._start(clip, rng) if start == RANDOM_START else start)
        present = bool(self.backgrounds) and rng.random() < self.background_p
        if present:
            other = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
            background = self._window(other, self._start(other, rng))
        else:
            background = np.zeros(self.window if self.backgrounds else 0, dtype=np.int16)
        return {"wave": torch.from_numpy(wave), "target": torch.from_numpy(self.rows.targets[row]),
                "weight": torch.tensor(float(self.rows.weights[row])),
                "background": torch.from_numpy(background), "present": torch.tensor(present)}

    def _start(self, clip: str, rng: np.random.Generator) -> int:
        """A uniform crop start (0 when the clip is shorter than the window)."""
        span = self.cache.length(clip) - self.window
        return int(rng.integers(0, span + 1)) if span > 0 else 0

    def _window(self, clip: str, start: int) -> np.ndarray:
        """The cached int16 samples of `window` from `start`, zero-padded past the clip's end (as
        `AudioCache.window`, before its float conversion, which `to_float` does on the device)."""
        samples = self.cache.samples(clip)[start : start + self.window]
        out = np.zeros(self.window, dtype=np.int16)
        out[: len(samples)] = samples
        return out


def to_float(samples: torch.Tensor) -> torch.Tensor:
    """Cached int16 samples as float32 in [-1, 1] (`trainer.audio_cache.from_int16`'s scale),
    computed on the training device so the loader and the host-to-device copy carry half the bytes."""
    return samples.to(torch.float32) * torch.tensor(1.0 / INT16_SCALE, dtype=torch.float32, device=samples.device)


def epoch_windows(train_rows: int, pseudo_rows: int, pseudo_fraction: float, steps_per_epoch: int | None,
                  batch_size: int) -> tuple[int, int]:
    """(labelled, pseudo) windows of one epoch over all ranks: `steps_per_epoch` batches per
    rank when given, else one pass over the labelled rows plus the pseudo share on top."""
    share = pseudo_fraction if pseudo_rows else 0.0
    if steps_per_epoch:
        total = int(steps_per_epoch) * int(batch_size) * distributed.world_size()
        pseudo = int(round(total * share))
        return total - pseudo, pseudo
    pseudo = int(round(train_rows * share / (1.0 - share))) if share < 1.0 else train_rows
    return train_rows, pseudo


def epoch_keys(epoch: int, seed: int, train_rows: int, pseudo_rows: int, windows: tuple[int, int],
               balance: np.ndarray | None) -> np.ndarray:
    """This rank's [n, 3] keys (row, epoch, position) of `epoch`: the labelled draws (balanced
    by `balance`'s probabilities, else shuffled passes), the pseudo draws (shuffled passes, rows
    numbered after the labelled ones), interleaved by a seeded permutation."""
    labelled, pseudo = windows
    if balance is not None:
        drawn = BalancedSampler(balance, num_samples=labelled, seed=seed).indices(epoch)
    else:
        drawn = _passes(np.random.default_rng([seed, epoch, 1]), train_rows, labelled)
    if pseudo:
        drawn = np.concatenate([drawn, train_rows + _passes(np.random.default_rng([seed, epoch, 2]), pseudo_rows,
                                                            pseudo)])
    drawn = drawn[np.random.default_rng([seed, epoch, 3]).permutation(len(drawn))]
    keys = np.stack([drawn, np.full(len(drawn), epoch), np.arange(len(drawn))], axis=1).astype(np.int64)
    return distributed.shard(keys)


def _passes(rng: np.random.Generator, rows: int, count: int) -> np.ndarray:
    """`count` indices as consecutive shuffled passes over `rows` (every row once per pass)."""
    passes = -(-count // rows) if rows else 0
    return np.concatenate([rng.permutation(rows) for _ in range(passes)] or [np.zeros(0, np.int64)])[:count]


def balance_weights(examples: Sequence[Example]) -> np.ndarray:
    """Class-balanced sampling probabilities (`trainer.splits.balanced_weights`)."""
    return balanced_weights(list(examples))


def _seed_worker(worker_id: int) -> None:
    """numpy and python RNGs of a worker from torch's per-worker seed (itself from the loader's
    generator), for any library code drawing from them; windows draw from their keys."""
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def loader(dataset: CacheWindows, keys: np.ndarray, batch_size: int, workers: int, *, drop_last: bool,
           seed: int, epoch: int, pin_memory: bool = False) -> DataLoader:
    """Batches of `keys` in order (the order is already drawn), loaded by `workers` processes."""
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return DataLoader(dataset, batch_size=batch_size, sampler=[tuple(k) for k in keys.tolist()],
                      num_workers=workers, drop_last=drop_last and len(keys) >= batch_size,
                      worker_init_fn=_seed_worker, generator=generator, pin_memory=pin_memory,
                      persistent_workers=False)


def save_scores(path: Path, scores: np.ndarray, rows: Rows, labels: list[str]) -> Path:
    """The best epoch's validation scores (and what they are scored against), written atomically,
    so a report or a calibration can be made later without the model."""
    temporary = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(temporary, scores=scores, targets=rows.targets, labels=np.asarray(labels),
             primary=np.asarray([p or "" for p in rows.primary]), clip_ids=np.asarray(rows.clip_ids),
             starts=rows.starts)
    os.replace(temporary, path)
    return path


class BatchProgress:
    """tqdm on stderr when installed, else a plain line every tenth; nothing when off."""

    def __init__(self, on: bool):
        self.on = on
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self.tqdm = tqdm

    def __call__(self, iterable, total: int, desc: str):
        if not self.on:
            return iterable
        if self.tqdm is not None:
            return self.tqdm(iterable, total=total, desc=desc, leave=False, file=sys.stderr, unit="batch")
        return self._plain(iterable, total, desc)

    @staticmethod
    def _plain(iterable, total, desc):
        every = max(1, total // 10)
        for k, item in enumerate(iterable, start=1):
            yield item
            if k % every == 0 or k == total:
                print(f"{desc}: {k}/{total} batches", file=sys.stderr, flush=True)

    def line(self, text: str) -> None:
        if self.on:
            (self.tqdm.write if self.tqdm else print)(text, file=sys.stderr)

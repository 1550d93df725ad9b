"""The ranking metrics by their definitions, brute force: what trainer/metrics.py and
trainer/scoring.py are checked against (independently of scikit-learn)."""

from __future__ import annotations

import itertools

import numpy as np


def pairwise_auc(scores, positive) -> float:
    """The share of (positive, negative) pairs the positive wins, ties counting half."""
    pairs = list(itertools.product(scores[positive], scores[~positive]))
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


def stepwise_ap(scores, positive) -> float:
    """Sum over distinct thresholds of (recall gained) x (precision there)."""
    total, recall_before = 0.0, 0.0
    for threshold in sorted(set(scores), reverse=True):
        accepted = scores >= threshold
        precision = (accepted & positive).sum() / accepted.sum()
        recall = (accepted & positive).sum() / positive.sum()
        total += (recall - recall_before) * precision
        recall_before = recall
    return total


def best_f1(scores, positive) -> float:
    """The highest F1 any threshold `score >= t` reaches, trying every observed score."""
    best = 0.0
    for threshold in set(scores):
        predicted = scores >= threshold
        tp = (predicted & positive).sum()
        best = max(best, 2 * tp / (predicted.sum() + positive.sum()))
    return float(best)


def f1_at(scores, positive, threshold) -> float:
    predicted = scores >= threshold
    return float(2 * (predicted & positive).sum() / (predicted.sum() + positive.sum()))


def ties(rng: np.random.Generator, shape) -> np.ndarray:
    """Scores on a coarse grid, so that many tie."""
    return np.round(rng.random(shape), 1)

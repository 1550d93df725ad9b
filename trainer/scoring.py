"""Multi-label scores against the truth: the BirdCLEF 2025 metric and the design's others.

One implementation for whatever produced the scores: a head's validation windows in the
trainer, a bundle's parity check in the exporter, or `explorer analyze`'s submission CSV read
back by `explorer-train evaluate` (trainer/submission.py). The per-label ranking metrics are
`trainer.metrics` (scikit-learn's, as the competition's reference).

- **The BirdCLEF 2025 metric**: ROC AUC per class over the classes with at least one positive
  row, averaged (Kaggle's `score`: it keeps the columns whose solution sum is > 0 and calls
  `roc_auc_score(..., average="macro")`). A scored class with no negative row makes that call
  fail; so does this one, naming the class.
- **mAP** as the design reports it: average precision micro-averaged, over every (row, class)
  cell at once.
- **micro-F1** at per-class thresholds (given, or tuned on this data: then optimistic, and said).
- **primary-label accuracy**: rows whose top-scored class is their primary label, over the rows
  that have one.
- **per-class AP**, the 20 worst, and **per-taxon slices** (Aves, Amphibia, Insecta, Mammalia):
  each slice's BirdCLEF metric and mAP over its own classes.

A target above 0 counts as positive (secondary labels given as partial targets included).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from trainer.metrics import average_precision, roc_auc

WORST = 20
"""How many of the worst classes by AP a report lists."""


def _checked(scores: np.ndarray, targets: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(targets, dtype=np.float64) > 0
    if scores.ndim != 2 or scores.shape != positive.shape or scores.shape[1] != len(labels):
        raise ValueError(f"scores {scores.shape} and targets {positive.shape} must both be [rows, {len(labels)} labels]")
    bad = np.argwhere(~np.isfinite(scores))
    if len(bad):
        row, col = bad[0]
        raise ValueError(f"{len(bad)} scores are not finite, the first at row {row}, label {labels[col]!r}")
    return scores, positive


def birdclef_score(scores: np.ndarray, targets: np.ndarray, labels: Sequence[str]) -> tuple[float, int]:
    """The competition's metric and how many classes it averaged.

    Raises:
        ValueError: no class has a positive row; a class that has one has no negative row (the
            reference's `roc_auc_score` fails there too); scores that are not finite.
    """
    scores, positive = _checked(scores, targets, labels)
    scored = np.flatnonzero(positive.any(axis=0))
    if len(scored) == 0:
        raise ValueError("no class has a positive row: the BirdCLEF metric is undefined")
    everywhere = [labels[j] for j in scored if positive[:, j].all()]
    if everywhere:
        raise ValueError(f"classes {everywhere[:5]} are positive on every row: ROC AUC is undefined for them")
    return float(np.mean([roc_auc(scores[:, j], positive[:, j]) for j in scored])), len(scored)


def tune_thresholds(scores: np.ndarray, targets: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """Per class, the threshold on these rows with the highest F1 (ties: the higher threshold).

    A class with no positive row gets 1.0 (nothing here says where to put it; it stays quiet).
    The threshold is an observed score, so `score >= threshold` reproduces the F1 found.
    """
    scores, positive = _checked(scores, targets, labels)
    out = {}
    for j, label in enumerate(labels):
        if not positive[:, j].any():
            out[label] = 1.0
            continue
        order = np.argsort(-scores[:, j], kind="stable")
        ranked, hits = scores[order, j], positive[order, j]
        true_pos = np.cumsum(hits)
        last_of_tie = np.r_[ranked[1:] != ranked[:-1], True]  # a threshold takes every tied row
        tp, accepted = true_pos[last_of_tie], np.flatnonzero(last_of_tie) + 1
        f1 = 2 * tp / (accepted + positive[:, j].sum())
        best = np.flatnonzero(f1 == f1.max())[0]  # scores descend: the first best is the highest
        out[label] = float(ranked[last_of_tie][best])
    return out


def micro_f1(scores: np.ndarray, targets: np.ndarray, labels: Sequence[str], thresholds: Mapping[str, float]) -> float:
    """F1 over every (row, class) cell with each class's own threshold (`score >= threshold`)."""
    scores, positive = _checked(scores, targets, labels)
    missing = [label for label in labels if label not in thresholds]
    if missing:
        raise ValueError(f"no threshold for labels {missing[:5]}")
    predicted = scores >= np.array([thresholds[label] for label in labels])
    tp = (predicted & positive).sum()
    denominator = predicted.sum() + positive.sum()
    return float(2 * tp / denominator) if denominator else 1.0


def primary_accuracy(scores: np.ndarray, labels: Sequence[str], primary: Sequence[str | None]) -> float | None:
    """Share of rows with a primary label whose top-scored class is it (None if no row has one)."""
    scores = np.asarray(scores, dtype=np.float64)
    index = {label: j for j, label in enumerate(labels)}
    unknown = sorted({p for p in primary if p and p not in index})
    if unknown:
        raise ValueError(f"primary labels {unknown[:5]} are not among the scored labels")
    rows = [(i, index[p]) for i, p in enumerate(primary) if p]
    if not rows:
        return None
    return float(np.mean([scores[i].argmax() == j for i, j in rows]))


@dataclass(frozen=True)
class Evaluation:
    """Everything one evaluation measured (`evaluate`)."""

    birdclef: float
    scored_classes: int
    micro_ap: float
    micro_f1: float
    thresholds_tuned: bool
    """True when the thresholds were tuned on the rows evaluated (micro-F1 is then optimistic)."""
    primary_accuracy: float | None
    rows: int
    per_class_ap: dict[str, float]
    """AP of each class with a positive row."""
    slices: dict[str, dict[str, float | int]] = field(default_factory=dict)
    """Per taxon class name: its BirdCLEF metric, mAP and class count."""
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def worst(self) -> list[tuple[str, float]]:
        """The `WORST` classes by AP, worst first."""
        return sorted(self.per_class_ap.items(), key=lambda item: (item[1], item[0]))[:WORST]


def evaluate(scores: np.ndarray, targets: np.ndarray, labels: Sequence[str], *,
             thresholds: Mapping[str, float] | None = None, primary: Sequence[str | None] | None = None,
             taxon_of: Mapping[str, str] | None = None) -> Evaluation:
    """Every metric of the module docstring on one set of rows.

    Args:
        scores, targets: [rows, labels].
        thresholds: per-label thresholds for micro-F1 (a bundle's); tuned here when None.
        primary: each row's primary label (or None) for primary-label accuracy.
        taxon_of: label -> taxon class name (taxonomy.csv's class_name) for the slices.
    """
    scores_checked, positive = _checked(scores, targets, labels)
    score, scored = birdclef_score(scores_checked, positive, labels)
    tuned = thresholds is None
    thresholds = tune_thresholds(scores_checked, positive, labels) if tuned else dict(thresholds)
    per_class = {labels[j]: average_precision(scores_checked[:, j], positive[:, j])
                 for j in range(len(labels)) if positive[:, j].any()}
    slices = {}
    for taxon in sorted(set((taxon_of or {}).values())):
        columns = [j for j, label in enumerate(labels) if (taxon_of or {}).get(label) == taxon]
        if not positive[:, columns].any():
            continue
        part = [labels[j] for j in columns]
        metric, count = birdclef_score(scores_checked[:, columns], positive[:, columns], part)
        slices[taxon] = {"birdclef": metric, "classes": count,
                         "micro_ap": average_precision(scores_checked[:, columns].ravel(), positive[:, columns].ravel())}
    return Evaluation(
        birdclef=score, scored_classes=scored,
        micro_ap=average_precision(scores_checked.ravel(), positive.ravel()),
        micro_f1=micro_f1(scores_checked, positive, labels, thresholds), thresholds_tuned=tuned,
        primary_accuracy=primary_accuracy(scores_checked, labels, primary) if primary is not None else None,
        rows=len(scores_checked), per_class_ap=per_class, slices=slices, thresholds=thresholds,
    )

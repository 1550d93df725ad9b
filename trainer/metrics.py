"""Ranking metrics of a head's scores: ROC AUC and average precision, one implementation.

Both heads (`trainer.tiny_head`, `trainer.embedding_head`) and the trainer's evaluation use
these, and they are scikit-learn's (`roc_auc_score`, `average_precision_score`): the BirdCLEF
2025 reference scores submissions with `roc_auc_score`, so our numbers are the competition's.
Ties follow scikit-learn: a tied positive/negative pair counts half for ROC AUC, and tied
scores form one step of the precision-recall curve for AP.

A metric that is undefined for a label (no positive window, or for ROC AUC no negative one)
is None rather than an exception or a NaN, so a report can say "not measured" for it.

scikit-learn is imported inside the functions: the exporter imports the heads to build
bundles on machines that install only the `export` extra, which has no scikit-learn.
"""

from __future__ import annotations

import numpy as np


def _binary(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(positive).ravel().astype(bool)
    if scores.shape != positive.shape:
        raise ValueError(f"scores ({scores.shape[0]}) and positive flags ({positive.shape[0]}) differ in length")
    return scores, positive


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Probability that a positive window outscores a negative one (ties count half).

    Args:
        scores: One label's score per window.
        positive: Per window, whether it carries the label.

    Returns:
        The ROC AUC, or None when there is no positive or no negative window.
    """
    scores, positive = _binary(scores, positive)
    if positive.all() or not positive.any():
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive, scores))


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the precision-recall step curve (scikit-learn's AP, no interpolation).

    Returns:
        The AP, or None when no window is positive.
    """
    scores, positive = _binary(scores, positive)
    if not positive.any():
        return None
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(positive, scores))


def macro_roc_auc(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """The BirdCLEF metric: ROC AUC per label over the labels it is defined for, averaged.

    Args:
        scores: [windows, labels].
        targets: [windows, labels], 1 where the window carries the label.

    Returns:
        The mean over labels with at least one positive and one negative window; None if none has.
    """
    scores, targets = np.asarray(scores), np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must be the same [windows, labels]")
    values = [roc_auc(scores[:, j], targets[:, j] > 0) for j in range(scores.shape[1])]
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None

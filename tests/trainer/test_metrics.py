"""ROC AUC and AP (trainer/metrics.py) against hand-computed cases and their definitions, ties included."""

from __future__ import annotations

import numpy as np
import pytest

from tests.trainer.definitions import pairwise_auc, stepwise_ap
from trainer.metrics import average_precision, macro_roc_auc, roc_auc

# Scores with many ties (one decimal) and labels: small enough to check against the definitions by brute force.
SCORES = np.array([0.9, 0.8, 0.8, 0.7, 0.7, 0.7, 0.4, 0.4, 0.2, 0.1, 0.1, 0.0])
POSITIVE = np.array([1, 1, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0], bool)


def test_roc_auc_is_the_pairwise_definition_with_ties_counting_half():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert roc_auc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5
    assert roc_auc(SCORES, POSITIVE) == pytest.approx(pairwise_auc(SCORES, POSITIVE), abs=1e-15)


def test_average_precision_treats_tied_scores_as_one_step():
    # No tie: 0.9 (+) gives recall 1/2 at precision 1, 0.7 (+) recall 1 at precision 2/3.
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0])) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # A tie at 0.8 is one threshold (recall 1 at precision 2/3) whichever of the two comes first;
    # a stable sort that ranks the positive first would give 1.0 here.
    assert average_precision(np.array([0.9, 0.8, 0.8, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision(np.array([0.9, 0.8, 0.8, 0.1]), np.array([1, 0, 1, 0])) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision(np.array([0.8, 0.8]), np.array([1, 0])) == 0.5
    assert average_precision(np.array([0.8, 0.8]), np.array([0, 1])) == 0.5
    assert average_precision(SCORES, POSITIVE) == pytest.approx(stepwise_ap(SCORES, POSITIVE), abs=1e-15)


def test_a_metric_without_positives_or_negatives_is_none():
    assert roc_auc(SCORES, np.zeros(len(SCORES), bool)) is None
    assert roc_auc(SCORES, np.ones(len(SCORES), bool)) is None
    assert average_precision(SCORES, np.zeros(len(SCORES), bool)) is None
    assert average_precision(SCORES, np.ones(len(SCORES), bool)) == 1.0


def test_macro_roc_auc_averages_the_labels_it_is_defined_for():
    scores = np.stack([SCORES, SCORES[::-1], SCORES], axis=1)
    targets = np.stack([POSITIVE, POSITIVE, np.zeros(len(SCORES), bool)], axis=1)  # the third has no positive
    expected = (pairwise_auc(SCORES, POSITIVE) + pairwise_auc(SCORES[::-1], POSITIVE)) / 2
    assert macro_roc_auc(scores, targets) == pytest.approx(expected, abs=1e-15)
    assert macro_roc_auc(scores[:, 2:], targets[:, 2:]) is None


def test_mismatched_inputs_are_refused_with_their_sizes():
    with pytest.raises(ValueError, match=r"scores \(12\) and positive flags \(3\) differ in length"):
        roc_auc(SCORES, POSITIVE[:3])
    with pytest.raises(ValueError, match=r"scores \(12, 1\) and targets \(12,\) must be the same"):
        macro_roc_auc(SCORES[:, None], POSITIVE)

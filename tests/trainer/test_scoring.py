"""The multi-label evaluation (trainer/scoring.py) against two independent computations: the
metrics' brute-force definitions (tests/trainer/definitions.py) and scikit-learn called as the
BirdCLEF 2025 reference calls it, on fixtures with many ties and classes without positives."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from tests.trainer.definitions import best_f1, f1_at, pairwise_auc, stepwise_ap, ties
from trainer.scoring import WORST, birdclef_score, evaluate, micro_f1, primary_accuracy, tune_thresholds

LABELS = [f"c{j:02d}" for j in range(30)]


def fixture(seed: int, rows: int = 60):
    """Scores with ties, sparse targets, and a few classes with no positive row."""
    rng = np.random.default_rng(seed)
    scores = ties(rng, (rows, len(LABELS)))
    targets = (rng.random((rows, len(LABELS))) < 0.12).astype(float)
    targets[:, [3, 17, 25]] = 0
    targets[0, 4] = 0.5  # a secondary label given as a partial target still counts as present
    return scores, targets


def kaggle_reference(scores: np.ndarray, targets: np.ndarray) -> float:
    """BirdCLEF 2025's `score`: keep the solution columns that sum to more than 0, then
    `roc_auc_score(solution, submission, average="macro")`."""
    solution = (targets > 0).astype(int)
    scored = solution.sum(axis=0) > 0
    return roc_auc_score(solution[:, scored], scores[:, scored], average="macro")


@pytest.mark.parametrize("seed", range(5))
def test_the_birdclef_metric_is_the_competitions_reference_and_the_pairwise_definition(seed):
    scores, targets = fixture(seed)
    metric, count = birdclef_score(scores, targets, LABELS)
    assert count == int(((targets > 0).sum(axis=0) > 0).sum()) and count < len(LABELS)
    assert metric == pytest.approx(kaggle_reference(scores, targets), abs=1e-12)
    positive = targets > 0
    by_definition = np.mean([pairwise_auc(scores[:, j], positive[:, j]) for j in range(len(LABELS)) if positive[:, j].any()])
    assert metric == pytest.approx(by_definition, abs=1e-12)


def test_an_undefined_metric_is_refused_naming_why():
    scores, targets = fixture(0)
    with pytest.raises(ValueError, match="no class has a positive row"):
        birdclef_score(scores, np.zeros_like(targets), LABELS)
    everywhere = targets.copy()
    everywhere[:, 7] = 1
    with pytest.raises(ValueError, match=r"classes \['c07'\] are positive on every row"):
        birdclef_score(scores, everywhere, LABELS)
    broken = scores.copy()
    broken[5, 2] = np.nan
    with pytest.raises(ValueError, match=r"1 scores are not finite, the first at row 5, label 'c02'"):
        birdclef_score(broken, targets, LABELS)
    with pytest.raises(ValueError, match=r"must both be \[rows, 30 labels\]"):
        birdclef_score(scores[:, :5], targets[:, :5], LABELS)


@pytest.mark.parametrize("seed", range(3))
def test_micro_ap_and_micro_f1_are_scikit_learns_and_the_definitions(seed):
    scores, targets = fixture(seed)
    positive = targets > 0
    result = evaluate(scores, targets, LABELS, thresholds={label: 0.6 for label in LABELS})
    assert result.micro_ap == pytest.approx(average_precision_score(positive, scores, average="micro"), abs=1e-12)
    assert result.micro_ap == pytest.approx(stepwise_ap(scores.ravel(), positive.ravel()), abs=1e-12)
    assert result.micro_f1 == pytest.approx(f1_score(positive, scores >= 0.6, average="micro"), abs=1e-12)
    assert not result.thresholds_tuned
    for label, ap in result.per_class_ap.items():
        j = LABELS.index(label)
        assert ap == pytest.approx(stepwise_ap(scores[:, j], positive[:, j]), abs=1e-12)
    assert set(result.per_class_ap) == {LABELS[j] for j in range(len(LABELS)) if positive[:, j].any()}
    worst = result.worst
    assert len(worst) == WORST and [ap for _, ap in worst] == sorted(ap for _, ap in worst)
    assert worst[0][1] == min(result.per_class_ap.values())


@pytest.mark.parametrize("seed", range(3))
def test_tuned_thresholds_reach_each_classs_best_f1_at_its_highest_such_score(seed):
    scores, targets = fixture(seed)
    positive = targets > 0
    thresholds = tune_thresholds(scores, targets, LABELS)
    for j, label in enumerate(LABELS):
        if not positive[:, j].any():
            assert thresholds[label] == 1.0
            continue
        best = best_f1(scores[:, j], positive[:, j])
        assert f1_at(scores[:, j], positive[:, j], thresholds[label]) == pytest.approx(best, abs=1e-12)
        higher = [t for t in set(scores[:, j]) if t > thresholds[label]]
        assert all(f1_at(scores[:, j], positive[:, j], t) < best - 1e-12 for t in higher)
    result = evaluate(scores, targets, LABELS)
    assert result.thresholds_tuned and result.thresholds == thresholds
    assert result.micro_f1 == pytest.approx(micro_f1(scores, targets, LABELS, thresholds), abs=1e-15)
    with pytest.raises(ValueError, match=r"no threshold for labels \['c00'"):
        micro_f1(scores, targets, LABELS, {})


def test_primary_accuracy_counts_the_rows_that_have_a_primary_label():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.5, 0.6], [0.3, 0.2, 0.1]])
    labels = ["a", "b", "c"]
    assert primary_accuracy(scores, labels, ["a", "a", "c", None]) == pytest.approx(2 / 3)
    assert primary_accuracy(scores, labels, [None] * 4) is None
    with pytest.raises(ValueError, match=r"primary labels \['zz'\]"):
        primary_accuracy(scores, labels, ["zz", None, None, None])


def test_taxon_slices_are_the_metrics_over_their_own_classes():
    scores, targets = fixture(4)
    taxon_of = {label: ("Aves" if j < 12 else "Amphibia" if j < 24 else "Insecta") for j, label in enumerate(LABELS)}
    result = evaluate(scores, targets, LABELS, taxon_of=taxon_of)
    positive = targets > 0
    for taxon, part in result.slices.items():
        columns = [j for j, label in enumerate(LABELS) if taxon_of[label] == taxon]
        assert part["birdclef"] == pytest.approx(kaggle_reference(scores[:, columns], targets[:, columns]), abs=1e-12)
        assert part["micro_ap"] == pytest.approx(
            average_precision_score(positive[:, columns], scores[:, columns], average="micro"), abs=1e-12)
        assert part["classes"] == int((positive[:, columns].sum(axis=0) > 0).sum())
    assert set(result.slices) == {"Aves", "Amphibia", "Insecta"}

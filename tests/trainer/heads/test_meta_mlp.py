"""meta_mlp: any subset of branches gives finite, calibrated probabilities when trained with
branch dropout, and a model trained without it is measurably worse on a subset.

The branch scores are derived from real labels, not computed by trained heads (training three
heads on the shared audio would take minutes): the windows and their targets come from
`../shared/data/recordings.csv` (one window per second of each recording, up to 40; a labelled
recording's windows hold its call 80 % of the time, an out-of-label-space recording's windows are
negatives for every label), and three simulated branches score them with their own separation,
noise and miscalibration (one over-, one under-confident), independent per branch, so several
branches together carry more evidence than one, as real branches do.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from trainer.heads import build_head
from trainer.heads.meta_mlp import MetaMLP
from trainer.meta import (branch_subsets, calibration_by_subset, expected_calibration_error, fit_meta,
                          subset_scores)

BRANCHES = {  # name: (separation of positives in logits, noise sd, temperature of the reported score)
    "birdnet": (3.5, 1.2, 1.0),
    "effnet": (3.0, 1.5, 1.6),  # over-confident
    "panns": (2.5, 1.8, 0.7),  # under-confident and the weakest
}
PRIOR_LOGIT = -3.5
"""Where a negative cell's logit sits: most cells of a multi-label window are negatives."""


def simulate(targets: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for name, (separation, noise, temperature) in BRANCHES.items():
        logits = PRIOR_LOGIT + separation * targets + noise * rng.standard_normal(targets.shape)
        out[name] = (1.0 / (1.0 + np.exp(-temperature * logits))).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def data(shared_data):
    rows = [r for r in csv.DictReader(open(shared_data / "recordings.csv", newline=""))
            if "UNKNOWN" not in r["label_provenance"]]  # birdclef 1.ogg: neither positive nor negative
    labels = sorted({r["primary_label"] for r in rows if r["in_label_space"] == "yes"})
    rng = np.random.default_rng(0)
    targets = []
    for row in rows:
        windows = int(min(40, max(4, float(row["duration_s"]) // 1)))
        y = np.zeros((windows, len(labels)), np.float32)
        if row["in_label_space"] == "yes":
            y[:, labels.index(row["primary_label"])] = rng.random(windows) < 0.8
        targets.append(y)
    targets = np.concatenate(targets)
    scores = simulate(targets, rng)
    order = rng.permutation(len(targets))
    train, held = order[: int(0.6 * len(order))], order[int(0.6 * len(order)):]
    return (labels, {b: s[train] for b, s in scores.items()}, targets[train],
            {b: s[held] for b, s in scores.items()}, targets[held])


@pytest.fixture(scope="module")
def models(data):
    labels, train_scores, train_targets, _, _ = data
    fit = dict(epochs=40, seed=0, hidden=64, batch_size=128)
    with_dropout, _ = fit_meta(train_scores, train_targets, labels, branch_dropout=0.3, **fit)
    without, _ = fit_meta(train_scores, train_targets, labels, branch_dropout=0.0, **fit)
    return with_dropout, without


def test_the_labels_and_windows_are_the_real_recordings(data):
    labels, _, train_targets, _, held_targets = data
    assert len(labels) == 15 and "21211" in labels and "littin1" in labels
    assert len(train_targets) + len(held_targets) > 500
    assert train_targets.sum() > 50 and held_targets.sum() > 30


def test_every_subset_gives_finite_probabilities(models, data):
    model, _ = models
    _, _, _, held_scores, _ = data
    for subset in branch_subsets(model.branches):
        probs = subset_scores(model, held_scores, subset)
        assert probs.shape == (len(held_scores["birdnet"]), 15)
        assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
    assert len(branch_subsets(model.branches)) == 7


def test_branch_dropout_keeps_every_subset_calibrated(models, data):
    model, _ = models
    _, _, _, held_scores, held_targets = data
    calibration = calibration_by_subset(model, held_scores, held_targets)
    assert set(calibration) == set(branch_subsets(list(BRANCHES)))
    # Measured (239 held-out rows, 10 bins pooled over cells): ECE 0.0025-0.0076 on every subset,
    # against 0.021-0.113 for the raw branches themselves.
    for subset, measured in calibration.items():
        assert measured["ece"] < 0.02, (subset, measured)
        assert measured["rows"] == len(held_targets)
    for name in BRANCHES:
        raw = expected_calibration_error(held_scores[name], held_targets)
        assert calibration[(name,)]["ece"] < raw


def test_without_branch_dropout_a_subset_is_clearly_worse(models, data):
    with_dropout, without = models
    _, _, _, held_scores, held_targets = data
    dropped = calibration_by_subset(with_dropout, held_scores, held_targets)
    plain = calibration_by_subset(without, held_scores, held_targets)
    # Measured: on the weakest branch alone ECE 0.0435 without branch dropout, 0.0065 with it
    # (Brier 0.0218 and 0.0135); with every branch present the two are alike (0.0039, 0.0033).
    assert plain[("panns",)]["ece"] > 3 * dropped[("panns",)]["ece"]
    assert plain[("panns",)]["brier"] > 1.3 * dropped[("panns",)]["brier"]
    worst = max(plain.values(), key=lambda m: m["ece"])["ece"]
    assert worst > 2 * max(m["ece"] for m in dropped.values())


def test_rows_without_any_branch_are_refused(models, data):
    model, _ = models
    _, _, _, held_scores, _ = data
    scores = torch.rand(4, 3, 15)
    present = torch.tensor([[True, False, False], [False, False, False], [False, True, True],
                            [False, False, False]])
    with pytest.raises(ValueError, match=r"2 rows have no branch present \(rows \[1, 3\]\)"):
        model(scores, present)
    with pytest.raises(ValueError, match="no branch present"):
        subset_scores(model, held_scores, [])
    gaps = {name: s.copy() for name, s in held_scores.items()}
    for s in gaps.values():
        s[0] = np.nan  # no branch scored row 0
    with pytest.raises(ValueError, match=r"rows \[0\]"):
        subset_scores(model, gaps, list(BRANCHES))
    gaps["panns"][1:] = held_scores["panns"][1:]
    probs = subset_scores(model, {"panns": gaps["panns"][1:]}, ["panns"])  # NaN rows are absent rows
    np.testing.assert_allclose(probs, subset_scores(model, {"panns": held_scores["panns"][1:]}, ["panns"]))


def test_bad_scores_are_refused_naming_the_problem(models, data):
    model, _ = models
    _, _, _, held_scores, _ = data
    with pytest.raises(ValueError, match="unknown branches.*'birdnet', 'effnet', 'panns'"):
        subset_scores(model, {"resnet50": held_scores["panns"]}, ["resnet50"])
    with pytest.raises(ValueError, match="15 labels"):
        subset_scores(model, {"panns": held_scores["panns"][:, :3]}, ["panns"])
    with pytest.raises(ValueError, match="probabilities"):
        subset_scores(model, {"panns": held_scores["panns"] * 3}, ["panns"])
    with pytest.raises(ValueError, match=r"scores must be \[batch, 3 branches"):
        model(torch.rand(2, 2, 15), torch.ones(2, 2, dtype=torch.bool))


def test_branch_dropout_hides_present_branches_and_never_all_of_them():
    model = MetaMLP(["a", "b"], ["x", "y", "z"], branch_dropout=0.3)
    present = torch.ones(20_000, 3, dtype=torch.bool)
    present[::2, 2] = False  # half the rows have only two branches
    torch.manual_seed(0)
    kept = model.drop_branches(present)
    assert kept.any(dim=1).all() and not (kept & ~present).any()
    full = kept[1::2]
    assert abs(1 - full.float().mean().item() - 0.3) < 0.02  # (0.3^3 restored: 2.7 % of rows)
    model.train()
    fused = model(torch.rand(20_000, 3, 2), present)
    assert torch.isfinite(fused).all()


def test_config_rebuilds_the_same_fusion(models, data):
    model, _ = models
    _, _, _, held_scores, _ = data
    rebuilt = build_head("meta_mlp", **model.config())
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config() == model.config() == {
        "labels": model.labels, "branches": ["birdnet", "effnet", "panns"], "hidden": 64,
        "dropout": 0.1, "branch_dropout": 0.3}
    np.testing.assert_array_equal(subset_scores(rebuilt, held_scores, ["effnet"]),
                                  subset_scores(model, held_scores, ["effnet"]))


def test_fitting_is_seeded_validates_and_leaves_the_callers_random_state(data):
    labels, train_scores, train_targets, held_scores, held_targets = data
    before = torch.random.get_rng_state()
    fit = dict(epochs=3, seed=5, hidden=16, validation=(held_scores, held_targets))
    first, history = fit_meta(train_scores, train_targets, labels, **fit)
    second, _ = fit_meta(train_scores, train_targets, labels, **fit)
    assert torch.equal(torch.random.get_rng_state(), before)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in history)
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert not first.training
    with pytest.raises(ValueError, match=r"targets must be \["):
        fit_meta(train_scores, train_targets[:, :4], labels, epochs=1)

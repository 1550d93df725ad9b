"""Training the `meta_mlp` fusion on the branches' scores, and measuring it on every subset.

The fusion is trained on held-out scores of each branch (what the branches say on validation
rows they were not trained on, so it learns how far to trust each one on new audio), with branch
dropout so every subset of branches is seen. `calibration_by_subset` is the evidence that this
worked: expected calibration error, Brier score and BCE per subset on rows the fusion did not see.

Scores arrive as `{branch: [N, C] probabilities}` over the same N rows and C labels. A row a branch
did not score is NaN in that branch's array (it enters as absent); a branch missing from the dict
is absent on every row.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from trainer.heads.meta_mlp import MetaMLP

ECE_BINS = 10
"""Equal-width probability bins for the expected calibration error (the usual choice)."""

MAX_SUBSETS = 63
"""All non-empty subsets of up to six branches; beyond that, singletons, leave-one-out and all."""

Scores = Mapping[str, np.ndarray]


def branch_subsets(branches: list[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of `branches` (in their order), smallest first; see `MAX_SUBSETS`."""
    if 2 ** len(branches) - 1 <= MAX_SUBSETS:
        return [s for k in range(1, len(branches) + 1) for s in itertools.combinations(branches, k)]
    singles = [(b,) for b in branches]
    leave_one_out = [tuple(x for x in branches if x != b) for b in branches]
    return singles + leave_one_out + [tuple(branches)]


def stack(model: MetaMLP, branch_scores: Scores, present_branches: Iterable[str] | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """`[N, K, C]` float32 scores and `[N, K]` presence in the model's branch order.

    Raises:
        ValueError: an unknown branch, arrays of different shapes, or scores outside [0, 1].
    """
    unknown = sorted(set(branch_scores) - set(model.branches))
    if unknown:
        raise ValueError(f"scores for unknown branches {unknown}; the fusion has {model.branches}")
    chosen = set(model.branches if present_branches is None else present_branches)
    if chosen - set(model.branches):
        raise ValueError(f"unknown branches {sorted(chosen - set(model.branches))} asked present; "
                         f"the fusion has {model.branches}")
    shapes = {name: np.shape(a) for name, a in branch_scores.items()}
    if not shapes or len(set(shapes.values())) != 1:
        raise ValueError(f"every branch's scores must share one [rows, labels] shape, got {shapes}")
    shape = next(iter(shapes.values()))
    if len(shape) != 2 or shape[1] != model.num_classes:
        raise ValueError(f"scores must be [rows, {model.num_classes} labels], got {shapes}")
    rows, classes = shape
    scores = np.zeros((rows, len(model.branches), classes), dtype=np.float32)
    present = np.zeros((rows, len(model.branches)), dtype=bool)
    for k, name in enumerate(model.branches):
        if name not in branch_scores or name not in chosen:
            continue
        values = np.asarray(branch_scores[name], dtype=np.float32)
        scored = ~np.isnan(values).any(axis=1)
        if ((values[scored] < 0) | (values[scored] > 1)).any():
            raise ValueError(f"branch {name!r}: scores must be probabilities in [0, 1]")
        scores[scored, k] = values[scored]
        present[:, k] = scored
    return torch.from_numpy(scores), torch.from_numpy(present)


def check_targets(targets: np.ndarray, rows: int, classes: int) -> torch.Tensor:
    targets = np.asarray(targets, dtype=np.float32)
    if targets.shape != (rows, classes):
        raise ValueError(f"targets must be [{rows} rows, {classes} labels], got {list(targets.shape)}")
    if not ((targets >= 0) & (targets <= 1)).all():
        raise ValueError("targets must lie in [0, 1] (soft targets allowed)")
    return torch.from_numpy(targets)


def mean_subset_loss(model: MetaMLP, branch_scores: Scores, targets: np.ndarray) -> float:
    """BCE averaged over every subset of the branches (what early stopping watches)."""
    by_subset = calibration_by_subset(model, branch_scores, targets)
    return float(np.mean([m["bce"] for m in by_subset.values() if m["rows"]]))


def fit_meta(branch_scores: Scores, targets: np.ndarray, labels: list[str], *, epochs: int = 60,
             lr: float = 3e-3, seed: int = 0, branch_dropout: float = 0.3, hidden: int = 256,
             dropout: float = 0.1, batch_size: int = 256, weight_decay: float = 1e-4,
             validation: tuple[Scores, np.ndarray] | None = None) -> tuple[MetaMLP, list[dict]]:
    """Train a `MetaMLP` over the branches named in `branch_scores` (in the dict's order).

    Seeded and self-contained: the torch random state is forked, so a caller's own stream is
    left as it was. With `validation`, the weights of the epoch with the lowest BCE averaged over
    every subset of branches are kept.

    Returns:
        The model in eval mode, and one dict per epoch: epoch, train_loss, and val_loss
        (mean over subsets) when validating.
    """
    branches = list(branch_scores)
    history: list[dict] = []
    best = (float("inf"), None)
    order_rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MetaMLP(labels, branches, hidden=hidden, dropout=dropout, branch_dropout=branch_dropout)
        scores, present = stack(model, branch_scores)
        target = check_targets(targets, scores.shape[0], len(labels))
        model.check(scores, present)
        if validation is not None:
            val_rows = stack(model, validation[0])[0].shape[0]
            val_targets = check_targets(validation[1], val_rows, len(labels)).numpy()
        optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        for epoch in range(1, epochs + 1):
            model.train()
            total = 0.0
            order = torch.from_numpy(order_rng.permutation(len(target)))
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                loss = F.binary_cross_entropy_with_logits(model(scores[rows], present[rows]), target[rows])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += loss.item() * len(rows)
            record = {"epoch": epoch, "train_loss": total / len(order)}
            if validation is not None:
                record["val_loss"] = mean_subset_loss(model, validation[0], val_targets)
                if record["val_loss"] < best[0]:
                    best = (record["val_loss"], copy.deepcopy(model.state_dict()))
            history.append(record)
    if best[1] is not None:
        model.load_state_dict(best[1])
    return model.eval(), history


@torch.no_grad()
def subset_scores(model: MetaMLP, branch_scores: Scores, present_branches: Iterable[str]) -> np.ndarray:
    """The fusion's probabilities `[N, C]` when only `present_branches` are run."""
    scores, present = stack(model, branch_scores, present_branches)
    was_training = model.training
    model.eval()
    try:
        return torch.sigmoid(model(scores, present)).numpy()
    finally:
        model.train(was_training)


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE pooled over every (row, label) cell: the cell-weighted mean |mean score - mean target|
    per equal-width probability bin (soft targets count as their value)."""
    p, t = np.asarray(probs, dtype=np.float64).ravel(), np.asarray(targets, dtype=np.float64).ravel()
    which = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, p, bins) - np.bincount(which, t, bins))
    return float(gap.sum() / max(count.sum(), 1))


def calibration_by_subset(model: MetaMLP, branch_scores: Scores, targets: np.ndarray, *,
                          subsets: Iterable[tuple[str, ...]] | None = None, bins: int = ECE_BINS
                          ) -> dict[tuple[str, ...], dict]:
    """Calibration of the fusion on each branch subset, on (held-out) rows with their targets.

    Returns:
        `{subset: {"ece", "brier", "bce", "rows"}}`; rows where none of the subset's branches
        scored are left out of that subset (and counted out of "rows").
    """
    targets = np.asarray(targets, dtype=np.float64)
    out: dict[tuple[str, ...], dict] = {}
    for subset in (branch_subsets(model.branches) if subsets is None else subsets):
        _, present = stack(model, branch_scores, subset)
        rows = present.any(dim=1).numpy()
        kept = {name: np.asarray(a)[rows] for name, a in branch_scores.items()}
        probs = subset_scores(model, kept, subset).astype(np.float64) if rows.any() else np.zeros((0, 0))
        t = targets[rows]
        p = np.clip(probs, 1e-7, 1 - 1e-7)
        out[tuple(subset)] = {
            "ece": expected_calibration_error(probs, t, bins),
            "brier": float(((probs - t) ** 2).mean()) if rows.any() else float("nan"),
            "bce": float(-(t * np.log(p) + (1 - t) * np.log(1 - p)).mean()) if rows.any() else float("nan"),
            "rows": int(rows.sum()),
        }
    return out

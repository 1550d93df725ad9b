"""Multi-label training losses on logits: binary cross-entropy and the focal loss.

Both take soft targets in [0, 1] (secondary labels enter as partial positives, pseudo-labels as
probabilities) and an optional per-example weight (the recordist's rating), and are computed in
float32 whatever the autocast dtype of the logits: a bf16 log-sigmoid loses the small
probabilities that rare classes live on.

The focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection") multiplies each
cell's cross-entropy by (1 - p_t) ** gamma, where p_t = p t + (1 - p)(1 - t) is the probability
given to the target: easy cells (most of the 206 classes are confidently absent from most windows)
stop dominating the gradient. With soft targets p_t is the same expression, so gamma = 0 gives BCE.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LOSSES = ("bce", "focal")
FOCAL_GAMMA = 2.0
"""Lin et al.'s best value on COCO, and the usual BirdCLEF choice."""

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _reduce(cells: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean over classes per example, then the weighted mean over examples (weights sum to the
    denominator, so a batch of rating-2.5 clips is not simply half the loss of a rating-5 batch:
    only the relative weights inside the batch matter)."""
    per_example = cells.mean(dim=1)
    if weights is None:
        return per_example.mean()
    weights = weights.to(per_example.dtype)
    return (per_example * weights).sum() / weights.sum().clamp_min(torch.finfo(per_example.dtype).tiny)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy with logits, averaged as `_reduce` says."""
    logits, targets = logits.float(), targets.float()
    return _reduce(F.binary_cross_entropy_with_logits(logits, targets, reduction="none"), weights)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None, *,
               gamma: float = FOCAL_GAMMA, alpha: float | None = None) -> torch.Tensor:
    """The focal loss (module docstring); `alpha` weights positives by alpha and negatives by
    1 - alpha (None: no class weighting)."""
    logits, targets = logits.float(), targets.float()
    cross = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * targets + (1.0 - p) * (1.0 - targets)
    cells = cross * (1.0 - p_t).clamp_min(0.0).pow(gamma)
    if alpha is not None:
        cells = cells * (alpha * targets + (1.0 - alpha) * (1.0 - targets))
    return _reduce(cells, weights)


def make_loss(name: str, gamma: float = FOCAL_GAMMA) -> LossFn:
    """The loss called `name` ("bce" or "focal" with `gamma`).

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    if name == "bce":
        return bce_loss
    if name == "focal":
        if gamma < 0:
            raise ValueError(f"focal gamma {gamma} must be >= 0")
        return lambda logits, targets, weights=None: focal_loss(logits, targets, weights, gamma=gamma)
    raise ValueError(f"unknown loss {name!r}: choose one of {', '.join(LOSSES)}")

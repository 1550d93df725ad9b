"""`meta_mlp`: the fusion over the branches' scores, usable with any subset of branches present.

The device may run only the branches its real-time budget allows, so the fusion takes every
branch's probabilities `[B, K, C]` with a presence mask `[B, K]`: an absent branch enters as zeros
(in logit space) with its presence flag 0, which tells the network it is missing rather than
confident of nothing. Trained with branch dropout (each present branch of a training row hidden
with probability `branch_dropout`, never all of them), the network sees every subset in training
and learns what each one's evidence is worth, so its scores stay calibrated on subsets too
(`trainer/meta.py` measures that per subset).

The output is the masked mean of the present branches' logits plus the MLP's correction: before
and early in training, any subset already gives the average branch's answer, and the MLP learns
how far evidence from several agreeing branches should move it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

SCORE_EPS = 1e-4
"""Probabilities are clipped to [eps, 1 - eps] before the logit: 0 and 1 would be infinite, and
branches (int8 ones especially) do emit exact 0 and 1; logit(1e-4) = -9.2 is surely absent."""


class MetaMLP(nn.Module):
    """Branch probabilities `[B, K, C]` and presence `[B, K]` -> fused logits `[B, C]`."""

    name = "meta_mlp"
    input_kind = "scores"

    def __init__(self, labels: list[str], branches: list[str], hidden: int = 256, dropout: float = 0.1,
                 branch_dropout: float = 0.3):
        """Args:
            labels: the classes, in the column order of every branch's scores.
            branches: the branch names, in the order of the scores' K axis.
            hidden: the MLP's width.
            dropout: dropout after the hidden layer.
            branch_dropout: the probability that training hides each present branch of a row.
        """
        super().__init__()
        if not labels or len(set(labels)) != len(labels):
            raise ValueError("MetaMLP: labels must be a non-empty list without duplicates")
        if not branches or len(set(branches)) != len(branches):
            raise ValueError("MetaMLP: branches must be a non-empty list without duplicates")
        if not 0.0 <= branch_dropout < 1.0:
            raise ValueError(f"MetaMLP: branch_dropout must be in [0, 1), got {branch_dropout}")
        self.labels, self.branches = list(labels), list(branches)
        self.hidden, self.dropout, self.branch_dropout = int(hidden), float(dropout), float(branch_dropout)
        k, c = len(self.branches), len(self.labels)
        self.mlp = nn.Sequential(nn.Linear(k * c + k, self.hidden), nn.GELU(), nn.Dropout(self.dropout),
                                 nn.Linear(self.hidden, c))
        nn.init.zeros_(self.mlp[-1].weight)  # start as the mean of the present branches
        nn.init.zeros_(self.mlp[-1].bias)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def config(self) -> dict[str, Any]:
        """The keywords that rebuild this model (`build_head("meta_mlp", **config)`)."""
        return {"labels": self.labels, "branches": self.branches, "hidden": self.hidden,
                "dropout": self.dropout, "branch_dropout": self.branch_dropout}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def check(self, scores: torch.Tensor, present: torch.Tensor) -> None:
        """Refuse inputs of the wrong shape and rows with no branch at all.

        Raises:
            ValueError: naming the shape expected or the rows without any branch.
        """
        k, c = len(self.branches), len(self.labels)
        if scores.ndim != 3 or tuple(scores.shape[1:]) != (k, c):
            raise ValueError(f"MetaMLP: scores must be [batch, {k} branches {self.branches}, {c} labels], "
                             f"got {list(scores.shape)}")
        if tuple(present.shape) != tuple(scores.shape[:2]):
            raise ValueError(f"MetaMLP: present must be [batch, {k}], got {list(present.shape)}")
        empty = (~present.bool()).all(dim=1)
        if bool(empty.any()):
            rows = empty.nonzero().flatten().tolist()
            raise ValueError(f"MetaMLP: {len(rows)} rows have no branch present (rows {rows[:10]}); "
                             "fusion needs at least one of " + ", ".join(self.branches))
        given = scores[present.bool()]
        if given.numel() and not bool(((given >= 0) & (given <= 1)).all()):
            raise ValueError("MetaMLP: present branches' scores must be probabilities in [0, 1] "
                             "(NaN or out-of-range values found)")

    def drop_branches(self, present: torch.Tensor) -> torch.Tensor:
        """Training's branch dropout: hide each present branch with p, keeping one per row at least."""
        keep = present & (torch.rand(present.shape, device=present.device) >= self.branch_dropout)
        lost = ~keep.any(dim=1)
        if bool(lost.any()):
            # Restore one of the row's own present branches, chosen uniformly.
            pick = torch.multinomial(present[lost].float(), 1).squeeze(1)
            keep[lost.nonzero().squeeze(1), pick] = True
        return keep

    def forward(self, scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        present = present.bool()
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()):
            self.check(scores, present)  # data-dependent: checked eagerly, not baked into a graph
        if self.training and self.branch_dropout > 0:
            present = self.drop_branches(present)
        mask = present.unsqueeze(-1)
        logits = torch.where(mask, torch.logit(scores.clamp(SCORE_EPS, 1 - SCORE_EPS)), 0.0)  # absent: 0
        mean = logits.sum(dim=1) / mask.sum(dim=1).to(scores.dtype)
        features = torch.cat([logits.flatten(1), present.to(scores.dtype)], dim=1)
        return mean + self.mlp(features)

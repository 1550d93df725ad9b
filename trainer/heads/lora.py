"""Low-rank adapters (LoRA, Hu et al. 2021) for the layers that are matrix products over channels.

A frozen layer computing `W x` becomes `W x + (alpha / r) * B (A x)` with `A` `[r, in]` and `B`
`[out, r]` trainable. `B` starts at zero, so an adapted network starts exactly equal to its base
(what was pretrained is not disturbed by the first step), and `merge()` folds `(alpha / r) B A`
into `W` so the exported graph costs what the base costs.

Only layers that are a plain matrix product over channels are adapted: `nn.Linear` and `nn.Conv2d`
with a 1x1 kernel, one group and no dilation (the pointwise convolutions that hold most of an
EfficientNet's weights). A depthwise or spatial convolution is refused rather than adapted
wrongly, since `B A` is not its weight.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def adaptable(module: nn.Module) -> bool:
    """Whether `module` is a layer `LoRA` can wrap: a Linear or a 1x1, ungrouped Conv2d."""
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
            and module.dilation == (1, 1) and module.padding in ((0, 0), "valid"))


class LoRA(nn.Module):
    """A frozen `base` layer plus a trainable rank-`rank` update scaled by `alpha / rank`."""

    def __init__(self, base: nn.Module, rank: int, alpha: float):
        super().__init__()
        if not adaptable(base):
            raise ValueError(f"LoRA adapts Linear and 1x1 ungrouped Conv2d layers, not {base!r}")
        if int(rank) < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.base = base
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.scaling = self.alpha / self.rank
        out_features, in_features = base.weight.shape[:2]
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(self.rank, in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, self.rank))
        # The initialisation `nn.Linear` (and the LoRA paper's code) gives A; B = 0 keeps the start exact.
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def delta_weight(self) -> torch.Tensor:
        """`(alpha / r) B A` shaped like the base weight."""
        delta = (self.lora_b @ self.lora_a) * self.scaling
        return delta.reshape(self.base.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if isinstance(self.base, nn.Linear):
            update = F.linear(F.linear(x, self.lora_a), self.lora_b)
        else:
            a = self.lora_a[:, :, None, None]
            b = self.lora_b[:, :, None, None]
            update = F.conv2d(F.conv2d(x, a, stride=self.base.stride), b)
        return out + update * self.scaling

    @torch.no_grad()
    def merge(self) -> nn.Module:
        """The base layer with the update folded into its weight (for export; frozen like the base)."""
        self.base.weight.add_(self.delta_weight().to(self.base.weight.dtype))
        return self.base

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}"


def inject(model: nn.Module, targets: tuple[str, ...], rank: int, alpha: float) -> list[str]:
    """Wrap every adaptable layer of `model` whose attribute name is in `targets`, in place.

    Returns:
        The dotted names of the wrapped layers, in module order.

    Raises:
        ValueError: no layer matched (a misspelt target would otherwise train nothing but the head).
    """
    found = [(name, module) for name, module in model.named_modules()
             if name.rsplit(".", 1)[-1] in targets and adaptable(module)]
    if not found:
        raise ValueError(f"no Linear or 1x1 Conv2d layer named any of {list(targets)} in "
                         f"{type(model).__name__}")
    for name, module in found:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, LoRA(module, rank, alpha))
    return [name for name, _ in found]


def merge_all(model: nn.Module) -> int:
    """Replace every `LoRA` in `model` by its merged base layer, in place; returns how many."""
    wrapped = [(name, module) for name, module in model.named_modules() if isinstance(module, LoRA)]
    for name, module in wrapped:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, module.merge())
    return len(wrapped)

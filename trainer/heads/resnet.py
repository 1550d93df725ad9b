"""`resnet50`: a ResNet-50 trained from scratch on the log-mel, beside the frozen PANNs embedding.

The two see the same spectrogram and complement each other: CNN14's AudioSet embedding brings
general sound knowledge that the small labelled set cannot teach, while the ResNet learns the
site's species from scratch (no ImageNet weights: a spectrogram is not a photograph). Their
pooled features are concatenated and one linear layer scores the classes, so the ResNet is
pushed to learn what the embedding lacks.

The ResNet is timm's (`timm.create_model(model_name, pretrained=False, in_chans=1,
num_classes=0)`: its global-pooled features), after a per-mel-band BatchNorm (log-mel dB
values sit around -100..+20, and bands differ in level; CNN14 normalises its input the same
way). Tests use `model_name="resnet10t"` and a narrow CNN14 (`width_divisor`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from trainer.heads.base import WINDOW_SAMPLES, Head
from trainer.heads.panns import FrozenCnn14Mixin, frozen_cnn14


class ResNet50Panns(FrozenCnn14Mixin, Head):
    """Log-mel -> [timm ResNet features ; frozen CNN14 embedding] -> linear -> logits.

    Args:
        labels: The classes predicted, in output order.
        front_end: The log-mel parameters (manifest dict); the defaults are PANNs' own.
        window_samples: The window length trained on.
        model_name: The timm ResNet ("resnet50"; a smaller one such as "resnet10t" for tests).
        timm_kwargs: More keywords for `timm.create_model` (plain data, e.g. `{"channels":
            [16, 32, 64, 128], "stem_width": 8}` for a test-sized net; `drop_path_rate`).
        dropout: Dropout on the concatenated features.
        width_divisor: CNN14 channel divisor (1: the public layout the checkpoint fits).
        cnn14_checkpoint: Path of a public-format CNN14 checkpoint; None leaves the frozen
            CNN14 random (only good for tests). `config()` reports None (the weights travel in
            the state dict); the source is `cnn14_source`.
    """

    name = "resnet50"
    input_kind = "mel"

    def __init__(self, labels: list[str], front_end: dict[str, Any] | None = None,
                 window_samples: int = WINDOW_SAMPLES, model_name: str = "resnet50",
                 timm_kwargs: dict[str, Any] | None = None, dropout: float = 0.2, width_divisor: int = 1,
                 cnn14_checkpoint: str | Path | None = None):
        super().__init__(labels, front_end, window_samples)
        self.model_name, self.dropout, self.width_divisor = str(model_name), float(dropout), int(width_divisor)
        n_mels = self.front_end_params.n_mels
        self.bn0 = nn.BatchNorm2d(n_mels)
        self.timm_kwargs = dict(timm_kwargs or {})
        clash = {"pretrained", "in_chans", "num_classes"} & set(self.timm_kwargs)
        if clash:
            raise ValueError(f"ResNet50Panns: timm_kwargs may not set {sorted(clash)} (fixed by this head)")
        self.resnet = timm.create_model(self.model_name, pretrained=False, in_chans=1, num_classes=0,
                                        **self.timm_kwargs)
        self.cnn14, self.cnn14_source = frozen_cnn14(n_mels, self.width_divisor, cnn14_checkpoint)
        self.embedding_dim = self.resnet.num_features + self.cnn14.embedding_dim
        self.drop = nn.Dropout(self.dropout)
        self.classifier = nn.Linear(self.embedding_dim, self.num_classes)

    def embedding(self, mel: torch.Tensor) -> torch.Tensor:
        """[ResNet pooled features ; CNN14 embedding], [B, embedding_dim], of a [B, 1, n_mels, frames] log-mel."""
        normalised = self.bn0(mel.transpose(1, 2)).transpose(1, 2)
        return torch.cat([self.resnet(normalised), self.cnn14(mel)], dim=1)

    def logits_and_embedding(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both from one pass (what an export with an "embedding" output needs)."""
        embedding = self.embedding(mel)
        return self.classifier(self.drop(embedding)), embedding

    def body(self, mel: torch.Tensor) -> torch.Tensor:
        return self.logits_and_embedding(mel)[0]

    def head_config(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "timm_kwargs": self.timm_kwargs, "dropout": self.dropout,
                "width_divisor": self.width_divisor, "cnn14_checkpoint": None}

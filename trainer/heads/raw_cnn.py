"""`raw_cnn`: a 1-D residual CNN on the raw 32 kHz waveform, no spectrogram.

The one head that learns its own filterbank: it hears what a fixed log-mel smooths away (the
fine timing of insect pulse trains, phase), so its errors differ from the mel heads' and the
fusion gains from it. A strided stem turns 32 kHz into a 4 kHz feature rate, then stages of
residual blocks (BN, ReLU, stride 4 at each stage's entry) shrink time while widening channels,
and max + mean pooling over time gives the embedding (a call is often brief in a 5 s window:
max keeps it, mean keeps the context; PANNs pools the same way).

At the defaults a 5 s window costs about 2.7 GMAC and the head holds about 11 M parameters
(`tests/trainer/heads/test_raw_cnn.py` runs a tiny one: width 8, depth 1, 3 stages).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.heads.base import WINDOW_SAMPLES, Head


class ResidualBlock1d(nn.Module):
    """conv-BN-ReLU-conv-BN plus a (projected when the shape changes) shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(in_channels, out_channels, kernel_size, stride, pad, bias=False)
        self.bn1 = nn.BatchNorm1d(out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, kernel_size, 1, pad, bias=False)
        self.bn2 = nn.BatchNorm1d(out_channels)
        # Zero-init the last BN of each residual branch: every block starts as the identity,
        # which keeps a deep stack trainable from scratch (Goyal et al. 2017).
        nn.init.zeros_(self.bn2.weight)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv1d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm1d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class RawAudioCNN(Head):
    """Residual 1-D CNN from a [B, samples] waveform to [B, classes] logits.

    Args:
        labels: The classes predicted, in output order.
        front_end: Stored for the manifest only (the sample rate); no log-mel is computed.
        window_samples: The window length trained on (the net takes any length it can pool).
        width: Channels of the stem and the first stage; stage i has width * 2**i.
        depth: Residual blocks per stage.
        stages: Stages, each entered with stride `stride`.
        kernel_size: Kernel of the residual convs (odd, so padding keeps lengths).
        stem_kernel: Kernel of the stem conv (about 2 ms at 32 kHz: a learned filterbank).
        stem_stride: The stem's stride (8: a 4 kHz feature rate).
        stride: Time stride at each stage's entry.
        dropout: Dropout on the pooled embedding.
    """

    name = "raw_cnn"
    input_kind = "waveform"

    def __init__(self, labels: list[str], front_end: dict[str, Any] | None = None,
                 window_samples: int = WINDOW_SAMPLES, width: int = 64, depth: int = 2, stages: int = 4,
                 kernel_size: int = 9, stem_kernel: int = 63, stem_stride: int = 8, stride: int = 4,
                 dropout: float = 0.2):
        super().__init__(labels, front_end, window_samples)
        if min(width, depth, stages, stem_stride, stride) < 1:
            raise ValueError("RawAudioCNN: width, depth, stages and strides must be at least 1")
        if kernel_size % 2 == 0 or stem_kernel % 2 == 0:
            raise ValueError(f"RawAudioCNN: kernels must be odd, got {kernel_size} and {stem_kernel}")
        self.width, self.depth, self.stages = int(width), int(depth), int(stages)
        self.kernel_size, self.stem_kernel = int(kernel_size), int(stem_kernel)
        self.stem_stride, self.stride, self.dropout = int(stem_stride), int(stride), float(dropout)
        self.stem = nn.Sequential(
            nn.Conv1d(1, width, stem_kernel, stem_stride, stem_kernel // 2, bias=False),
            nn.BatchNorm1d(width), nn.ReLU())
        blocks: list[nn.Module] = []
        channels = width
        for stage in range(stages):
            out = width * 2**stage
            for i in range(depth):
                blocks.append(ResidualBlock1d(channels, out, kernel_size, stride if i == 0 else 1))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        self.embedding_dim = channels
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, self.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def embedding(self, waveform: torch.Tensor) -> torch.Tensor:
        """The pooled [B, embedding_dim] features of a [B, samples] waveform."""
        x = self.blocks(self.stem(waveform.unsqueeze(1)))
        return x.amax(dim=2) + x.mean(dim=2)

    def logits_and_embedding(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both from one pass (what an export with an "embedding" output needs)."""
        embedding = self.embedding(waveform)
        return self.classifier(self.drop(embedding)), embedding

    def body(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.logits_and_embedding(waveform)[0]

    def head_config(self) -> dict[str, Any]:
        return {"width": self.width, "depth": self.depth, "stages": self.stages,
                "kernel_size": self.kernel_size, "stem_kernel": self.stem_kernel,
                "stem_stride": self.stem_stride, "stride": self.stride, "dropout": self.dropout}

"""What every trainable head is: a torch module from a 32 kHz waveform window to logits.

The contract the training loop (`trainer/fit.py`), the checkpoint (`trainer/checkpoint.py`) and
the ONNX export (`trainer/onnx_export.py`) speak, so a head is added by writing one module and one
line in `trainer/heads/__init__.py`'s registry, nothing else:

- `forward(waveform [B, S] float32) -> logits [B, C]`: what training and evaluation call;
  `features` (the log-mel front end for mel heads, the identity for waveform heads) then `body`.
- `body(x) -> logits`: the part exported to ONNX. A mel head's body takes the front end's output,
  `[B, 1, n_mels, frames]` in dB; the exporter puts the device's own float64 front end
  (`exporter.frontend.log_mel_nodes`, from the manifest parameters) in front of it, so the Pi
  computes the spectrogram the manifest states, and `tests/trainer/heads/test_frontend.py`
  proves the torch front end equals it.
- `config()`: the keyword arguments that rebuild the head (`build_head(name, **config)`), stored
  in every checkpoint, so a checkpoint needs no code outside the registry to load.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from exporter.frontend import LogMelParams, default_params
from trainer.torch_frontend import LogMel

WINDOW_SAMPLES = 160_000
"""5 s at 32 kHz: the BirdCLEF scoring window and the device's analysis window."""


class Head(nn.Module):
    """A head selectable by name. Subclasses set `name`, `input_kind` and build `body`."""

    name: ClassVar[str]
    input_kind: ClassVar[str]
    """"mel": body takes the log-mel; "waveform": body takes the raw window."""

    def __init__(self, labels: list[str], front_end: dict[str, Any] | None = None,
                 window_samples: int = WINDOW_SAMPLES):
        super().__init__()
        if not labels:
            raise ValueError(f"{type(self).__name__}: no labels to predict")
        if len(set(labels)) != len(labels):
            raise ValueError(f"{type(self).__name__}: duplicate labels")
        self.labels = list(labels)
        self.front_end_params = LogMelParams.from_manifest(front_end) if front_end else default_params()
        self.window_samples = int(window_samples)
        self.front_end = LogMel(self.front_end_params) if self.input_kind == "mel" else None

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        """What `body` takes: `[B, 1, n_mels, frames]` dB for mel heads, the waveform itself otherwise."""
        if self.front_end is None:
            return waveform
        return self.front_end(waveform).unsqueeze(1)

    def body(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.body(self.features(waveform))

    def head_config(self) -> dict[str, Any]:
        """The head's own hyper-parameters (subclasses add theirs)."""
        return {}

    def config(self) -> dict[str, Any]:
        return {"labels": self.labels, "front_end": self.front_end_params.to_manifest(),
                "window_samples": self.window_samples, **self.head_config()}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates (frozen bases and LoRA leave the rest out)."""
        return [p for p in self.parameters() if p.requires_grad]

"""The five heads of the design, each selectable by name.

Looked up by "module:Class" so naming a head imports only that head's module (timm only for the
timm heads). `meta_mlp` is the fusion over the others' outputs, not a waveform head: it is
trained on their scores (`trainer/heads/meta_mlp.py`).
"""

from __future__ import annotations

import importlib
from typing import Any

HEADS: dict[str, str] = {
    "raw_cnn": "trainer.heads.raw_cnn:RawAudioCNN",
    "panns_mlp": "trainer.heads.panns:PannsMLP",
    "effnet_b3_lora": "trainer.heads.effnet_lora:EfficientNetLoRA",
    "resnet50": "trainer.heads.resnet:ResNet50Panns",
    "meta_mlp": "trainer.heads.meta_mlp:MetaMLP",
}
WAVEFORM_HEADS = ("raw_cnn", "panns_mlp", "effnet_b3_lora", "resnet50")
"""The heads that take a waveform window (`trainer.heads.base.Head`); meta_mlp takes their scores."""


def head_class(name: str) -> type:
    """The class registered under `name`.

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    try:
        module, attr = HEADS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown head {name!r}: choose one of {', '.join(HEADS)}") from None
    return getattr(importlib.import_module(module), attr)


def build_head(name: str, **config: Any):
    """A fresh head from its name and `Head.config()` keywords (what a checkpoint stores)."""
    return head_class(name)(**config)

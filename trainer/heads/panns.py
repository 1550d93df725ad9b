"""PANNs CNN14 (Kong et al. 2020) as a frozen embedding extractor, and the `panns_mlp` head on it.

The network is the public `Cnn14` of github.com/qiuqiangkong/audioset_tagging_cnn
(pytorch/models.py) layer for layer and name for name (`bn0`, `conv_block1..6.conv{1,2}`,
`.bn{1,2}`, `fc1`, `fc_audioset`), so the released AudioSet checkpoint (`Cnn14_mAP=0.431.pth`,
the state dict under "model") loads strictly into it. The public file also holds the
torchlibrosa front end's frozen STFT and mel matrices (`spectrogram_extractor.*`,
`logmel_extractor.*`): those are ignored, because our log-mel is `trainer.torch_frontend.LogMel`,
whose default parameters are PANNs' 32 kHz ones (n_fft 1024, hop 320, 64 slaney mels,
50-14000 Hz, power 2, ref 1, amin 1e-10). One difference remains: our front end floors each
window 80 dB below its loudest bin (`top_db`, the device's rule), PANNs has no floor; it only
touches bins more than 80 dB down, where CNN14's features carry next to nothing.

Nothing is downloaded: the user gives the checkpoint's path.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.heads.base import WINDOW_SAMPLES, Head

CNN14_CHANNELS = (64, 128, 256, 512, 1024, 2048)
"""conv_block1..6 output channels of the public layout (divided by `width_divisor` for tests)."""
AUDIOSET_CLASSES = 527
"""fc_audioset's outputs: kept so the public checkpoint loads strictly (our heads do not use it)."""
IGNORED_PREFIXES = ("spectrogram_extractor.", "logmel_extractor.")
"""The public file's torchlibrosa front-end buffers; our front end is `LogMel`."""


class Cnn14CheckpointError(ValueError):
    """A CNN14 checkpoint that cannot be loaded; the message names the file and the keys."""


class ConvBlock(nn.Module):
    """Two 3x3 conv + BN + ReLU, then average pooling (PANNs' `ConvBlock`, pool_type 'avg')."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        for conv in (self.conv1, self.conv2):
            nn.init.xavier_uniform_(conv.weight)  # PANNs' init_layer

    def forward(self, x: torch.Tensor, pool: int) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, pool) if pool > 1 else x


class Cnn14(nn.Module):
    """CNN14 from the log-mel to its 2048-d embedding (fc1 after ReLU).

    Args:
        n_mels: Mel bands of the input (bn0 normalises each band; 64 for the public weights).
        width_divisor: Divides every channel count and fc1 (1 is the public layout; 16 or 32
            make a test-sized network with the same structure).
    """

    def __init__(self, n_mels: int = 64, width_divisor: int = 1):
        super().__init__()
        if width_divisor < 1 or any(c % width_divisor for c in CNN14_CHANNELS):
            raise ValueError(f"Cnn14: width_divisor {width_divisor} must divide {CNN14_CHANNELS}")
        self.n_mels = n_mels
        self.width_divisor = width_divisor
        channels = [c // width_divisor for c in CNN14_CHANNELS]
        self.bn0 = nn.BatchNorm2d(n_mels)
        inputs = [1, *channels[:-1]]
        for i, (cin, cout) in enumerate(zip(inputs, channels), start=1):
            self.add_module(f"conv_block{i}", ConvBlock(cin, cout))
        self.embedding_dim = channels[-1]
        self.fc1 = nn.Linear(channels[-1], channels[-1])
        self.fc_audioset = nn.Linear(channels[-1], AUDIOSET_CLASSES)
        for fc in (self.fc1, self.fc_audioset):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """[B, 1, n_mels, frames] dB -> [B, embedding_dim]."""
        # bn0 normalises each mel band (PANNs moves the mel axis onto the channels for it).
        x = self.bn0(mel.transpose(1, 2)).transpose(1, 2)
        # The public weights were trained on [B, 1, time, mel]: the 3x3 kernels are not symmetric.
        x = x.transpose(2, 3)
        for i in range(1, 7):
            x = getattr(self, f"conv_block{i}")(x, pool=2 if i < 6 else 1)
            x = F.dropout(x, p=0.2, training=self.training)
        x = x.mean(dim=3)  # over mel
        x = x.amax(dim=2) + x.mean(dim=2)  # over time: max + mean
        x = F.dropout(x, p=0.5, training=self.training)
        return F.relu(self.fc1(x))

    def audioset_logits(self, embedding: torch.Tensor) -> torch.Tensor:
        """The public model's 527 AudioSet logits (its clipwise output before the sigmoid)."""
        return self.fc_audioset(embedding)


def _describe(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def read_cnn14_state(path: str | Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The network part of a public-format CNN14 checkpoint (`torch.load(path)["model"]`).

    Args:
        path: The `.pth` file (e.g. `Cnn14_mAP=0.431.pth`).
        allow_pickle: Unpickle arbitrary objects (only for a file you trust); by default only
            tensors and plain containers are read (`weights_only=True`).

    Returns:
        The state dict without the torchlibrosa front-end keys.

    Raises:
        FileNotFoundError: no such file.
        Cnn14CheckpointError: unreadable, or not a dict with a state dict under "model".
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CNN14 checkpoint {path}: no such file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as error:  # not a pickle at all, or one with other objects
        text = str(error)
        reason = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0] if text else "?"
        raise Cnn14CheckpointError(
            f"CNN14 checkpoint {path}: unreadable as tensors and plain containers ({reason}); if it "
            "is a checkpoint you trust that holds other objects, pass allow_pickle=True") from error
    except Exception as error:  # torch raises RuntimeError, EOFError, zipfile errors...
        raise Cnn14CheckpointError(f"CNN14 checkpoint {path}: unreadable: {error}") from error
    if not isinstance(raw, Mapping) or "model" not in raw:
        got = f"a dict with keys {sorted(map(str, raw))[:8]}" if isinstance(raw, Mapping) else type(raw).__name__
        raise Cnn14CheckpointError(
            f"CNN14 checkpoint {path}: expected the public format, a dict with the state dict "
            f"under 'model', got {got}")
    state = raw["model"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise Cnn14CheckpointError(f"CNN14 checkpoint {path}: 'model' is not a state dict of tensors")
    return {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}


def load_cnn14_into(model: Cnn14, path: str | Path, *, allow_pickle: bool = False) -> Cnn14:
    """Copy a public-format checkpoint into `model`, strictly on the network keys.

    BatchNorm's `num_batches_tracked` counters may be absent (older torch versions did not save
    them; they play no part in eval mode); every other key must be there with its shape.

    Raises:
        Cnn14CheckpointError: naming the file and the missing, unexpected and mis-shaped keys.
    """
    return _copy_into(model, read_cnn14_state(path, allow_pickle=allow_pickle), Path(path))


def _copy_into(model: Cnn14, state: dict[str, torch.Tensor], path: Path) -> Cnn14:
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} (the model has {list(own[k].shape)})"
              for k in own if k in state and state[k].shape != own[k].shape]
    problems = [f"missing keys: {_describe(missing)}" if missing else "",
                f"unexpected keys: {_describe(unexpected)}" if unexpected else "",
                f"mis-shaped: {_describe(shapes)}" if shapes else ""]
    if any(problems):
        raise Cnn14CheckpointError(
            f"CNN14 checkpoint {path} does not fit the CNN14 layout (n_mels {model.n_mels}, "
            f"width_divisor {model.width_divisor}): " + "; ".join(p for p in problems if p))
    # Only num_batches_tracked can be absent here; a model built on the meta device (no init,
    # see `frozen_cnn14`) takes the loaded tensors themselves.
    full = {k: state[k].to(v.dtype) if k in state else torch.zeros((), dtype=torch.long) for k, v in own.items()}
    model.load_state_dict(full, strict=True, assign=own["bn0.weight"].is_meta)
    return model


def load_cnn14(path: str | Path, *, n_mels: int = 64, allow_pickle: bool = False) -> Cnn14:
    """The full public CNN14 with the weights of `path` (see `load_cnn14_into`), in eval mode."""
    state = read_cnn14_state(path, allow_pickle=allow_pickle)
    with torch.device("meta"):  # shapes only: a random init of 80 M parameters would be overwritten
        model = Cnn14(n_mels=n_mels)
    return _copy_into(model, state, Path(path)).eval()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def frozen_cnn14(n_mels: int, width_divisor: int, checkpoint: str | Path | None) -> tuple[Cnn14, dict | None]:
    """A CNN14 that never trains (no gradients; its BN stays in eval mode through `FrozenCnn14Mixin`),
    and where its weights came from ({"path", "sha256"}, or None for a random init)."""
    source = None
    if checkpoint is None:
        cnn14 = Cnn14(n_mels=n_mels, width_divisor=width_divisor)
    else:
        state = read_cnn14_state(checkpoint)
        with torch.device("meta"):
            cnn14 = Cnn14(n_mels=n_mels, width_divisor=width_divisor)
        _copy_into(cnn14, state, Path(checkpoint))
        source = {"path": str(checkpoint), "sha256": file_sha256(checkpoint)}
    cnn14.requires_grad_(False)
    return cnn14.eval(), source


class FrozenCnn14Mixin:
    """Keeps `self.cnn14` in eval mode whatever `train()` is asked (frozen BN statistics, no dropout)."""

    def train(self, mode: bool = True):
        super().train(mode)  # type: ignore[misc]
        self.cnn14.eval()  # type: ignore[attr-defined]
        return self


class PannsMLP(FrozenCnn14Mixin, Head):
    """`panns_mlp`: the frozen CNN14 embedding of the log-mel, then a trained MLP.

    Args:
        labels: The classes predicted, in output order.
        front_end: The log-mel parameters (manifest dict); the defaults are PANNs' own.
        window_samples: The window length trained on.
        hidden: The MLP's hidden size (0: a single linear layer on the embedding).
        dropout: Dropout on the embedding and the hidden layer.
        width_divisor: CNN14 channel divisor (1: the public layout, the only one the public
            checkpoint fits; larger only for tiny test runs).
        cnn14_checkpoint: Path of a public-format CNN14 checkpoint (`Cnn14_mAP=0.431.pth`).
            None leaves CNN14 at its random initialisation: a frozen random extractor is only
            good for tests. `config()` reports None here, because the extractor's weights
            travel in the head's state dict (a checkpoint rebuilt elsewhere does not need the
            file); where they came from is `cnn14_source`.
    """

    name = "panns_mlp"
    input_kind = "mel"

    def __init__(self, labels: list[str], front_end: dict[str, Any] | None = None,
                 window_samples: int = WINDOW_SAMPLES, hidden: int = 512, dropout: float = 0.2,
                 width_divisor: int = 1, cnn14_checkpoint: str | Path | None = None):
        super().__init__(labels, front_end, window_samples)
        self.hidden, self.dropout, self.width_divisor = int(hidden), float(dropout), int(width_divisor)
        self.cnn14, self.cnn14_source = frozen_cnn14(self.front_end_params.n_mels, self.width_divisor,
                                                     cnn14_checkpoint)
        dim = self.cnn14.embedding_dim
        if self.hidden > 0:
            self.mlp = nn.Sequential(nn.Dropout(self.dropout), nn.Linear(dim, self.hidden), nn.ReLU(),
                                     nn.Dropout(self.dropout), nn.Linear(self.hidden, self.num_classes))
        else:
            self.mlp = nn.Sequential(nn.Dropout(self.dropout), nn.Linear(dim, self.num_classes))

    @property
    def embedding_dim(self) -> int:
        return self.cnn14.embedding_dim

    def embedding(self, mel: torch.Tensor) -> torch.Tensor:
        """CNN14's [B, 2048] embedding of a [B, 1, n_mels, frames] log-mel."""
        return self.cnn14(mel)

    def logits_and_embedding(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both from one pass (what an export with an "embedding" output needs)."""
        embedding = self.embedding(mel)
        return self.mlp(embedding), embedding

    def body(self, mel: torch.Tensor) -> torch.Tensor:
        return self.logits_and_embedding(mel)[0]

    def head_config(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "dropout": self.dropout, "width_divisor": self.width_divisor,
                "cnn14_checkpoint": None}

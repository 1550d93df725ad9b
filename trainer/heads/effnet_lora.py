"""`effnet_b3_lora`: timm's EfficientNet-B3 on the log-mel, base frozen, LoRA adapters trained.

Where the adapters go: on the pointwise (1x1) convolutions, `conv_pw` (expansion), `conv_pwl`
(projection) and `conv_head` (the 1x1 convolution right before pooling and the classifier).
They hold about 95 % of EfficientNet-B3's weights (10.2 M of 10.7 M) and each is a matrix product
over channels, so a low-rank update of them is exactly LoRA's `W + B A`. The depthwise 3x3
convolutions (0.37 M weights) are not matrix products and stay frozen; the squeeze-excite 1x1
convolutions are tiny gates and are left out by default (`lora_targets` adds them). EfficientNet has
no linear layer next to its classifier other than `conv_head`; the classifier itself is new
(`num_classes = len(labels)`) and fully trainable.

With a weights file the base is frozen completely, batch-norm statistics included: what the file
holds is what the adapters adapt, and training one head never moves the ImageNet base a second head
may share. A random base (no file) lets its batch-norm statistics follow the data instead
(`adapt_batchnorm`), since under a fresh model's identity statistics its features vanish.

The log-mel is standardised per window (zero mean, unit variance over mels and frames) before the
network: it gives the ImageNet-scaled input the
pretrained statistics expect whatever the recorder's gain, and it has no state to train or export.

ImageNet weights come only from a file the user gives (`pretrained_path`: a timm state dict, or
torchvision's `efficientnet_b3` whose tensors are the same in the same order); nothing is
downloaded. Without one the base is random: LoRA over a random frozen base learns little, so a
warning says so (`train_base=True` trains the whole network from scratch instead).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.heads.base import WINDOW_SAMPLES, Head
from trainer.heads.lora import LoRA, inject, merge_all

DEFAULT_TARGETS = ("conv_pw", "conv_pwl", "conv_head")
"""The pointwise convolutions of every block and the head (see the module docstring for why)."""

STANDARDISE_EPS = 1e-5
"""Keeps a silent window's standardisation finite (its log-mel is a constant floor)."""

WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
"""Dict keys under which training scripts commonly nest a state dict."""


class EfficientNetLoRA(Head):
    """EfficientNet (timm, `in_chans=1`) on the log-mel with LoRA on its pointwise convolutions."""

    name = "effnet_b3_lora"
    input_kind = "mel"

    def __init__(self, labels: list[str], front_end: dict[str, Any] | None = None,
                 window_samples: int = WINDOW_SAMPLES, *, model_name: str = "efficientnet_b3",
                 lora_rank: int = 8, lora_alpha: float = 16.0,
                 lora_targets: tuple[str, ...] | list[str] = DEFAULT_TARGETS,
                 pretrained_path: str | Path | None = None, pretrained_from: str | None = None,
                 train_base: bool = False, adapt_batchnorm: bool | None = None, drop_rate: float = 0.3):
        """Build the network; load the base weights from `pretrained_path` when given.

        Args:
            model_name: any timm EfficientNet/MobileNet-family model (tests use a tiny one).
            lora_rank, lora_alpha: the adapters' rank r and scale; updates are scaled by alpha / r.
            lora_targets: attribute names of the layers to adapt (Linear or 1x1 Conv2d).
            pretrained_path: a timm or torchvision state dict file (.pth, .pt, .bin, .safetensors).
            pretrained_from: provenance only. `config()` stores the weights' origin here and
                `pretrained_path=None`, since a checkpoint's state dict holds the base weights
                already and the original file need not exist where the checkpoint is loaded.
            train_base: also train every base weight (from scratch, or full fine-tuning).
            adapt_batchnorm: let the frozen base's batch-norm statistics follow the training data.
                None: only when the base is random (no weights file), since a random network under
                the identity statistics a fresh timm model holds shrinks its features to ~1e-5.
            drop_rate: dropout before the classifier (timm's default for B3).
        """
        super().__init__(labels, front_end, window_samples)
        import timm  # here, so importing the registry does not import timm

        targets = tuple(lora_targets)
        self.model_name = model_name
        self.lora_rank, self.lora_alpha, self.lora_targets = int(lora_rank), float(lora_alpha), targets
        self.train_base, self.drop_rate = bool(train_base), drop_rate
        self.model = timm.create_model(model_name, pretrained=False, in_chans=1,
                                       num_classes=self.num_classes, drop_rate=drop_rate)
        if pretrained_path is not None:
            load_base_weights(self.model, Path(pretrained_path))
            pretrained_from = str(pretrained_path)
        elif pretrained_from is None:
            warnings.warn(f"{self.name}: no pretrained_path given, so the {model_name} base is random "
                          "(from scratch); LoRA over a random frozen base learns little: give the "
                          "ImageNet weights file, or train_base=True", stacklevel=2)
        self.pretrained_from = pretrained_from
        self.adapt_batchnorm = (pretrained_from is None) if adapt_batchnorm is None else bool(adapt_batchnorm)
        classifier_attr = self.model.pretrained_cfg.get("classifier", "classifier").rsplit(".", 1)[-1]
        if classifier_attr in targets:
            raise ValueError(f"{self.name}: lora_targets names the new classifier {classifier_attr!r}, "
                             "which is trained fully; leave it out")
        classifier = self.model.get_classifier()
        for p in self.model.parameters():
            p.requires_grad_(self.train_base)
        for p in classifier.parameters():
            # Zero: every label starts at p = 0.5 whatever the base's feature scale (timm's own
            # init, uniform(+-1/sqrt(classes)), gave logits near 100 on a frozen base's features).
            nn.init.zeros_(p)
            p.requires_grad_(True)
        self.adapted = inject(self.model, targets, self.lora_rank, self.lora_alpha)
        self.merged = False

    def standardise(self, mel: torch.Tensor) -> torch.Tensor:
        return standardise(mel)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(standardise(x))

    def train(self, mode: bool = True) -> EfficientNetLoRA:
        """Train mode everywhere except the frozen base's batch norms (their statistics stay put)."""
        super().train(mode)
        if mode and not (self.train_base or self.adapt_batchnorm):
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def head_config(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "lora_rank": self.lora_rank, "lora_alpha": self.lora_alpha,
                "lora_targets": list(self.lora_targets), "pretrained_path": None,
                "pretrained_from": self.pretrained_from, "train_base": self.train_base,
                "adapt_batchnorm": self.adapt_batchnorm, "drop_rate": self.drop_rate}

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.model.modules() if isinstance(m, LoRA) for p in (m.lora_a, m.lora_b)]

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """The network without its adapters, in timm's own key layout (loads into a plain timm model)."""
        return {k.replace(".base.", "."): v for k, v in self.model.state_dict().items() if ".lora_" not in k}

    @torch.no_grad()
    def merge_lora(self) -> EfficientNetLoRA:
        """Fold every adapter into its base weight, in place, for export; returns self.

        Outputs are unchanged (up to float rounding); the state dict becomes the plain timm layout
        (`base_state_dict()`), so merge a copy, not the head a checkpoint is still written from.
        """
        merge_all(self.model)
        self.merged = True
        return self


def standardise(mel: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per window over mels and frames (see the module docstring)."""
    mean = mel.mean(dim=(-2, -1), keepdim=True)
    std = mel.std(dim=(-2, -1), keepdim=True)
    return (mel - mean) / (std + STANDARDISE_EPS)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped from a training script's dict and DDP's `module.`."""
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"pretrained weights {path}: not a readable state dict ({error})") from error
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"pretrained weights {path}: expected a dict of tensors (a state dict)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_base_weights(model: nn.Module, path: Path) -> None:
    """Load a timm (by key) or torchvision (same tensors in the same order) state dict into `model`.

    The 3-channel ImageNet stem is summed to one channel (timm's `adapt_input_conv`, what timm does
    itself for `in_chans=1`); the file's classifier is dropped (the head has its own labels).

    Raises:
        FileNotFoundError: `path` is missing.
        ValueError: the file is not a state dict of this architecture, naming the keys that differ.
    """
    from timm.models import adapt_input_conv

    state = read_state_dict(path)
    own = model.state_dict()
    prefix = model.pretrained_cfg.get("classifier", "classifier") + "."
    own_keys = [k for k in own if not k.startswith(prefix)]
    file_keys = [k for k in state if not k.startswith(("classifier.", "fc.", "head.fc."))]
    stem = model.pretrained_cfg.get("first_conv", "conv_stem") + ".weight"

    def fit(own_key: str, tensor: torch.Tensor) -> torch.Tensor:
        if own_key == stem and tensor.ndim == 4 and tensor.shape[1] == 3 and own[stem].shape[1] == 1:
            return adapt_input_conv(1, tensor.float()).to(own[stem].dtype)
        return tensor

    if set(own_keys) == set(file_keys):
        mapping = {k: k for k in own_keys}
    elif len(own_keys) == len(file_keys):  # another library's layout: same tensors, other names
        mapping = dict(zip(own_keys, file_keys))
    else:
        missing = sorted(set(own_keys) - set(file_keys))
        unexpected = sorted(set(file_keys) - set(own_keys))
        raise ValueError(f"pretrained weights {path}: not a {type(model).__name__} state dict of this "
                         f"size: {len(missing)} keys missing (e.g. {missing[:5]}), {len(unexpected)} "
                         f"unexpected (e.g. {unexpected[:5]})")
    loaded = {k: fit(k, state[f]) for k, f in mapping.items()}
    wrong = [f"{f} {tuple(state[f].shape)} for {k} {tuple(own[k].shape)}"
             for k, f in mapping.items() if loaded[k].shape != own[k].shape]
    if wrong:
        raise ValueError(f"pretrained weights {path}: {len(wrong)} tensors have the wrong shape "
                         f"for this model (e.g. {wrong[:5]})")
    model.load_state_dict(loaded, strict=False)

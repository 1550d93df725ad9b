"""The head checkpoint: one `torch.save`d dict, written atomically, loadable with no code but the
head registry.

Format "explorer-head-checkpoint/1" (docs in notes/issue11-spec.md, "Checkpoint format"):

    format      "explorer-head-checkpoint/1"
    head        the registry name (`trainer.heads.HEADS`), "meta_mlp" for the fusion
    config      `head.config()`: `build_head(head, **config)` rebuilds the module
    model       its state_dict
    optimizer, scheduler, scaler (None without fp16 on CUDA)
    epoch       completed epochs; step: optimiser steps taken
    rng         {"python", "numpy", "torch", "cuda" (or None), "sampler": {"seed", "epoch"}}
    best        {"metric", "epoch", "bad_epochs"}: early stopping's state
    history     one dict per completed epoch (`trainer.fit.EpochResult` without the path)
    fit_config  `dataclasses.asdict(FitConfig)`
    thresholds  {label: threshold}, tuned on validation at the best epoch
    evaluation  the best epoch's validation metrics {birdclef, micro_ap, ...}
    stopped     True once the run has ended (all epochs, or early stopping)

Written to a temporary file in the same folder, fsynced, then renamed over the target (and the
folder fsynced): a kill at any moment leaves the previous checkpoint or the new one, never a torn
file. Loaded with `weights_only=True`, so opening a checkpoint never runs code from it; that is
why everything stored is a tensor or a plain Python value (`plain`).
"""

from __future__ import annotations

import dataclasses
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "explorer-head-checkpoint/1"
BIG_KEYS = ("model", "optimizer", "scheduler", "scaler")
"""What `load_head` leaves out of the metadata it returns (the weights and training state)."""


def plain(value: Any) -> Any:
    """`value` as tensors and plain Python values only (what `weights_only` loading accepts):
    numpy scalars and arrays become numbers and lists, dataclasses dicts, paths strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k) if isinstance(k, Path) else k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        converted = [plain(v) for v in value]
        return tuple(converted) if isinstance(value, tuple) else converted
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def rng_state() -> dict[str, Any]:
    """The global python, numpy and torch (and CUDA) generator states."""
    kind, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {"python": random.getstate(), "numpy": (kind, key.tolist(), int(pos), int(has_gauss), float(gauss)),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what `rng_state` captured (the CUDA states only where CUDA is there)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: Path) -> Path:
    """`torch.save(obj)` to `path` through a temporary file, fsync and rename (module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            torch.save(obj, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return path


def save_checkpoint(path: Path, model: torch.nn.Module, *, head: str | None = None, optimizer=None, scheduler=None,
                    scaler=None, epoch: int = 0, step: int = 0, rng: dict | None = None, best: dict | None = None,
                    history: list | None = None, fit_config: Any = None, thresholds: dict | None = None,
                    evaluation: dict | None = None, stopped: bool = False, **extra: Any) -> Path:
    """Write `model` and its training state to `path` in the module's format, atomically.

    `head` defaults to `model.name`; `extra` keys are stored as well (plain values).
    """
    name = head or getattr(model, "name", None)
    if not name:
        raise ValueError("save_checkpoint: the model has no registry name; pass head=")
    state = {
        "format": FORMAT, "head": name, "config": plain(model.config()), "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "epoch": int(epoch), "step": int(step), "rng": plain(rng or {}), "best": plain(best or {}),
        "history": plain(history or []), "fit_config": plain(fit_config) if fit_config is not None else None,
        "thresholds": plain(thresholds or {}), "evaluation": plain(evaluation or {}), "stopped": bool(stopped),
        **plain(extra),
    }
    return atomic_save(state, path)


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The whole checkpoint dict, checked.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: the file is not a torch checkpoint, not one of these (no "format"), or of
            another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint file there")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors alike for a foreign file
        raise ValueError(f"{path}: not a head checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") \
            from None
    if not isinstance(state, dict) or "format" not in state:
        raise ValueError(f"{path}: not a head checkpoint (no 'format' key; expected {FORMAT!r})")
    if state["format"] != FORMAT:
        raise ValueError(f"{path}: checkpoint format {state['format']!r} is not {FORMAT!r} "
                         f"(this version reads only that)")
    for key in ("head", "config", "model"):
        if key not in state:
            raise ValueError(f"{path}: checkpoint lacks {key!r}")
    return state


def build_from(state: dict[str, Any], path: Path | str = "checkpoint") -> torch.nn.Module:
    """The module a checkpoint dict describes, with its weights, in eval mode.

    Raises:
        ValueError: the head name is not in the registry, or the weights do not fit its config.
    """
    from trainer.heads import build_head

    try:
        model = build_head(state["head"], **state["config"])
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit a {state['head']} head of its config: "
                         f"{str(exc).splitlines()[0][:300]}") from None
    return model.eval()


def load_head(path: Path, map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """(model in eval mode, the checkpoint's metadata without `BIG_KEYS`).

    Raises:
        FileNotFoundError, ValueError: as `read_checkpoint` and `build_from`.
    """
    state = read_checkpoint(path, map_location)
    model = build_from(state, path)
    return model, {k: v for k, v in state.items() if k not in BIG_KEYS}


def init_weights(model: torch.nn.Module, path: Path | str, head: str, labels: list[str]) -> None:
    """Load a checkpoint's weights (only) into `model`: how a retrain starts.

    Raises:
        ValueError: the checkpoint is of another head or another label list.
    """
    state = read_checkpoint(Path(path))
    if state["head"] != head:
        raise ValueError(f"{path}: a {state['head']} checkpoint cannot start a {head} run")
    stored = list(state["config"].get("labels", []))
    if stored != list(labels):
        raise ValueError(f"{path}: its labels differ from this run's ({len(stored)} vs {len(labels)}); retrain on "
                         f"the checkpoint's label list")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit this run's {head} config: {str(exc).splitlines()[0][:300]}") \
            from None


def resume_state(path: Path, fit_config: dict[str, Any], labels: list[str], free: tuple[str, ...] = ()
                 ) -> dict[str, Any] | None:
    """The checkpoint at `path` to resume from, or None when there is none.

    Raises:
        ValueError: it was written by another configuration (fields outside `free` differ) or
            on other labels: resuming would silently mix two runs.
    """
    path = Path(path)
    if not path.is_file():
        return None
    state = read_checkpoint(path)
    stored = dict(state.get("fit_config") or {})
    changed = sorted(k for k in set(stored) | set(fit_config) if k not in free and stored.get(k) != fit_config.get(k))
    if changed:
        raise ValueError(f"{path}: was written by another configuration (differs in {changed}); use a new out_dir "
                         f"or the same configuration to resume")
    if list(state["config"].get("labels", [])) != list(labels):
        raise ValueError(f"{path}: was trained on other labels; use a new out_dir")
    return state

"""A trained head as an "explorer-head-onnx/1" folder: the files the exporter reads, no torch there.

The exporter never imports the trainer (tests/device/test_imports.py), so what a checkpoint
means for the device is written down here once, as files:

- `body.onnx`: `Head.body` alone (opset 17, IR 8, dynamic batch), input "mel" [B, 1, n_mels,
  frames] for a mel head or "waveform" [B, samples] for a waveform head, output "logits"
  [B, C] (and "embedding" [B, D] when the body returns (logits, embedding)). The log-mel front
  end is NOT in it: `exporter.head_branch` puts the device's own float64 front end
  (`exporter.frontend.log_mel_nodes`, built from the manifest parameters) in front, so the graph
  computes the spectrogram the manifest states, not a second copy of it.
- `head.json`: name, input kind, labels, front end (manifest dict), window, thresholds and the
  validation metrics of the checkpoint, and where it came from (its sha256, epoch, fit config).
- `reference.npz`: real 5 s windows from the shared recordings (`waveform` [N, S] float32) and
  the torch logits on them (`logits` [N, C]), with the front end computed in float64 and cast to
  float32 before the body, exactly what the composed ONNX graph does; plus `targets` [N, C]
  (the windows' recording labels among the head's) and `recordings` [N] (their paths), so the
  exporter's int8 gate has an evaluation set without reading the trainer's data code.

The TorchScript exporter (`dynamo=False`) is used: it writes opset 17 with a symbolic batch
axis directly, where the dynamo exporter targets opset 18 and rewrites it down.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import soundfile as sf
import torch
from torch import nn

from device.audio.resample import resample
from exporter.frontend import IR_VERSION, OPSET

FORMAT = "explorer-head-onnx/1"
BODY_FILE, HEAD_FILE, REFERENCE_FILE = "body.onnx", "head.json", "reference.npz"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_REFERENCE = (
    "audio/birdclef_train_audio/2.ogg",  # Allobates femoralis (21211), 106 s
    "audio/elsilencio_soundscape/H02_20230420_074000.ogg",  # the site's own soundscape, no label
    "audio/colombian_frogs/Engystomops_pustulosus.wav",  # 65448, 12 s at 44.1 kHz (resampled)
    "audio/birds/spinetail.wav",  # a bird outside the label space: a negative
)
"""Real recordings of different rates, lengths and kinds (a frog, the soundscape, a foreign bird),
so the windows span quiet and loud spectra; `windows` of them are taken in turn."""
REFERENCE_BATCH = 8
"""Windows per torch call when computing the reference logits (memory stays small for CNN14)."""


def load_checkpoint_head(checkpoint: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The head of an "explorer-head-checkpoint/1" file in eval mode, and the rest of the dict.

    Uses `trainer.checkpoint.load_head` when that module is present (the one reader of the
    format); otherwise reads the documented keys itself.

    Raises:
        ValueError: the file is not a head checkpoint (names the file and the key).
    """
    try:
        from trainer.checkpoint import load_head
    except ImportError:
        load_head = None
    if load_head is not None:
        return load_head(checkpoint, map_location="cpu")
    from trainer.heads import build_head

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != "explorer-head-checkpoint/1":
        raise ValueError(f"{checkpoint}: not an explorer-head-checkpoint/1 file (format "
                         f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r})")
    head = build_head(state["head"], **state["config"])
    head.load_state_dict(state["model"])
    head.eval()
    return head, {k: v for k, v in state.items() if k not in ("model", "optimizer", "scheduler", "scaler")}


def _recording_labels(data_dir: Path) -> dict[str, str]:
    """path -> primary label ("" outside the label space) from the shared recording lists."""
    labels = {}
    for name in ("recordings.csv", "recordings_more.csv"):
        if (data_dir / name).is_file():
            with open(data_dir / name, newline="", encoding="utf-8") as handle:
                labels.update({row["path"]: row["primary_label"] for row in csv.DictReader(handle)})
    return labels


def reference_windows(paths: list[Path], count: int, rate_hz: int, window: int) -> tuple[np.ndarray, list[str]]:
    """`count` consecutive `window`-sample windows taken in turn from `paths` (mono, resampled to
    `rate_hz` by the device's resampler; a recording shorter than a window is zero-padded once).

    Raises:
        FileNotFoundError: a recording is missing.
        ValueError: no windows could be cut.
    """
    cut: dict[Path, list[np.ndarray]] = {}
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: reference recording missing")
        info = sf.info(path)
        frames = min(info.frames, math.ceil((count * window / rate_hz + 0.5) * info.samplerate))
        audio, native = sf.read(path, frames=frames, dtype="float32", always_2d=True)
        audio = resample(audio.mean(axis=1), native, rate_hz)
        starts = range(0, max(1, len(audio) - window + 1), window)
        cut[path] = [np.pad(audio[s:s + window], (0, max(0, window - len(audio[s:s + window])))) for s in starts]
    windows, names = [], []
    for k in range(count):  # in turn: the k-th window of each recording, a short one simply runs out
        for path in paths:
            if k < len(cut[path]) and len(windows) < count:
                windows.append(cut[path][k])
                names.append(str(path))
    if not windows:
        raise ValueError("no reference windows could be cut")
    return np.stack(windows).astype(np.float32), names


class _Body(nn.Module):
    """`head.body` as the module torch.onnx traces."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x):
        return self.head.body(x)


def reference_logits(head: nn.Module, waveform: np.ndarray) -> np.ndarray:
    """Torch logits with the front end in float64, cast to float32 before the body (the graph's arithmetic)."""
    out = []
    with torch.no_grad():
        for start in range(0, len(waveform), REFERENCE_BATCH):
            x = torch.from_numpy(waveform[start:start + REFERENCE_BATCH])
            if head.input_kind == "mel":
                x = head.front_end(x, dtype=torch.float64).float().unsqueeze(1)
            result = head.body(x)
            out.append((result[0] if isinstance(result, (tuple, list)) else result).float().numpy())
    return np.concatenate(out).astype(np.float32)


def export_body(head: nn.Module, path: Path, example: torch.Tensor) -> tuple[bool, int | None]:
    """Write `head.body` as ONNX at `path`; returns (has an embedding output, its dim)."""
    input_name = "mel" if head.input_kind == "mel" else "waveform"
    with torch.no_grad():
        result = head.body(example)
    has_embedding = isinstance(result, (tuple, list))
    outputs = ["logits", "embedding"] if has_embedding else ["logits"]
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, and chosen on purpose (docstring)
        warnings.simplefilter("ignore", DeprecationWarning)
        # The wrapper is put in eval mode first: the exporter restores the mode it found on exit, and a
        # fresh module is in training mode, which would leave batch norms and dropout training afterwards.
        torch.onnx.export(
            _Body(head).eval(), (example,), str(path), input_names=[input_name], output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [input_name, *outputs]},
            opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )
    model = onnx.load(str(path))
    model.ir_version = IR_VERSION  # the Pi's runtime refuses a newer IR than it knows (exporter/frontend.py)
    model.producer_name = "elsilencio-trainer"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return has_embedding, int(result[1].shape[-1]) if has_embedding else None


def _jsonable(value: Any) -> Any:
    """Metrics as JSON: tensors and numpy scalars as numbers, NaN as null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def export_head(head: nn.Module, out_dir: Path, *, reference_audio: list[Path] | None = None, windows: int = 8,
                thresholds: dict[str, float] | None = None, metrics: dict[str, Any] | None = None,
                provenance: dict[str, Any] | None = None, data_dir: Path = SHARED_DATA) -> Path:
    """Write the artefact folder of a head module (`trainer.heads.base.Head`); returns `out_dir`.

    Args:
        reference_audio: the recordings the reference windows come from (default: a frog, the
            site soundscape, a second frog and a foreign bird from `data_dir`).
        windows: how many 5 s reference windows.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    head = copy.deepcopy(head).eval()  # the caller's module keeps its mode and its LoRA adapters
    params = head.front_end_params
    paths = [Path(p) for p in reference_audio] if reference_audio else [data_dir / p for p in DEFAULT_REFERENCE]
    waveform, names = reference_windows(paths, windows, params.sample_rate_hz, head.window_samples)
    merge_error = None
    if callable(getattr(head, "merge_lora", None)):
        before = reference_logits(head, waveform)
        head.merge_lora()  # LoRA folded into the base weights: one plain conv per layer in the graph
        after = reference_logits(head, waveform)
        scale = np.maximum(np.abs(before).max(axis=1), 1e-12)
        merge_error = float((np.abs(after - before).max(axis=1) / scale).max())
    example = torch.from_numpy(waveform[:2])
    if head.input_kind == "mel":
        with torch.no_grad():
            example = head.front_end(example, dtype=torch.float64).float().unsqueeze(1)
    logits = reference_logits(head, waveform)
    has_embedding, embedding_dim = export_body(head, out_dir / BODY_FILE, example)
    if head.training:
        raise RuntimeError("the ONNX export left the head in training mode; the reference would not be the graph's")
    by_path = _recording_labels(data_dir)
    index = {label: i for i, label in enumerate(head.labels)}
    targets = np.zeros((len(names), len(head.labels)), np.float32)
    for row, name in enumerate(names):
        try:
            label = by_path.get(Path(name).resolve().relative_to(Path(data_dir).resolve()).as_posix(), "")
        except ValueError:
            label = ""
        if label in index:
            targets[row, index[label]] = 1.0
    np.savez(out_dir / REFERENCE_FILE, waveform=waveform, logits=logits, targets=targets, recordings=np.array(names))
    info = {
        "format": FORMAT, "name": head.name, "input_kind": head.input_kind, "labels": list(head.labels),
        "front_end": params.to_manifest(), "window_samples": head.window_samples,
        "input": "mel" if head.input_kind == "mel" else "waveform",
        "outputs": ["logits", "embedding"] if has_embedding else ["logits"], "embedding_dim": embedding_dim,
        "config": _jsonable(head.config()), "metrics": _jsonable(metrics or {}),
        "thresholds": {k: float(v) for k, v in (thresholds or {}).items()},
        "provenance": _jsonable(provenance or {}),
        "reference": {"windows": len(names), "recordings": sorted(set(names)),
                      "front_end": "torch float64, cast to float32 before the body",
                      "lora_merge_relative_error": merge_error},
    }
    (out_dir / HEAD_FILE).write_text(json.dumps(info, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return out_dir


def export_checkpoint(checkpoint: Path, out_dir: Path, *, reference_audio: list[Path] | None = None,
                      windows: int = 8) -> Path:
    """The artefact folder of an "explorer-head-checkpoint/1" file (`explorer-train onnx`).

    Raises:
        ValueError: not a head checkpoint, or a meta_mlp checkpoint (it fuses scores; it is not a
            waveform branch).
    """
    checkpoint = Path(checkpoint)
    head, state = load_checkpoint_head(checkpoint)
    if not hasattr(head, "input_kind"):
        raise ValueError(f"{checkpoint}: head {state.get('head')!r} takes branch scores, not audio; "
                         "it is not exported as a branch")
    provenance = {"checkpoint": checkpoint.name, "checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
                  "epoch": state.get("epoch"), "best": state.get("best"), "fit_config": state.get("fit_config")}
    return export_head(head, out_dir, reference_audio=reference_audio, windows=windows,
                       thresholds=state.get("thresholds"), metrics=state.get("evaluation"), provenance=provenance)

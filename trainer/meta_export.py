"""A trained `meta_mlp` as an "explorer-meta-onnx/1" folder: the fusion the exporter reads, no torch there.

The exporter never imports the trainer (tests/device/test_imports.py), so the fusion goes over
as files:

- `meta.onnx` (opset 17, IR 8, dynamic batch): one input per branch, named as the branch,
  `[B, C]` probabilities in the meta's label order; `present` `[K]` float, 1 for a branch that
  runs and 0 for one that does not (the exporter fixes it per bundle as a constant, so
  onnxruntime folds the absent branches away); output `scores` `[B, C]` probabilities (the
  sigmoid is inside). An absent branch's input is ignored (masked), whatever it holds.
- `meta.json`: format, labels, branches, inputs, the meta's config, the calibration table per
  branch subset measured on held-out rows (ECE, Brier, BCE, BirdCLEF metric, thresholds tuned
  there), where it came from, and the ONNX-vs-torch difference measured here.
- `reference.npz`: real validation scores of the branches (`input/<branch>` `[N, C]`), the subsets
  (`present` `[S, K]` float) and torch's output on each (`scores` `[S, N, C]`), so the exporter
  proves onnxruntime computes what torch computed without importing torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from exporter.frontend import IR_VERSION, OPSET
from trainer.heads.meta_mlp import MetaMLP
from trainer.meta import branch_subsets, subset_scores

FORMAT = "explorer-meta-onnx/1"
MODEL_FILE, INFO_FILE, REFERENCE_FILE = "meta.onnx", "meta.json", "reference.npz"
PRESENT_INPUT, OUTPUT = "present", "scores"
RESERVED = (PRESENT_INPUT, OUTPUT)
"""Graph names a branch may not take (its input is named after it)."""


class _MetaGraph(nn.Module):
    """What `meta.onnx` computes: `(branch scores..., present [K]) -> sigmoid(meta)` `[B, C]`."""

    def __init__(self, meta: MetaMLP):
        super().__init__()
        self.meta = meta

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        *branches, present = inputs
        scores = torch.stack(branches, dim=1)
        flags = (present > 0.5).unsqueeze(0).expand(scores.shape[0], -1)
        return torch.sigmoid(self.meta(scores, flags))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return _jsonable(value.tolist())
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_meta_onnx(meta: MetaMLP, path: Path) -> Path:
    """`meta` as `meta.onnx` (module docstring), checked by onnx's full checker."""
    for name in meta.branches:
        if name in RESERVED:
            raise ValueError(f"branch name {name!r} is reserved in the fusion graph ({RESERVED}); rename the branch")
    c = meta.num_classes
    example = tuple(torch.full((2, c), 0.5) for _ in meta.branches) + (torch.ones(len(meta.branches)),)
    names = [*meta.branches, PRESENT_INPUT]
    axes = {name: {0: "batch"} for name in [*meta.branches, OUTPUT]}
    with warnings.catch_warnings():  # the TorchScript exporter, on purpose (trainer/onnx_export.py)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(_MetaGraph(meta).eval(), example, str(path), input_names=names, output_names=[OUTPUT],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)
    model = onnx.load(str(path))
    model.ir_version = IR_VERSION
    model.producer_name = "elsilencio-trainer"
    model.doc_string = f"meta_mlp fusion over branches {meta.branches}, {c} labels; present [K] flags"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return Path(path)


def reference(meta: MetaMLP, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(present [S, K] float32, torch scores [S, N, C]) of every branch subset on `inputs`."""
    subsets = branch_subsets(meta.branches)
    present = np.array([[b in s for b in meta.branches] for s in subsets], np.float32)
    scores = np.stack([subset_scores(meta, inputs, s) for s in subsets]).astype(np.float32)
    return present, scores


def onnx_scores(path: Path, inputs: dict[str, np.ndarray], present: np.ndarray) -> np.ndarray:
    """onnxruntime's `[S, N, C]` on the same subsets (what the exporter repeats)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.stack([session.run([OUTPUT], {**inputs, PRESENT_INPUT: flags})[0] for flags in present])


def export_meta(checkpoint: Path, out_dir: Path) -> Path:
    """Write the "explorer-meta-onnx/1" folder of a meta_mlp checkpoint (`explorer-train fit-meta`).

    The reference inputs are the validation branch scores the checkpoint carries
    (`reference_scores`), so the parity check runs on real scores of real audio.

    Raises:
        ValueError: not a meta_mlp checkpoint, or one without reference scores.
    """
    from trainer.checkpoint import load_head

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    meta, state = load_head(checkpoint)
    if state.get("head") != "meta_mlp" or not isinstance(meta, MetaMLP):
        raise ValueError(f"{checkpoint}: a {state.get('head')!r} checkpoint, not meta_mlp; export heads with "
                         "`explorer-train onnx`")
    stored = state.get("reference_scores") or {}
    missing = [b for b in meta.branches if b not in stored]
    if missing:
        raise ValueError(f"{checkpoint}: no reference_scores for branches {missing} (written by fit-meta)")
    inputs = {b: np.asarray(stored[b], np.float32) for b in meta.branches}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_meta_onnx(meta, out_dir / MODEL_FILE)
    present, scores = reference(meta, inputs)
    error = float(np.abs(onnx_scores(out_dir / MODEL_FILE, inputs, present) - scores).max())
    np.savez(out_dir / REFERENCE_FILE, present=present, scores=scores,
             **{f"input/{b}": inputs[b] for b in meta.branches})
    info = {
        "format": FORMAT, "labels": list(meta.labels), "branches": list(meta.branches),
        "inputs": [*meta.branches, PRESENT_INPUT], "output": OUTPUT, "config": _jsonable(meta.config()),
        "calibration": _jsonable(state.get("calibration") or []),
        "evaluation": _jsonable(state.get("evaluation") or {}),
        "provenance": {"checkpoint": checkpoint.name, "checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
                       "epoch": state.get("epoch"), "branch_runs": _jsonable(state.get("branch_runs") or {}),
                       "fit_config": _jsonable(state.get("fit_config"))},
        "reference": {"rows": int(len(next(iter(inputs.values())))), "subsets": int(len(present)),
                      "what": "validation scores of the branches (held-out rows first); torch float32 meta",
                      "onnx_max_abs_diff": error},
    }
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return out_dir

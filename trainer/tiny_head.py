"""A tiny demo head, trained in seconds with numpy/scipy: pooled log-mel + logistic regression.

It exists so the device runs a real, honestly trained model before the BirdNET-based
default arrives. Features are the bundle's own log-mel front end (exporter/frontend.py),
run through onnxruntime on 5 s windows at 32 kHz, so training sees exactly what the Pi
will; each mel band is pooled over time (mean and max), standardized, and a
one-vs-rest logistic regression with L2 scores every label.

Data: the labelled recordings in `recordings.csv` (in_label_space == yes) are positives;
out-of-space recordings and unlabelled soundscapes are negatives for every label. Each
recording is split in time: the first 70 % trains, the last 30 % is held out (there is
one recording per species, so held-out windows come from the same recording; the scores
on them are optimistic about new recordings). Thresholds are chosen on the held-out windows.

Rebuild the committed artefact with:

    python -m trainer.tiny_head --data ../shared/data --out exporter/artefacts/demo_head.npz
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import soundfile as sf

from device.audio.resample import resample
from exporter.frontend import DEFAULT_LOG_MEL, LogMelParams, build_front_end_model
from exporter.manifest_builder import labels_from_taxonomy
from exporter.head_artefacts import POOLING, TinyHead, cut_windows, pool_features, sigmoid
from trainer.logistic import fit_logistic
from trainer.metrics import average_precision, roc_auc

WINDOW_S = 5.0
"""The device's analysis window; BirdCLEF labels 5 s segments."""
TRAIN_FRACTION = 0.7
"""Share of each recording (from its start) that trains; the rest is held out."""
TRAIN_HOP_S = {"positive": 0.5, "negative": 2.5}
"""Positives are few (one short call recording per species), so their windows overlap more."""
HELD_OUT_HOP_S = 2.5
MAX_TRAIN_WINDOWS = 40
"""Per recording, evenly spaced: the three long A. femoralis clips would otherwise give
one label ~270 of the training windows and most of the training time."""
L2 = 1e-2
"""Weight decay on the standardized features: with 3 to 40 positive windows per label and
128 features, an unregularized fit would separate the training windows and nothing else."""
FEATURE_FLOOR = 1e-3
"""Smallest per-feature scale: a band constant over the training windows is not amplified."""
EXCLUDED = {
    "audio/birdclef_train_audio/1.ogg": "species unknown; a BirdCLEF 2025 train clip may be one of our labels",
}
"""Recordings that are neither positive nor a safe negative."""
BATCH = 4
"""Windows per onnxruntime call; larger batches were no faster (11.2 ms/window at 1, 12.6 at 8)."""
THREADS = 1
"""onnxruntime threads: the STFT does not split across threads, and on 2 cores 2 threads
measured 12-22 ms/window against 11.2 ms for one."""


@dataclass(frozen=True)
class Recording:
    path: Path
    rel: str
    """Path relative to the data folder, as recordings.csv writes it."""
    label: str | None
    """primary_label for an in-space recording, None for a negative."""
    license: str


def read_recordings(data_dir: Path) -> list[Recording]:
    """Every usable recording in `recordings.csv` (EXCLUDED ones left out)."""
    data_dir = Path(data_dir)
    with open(data_dir / "recordings.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    recordings = []
    for row in rows:
        if row["path"] in EXCLUDED:
            continue
        label = row["primary_label"].strip() if row["in_label_space"] == "yes" else None
        recordings.append(Recording(data_dir / row["path"], row["path"], label or None, row["license"]))
    return recordings


def load_audio(path: Path, rate_hz: int) -> np.ndarray:
    """Mono float32 audio at `rate_hz`, through the device's own resampler (training sees what the Pi feeds)."""
    audio, native = sf.read(path, dtype="float32", always_2d=True)
    return resample(audio.mean(axis=1), native, rate_hz)


class FrontEnd:
    """The ONNX log-mel front end in onnxruntime: waveforms [n, samples] -> mel [n, bands, frames]."""

    def __init__(self, params: LogMelParams, window_samples: int, threads: int = THREADS):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        model = build_front_end_model(params, window_samples).SerializeToString()
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        parts = [self.session.run(["mel"], {"waveform": windows[i : i + BATCH]})[0] for i in range(0, len(windows), BATCH)]
        return np.concatenate(parts) if parts else np.zeros((0, 0, 0), np.float32)


THRESHOLD_RANGE = (0.1, 0.9)
"""Chosen thresholds are clipped here: a handful of held-out windows cannot justify a
threshold that would fire on almost anything, or on almost nothing."""


def choose_thresholds(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per label, the threshold with the best F1 on (held-out) windows.

    The threshold sits halfway between the lowest window it accepts and the highest one
    it rejects, then is clipped to THRESHOLD_RANGE; a label with no positives gets 0.5.
    """
    thresholds = np.full(scores.shape[1], 0.5)
    for j in range(scores.shape[1]):
        y = targets[:, j] > 0
        if not y.any():
            continue
        order = np.argsort(-scores[:, j], kind="stable")
        s, hits = scores[order, j], np.cumsum(y[order])
        k = np.arange(1, len(s) + 1)
        f1 = 2 * hits / (k + y.sum())
        best = int(np.argmax(f1))
        below = s[best + 1] if best + 1 < len(s) else 0.0
        thresholds[j] = 0.5 * (s[best] + below)
    return np.clip(thresholds, *THRESHOLD_RANGE)


def _or_nan(value: float | None) -> float:
    """The artefact stores an undefined metric as NaN (and the macro means skip it)."""
    return float("nan") if value is None else value


def evaluate(scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray, label_ids: list[str]) -> dict[str, Any]:
    """Per-label AP, ROC AUC, precision/recall/F1 at threshold; top-1 accuracy vs chance."""
    per_label = {}
    for j, label in enumerate(label_ids):
        y = targets[:, j] > 0
        fired = scores[:, j] >= thresholds[j]
        tp = int((fired & y).sum())
        precision = tp / max(int(fired.sum()), 1)
        recall = tp / max(int(y.sum()), 1)
        per_label[label] = {
            "windows": int(y.sum()),
            "ap": _or_nan(average_precision(scores[:, j], y)),
            "roc_auc": _or_nan(roc_auc(scores[:, j], y)),
            "threshold": float(thresholds[j]),
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / max(precision + recall, 1e-12),
        }
    positive = targets.sum(axis=1) > 0
    top1 = scores[positive].argmax(axis=1) == targets[positive].argmax(axis=1)
    negatives = ~positive
    return {
        "windows": int(len(scores)),
        "positive_windows": int(positive.sum()),
        "top1_accuracy": float(top1.mean()) if positive.any() else float("nan"),
        "chance_top1": 1.0 / len(label_ids),
        "macro_ap": float(np.nanmean([row["ap"] for row in per_label.values()])),
        "macro_roc_auc": float(np.nanmean([row["roc_auc"] for row in per_label.values()])),
        "macro_f1": float(np.mean([row["f1"] for row in per_label.values()])),
        "negative_windows_with_any_detection": float((scores[negatives] >= thresholds).any(axis=1).mean())
        if negatives.any() else float("nan"),
        "per_label": per_label,
    }


def _windows_of(recordings: list[Recording], params: LogMelParams, window: int, log) -> dict[str, Any]:
    """Train and held-out windows with their label (None for a negative)."""
    split: dict[str, dict[str, list]] = {s: {"audio": [], "label": []} for s in ("train", "held_out")}
    for rec in recordings:
        audio = load_audio(rec.path, params.sample_rate_hz)
        cut = int(len(audio) * TRAIN_FRACTION)
        kind = "positive" if rec.label else "negative"
        parts = {
            "train": cut_windows(audio[:cut], window, int(TRAIN_HOP_S[kind] * params.sample_rate_hz)),
            "held_out": cut_windows(audio[cut:], window, int(HELD_OUT_HOP_S * params.sample_rate_hz)),
        }
        if len(parts["train"]) > MAX_TRAIN_WINDOWS:
            keep = np.linspace(0, len(parts["train"]) - 1, MAX_TRAIN_WINDOWS).round().astype(int)
            parts["train"] = parts["train"][keep]
        for name, windows in parts.items():
            split[name]["audio"].extend(windows)
            split[name]["label"].extend([rec.label] * len(windows))
    log(f"windows: {len(split['train']['audio'])} train, {len(split['held_out']['audio'])} held out")
    return split


def train(data_dir: Path, l2: float = L2, log=print) -> TinyHead:
    """Train the demo head from `data_dir` (the shared data folder) in seconds."""
    started = time.perf_counter()
    data_dir = Path(data_dir)
    params = LogMelParams.from_manifest(DEFAULT_LOG_MEL)
    window = int(WINDOW_S * params.sample_rate_hz)
    recordings = read_recordings(data_dir)
    labels = labels_from_taxonomy(data_dir / "taxonomy.csv", {r.label for r in recordings if r.label})
    label_ids = [label["primary_label"] for label in labels]
    split = _windows_of(recordings, params, window, log)
    front_end = FrontEnd(params, window)
    features, targets = {}, {}
    for name, part in split.items():
        features[name] = pool_features(front_end(np.stack(part["audio"])))
        targets[name] = np.array([[lab == lid for lid in label_ids] for lab in part["label"]], np.float64)
    mean = features["train"].mean(axis=0)
    scale = np.maximum(features["train"].std(axis=0), FEATURE_FLOOR)
    weights, bias = fit_logistic((features["train"] - mean) / scale, targets["train"], l2, max_iterations=2000)
    head = TinyHead(labels, params.to_manifest(), window, mean, scale, weights, bias, np.zeros(len(labels)))
    held_scores = sigmoid(head.logits(features["held_out"]))
    head.thresholds = choose_thresholds(held_scores, targets["held_out"])
    head.metrics = {
        "held_out": evaluate(held_scores, targets["held_out"], head.thresholds, label_ids),
        "train": evaluate(sigmoid(head.logits(features["train"])), targets["train"], head.thresholds, label_ids),
    }
    head.training = {
        "data": "recordings.csv of the El Silencio shared data (in_label_space == yes positive, others negative)",
        "recordings": [{"path": r.rel, "label": r.label, "license": r.license} for r in recordings],
        "excluded": EXCLUDED,
        "windows": {name: len(part["label"]) for name, part in split.items()},
        "window_s": WINDOW_S, "train_fraction": TRAIN_FRACTION, "train_hop_s": TRAIN_HOP_S,
        "held_out_hop_s": HELD_OUT_HOP_S, "max_train_windows": MAX_TRAIN_WINDOWS, "l2": l2, "pooling": POOLING,
    }
    log(f"trained {len(labels)} labels in {time.perf_counter() - started:.1f} s")
    return head


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the tiny demo head (numpy/scipy, seconds).")
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder (recordings.csv, audio/)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the .npz head")
    parser.add_argument("--l2", type=float, default=L2, help=f"L2 weight decay (default {L2})")
    args = parser.parse_args(argv)
    if not (args.data / "recordings.csv").is_file():
        parser.error(f"{args.data}: no recordings.csv here (expected the shared data folder)")
    head = train(args.data, args.l2)
    held = head.metrics["held_out"]
    print(json.dumps({k: v for k, v in held.items() if k != "per_label"}, indent=2))
    for label, row in held["per_label"].items():
        print(f"  {label:>8}  " + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    print(f"wrote {head.save(args.out)} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

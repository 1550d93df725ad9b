"""The head artefacts: the documented files the trainer writes and the exporter packs.

The exporter never imports the trainer (docs/ARCHITECTURE.md, "Who may import whom";
tests/device/test_imports.py holds it): a trained head reaches a bundle as a `.npz` in the format
below, and the numpy reference model each bundle's parity check compares its ONNX graph against
is read from that file here. The trainer imports this module to write what it trained.

The format: a zip of `.npy` members (no pickles), fixed member times and order so an unchanged
head is byte-identical (`save_artefact`); arrays as float32/float64 members, text fields as JSON
strings. `EmbeddingHead` (`elsilencio_head.npz`: mean, scale, weights [1024, labels], bias,
calibration (a, b), thresholds; labels, metrics, training, site as JSON) is the default bundle's
head on BirdNET's embedding; `TinyHead` (`demo_head.npz`: the same plus window_samples and the
front_end parameters) is the demo bundle's pooled log-mel head.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def save_artefact(path: Path, arrays: dict[str, np.ndarray], texts: dict[str, object]) -> Path:
    """Write arrays and JSON-able texts as a reproducible, pickle-free `.npz` (atomically)."""
    items = {**arrays, **{k: np.array(json.dumps(v, sort_keys=True, allow_nan=False)) for k, v in texts.items()}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(items):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.array(items[name], order="C"), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())
    tmp.replace(path)
    return path


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function via tanh: no overflow warnings for large |z|."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def shift(probability: np.ndarray, factor: float) -> np.ndarray:
    """sigmoid(logit(p) + log k), written k p / (k p + (1 - p)): exactly 0 and 1 at p = 0 and 1
    (no log of 0), monotone, and computed so by the fusion graph (exporter/fusion.py)."""
    p = np.asarray(probability, np.float64)
    return factor * p / (factor * p + (1.0 - p))


def combine(head: np.ndarray, birdnet: np.ndarray, factor: float) -> np.ndarray:
    """The label's score: the head's, or BirdNET's family score moved onto the head's scale, the larger."""
    return np.maximum(np.asarray(head, np.float64), shift(birdnet, factor))


def cut_windows(audio: np.ndarray, window: int, hop: int) -> np.ndarray:
    """[n, window] windows hopping through `audio`; a part shorter than a window is tiled.

    Tiling (looping the call) keeps a short call's per-band statistics; zero padding would
    fill most of the window with the dB floor.
    """
    if len(audio) == 0:
        return np.zeros((0, window), np.float32)
    if len(audio) < window:
        audio = np.tile(audio, -(-window // len(audio)))[:window]
    starts = range(0, len(audio) - window + 1, hop)
    return np.stack([audio[s : s + window] for s in starts]).astype(np.float32)


def pool_features(mel: np.ndarray) -> np.ndarray:
    """[n, bands, frames] log-mel -> [n, 2*bands] float64: per-band mean over time, then max.

    The mean carries a band's background level, the max its loudest call. Compared on the
    held-out windows with mean+std, mean+std+max and window-centred mean+std at three L2
    values: mean+max had the best top-1 accuracy and ROC AUC, centred mean+std a higher
    macro AP; with one held-out window per frog species that is close to a tie, and
    mean+max is two reductions in the graph (table in exporter/artefacts/README.md).
    The ONNX head (exporter/linear_head.py) pools the same way, in float64, from the same
    float32 mel; change both together.
    """
    mel = np.asarray(mel, dtype=np.float64)
    return np.concatenate([mel.mean(axis=2), mel.max(axis=2)], axis=1)


@dataclass
class TinyHead:
    """The trained head and everything a bundle needs to say about it."""

    labels: list[dict[str, str]]
    """Manifest label entries, in taxonomy order (the order of the weight columns)."""
    front_end: dict[str, Any]
    window_samples: int
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    """[features, labels]"""
    bias: np.ndarray
    thresholds: np.ndarray
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def label_ids(self) -> list[str]:
        return [label["primary_label"] for label in self.labels]

    def logits(self, embedding: np.ndarray) -> np.ndarray:
        return ((embedding - self.mean) / self.scale) @ self.weights + self.bias

    def scores(self, mel: np.ndarray) -> np.ndarray:
        """Probabilities [n, labels] from a float32 log-mel batch (the numpy reference model)."""
        return sigmoid(self.logits(pool_features(mel)))

    def save(self, path: Path) -> Path:
        """Write a deterministic .npz (fixed zip timestamps: same head, same bytes)."""
        arrays = {
            "mean": self.mean, "scale": self.scale, "weights": self.weights, "bias": self.bias,
            "thresholds": self.thresholds, "window_samples": np.array(self.window_samples, np.int64),
        }
        texts = {"labels": self.labels, "front_end": self.front_end, "metrics": self.metrics, "training": self.training}
        return save_artefact(path, arrays, texts)

    @classmethod
    def load(cls, path: Path) -> "TinyHead":
        with np.load(path, allow_pickle=False) as data:
            text = {k: json.loads(str(data[k])) for k in ("labels", "front_end", "metrics", "training")}
            return cls(
                labels=text["labels"], front_end=text["front_end"], window_samples=int(data["window_samples"]),
                mean=data["mean"], scale=data["scale"], weights=data["weights"], bias=data["bias"],
                thresholds=data["thresholds"], metrics=text["metrics"], training=text["training"],
            )


POOLING = "mean,max"
"""Names the pooling in the artefact, so the exporter refuses a head pooled differently."""
@dataclass
class EmbeddingHead:
    """The trained head: standardize, linear, shared Platt calibration, sigmoid."""

    labels: list[dict[str, str]]
    """Manifest label entries in taxonomy order (the order of the weight columns)."""
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    """[1024, labels] float32"""
    bias: np.ndarray
    calibration: np.ndarray
    """(a, b): probability = sigmoid(a * logit + b), fitted on out-of-fold logits."""
    thresholds: np.ndarray
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    site: list[dict[str, str]] = field(default_factory=list)
    """Every taxon of the site (taxonomy.csv rows): which birds BirdNET covers is derived from
    it at bundle time, on machines that have no copy of the shared data."""

    @property
    def label_ids(self) -> list[str]:
        return [label["primary_label"] for label in self.labels]

    def logits(self, embedding: np.ndarray) -> np.ndarray:
        """Uncalibrated logits [n, labels], in float64."""
        x = (np.asarray(embedding, np.float64) - self.mean) / self.scale
        return x @ self.weights.astype(np.float64) + self.bias

    def scores(self, embedding: np.ndarray) -> np.ndarray:
        """The head's own calibrated probabilities [n, labels] (what the fusion graph computes for
        every label BirdNET does not also score)."""
        a, b = self.calibration
        return sigmoid(a * self.logits(embedding) + b)

    @property
    def birdnet_families(self) -> dict[str, dict[str, Any]]:
        """Label -> {"species": BirdNET scientific names, "odds_factor", "head_threshold",
        "birdnet_threshold"} for the labels combined with BirdNET's family score, in the order the trainer wrote them."""
        return self.training.get("birdnet_families", {})

    def combined_scores(self, embedding: np.ndarray, birdnet_family: np.ndarray | None) -> np.ndarray:
        """Every label's score as the bundle gives it [n, labels]: the head's, and for the labels
        in `birdnet_families` the larger of it and BirdNET's shifted family score.

        Args:
            birdnet_family: [n, families] BirdNET family scores in `birdnet_families` order
                (the trainer computes them in `trainer/birdnet_families.py`); None only for a head without any.
        """
        scores = self.scores(embedding)
        for f, (label, row) in enumerate(self.birdnet_families.items()):
            j = self.label_ids.index(label)
            scores[:, j] = combine(scores[:, j], np.asarray(birdnet_family)[:, f], row["odds_factor"])
        return scores

    def save(self, path: Path) -> Path:
        """Write a deterministic .npz (fixed zip timestamps: same head, same bytes)."""
        arrays = {"mean": self.mean.astype(np.float32), "scale": self.scale.astype(np.float32),
                  "weights": self.weights.astype(np.float32), "bias": self.bias.astype(np.float32),
                  "calibration": self.calibration.astype(np.float64), "thresholds": self.thresholds.astype(np.float64)}
        texts = {"labels": self.labels, "metrics": self.metrics, "training": self.training, "site": self.site}
        return save_artefact(path, arrays, texts)

    @classmethod
    def load(cls, path: Path) -> "EmbeddingHead":
        """Raises: ValueError naming the file when it is not a head artefact."""
        try:
            with np.load(path, allow_pickle=False) as data:
                text = {k: json.loads(str(data[k])) for k in ("labels", "metrics", "training", "site")}
                return cls(labels=text["labels"], mean=data["mean"].astype(np.float64),
                           scale=data["scale"].astype(np.float64), weights=data["weights"],
                           bias=data["bias"].astype(np.float64), calibration=data["calibration"],
                           thresholds=data["thresholds"], metrics=text["metrics"], training=text["training"],
                           site=text["site"])
        except (KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path}: not an embedding-head artefact ({exc})") from None

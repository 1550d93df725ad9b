"""A head on BirdNET's embedding for the taxa BirdNET does not know (frogs, insects, mammals).

Features are computed exactly as the device computes them (`trainer.embeddings.device_embedding`,
re-exported here): a 5 s window at the source's rate, `device.audio.resample.resample` to 48 kHz,
`device.engine.engine.make_crops` (3 s crops at 0-3 s and 2-5 s; crops of pure padding left
out), BirdNET's ONNX `embedding` through onnxruntime, mean over crops - one definition, so
training and serving agree. They are cached on disk (default ~/.cache/elsilencio-explorer).

The head is a one-vs-rest logistic regression (L2, per-label balanced weights) on standardized
embeddings, trained on clean device windows and augmented mixes (trainer/augment.py). Cross-
validation by group (leave-one-recording-out where a species has several recordings, time-
disjoint halves where it has one, chunks of the negatives) gives out-of-fold scores on audio
that trained nothing in its fold; on them we fit the calibration (one Platt scaling shared by
all labels: a handful of held-out windows per label cannot support one per label) and pick
each label's threshold. The final head is refit on everything and keeps that calibration.

Rebuild the committed artefact (a few minutes on one core; seconds with a warm cache) with:

    python -m trainer.embedding_head --data ../shared/data --out exporter/artefacts/elsilencio_head.npz
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy.optimize import minimize

from trainer.artefact import save_artefact
from trainer.logistic import fit_logistic, sigmoid
from trainer.metrics import roc_auc
from trainer.augment import TAIL_S, WINDOW_S, WindowPlan, plan_clean, plan_mixes
from trainer.embeddings import EMBEDDING_RECIPE, EmbeddingCache, birdnet_session, default_cache_dir, device_embedding, embed_plans
from trainer.labelled import (
    LabelledClip, assign_folds, chunk_negatives, clip_duration, clips_from_recordings, read_labelled_list,
    split_single_recordings,
)

__all__ = ["Config", "EmbeddingHead", "device_embedding", "fit_logistic", "train", "main"]

FOLDS = 3
"""Allobates femoralis has three recordings: three folds hold each out once."""
L2 = 1e-1
FEATURE_FLOOR = 1e-3
"""Smallest per-feature scale: a feature constant over training is not amplified."""


@dataclass(frozen=True)
class Config:
    """What a training run does; saved with the head."""

    folds: int = FOLDS
    l2: float = L2
    hop_positive_s: float = 1.0
    """Clean windows of calls every second: a time-shift augmentation that stays device-exact."""
    hop_negative_s: float = 5.0
    """Negatives on the device's own grid."""
    tails_s: tuple[float, ...] = TAIL_S
    """Extra zero-padded file-end windows per negative (see trainer.augment.plan_clean)."""
    mixes_per_positive_group: int = 24
    """Held-out mixed windows: AUC 0.923 -> 0.977 and recall at 1 % false positives 0.65 -> 0.81
    with 24 mixes per group against none; clean held-out windows unchanged (0.927 -> 0.926)."""
    mixes_per_negative_clip: int = 4
    """Out-of-space calls in forest noise: the negatives the thresholds should hold against."""
    seed: int = 0


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
        """Calibrated probabilities [n, labels] (the numpy reference for the fusion graph)."""
        a, b = self.calibration
        return sigmoid(a * self.logits(embedding) + b)

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


def _fit(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = np.maximum(x.std(axis=0), FEATURE_FLOOR)
    weights, bias = fit_logistic((x - mean) / scale, y, l2)
    return mean, scale, weights, bias


def fold_split(plan_groups: list[frozenset[str]], fold_of: dict[str, int], fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held out) masks of fold `fold`: a window trains when none of its groups (call,
    second call, background) is in the fold, and is held out when all of them are; a window
    straddling folds does neither, so no audio is on both sides."""
    in_fold = [[fold_of[g] == fold for g in groups] for groups in plan_groups]
    return np.array([not any(flags) for flags in in_fold]), np.array([all(flags) for flags in in_fold])


def cross_validate(x: np.ndarray, y: np.ndarray, plan_groups: list[frozenset[str]], fold_of: dict[str, int],
                   folds: int, l2: float, log=print) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold logits [n, labels] and the fold each window was held out in (-1: never)."""
    oof = np.full(y.shape, np.nan)
    held_in = np.full(len(x), -1)
    for f in range(folds):
        train, held = fold_split(plan_groups, fold_of, f)
        mean, scale, weights, bias = _fit(x[train], y[train], l2)
        oof[held] = ((x[held] - mean) / scale) @ weights + bias
        held_in[held] = f
        log(f"fold {f}: {int(train.sum())} training windows, {int(held.sum())} held out")
    return oof, held_in


NEGATIVE_QUANTILE = 0.99
"""A label's threshold lets through at most 1 % of each kind of held-out window that does not
carry it (soundscape, out-of-space call, padded file end, another label's call)."""
KNOWN_NEGATIVE_MARGIN = 0.01
THRESHOLD_RANGE = (0.2, 0.9)
"""Where the negatives alone would put a threshold near 0 (a label nothing resembles in our
negatives), 0.2 still demands evidence: on held-out windows scoring 0.2-0.3, 18 % carried the
label. The cap keeps a label whose negatives reach 0.99 detectable at all (its recall is low
and reported)."""


def fit_platt(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(a, b) minimising the log loss of sigmoid(a * logit + b) over every (window, label) pair.

    One pair for all labels: a label has 2 to 200 held-out positive windows, too few to fit
    its own. Unweighted, so a calibrated score is the frequency of the label among held-out
    windows that score alike (the training mix's prior, not the forest's).
    """
    z, y = logits.ravel(), targets.ravel()

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        u = theta[0] * z + theta[1]
        g = sigmoid(u) - y
        return float((np.logaddexp(0.0, u) - y * u).sum()), np.array([(g * z).sum(), g.sum()])

    result = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    return result.x


def choose_thresholds(scores: np.ndarray, targets: np.ndarray, sources: list[str],
                      known_negatives: np.ndarray | None = None) -> np.ndarray:
    """Per label: the highest `NEGATIVE_QUANTILE` of its held-out negatives' scores over the
    kinds of negative (`sources`), raised above `known_negatives` (per label, the final head's
    highest score on real recordings it was told hold none of its labels), within THRESHOLD_RANGE.

    Chosen from the negatives (85 to 470 windows per kind) rather than by F1 over a label's few
    held-out positives, which would fit those two or three windows; and per kind, because one
    quantile over all negatives is set by the easy ones (measured: 12 of 88 held-out soundscape
    windows named a frog with the pooled quantile, 1 of 88 with this rule; macro recall on held-out
    clean windows 0.92 -> 0.85). The fold heads never saw both halves of a recording, the final
    head does, and it can score a known negative higher: Dendropsophus microcephalus, whose only
    recording is mostly hiss around four short notes, scored up to 0.34 on the El Silencio
    soundscape against a held-out threshold of 0.2.
    """
    sources = np.asarray(sources)
    out = np.full(scores.shape[1], THRESHOLD_RANGE[1])
    for j in range(scores.shape[1]):
        negative = targets[:, j] == 0
        per_kind = [np.quantile(scores[negative & (sources == kind), j], NEGATIVE_QUANTILE)
                    for kind in np.unique(sources[negative])]
        if per_kind:
            out[j] = max(per_kind)
    if known_negatives is not None:
        out = np.maximum(out, np.asarray(known_negatives) + KNOWN_NEGATIVE_MARGIN)
    return np.clip(out, *THRESHOLD_RANGE)


def evaluate(scores: np.ndarray, targets: np.ndarray, kinds: np.ndarray, sources: list[str],
             thresholds: np.ndarray, label_ids: list[str], recordings: list[tuple[str, str, np.ndarray]]) -> dict:
    """Recall and false positives per label, per source of negatives, and per recording.

    Args:
        kinds: "clean" or "mix" per window.
        sources: per window, what a negative is: "soundscape", "call" (a species outside the
            label space), either with " (padded)" when it is a file's zero-padded last window,
            or "label" (it carries another label).
        recordings: (group, label, indices of its clean windows): held out whole, as the
            device would analyse them.
    """
    fired = scores >= thresholds
    per_label = {}
    for j, label in enumerate(label_ids):
        pos = targets[:, j] > 0
        row: dict[str, Any] = {"threshold": round(float(thresholds[j]), 4),
                               "roc_auc": roc_auc(scores[:, j], pos)}
        for kind in ("clean", "mix"):
            mask = pos & (kinds == kind)
            row[f"{kind}_windows"] = int(mask.sum())
            row[f"{kind}_recall"] = float(fired[mask, j].mean()) if mask.any() else None
        row["negative_windows"] = int((~pos).sum())
        row["false_positives"] = int((fired[:, j] & ~pos).sum())
        per_label[label] = row
    negatives = targets.sum(axis=1) == 0
    by_source = {}
    for source in sorted(set(sources)):
        mask = np.array([s == source for s in sources]) & (negatives if source != "label" else True)
        if not mask.any():
            continue
        any_fire = fired[mask].any(axis=1) if source != "label" else (fired & (targets == 0))[mask].any(axis=1)
        by_source[source] = {"windows": int(mask.sum()), "with_a_false_label": int(any_fire.sum())}
    ranked = []
    for group, label, idx in recordings:
        j = label_ids.index(label)
        best = scores[idx].max(axis=0)
        ranked.append({"group": group, "label": label, "top1": bool(best.argmax() == j),
                       "detected": bool(best[j] >= thresholds[j]), "score": round(float(best[j]), 4)})
    def mean(key):
        values = [row[key] for row in per_label.values() if row[key] is not None]
        return float(np.mean(values)) if values else None
    return {
        "windows": int(len(scores)), "positive_windows": int((~negatives).sum()),
        "macro_clean_recall": mean("clean_recall"), "macro_mix_recall": mean("mix_recall"),
        "macro_roc_auc": mean("roc_auc"),
        "negatives_by_source": by_source,
        "recordings_top1": sum(r["top1"] for r in ranked), "recordings_detected": sum(r["detected"] for r in ranked),
        "recordings": ranked, "per_label": per_label,
    }


def _sources(plans: list[WindowPlan], clips: list[LabelledClip]) -> list[str]:
    out = []
    for plan in plans:
        top = clips[plan.layers[-1].clip]
        source = "label" if plan.labels else "soundscape" if top.background else "call"
        padded = plan.kind == "clean" and plan.layers[0].length_s < WINDOW_S - 1e-6
        out.append(source + (" (padded)" if padded and not plan.labels else ""))
    return out


def _held_out_recordings(plans, clips, mask) -> list[tuple[str, str, np.ndarray]]:
    """Each positive group's clean windows among the windows selected by `mask` (positions in it)."""
    position = np.cumsum(mask) - 1
    groups: dict[tuple[str, str], list[int]] = {}
    for i, plan in enumerate(plans):
        if mask[i] and plan.kind == "clean" and plan.labels:
            groups.setdefault((clips[plan.layers[0].clip].group_id, plan.labels[0]), []).append(int(position[i]))
    return [(group, label, np.array(idx)) for (group, label), idx in sorted(groups.items())]


def train(clips: list[LabelledClip], labels: list[dict[str, str]], config: Config = Config(),
          cache_dir: Path | None = None, threads: int = 1, log: Callable[[str], None] = print) -> EmbeddingHead:
    """Train, cross-validate, calibrate and pick thresholds; returns the head refit on everything.

    Args:
        clips: the labelled list (positives with a label, negatives without, backgrounds flagged).
        labels: manifest label entries for every label the head scores, in output order.
        cache_dir: where BirdNET's ONNX and the embeddings are kept (default ~/.cache/...).
    """
    started = time.perf_counter()
    cache_dir = Path(cache_dir or default_cache_dir())
    label_ids = [label["primary_label"] for label in labels]
    unknown = sorted({c.label for c in clips if c.label} - set(label_ids))
    if unknown:
        raise ValueError(f"clips carry labels {unknown} that are not among the head's labels")
    clips = chunk_negatives(split_single_recordings(clips))
    durations = [clip_duration(c) for c in clips]
    fold_of = assign_folds(clips, config.folds)
    plans = plan_clean(clips, durations, config.hop_positive_s, config.hop_negative_s, config.tails_s)
    plans += plan_mixes(clips, durations, config.mixes_per_positive_group, config.mixes_per_negative_clip, config.seed)
    log(f"{len(clips)} clips in {len(fold_of)} groups, {config.folds} folds -> {len(plans)} windows")
    session, model_id = birdnet_session(cache_dir, threads)
    x = embed_plans(plans, clips, session, EmbeddingCache(cache_dir, model_id), log).astype(np.float64)
    y = np.array([[lid in plan.labels for lid in label_ids] for plan in plans], np.float64)
    kinds = np.array([plan.kind for plan in plans])
    sources = _sources(plans, clips)
    oof, held_in = cross_validate(x, y, [p.groups(clips) for p in plans], fold_of, config.folds, config.l2, log)
    held = held_in >= 0
    calibration = fit_platt(oof[held], y[held])
    held_scores = sigmoid(calibration[0] * oof[held] + calibration[1])
    held_sources = [s for s, h in zip(sources, held) if h]
    mean, scale, weights, bias = _fit(x, y, config.l2)
    head = EmbeddingHead(labels, mean, scale, weights.astype(np.float32), bias, calibration, np.zeros(len(labels)))
    real_negatives = (kinds == "clean") & (y.sum(axis=1) == 0)
    head.thresholds = choose_thresholds(held_scores, y[held], held_sources, head.scores(x[real_negatives]).max(axis=0))
    thresholds = head.thresholds
    head.metrics = {
        "held_out": evaluate(held_scores, y[held], kinds[held], held_sources, thresholds,
                             label_ids, _held_out_recordings(plans, clips, held)),
        "train": evaluate(head.scores(x), y, kinds, sources, thresholds, label_ids,
                          _held_out_recordings(plans, clips, np.ones(len(plans), bool))),
    }
    head.training = {
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.__dict__.items()},
        "embedding": EMBEDDING_RECIPE, "birdnet_tflite_sha256_16": model_id,
        "calibration": "Platt, shared by all labels, on out-of-fold logits", "negative_quantile": NEGATIVE_QUANTILE,
        "thresholds": "per label, the highest 99th percentile of held-out negatives over their kinds, "
                      "above the final head's scores on its own negative recordings",
        "threshold_range": list(THRESHOLD_RANGE),
        "windows": {"clean": int((kinds == "clean").sum()), "mix": int((kinds == "mix").sum()),
                    "held_out": int(held.sum())},
        "clips": [{"path": _relative(c.path), "label": c.label, "start_s": c.start_s, "end_s": c.end_s,
                   "group": _relative(c.group_id), "fold": fold_of[c.group_id], "background": c.background,
                   "license": c.license} for c in clips],
    }
    log(f"trained {len(labels)} labels in {time.perf_counter() - started:.1f} s")
    return head


def _relative(path) -> str:
    """Paths stored in the artefact without the trainer's machine-specific prefix."""
    text = str(path)
    return text.split("/shared/data/", 1)[-1]


def summary(head: EmbeddingHead) -> str:
    """A per-label table of the held-out metrics, for people."""
    held = head.metrics["held_out"]
    lines = [f"{'label':>8} {'thr':>5} {'clean':>9} {'mix':>9} {'FP':>9} {'AUC':>6}  name"]
    names = {label["primary_label"]: label["scientific_name"] for label in head.labels}
    for label, row in held["per_label"].items():
        clean = f"{row['clean_recall']:.2f}/{row['clean_windows']}" if row["clean_recall"] is not None else "-"
        mix = f"{row['mix_recall']:.2f}/{row['mix_windows']}" if row["mix_recall"] is not None else "-"
        auc = f"{row['roc_auc']:.3f}" if row["roc_auc"] is not None else "-"
        lines.append(f"{label:>8} {row['threshold']:5.2f} {clean:>9} {mix:>9} "
                     f"{row['false_positives']:>4}/{row['negative_windows']:<4} {auc:>6}  {names[label]}")
    lines.append(f"held-out recordings (parts): true label first {held['recordings_top1']}/{len(held['recordings'])}, "
                 f"detected {held['recordings_detected']}/{len(held['recordings'])}")
    for source, row in held["negatives_by_source"].items():
        lines.append(f"negatives ({source}): {row['with_a_false_label']}/{row['windows']} windows with a false label")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the El Silencio embedding head on BirdNET embeddings.")
    parser.add_argument("--data", type=Path, required=True,
                        help="the shared data folder (recordings.csv, taxonomy.csv)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the .npz head")
    parser.add_argument("--list", type=Path, default=None,
                        help="a labelled list (path,label[,start_s,end_s,group,background]) instead of recordings.csv")
    parser.add_argument("--cache", type=Path, default=None, help=f"embedding cache (default {default_cache_dir()})")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (1 was fastest on 2 cores)")
    args = parser.parse_args(argv)
    if not (args.data / "taxonomy.csv").is_file():
        parser.error(f"{args.data}: no taxonomy.csv here (expected the shared data folder)")
    from exporter.birdnet.labels import map_to_taxonomy, read_birdnet_labels, read_taxonomy
    from exporter.manifest_builder import labels_from_taxonomy

    taxonomy = read_taxonomy(args.data / "taxonomy.csv")
    birdnet = frozenset(map_to_taxonomy(read_birdnet_labels(), taxonomy).site_labels)
    every = read_labelled_list(args.list) if args.list else clips_from_recordings(args.data)
    # Labels BirdNET names (the Little Tinamou) stay BirdNET's: their recordings become negatives.
    clips = [replace(c, label=None) if c.label in birdnet else c for c in every]
    labels = labels_from_taxonomy(args.data / "taxonomy.csv", {c.label for c in clips if c.label})
    head = train(clips, labels, cache_dir=args.cache, threads=args.threads)
    head.site = [{"primary_label": t.primary_label, "scientific_name": t.scientific_name.strip(),
                  "common_name": t.common_name.strip(), "class_name": t.class_name} for t in taxonomy]
    head.training["left_to_birdnet"] = sorted({c.label for c in every if c.label in birdnet})
    print(summary(head))
    print(f"wrote {head.save(args.out)} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

Gryllidae and Tettigoniidae also have a BirdNET source (trainer/birdnet_families.py): BirdNET's
family maximum over its own crickets and katydids. That source gets its own threshold, fitted
by the same rule on the same out-of-fold windows (BirdNET trained on none of them); its score is
moved onto the head's scale so that its threshold lands on the head's, the label takes the larger
of the two, and the label's threshold is then refitted by the same rule on that combined score.

Trained from the shared data, a held-out test set (trainer/heldout.py: one recording per insect
family, about half of each kind of negative) is taken out first: it trains nothing and sets no
threshold, the final head is scored on it (`metrics["test"]`), and the device's end-to-end test
runs it. Each label's training support (recordings, seconds, sources) is stored for the manifest
(trainer/support.py).

Rebuild the committed artefact (a few minutes on one core; seconds with a warm cache) with:

    python -m trainer.embedding_head --data ../shared/data --out exporter/artefacts/elsilencio_head.npz
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.optimize import minimize

from exporter.head_artefacts import EmbeddingHead, sigmoid
from trainer.logistic import fit_logistic
from trainer.augment import TAIL_S, WindowPlan, plan_clean, plan_mixes
from trainer.birdnet_families import (
    FAMILY_GENERA, combine, embed_and_score, family_report, family_species, odds_factor,
)
from trainer.embeddings import EMBEDDING_RECIPE, birdnet_session, default_cache_dir, device_embedding
from trainer.evaluation import evaluate, summary
from trainer.evaluation import held_out_recordings as _held_out_recordings, window_sources as _sources
from trainer.heldout import HELD_OUT_TEST, evaluate_test, relative_path, split_held_out
from trainer.labelled import (
    LabelledClip, assign_folds, chunk_negatives, clip_duration, clips_from_recordings, read_labelled_list,
    split_single_recordings,
)
from trainer.support import training_support

__all__ = ["Config", "EmbeddingHead", "device_embedding", "evaluate", "fit_logistic", "summary", "train", "main"]

FOLDS = 3
"""Allobates femoralis has three recordings: three folds hold each out once (the cicadas' six
go two to a fold; a family with two training recordings is held out in two of the folds)."""
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


def _fit(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Standardize over every window, then fit each label on the windows whose target it knows
    (labels sharing a pattern of unknown targets are fit together: the fits are independent)."""
    mean = x.mean(axis=0)
    scale = np.maximum(x.std(axis=0), FEATURE_FLOOR)
    z = (x - mean) / scale
    weights, bias = np.zeros((x.shape[1], y.shape[1])), np.zeros(y.shape[1])
    known = ~np.isnan(y)
    patterns: dict[bytes, list[int]] = {}
    for j in range(y.shape[1]):
        patterns.setdefault(known[:, j].tobytes(), []).append(j)
    for cols in patterns.values():
        rows = known[:, cols[0]]
        weights[:, cols], bias[cols] = fit_logistic(z[rows], y[rows][:, cols], l2)
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
    known = ~np.isnan(targets)
    z, y = logits[known], targets[known]

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

    Targets may be NaN (unknown): those windows are no negatives of the label, here or in
    `known_negatives`.

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


def window_targets(plans: list[WindowPlan], clips: list[LabelledClip], labels: list[dict[str, str]]) -> np.ndarray:
    """[windows, labels]: 1 where the window carries the label, NaN where some of its audio is no
    safe negative for the label's class (`LabelledClip.unsure`), else 0."""
    y = np.zeros((len(plans), len(labels)))
    for i, plan in enumerate(plans):
        unsure = set().union(*(clips[layer.clip].unsure for layer in plan.layers))
        for j, label in enumerate(labels):
            y[i, j] = 1.0 if label["primary_label"] in plan.labels else np.nan if label["class_name"] in unsure else 0.0
    return y


def _default_families() -> dict[str, list[str]]:
    from exporter.birdnet.labels import read_birdnet_labels

    return family_species(read_birdnet_labels(), FAMILY_GENERA)


def train(clips: list[LabelledClip], labels: list[dict[str, str]], config: Config = Config(),
          cache_dir: Path | None = None, threads: int = 1, log: Callable[[str], None] = print,
          families: dict[str, list[str]] | None = None) -> EmbeddingHead:
    """Train, cross-validate, calibrate and pick thresholds; returns the head refit on everything.

    Args:
        clips: the labelled list (positives with a label, negatives without, backgrounds flagged).
        labels: manifest label entries for every label the head scores, in output order.
        cache_dir: where BirdNET's ONNX and the embeddings are kept (default ~/.cache/...).
        families: label -> BirdNET species whose family maximum is combined with the head's
            score (default: `FAMILY_GENERA`'s species, for the labels among `labels`; {}: none).
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
    families = {lid: species for lid, species in _default_families().items() if lid in label_ids} \
        if families is None else families
    families = dict(sorted(families.items()))  # the artefact's JSON sorts its keys: the same order once loaded
    x, birdnet = embed_and_score(plans, clips, session, cache_dir, model_id, families, log)
    x = x.astype(np.float64)
    y = window_targets(plans, clips, labels)
    kinds = np.array([plan.kind for plan in plans])
    sources = _sources(plans, clips)
    oof, held_in = cross_validate(x, y, [p.groups(clips) for p in plans], fold_of, config.folds, config.l2, log)
    held = held_in >= 0
    calibration = fit_platt(oof[held], y[held])
    held_scores = sigmoid(calibration[0] * oof[held] + calibration[1])
    head_only = held_scores.copy()  # the head's own out-of-fold scores, before any BirdNET source
    held_sources = [s for s, h in zip(sources, held) if h]
    mean, scale, weights, bias = _fit(x, y, config.l2)
    head = EmbeddingHead(labels, mean, scale, weights.astype(np.float32), bias, calibration, np.zeros(len(labels)))
    real_negatives = (kinds == "clean") & ~(y > 0).any(axis=1)
    known_negatives = np.where(y[real_negatives] == 0, head.scores(x[real_negatives]), -np.inf).max(axis=0)
    head.thresholds = choose_thresholds(held_scores, y[held], held_sources, known_negatives)
    combined = {}
    for f, label in enumerate(families):  # BirdNET's family score: its own threshold, then the combined one
        j = label_ids.index(label)
        negative = y[real_negatives][:, [j]] == 0
        birdnet_threshold = float(choose_thresholds(
            birdnet[held][:, [f]], y[held][:, [j]], held_sources,
            np.where(negative, birdnet[real_negatives][:, [f]], -np.inf).max(axis=0))[0])
        k = odds_factor(float(head.thresholds[j]), birdnet_threshold)
        combined[label] = {"species": list(families[label]), "odds_factor": k,
                           "head_threshold": round(float(head.thresholds[j]), 6),
                           "birdnet_threshold": round(birdnet_threshold, 6)}
        held_scores[:, j] = combine(held_scores[:, j], birdnet[held, f], k)
        known = np.where(negative[:, 0], combine(head.scores(x[real_negatives])[:, j], birdnet[real_negatives, f], k),
                         -np.inf).max()
        head.thresholds[j] = choose_thresholds(held_scores[:, [j]], y[held][:, [j]], held_sources, np.array([known]))[0]
        log(f"{label}: head threshold {combined[label]['head_threshold']:.3f}, BirdNET's {birdnet_threshold:.3f} "
            f"(odds x {k:.3g}), combined {head.thresholds[j]:.3f}")
    head.training["birdnet_families"] = combined
    thresholds = head.thresholds
    classes = [label["class_name"] for label in labels]
    head.metrics = {
        "held_out": evaluate(held_scores, y[held], kinds[held], held_sources, thresholds,
                             label_ids, _held_out_recordings(plans, clips, held), classes),
        "train": evaluate(head.combined_scores(x, birdnet), y, kinds, sources, thresholds, label_ids,
                          _held_out_recordings(plans, clips, np.ones(len(plans), bool)), classes),
    }
    if families:
        clean_clip = [relative_path(clips[p.layers[0].clip].path) if p.kind == "clean" else "" for p in plans]
        head.metrics["birdnet_families"] = family_report(
            combined, label_ids, thresholds, head_only, birdnet[held], y[held], kinds[held],
            [c for c, h in zip(clean_clip, held) if h])
    head.training = {
        "birdnet_families": combined,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.__dict__.items()},
        "embedding": EMBEDDING_RECIPE, "birdnet_tflite_sha256_16": model_id.split("-")[0],
        "birdnet_onnx_sha256_12": model_id.split("-")[1],
        "calibration": "Platt, shared by all labels, on out-of-fold logits", "negative_quantile": NEGATIVE_QUANTILE,
        "thresholds": "per label, the highest 99th percentile of held-out negatives over their kinds, "
                      "above the final head's scores on its own negative recordings; for the labels in "
                      "birdnet_families the same rule on BirdNET's family score, then on the combined score",
        "threshold_range": list(THRESHOLD_RANGE),
        "windows": {"clean": int((kinds == "clean").sum()), "mix": int((kinds == "mix").sum()),
                    "held_out": int(held.sum())},
        "clips": [{"path": _relative(c.path), "label": c.label, "start_s": c.start_s, "end_s": c.end_s,
                   "group": _relative(c.group_id), "fold": fold_of[c.group_id], "background": c.background,
                   "license": c.license, "source": c.source} for c in clips],
    }
    log(f"trained {len(labels)} labels in {time.perf_counter() - started:.1f} s")
    return head


_relative = relative_path
"""Paths stored in the artefact without the trainer's machine-specific prefix."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the El Silencio embedding head on BirdNET embeddings.")
    parser.add_argument("--data", type=Path, required=True,
                        help="the shared data folder (recordings.csv, recordings_more.csv, taxonomy.csv)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the .npz head")
    parser.add_argument("--list", type=Path, default=None,
                        help="a labelled list (path,label[,start_s,end_s,group,background,license,source]) instead "
                             "of the shared recording lists (no test set is held out of it)")
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
    # The held-out test set names shared-data recordings; a guide's list is validated by its folds only.
    clips, test = (clips, []) if args.list else split_held_out(clips, HELD_OUT_TEST)
    labels = labels_from_taxonomy(args.data / "taxonomy.csv", {c.label for c in clips if c.label})
    head = train(clips, labels, cache_dir=args.cache, threads=args.threads)
    head.site = [{"primary_label": t.primary_label, "scientific_name": t.scientific_name.strip(),
                  "common_name": t.common_name.strip(), "class_name": t.class_name} for t in taxonomy]
    head.training["left_to_birdnet"] = sorted({c.label for c in every if c.label in birdnet})
    head.training["support"] = training_support(clips, labels)
    head.training["held_out_test"] = [{"path": relative_path(c.path), "label": c.label,
                                       "group": relative_path(c.group_id), "why": HELD_OUT_TEST[relative_path(c.path)]}
                                      for c in test]
    head.metrics["test"] = evaluate_test(head, test, args.cache or default_cache_dir(), args.threads)
    print(summary(head))
    print(f"wrote {head.save(args.out)} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

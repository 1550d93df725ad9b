"""What a head's scores say: recall and false alarms per label, per class, per kind of negative
and per recording, and the table printed after training.

Targets are 1 (the window carries the label), 0 (it does not) or NaN (unknown: audio that is
no safe negative for the label, such as an unlabelled tropical soundscape for the insect
labels; see trainer.labelled.LabelledClip.unsure). Unknown entries count neither as a hit
nor as a false alarm.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainer.augment import WINDOW_S, WindowPlan
from trainer.labelled import LabelledClip
from trainer.metrics import roc_auc


def evaluate(scores: np.ndarray, targets: np.ndarray, kinds: np.ndarray, sources: list[str],
             thresholds: np.ndarray, label_ids: list[str], recordings: list[tuple[str, str, np.ndarray]],
             classes: list[str] | None = None) -> dict:
    """Recall and false positives per label, per class, per source of negatives, and per recording.

    Args:
        kinds: "clean" or "mix" per window.
        sources: per window, what a negative is: "soundscape", "call" (a species outside the
            label space), either with " (padded)" when it is a file's zero-padded last window,
            or "label" (it carries another label).
        recordings: (group, label, indices of its clean windows): held out whole, as the
            device would analyse them.
        classes: each label's class (Amphibia, Insecta ...): `per_class` sums over them.
    """
    fired = scores >= thresholds
    negative_entry = targets == 0  # NaN (unknown) is neither positive nor negative
    false = fired & negative_entry
    per_label = {}
    for j, label in enumerate(label_ids):
        pos = targets[:, j] > 0
        known = pos | negative_entry[:, j]
        row: dict[str, Any] = {"threshold": round(float(thresholds[j]), 4),
                               "roc_auc": roc_auc(scores[known, j], pos[known])}
        for kind in ("clean", "mix"):
            mask = pos & (kinds == kind)
            row[f"{kind}_windows"] = int(mask.sum())
            row[f"{kind}_recall"] = float(fired[mask, j].mean()) if mask.any() else None
        row["negative_windows"] = int(negative_entry[:, j].sum())
        row["false_positives"] = int(false[:, j].sum())
        per_label[label] = row
    negatives = ~(targets > 0).any(axis=1)
    by_source = {}
    for source in sorted(set(sources)):
        mask = np.array([s == source for s in sources]) & (negatives if source != "label" else True)
        if not mask.any():
            continue
        by_source[source] = {"windows": int(mask.sum()), "with_a_false_label": int(false[mask].any(axis=1).sum())}
    ranked = []
    for group, label, idx in recordings:
        j = label_ids.index(label)
        best = scores[idx].max(axis=0)
        ranked.append({"group": group, "label": label, "top1": bool(best.argmax() == j),
                       "detected": bool(best[j] >= thresholds[j]), "score": round(float(best[j]), 4)})

    def mean(key):
        return _mean(row[key] for row in per_label.values())

    per_class = {}
    for name in sorted(set(classes or ())):
        cols = np.array([c == name for c in classes])
        rows = [per_label[lid] for lid, c in zip(label_ids, classes) if c == name]
        parts = [r for r in ranked if classes[label_ids.index(r["label"])] == name]
        other = ~(targets[:, cols] > 0).any(axis=1)  # windows carrying no label of this class
        per_class[name] = {
            "labels": int(cols.sum()),
            "macro_clean_recall": _mean([r["clean_recall"] for r in rows]),
            "macro_mix_recall": _mean([r["mix_recall"] for r in rows]),
            "recordings": len(parts), "recordings_detected": sum(r["detected"] for r in parts),
            "other_windows": int((other & negative_entry[:, cols].any(axis=1)).sum()),
            "other_windows_with_a_false_label": int(false[other][:, cols].any(axis=1).sum()),
            "negative_windows": int((negatives & negative_entry[:, cols].any(axis=1)).sum()),
            "negative_windows_with_a_false_label": int(false[negatives][:, cols].any(axis=1).sum()),
        }
    return {
        "windows": int(len(scores)), "positive_windows": int((~negatives).sum()),
        "macro_clean_recall": mean("clean_recall"), "macro_mix_recall": mean("mix_recall"),
        "macro_roc_auc": mean("roc_auc"), "per_class": per_class,
        "negatives_by_source": by_source,
        "recordings_top1": sum(r["top1"] for r in ranked), "recordings_detected": sum(r["detected"] for r in ranked),
        "recordings": ranked, "per_label": per_label,
    }


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def window_sources(plans: list[WindowPlan], clips: list[LabelledClip]) -> list[str]:
    """Each window's kind of negative (see `evaluate`)."""
    out = []
    for plan in plans:
        top = clips[plan.layers[-1].clip]
        source = "label" if plan.labels else "soundscape" if top.background else "call"
        padded = plan.kind == "clean" and plan.layers[0].length_s < WINDOW_S - 1e-6
        out.append(source + (" (padded)" if padded and not plan.labels else ""))
    return out


def held_out_recordings(plans: list[WindowPlan], clips: list[LabelledClip], mask) -> list[tuple[str, str, np.ndarray]]:
    """Each positive group's clean windows among the windows selected by `mask` (positions in it)."""
    position = np.cumsum(mask) - 1
    groups: dict[tuple[str, str], list[int]] = {}
    for i, plan in enumerate(plans):
        if mask[i] and plan.kind == "clean" and plan.labels:
            groups.setdefault((clips[plan.layers[0].clip].group_id, plan.labels[0]), []).append(int(position[i]))
    return [(group, label, np.array(idx)) for (group, label), idx in sorted(groups.items())]


def summary(head) -> str:
    """A per-label table of the held-out metrics, then per class and the held-out test set, for people."""
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
    for name, row in held.get("per_class", {}).items():
        lines.append(f"{name}: {row['labels']} labels, macro recall clean {row['macro_clean_recall']:.2f} mixed "
                     f"{row['macro_mix_recall']:.2f}, parts detected {row['recordings_detected']}/{row['recordings']}, "
                     f"false {name} on {row['other_windows_with_a_false_label']}/{row['other_windows']} other windows "
                     f"({row['negative_windows_with_a_false_label']}/{row['negative_windows']} negatives)")
    for label, row in head.metrics.get("birdnet_families", {}).items():
        source = head.training["birdnet_families"][label]
        recall, false = row["clean_recall"], row["false_positives"]
        lines.append(f"{label} {names[label]}: BirdNET's {len(source['species'])} species, threshold "
                     f"{source['birdnet_threshold']:.3f} (head {source['head_threshold']:.3f}, odds x "
                     f"{source['odds_factor']:.3g}); out of fold clean recall head/BirdNET/both "
                     f"{recall['head']:.2f}/{recall['birdnet']:.2f}/{recall['combined']:.2f}, false positives "
                     f"{false['head']}/{false['birdnet']}/{false['combined']} of {false['negative_windows']}")
        for neg in row["negative_recordings"]:
            lines.append(f"  negative {neg['path']}: BirdNET {neg['birdnet']:.3f}, combined {neg['combined']:.3f}")
    test = head.metrics.get("test")
    for row in (test or {}).get("recordings", []):
        verdict = f"{row['label']} {'detected' if row['detected'] else 'MISSED'} at {row['score']:.3f}" \
            if row["label"] else "negative"
        birdnet = "".join(f"; BirdNET {label} {score:.3f}" for label, score in row.get("birdnet", {}).items())
        lines.append(f"test {row['path']}: {verdict}; labels over threshold {row['fired'] or 'none'}{birdnet}")
    if test:
        lines.append(f"test negatives: {test['negative_windows_with_a_label']}/{test['negative_windows']} windows "
                     "with a label over its threshold")
    return "\n".join(lines)

"""From fused scores to labels: per-label thresholds, primary and secondary labels.

The primary label of a window is its top-scoring label among those over their thresholds;
secondary labels are every other label over its threshold. A label under its own threshold
is not heard, however high its score, and a window yields nothing when no label reaches its
threshold. A score that is not finite (NaN: the bundle could not score that label on this
window, see `Prediction.unscored_branches`) is never heard.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from device.bundle.manifest import Manifest
from device.domain import Prediction


@dataclass(frozen=True)
class Heard:
    """One label heard in one window."""

    label: str
    index: int
    score: float
    primary: bool


def thresholds_for(manifest: Manifest, overrides: dict[str, float] | None = None, floor: float = 0.0) -> np.ndarray:
    """The bundle's per-label thresholds, with the device's overrides and a floor applied.

    Overrides for labels the bundle does not know are ignored (a config written for another
    bundle must not stop the device); `unknown_overrides` reports them.
    """
    overrides = overrides or {}
    values = [max(floor, overrides.get(label, manifest.threshold(label))) for label in manifest.label_ids]
    return np.asarray(values, dtype=np.float32)


def unknown_overrides(manifest: Manifest, overrides: dict[str, float]) -> list[str]:
    known = set(manifest.label_ids)
    return sorted(label for label in overrides if label not in known)


class Decider:
    def __init__(self, labels: tuple[str, ...], thresholds: np.ndarray):
        if len(labels) != len(thresholds):
            raise ValueError(f"{len(labels)} labels but {len(thresholds)} thresholds")
        self.labels = labels
        self.thresholds = thresholds

    def decide(self, prediction: Prediction) -> list[Heard]:
        """Labels heard in the window, primary first, then secondaries by descending score."""
        return self.heard(prediction.scores)

    def heard(self, scores: np.ndarray) -> list[Heard]:
        """`decide` on a window's fused scores alone (the server's /analyze has no Prediction)."""
        finite = np.isfinite(scores)
        over = np.flatnonzero(finite & (np.where(finite, scores, -np.inf) >= self.thresholds))
        if len(over) == 0:
            return []
        top = int(over[np.argmax(scores[over])])
        heard = [Heard(self.labels[i], int(i), float(scores[i]), primary=(i == top)) for i in over]
        return sorted(heard, key=lambda h: (not h.primary, -h.score))

"""A run's detector: the decider (per-label thresholds) and the merger (windows -> events), wired once.

The live pipeline and the watch folder both turn predictions into detection events the same
way: the bundle's thresholds with the device's overrides and floor, the privacy filter's verdict
on each window (`[privacy]`: device/detect/privacy.py), and events stamped with the device (its
id, site and coordinates), the bundle and the tour. This is that wiring; each caller only pushes
predictions.
"""

from __future__ import annotations

from dataclasses import replace

from device.bundle.manifest import Manifest
from device.config import DetectionSettings, PrivacySettings, Settings
from device.detect.decide import Decider, thresholds_for
from device.detect.merge import EventMerger, EventStamp, MergeResult, OpenEvent
from device.detect.privacy import PrivacyFilter
from device.domain import Prediction


class Detector:
    """Predictions in, detection events out (opened, extended, closed)."""

    def __init__(self, manifest: Manifest, detection: DetectionSettings, stamp: EventStamp,
                 privacy: PrivacySettings | None = None, context_labels: tuple[str, ...] | None = None):
        """
        Args:
            manifest: The running bundle's manifest (labels and thresholds).
            detection: The device's `[detection]` settings (threshold overrides, floor, merge gap).
            stamp: What every detection carries besides what the audio says.
            privacy: The device's `[privacy]` settings (default: on, as shipped).
            context_labels: The context outputs the engine runs (`Engine.context_labels`;
                default: every one the manifest declares).
        """
        self.decider = Decider(
            manifest.label_ids, thresholds_for(manifest, detection.thresholds, detection.min_threshold)
        )
        self.merger = EventMerger(stamp, detection.merge_gap_windows)
        self.privacy = PrivacyFilter(privacy or PrivacySettings(),
                                     manifest.context_labels if context_labels is None else context_labels)

    @classmethod
    def for_engine(cls, engine, settings: Settings, tour_id: str | None = None) -> "Detector":
        """The detector for a run of `engine` (a loaded `device.engine.engine.Engine`) on this device."""
        manifest = engine.manifest
        stamp = EventStamp.for_device(settings.device, manifest.name, manifest.version, engine.bundle.sha256, tour_id)
        return cls(manifest, settings.detection, stamp, settings.privacy, engine.context_labels)

    @property
    def stamp(self) -> EventStamp:
        return self.merger.stamp

    def set_tour(self, tour_id: str | None) -> None:
        """Events opened from now on belong to `tour_id`."""
        self.merger.stamp = replace(self.merger.stamp, tour_id=tour_id)

    def push(self, prediction: Prediction) -> MergeResult:
        """Decide what the window heard and merge it into the open events, with the privacy
        filter's verdict (a loud window, with suppression on, hears nothing)."""
        verdict = self.privacy.judge(prediction)
        heard = [] if verdict.loud else self.decider.decide(prediction)
        result = self.merger.push(prediction, heard, private=verdict.private)
        result.suppressed = verdict.loud
        return result

    def flush(self) -> list[OpenEvent]:
        """Close every open event (the source ended or the run stops)."""
        return self.merger.flush()

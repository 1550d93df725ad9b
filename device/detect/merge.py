"""Merging consecutive windows with the same label into one detection event.

An event opens in the first window a label is heard, is extended by every following window
that hears it again (overlapping windows included), and closes after `gap_windows` further
windows without it, or when the source ends. The caller stores an event when it opens (so
sound-to-log latency stays one window), updates it as it grows, and finalises it on close.

Privacy (device/detect/privacy.py): each window comes with whether it is private (a person was
heard). An event opened in or right after a private window, or open during one (heard in it, in
its gap, or closed by it), gets `clip_withheld = "privacy"`, which never goes back to None: the
pipeline then writes no clip of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from device.detect.decide import Heard
from device.domain import Detection, Prediction

PRIVACY = "privacy"
"""`Detection.clip_withheld` for an event a person was heard in or next to."""


@dataclass
class OpenEvent:
    detection: Detection
    peak_audio: np.ndarray
    """The native-rate audio of the peak window: what the clip keeps."""
    peak_rate_hz: int
    misses: int = 0


@dataclass
class MergeResult:
    opened: list[OpenEvent] = field(default_factory=list)
    extended: list[OpenEvent] = field(default_factory=list)
    closed: list[OpenEvent] = field(default_factory=list)
    private: bool = False
    """The window was private (a person heard): no event it touched keeps a clip."""
    suppressed: str | None = None
    """The loud class the window was suppressed for (it heard nothing), or None."""


@dataclass(frozen=True)
class EventStamp:
    """What every detection of a run carries besides what the audio says."""

    device_id: str
    bundle_name: str
    bundle_version: str
    bundle_sha256: str
    tour_id: str | None = None
    site: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    coordinate_uncertainty_m: float | None = None
    """Where the device is (`[device]`; see `EventStamp.for_device`)."""

    @classmethod
    def for_device(cls, device, bundle_name: str, bundle_version: str, bundle_sha256: str,
                   tour_id: str | None = None) -> "EventStamp":
        """The stamp of a run on the device `device` (its `[device]` settings): its id, site and
        coordinates, and the coordinates' uncertainty only with coordinates to qualify."""
        placed = device.latitude is not None and device.longitude is not None
        return cls(device.id, bundle_name, bundle_version, bundle_sha256, tour_id, site=(device.site or "").strip() or None,
                   latitude=device.latitude if placed else None, longitude=device.longitude if placed else None,
                   coordinate_uncertainty_m=device.coordinate_uncertainty_m if placed else None)


class EventMerger:
    def __init__(self, stamp: EventStamp, gap_windows: int = 0):
        self.stamp = stamp
        self.gap_windows = gap_windows
        self.open: dict[str, OpenEvent] = {}
        self._last_private = False
        """Whether the window pushed before was private: an event opening now is next to it."""

    def _branch_scores(self, prediction: Prediction, index: int) -> dict[str, float]:
        return {name: float(scores[index]) for name, scores in prediction.branch_scores.items()}

    def _new(self, prediction: Prediction, heard: Heard) -> OpenEvent:
        window = prediction.window
        detection = Detection(
            label=heard.label,
            started_on=window.started_on,
            ended_on=window.ended_on,
            confidence=heard.score,
            branch_scores=self._branch_scores(prediction, heard.index),
            bundle_name=self.stamp.bundle_name,
            bundle_version=self.stamp.bundle_version,
            bundle_sha256=self.stamp.bundle_sha256,
            device_id=self.stamp.device_id,
            tour_id=self.stamp.tour_id,
            source=window.source,
            start_s=window.start_s,
            end_s=window.end_s,
            secondary=not heard.primary,
            peak_start_s=window.start_s,
            site=self.stamp.site,
            latitude=self.stamp.latitude,
            longitude=self.stamp.longitude,
            coordinate_uncertainty_m=self.stamp.coordinate_uncertainty_m,
            context_scores=dict(prediction.context),
        )
        return OpenEvent(detection, window.samples, window.sample_rate_hz)

    def push(self, prediction: Prediction, heard: list[Heard], private: bool = False) -> MergeResult:
        """Merge one window: `heard` its labels, `private` whether a person was heard in it."""
        result = MergeResult(private=private)
        heard_now = {h.label: h for h in heard}
        for label in list(self.open):
            if private:  # heard in, in the gap of, or closed by a private window
                self.open[label].detection.clip_withheld = PRIVACY
            if label in heard_now:
                continue
            event = self.open[label]
            event.misses += 1
            if event.misses > self.gap_windows:
                result.closed.append(self.open.pop(label))
        for label, h in heard_now.items():
            event = self.open.get(label)
            if event is None:
                event = self.open[label] = self._new(prediction, h)
                if private or self._last_private:
                    event.detection.clip_withheld = PRIVACY
                result.opened.append(event)
                continue
            before = event.detection.confidence
            event.detection.extend(prediction, h.score, self._branch_scores(prediction, h.index), not h.primary)
            if event.detection.confidence > before:
                event.peak_audio, event.peak_rate_hz = prediction.window.samples, prediction.window.sample_rate_hz
            event.misses = 0
            result.extended.append(event)
        self._last_private = private
        return result

    def flush(self) -> list[OpenEvent]:
        """Close every open event (the source ended or the run stops)."""
        closed = list(self.open.values())
        self.open.clear()
        self._last_private = False
        return closed

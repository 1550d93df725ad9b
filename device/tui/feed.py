"""The one channel from the pipeline to the screen, read without ever waiting.

`LiveFeed.poll()` runs on the UI thread a few times a second. It takes what is waiting on
`Pipeline.ui_events` (a `DropOldestQueue`: the inference and writer threads `put` without
blocking, and when the screen falls behind its OLDEST events are dropped and counted as
`ui_events_dropped`, never as audio windows), up to `MAX_EVENTS_PER_POLL`, and returns
them with a status snapshot. A screen that is slow, frozen or closed therefore costs the
pipeline nothing but those counted UI events; when it sees the counter move, the app
reloads the tour from the log, which the writer thread keeps complete.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass, field
from typing import Protocol

from device.domain import Detection, Prediction
from device.tui.status import DeviceStatus, Level, LevelMeter, StatusCollector

UNCHANGED = object()
"""`FeedUpdate.tour_id` when the feed has no news about the tour."""
MAX_EVENTS_PER_POLL = 2048
"""Events taken per poll: more than the channel holds (pipeline.UI_QUEUE), so one poll
catches up; bounded so a poll can never spin."""


@dataclass
class FeedUpdate:
    """What arrived since the last poll."""

    predictions: list[Prediction] = field(default_factory=list)
    detections: list[tuple[Detection, str]] = field(default_factory=list)
    """(detection, 'open' | 'update' | 'close'), in the order the writer stored them."""
    status: DeviceStatus | None = None
    level: Level | None = None
    lost_events: int = 0
    """UI events the channel dropped since the last poll: reload the tour from the log."""
    spectrogram: object = None
    """A ready spectrogram image ([rows, width] shades), from feeds without mels (the phone view)."""
    tour_id: object = UNCHANGED
    """The tour the device moved to, from feeds that follow another screen (the phone view)."""


class Feed(Protocol):
    """Where the app's data comes from: the live pipeline, or (phone view) the device's state file."""

    live_controls: bool
    """Whether this feed can start and stop tours (only the device's own screen can)."""

    def poll(self) -> FeedUpdate: ...

    def set_tour(self, tour_id: str | None) -> None: ...

    def stop(self) -> None: ...


class LiveFeed:
    """The live pipeline's channel and status, for the device's own screen."""

    live_controls = True

    def __init__(self, pipeline, collector: StatusCollector, meter: LevelMeter | None = None):
        self.pipeline = pipeline
        self.collector = collector
        self.meter = meter or LevelMeter()
        self._dropped_seen = 0

    def drain(self, limit: int = MAX_EVENTS_PER_POLL) -> list:
        """Take what waits on the channel, never blocking (an empty channel returns at once)."""
        events = []
        channel = self.pipeline.ui_events
        for _ in range(limit):
            try:
                events.append(channel.get(timeout=0))
            except queue.Empty:
                break
        return events

    def poll(self) -> FeedUpdate:
        update = FeedUpdate()
        for event in self.drain():
            if event.kind == "prediction" and event.prediction is not None:
                update.predictions.append(event.prediction)
            elif event.kind == "detection" and event.detection is not None:
                update.detections.append((event.detection, event.state))
        update.status = self.collector.collect()
        mic = self.collector.mic_status()
        if mic is not None:
            update.level = self.meter.from_mic(mic)
        elif update.predictions:
            window = update.predictions[-1].window
            update.level = self.meter.from_samples(window.samples[: window.real_samples])
        dropped = update.status.ui_events_dropped
        update.lost_events = dropped - self._dropped_seen
        self._dropped_seen = dropped
        return update

    def set_tour(self, tour_id: str | None) -> None:
        self.pipeline.set_tour(tour_id)

    def stop(self) -> None:
        """Stop capturing; what was captured is still analysed and stored (the writer flushes)."""
        self.pipeline.stop()

    def finished(self, timeout: float = 0.0) -> bool:
        return self.pipeline.wait(timeout=timeout)

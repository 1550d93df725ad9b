"""The status line's facts, gathered without ever waiting on the pipeline.

Everything here is a snapshot read: `Pipeline.status()` (a copy under a short lock), the
microphone's `status()` (same), two small reads of the UI's own Store, the free space
under the clips folder, and the battery where the Pi reports one in sysfs. The slower
reads (SQLite, disk, battery) are refreshed every few seconds, not every frame.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from device.domain import parse_iso_utc
from device.sync.status import battery_percent  # one reader, shared with the status payload

log = logging.getLogger(__name__)

CLIP_LEVEL = 0.999
"""A sample this close to full scale counts as clipped (the microphone's own rule)."""
CLIPPING_HOLD_S = 3.0
"""The clipping warning stays up this long after the last clipped sample, so it is seen."""
SLOW_EVERY_S = 5.0
"""Seconds between the slower reads (outbox, disk, battery): none changes faster than that matters."""
SILENCE_DBFS = -120.0


@dataclass(frozen=True)
class Level:
    """The input meter: how loud the latest audio is and whether it clipped."""

    dbfs: float
    """RMS level relative to full scale."""
    peak: float
    """Largest magnitude (1.0 is full scale)."""
    clipping: bool
    """Clipped samples arrived within the last CLIPPING_HOLD_S."""
    clipped_total: int


@dataclass(frozen=True)
class DeviceStatus:
    """One status line's worth of facts (the app shows it; the phone view reads it as JSON)."""

    source: str = ""
    source_state: str = "starting"
    """'capturing', 'reconnecting', 'ended', 'stopped'..."""
    live: bool = True
    bundle: str = ""
    rtf: float = 0.0
    windows_inferred: int = 0
    windows_dropped: int = 0
    windows_unscored: int = 0
    """Windows a branch gave NaN/infinity on or failed on (shown only when non-zero)."""
    branch_failures: int = 0
    ui_events_dropped: int = 0
    detections: int = 0
    clips_withheld: int = 0
    """Detections stored without their clip because people were talking in or next to their
    windows (the privacy filter; shown only when non-zero)."""
    pending_sync: int | None = None
    """Messages the server has not confirmed yet (pending + sent-unconfirmed): what is not safe
    off the device. None when the outbox could not be read."""
    last_sync_on: datetime | None = None
    """When a receipt from the server last confirmed a message."""
    sync_error: str | None = None
    """Why the sync worker cannot deliver right now (None: fine, or sync is off)."""
    clip_disk_free_bytes: int | None = None
    battery_percent: int | None = None
    error: str | None = None
    finished: bool = False

    def to_dict(self) -> dict:
        values = dict(self.__dict__)
        values["last_sync_on"] = self.last_sync_on.isoformat() if self.last_sync_on else None
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "DeviceStatus":
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        if known.get("last_sync_on"):
            known["last_sync_on"] = parse_iso_utc(known["last_sync_on"])
        return cls(**known)


class LevelMeter:
    """The input level, from the microphone's own meter or, for a file, from the latest window."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._clipped_total = 0
        self._clipped_at: float | None = None
        self.level: Level | None = None

    def from_mic(self, mic) -> Level:
        if mic.clipped_samples > self._clipped_total:
            self._clipped_at = self._clock()
        self._clipped_total = mic.clipped_samples
        self.level = self._level(mic.level_dbfs, mic.peak)
        return self.level

    def from_samples(self, samples: np.ndarray) -> Level:
        magnitude = np.abs(samples)
        peak = float(magnitude.max()) if len(samples) else 0.0
        rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0
        clipped = int(np.count_nonzero(magnitude >= CLIP_LEVEL))
        if clipped:
            self._clipped_at = self._clock()
            self._clipped_total += clipped
        self.level = self._level(20 * math.log10(rms) if rms > 0 else SILENCE_DBFS, peak)
        return self.level

    def _level(self, dbfs: float, peak: float) -> Level:
        clipping = self._clipped_at is not None and self._clock() - self._clipped_at <= CLIPPING_HOLD_S
        return Level(dbfs=dbfs, peak=peak, clipping=clipping, clipped_total=self._clipped_total)


class StatusCollector:
    """Builds `DeviceStatus` from the pipeline, the source and the UI's Store."""

    def __init__(self, pipeline, source, store, clips_dir: Path, live: bool, clock=time.monotonic, sync=None):
        self.sync = sync
        """The run's SyncWorker, when sync is enabled: its last error is shown to the guide."""
        self.pipeline = pipeline
        self.source = source
        self.store = store
        self.clips_dir = Path(clips_dir)
        self.live = live
        self._clock = clock
        self._slow_at = -math.inf
        self._slow: dict = {}
        self._closed_seen = -1

    def mic_status(self):
        """The microphone's status, or None for a source without one (a file)."""
        status = getattr(self.source, "status", None)
        return status() if callable(status) else None

    def collect(self) -> DeviceStatus:
        s = self.pipeline.status()
        mic = self.mic_status()
        if self._clock() - self._slow_at >= SLOW_EVERY_S or s.detections_closed != self._closed_seen:
            # A closed detection queues a message: the pending count is read again at once.
            self._slow = self._slow_reads()
            self._slow_at = self._clock()
            self._closed_seen = s.detections_closed
        state = s.source_state
        if mic is not None and mic.state != "capturing" and not s.finished:
            state = mic.state
        if s.finished:
            state = "ended" if not self.live else "stopped"
        return DeviceStatus(
            source=s.source,
            source_state=state,
            live=self.live,
            bundle=s.bundle,
            rtf=s.rtf,
            windows_inferred=s.windows_inferred,
            windows_dropped=s.windows_dropped,
            windows_unscored=s.windows_unscored,
            branch_failures=s.branch_failures,
            ui_events_dropped=s.ui_events_dropped,
            detections=s.detections_closed,
            clips_withheld=s.clips_withheld,
            error=s.error,
            finished=s.finished,
            sync_error=self.sync.state.last_error if self.sync is not None else None,
            **self._slow,
        )

    def _slow_reads(self) -> dict:
        values: dict = {"battery_percent": battery_percent()}
        try:
            values["clip_disk_free_bytes"] = shutil.disk_usage(self.clips_dir if self.clips_dir.exists() else self.clips_dir.parent).free
        except OSError:
            values["clip_disk_free_bytes"] = None
        try:
            values["pending_sync"] = self.store.not_confirmed_count()
            values["last_sync_on"] = self.store.last_confirmed_on()
        except Exception as exc:  # a locked or failing card: show unknowns, keep listening
            log.warning("status: could not read the outbox: %s", exc)
            values["pending_sync"] = None
            values["last_sync_on"] = None
        return values

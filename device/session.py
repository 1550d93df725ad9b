"""A device session: one bundle, one source, one pipeline, and the tour it logs into.

The library object behind `explorer run` (headless) and the TUI: it prepares the store
(migrations, recovery of events a power cut left open), records the bundle, opens a tour
when none is active, runs the pipeline, and closes everything in order on the way out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from device.audio.files import AUDIO_EXTENSIONS
from device.audio.types import AudioSource
from device.config import Settings
from device.domain import Detection
from device.engine.engine import Engine
from device.home import ExplorerHome
from device.pipeline import Pipeline

log = logging.getLogger(__name__)


def open_source(spec: str, settings: Settings, realtime: bool = False, min_rate_hz: int = 0) -> tuple[AudioSource, bool]:
    """The source a `--source` value names, and whether it is live.

    `mic` means the configured microphone; an existing file is read (paced with `realtime`);
    anything else is a microphone name or index. A file recorded below `min_rate_hz` (the
    bundle's `Engine.min_sample_rate_hz`) is refused here, before a tour starts; a
    microphone's rate is checked when its first block arrives.

    Raises:
        AudioError: no such file, an unreadable one, or one below `min_rate_hz`.
    """
    path = Path(spec)
    if path.is_file():
        from device.audio.files import FileSource
        from device.audio.windows import check_rate

        source = FileSource(path, realtime=realtime)
        try:
            check_rate(source.name, source.sample_rate_hz, min_rate_hz)
        except BaseException:
            source.close()
            raise
        return source, realtime
    if "/" in spec or path.suffix.lower() in AUDIO_EXTENSIONS:
        from device.audio.types import AudioError

        raise AudioError(f"{spec}: no such file (and a microphone name would not look like a path)")
    from device.audio.mic import MicrophoneSource

    device = settings.audio.microphone if spec == "mic" else spec
    return MicrophoneSource(device, reconnect_max_s=settings.audio.reconnect_max_s), True


@dataclass
class SessionResult:
    tour_id: str | None
    status: object


class DeviceSession:
    def __init__(self, home: ExplorerHome, settings: Settings, engine: Engine):
        from device.store import Store, StoreError

        self.home = home
        self.settings = settings
        self.engine = engine
        self.store = Store.open(home.database, device=settings.device)  # its tours are reported as this device
        recovered = self.store.recover_open_detections()
        if recovered:
            log.warning("closed %d detection(s) left open by an interrupted run", recovered)
        try:
            swept = self.store.sweep_orphan_clips(home.clips)
        except (StoreError, OSError) as exc:  # tidying up must not keep the device from listening
            log.warning("could not sweep orphan clips: %s", exc)
        else:
            if swept.removed:
                log.warning("removed %d clip file(s) (%d bytes) an interrupted run left without their row",
                            len(swept.removed), swept.freed_bytes)
        manifest = engine.manifest
        self.store.record_bundle(manifest.name, manifest.version, engine.bundle.sha256, manifest.labels)
        self.pipeline: Pipeline | None = None
        self.own_tour = False
        self.sync = None
        if settings.sync.enabled:
            from device.sync.status import run_status_source
            from device.sync.worker import SyncWorker

            # The status payload's run facts: bundle, and from the pipeline (once started) the
            # real-time factor and windows dropped; clip disk and battery are read on each call.
            source = run_status_source(settings.device.id, manifest.name, manifest.version, home.clips,
                                       lambda: self.pipeline)
            self.sync = SyncWorker(home.database, settings.sync, settings.device.id, status_source=source).start()

    def ensure_tour(self, name: str | None = None) -> str:
        """The active tour's id, starting one (owned by this session) when none is active."""
        tour = self.store.active_tour()
        if tour is None:
            tour = self.store.start_tour(name=name)
            self.own_tour = True
        return tour.tour_id

    def start(
        self,
        source: AudioSource,
        live: bool,
        tour_id: str | None,
        on_detection: Callable[[Detection], None] | None = None,
        ui_queue=None,
    ) -> Pipeline:
        """Start the pipeline on `source`; `ui_queue` replaces its UI channel before any thread runs."""
        if self.sync is not None:  # a closed detection is in the outbox: send it soon
            on_detection = chain(on_detection, self.sync.wake)
        self.pipeline = Pipeline(
            self.engine,
            source,
            self.settings,
            self.home.database,
            self.home.clips,
            live=live,
            tour_id=tour_id,
            on_detection=on_detection,
        )
        if ui_queue is not None:
            self.pipeline.ui_events = ui_queue
        return self.pipeline.start()

    def finish(self, stop_own_tour: bool = True) -> None:
        """Stop the pipeline (flushing what it holds), stop the tour it started, close the store."""
        if self.pipeline is not None:
            self.pipeline.stop()
            self.pipeline.wait()
        from device.store import StoreError

        try:
            try:
                if stop_own_tour and self.own_tour:
                    active = self.store.active_tour()
                    if active is not None:
                        self.store.stop_tour(active.tour_id)  # before the last drain: its end goes too
            except StoreError as exc:  # a full card: the tour stays open, the next start can stop it
                log.error("%s", exc)
            if self.sync is not None:
                self.sync.stop()  # one last drain of what the pipeline just flushed, and the tour's end
        finally:
            self.store.close()


def chain(first: Callable[[Detection], None] | None, then: Callable[[Detection], None]) -> Callable[[Detection], None]:
    """One on_detection callback that calls `first` (when given), then `then`."""
    if first is None:
        return then

    def both(detection: Detection) -> None:
        first(detection)
        then(detection)

    return both

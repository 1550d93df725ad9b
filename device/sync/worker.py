"""The sync worker: drains the outbox to the broker on its own thread while the device runs.

It wakes every `[sync] interval_s`, and soon after each new detection (`wake()`), connects
when it has no connection (with exponential back-off while the broker is unreachable: the
trail has no network for hours), drains, and goes back to sleep. It owns its own SQLite
connection and touches neither capture nor inference, so a dead link costs the pipeline
nothing. On stop it makes one last bounded drain, connecting first if it was still
connecting or waiting out a back-off, so a guide who walks back into coverage and quits
sends what is pending.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from device.config import SyncSettings
from device.domain import utc_now
from device.sync.publisher import OutboxPublisher, SyncError

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 2.0
BACKOFF_MAX_S = 300.0
"""A broker that stays unreachable is tried again at most every five minutes."""
FINAL_DRAIN_LIMIT = 500
"""Messages the last drain at stop may send: enough for a day's tour, bounded so quitting stays quick."""


@dataclass(frozen=True)
class SyncState:
    connected: bool = False
    last_ok_on: datetime | None = None
    last_error: str | None = None
    drains: int = 0
    sent: int = 0


class SyncWorker:
    def __init__(self, database: Path, settings: SyncSettings, device_id: str,
                 backoff_first_s: float = BACKOFF_FIRST_S, backoff_max_s: float = BACKOFF_MAX_S):
        self.database = Path(database)
        self.settings = settings
        self.device_id = device_id
        self.backoff_first_s = backoff_first_s
        self.backoff_max_s = backoff_max_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._state = SyncState()
        self._thread = threading.Thread(target=self._run, name="explorer-sync", daemon=True)

    # -- control (any thread) ---------------------------------------------------------
    def start(self) -> "SyncWorker":
        self._thread.start()
        return self

    def wake(self, *_ignored) -> None:
        """Drain soon (e.g. a detection just closed). Usable directly as an on_detection callback."""
        self._wake.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Make a last bounded drain (connecting first if need be), disconnect, and join the thread."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("sync: still busy after %.0f s at stop; leaving the rest pending", timeout_s)

    @property
    def state(self) -> SyncState:
        with self._lock:
            return self._state

    def _update(self, **changes) -> None:
        with self._lock:
            self._state = dataclasses.replace(self._state, **changes)

    # -- the thread ---------------------------------------------------------------------
    def _run(self) -> None:
        from device.store import Store, StoreError

        store = Store.open(self.database)
        publisher: OutboxPublisher | None = None
        backoff = self.backoff_first_s
        try:
            while not self._stop.is_set():
                self._wake.clear()
                if publisher is None:
                    try:
                        publisher = OutboxPublisher(store, self.settings, self.device_id).connect()
                    except SyncError as exc:
                        if str(exc) != self.state.last_error:
                            log.warning("sync: %s; retrying with back-off", exc)
                        self._update(connected=False, last_error=str(exc))
                        self._stop.wait(backoff)
                        backoff = min(backoff * 2, self.backoff_max_s)
                        continue
                    self._update(connected=True, last_error=None)
                try:
                    report = publisher.drain()
                except StoreError as exc:  # a failing card: keep the messages, try later
                    log.error("sync: %s", exc)
                    self._update(last_error=str(exc))
                    self._wake.wait(self.settings.interval_s)
                    continue
                self._record(report)
                if report.error is not None:  # lost link or refused messages: wait before trying again
                    log.warning("sync: %s; retrying in %.0f s", report.error, backoff)
                    publisher.close()
                    publisher = None
                    self._update(connected=False, last_error=report.error)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.backoff_max_s)
                    continue
                backoff = self.backoff_first_s  # a clean drain: the link works again
                self._wake.wait(self.settings.interval_s)
            publisher = self._final_drain(store, publisher)
        except Exception:  # never take the device down with the link; say so loudly
            log.exception("sync: the worker stopped on an unexpected error; detections stay in the outbox")
        finally:
            if publisher is not None:
                publisher.close()
            store.close()
            self._update(connected=False)

    def _final_drain(self, store, publisher: OutboxPublisher | None) -> OutboxPublisher | None:
        """The last drain at stop: connect first when the worker was still connecting or in
        back-off (bounded by the publisher's CONNECT_TIMEOUT_S), so what the pipeline just
        flushed is sent whenever the broker can be reached at all. Returns the publisher to close."""
        from device.store import StoreError

        if publisher is None or not publisher.connected:
            if publisher is not None:
                publisher.close()
            try:
                publisher = OutboxPublisher(store, self.settings, self.device_id).connect()
            except SyncError as exc:
                log.info("sync: no last drain (%s); %d message(s) stay pending", exc, store.pending_count())
                self._update(last_error=str(exc))
                return None
        try:
            self._record(publisher.drain(limit=FINAL_DRAIN_LIMIT))
        except StoreError as exc:
            log.error("sync: last drain: %s", exc)
        return publisher

    def _record(self, report) -> None:
        state = self.state
        self._update(
            drains=state.drains + 1,
            sent=state.sent + report.ok,
            last_ok_on=utc_now() if report.ok else state.last_ok_on,
        )

"""The sync worker: drains the outbox and applies the server's receipts on its own thread.

It wakes every `[sync] interval_s`, soon after each new detection (`wake()`) and on each
receipt, connects when it has no connection (with exponential back-off while the broker is
unreachable: the trail has no network for hours), applies the receipts and clip acks that
arrived, drains what is pending, publishes the device's status when it is due, and, only when
the drain left nothing pending, sends a few clip chunks (device/sync/clips.py), stopping
between chunks as soon as `wake()` says new messages are queued: a clip never delays a
detection. Then it goes back to sleep. It owns its own SQLite connection and touches neither
capture nor inference, so a dead link costs the pipeline nothing.

On stop it makes one last bounded drain, connecting first if it was still connecting or
waiting out a back-off, gives the receipts a few seconds to come back (so a guide who walks
back into coverage and quits leaves little unconfirmed), publishes the status with online
false, and disconnects.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from device.config import SyncSettings
from device.domain import Status, utc_now
from device.sync import status as device_status
from device.sync.clips import ChunkSent, ClipUploader
from device.sync.publisher import OutboxPublisher, SyncError
from device.sync.receipts import ReceiptReport
from device.sync.session import destination_of, worker_client_id

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 2.0
BACKOFF_MAX_S = 300.0
"""A broker that stays unreachable is tried again at most every five minutes."""
FINAL_DRAIN_LIMIT = 500
"""Messages the last drain at stop may send: enough for a day's tour, bounded so quitting stays quick."""
FINAL_RECEIPT_WAIT_S = 5.0
"""How long the stop waits for receipts after its last drain: an ingest at work answers within a
second; one that is down costs the guide these seconds once, and the rest stays unconfirmed."""


@dataclass(frozen=True)
class SyncState:
    connected: bool = False
    last_ok_on: datetime | None = None
    last_error: str | None = None
    drains: int = 0
    sent: int = 0
    """Messages the broker acknowledged."""
    confirmed: int = 0
    """Messages the server's receipts confirmed."""
    refused: int = 0
    receipts: int = 0
    """Receipts applied (those ignored as malformed or for another device are not counted)."""
    statuses: int = 0
    """Status messages published (the goodbye at stop included)."""
    clip_chunks: int = 0
    """Clip chunks the broker acknowledged."""
    clip_bytes: int = 0
    """Their bytes on the wire (what the daily clip budget counts)."""


class SyncWorker:
    """Args:
        status_source: what the run knows for the status payload (device/sync/status.py
            `run_status_source`); called on the worker's thread. None: the outbox's own facts.
        clock: the clip budget's time (its UTC day, the clip ack timeout); tests move it.
        on_clip_sent: called on the worker's thread after each clip chunk's PUBACK.
    """

    def __init__(self, database: Path, settings: SyncSettings, device_id: str,
                 backoff_first_s: float = BACKOFF_FIRST_S, backoff_max_s: float = BACKOFF_MAX_S,
                 status_source: Callable[[], Status] | None = None,
                 final_receipt_wait_s: float = FINAL_RECEIPT_WAIT_S, clock: Callable[[], datetime] = utc_now,
                 on_clip_sent: Callable[[ChunkSent], None] | None = None):
        self.database = Path(database)
        self.settings = settings
        self.device_id = device_id
        self.backoff_first_s = backoff_first_s
        self.backoff_max_s = backoff_max_s
        self.status_source = status_source
        self.final_receipt_wait_s = final_receipt_wait_s
        self.clock = clock
        self.on_clip_sent = on_clip_sent
        self._wake = threading.Event()
        self._queued = threading.Event()
        """Set by `wake()`: new messages are queued, so a clip pass stops at its next chunk."""
        self._stop = threading.Event()
        self._clips: ClipUploader | None = None
        self._lock = threading.Lock()
        self._state = SyncState()
        self.destination = destination_of(settings)
        self._schedule = device_status.StatusSchedule(settings.status_interval_s)
        self._source_failed = False
        self._thread = threading.Thread(target=self._run, name="explorer-sync", daemon=True)

    # -- control (any thread) ---------------------------------------------------------
    def start(self) -> "SyncWorker":
        self._thread.start()
        return self

    def wake(self, *_ignored) -> None:
        """Drain soon (e.g. a detection just closed), ahead of any clip chunk not yet sent.
        Usable directly as an on_detection callback."""
        self._queued.set()
        self._wake.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Make a last bounded drain (connecting first if need be), wait briefly for receipts,
        say offline, disconnect, and join the thread."""
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
        self._clips = ClipUploader(store, self.settings, self.device_id, self.clock, self._clip_sent)
        publisher: OutboxPublisher | None = None
        backoff = self.backoff_first_s
        try:
            while not self._stop.is_set():
                self._wake.clear()
                self._queued.clear()
                if publisher is None:
                    try:
                        publisher = self._connect(store)
                    except SyncError as exc:
                        if str(exc) != self.state.last_error:
                            log.warning("sync: %s; retrying with back-off", exc)
                        self._update(connected=False, last_error=str(exc))
                        self._stop.wait(backoff)
                        backoff = min(backoff * 2, self.backoff_max_s)
                        continue
                try:
                    publisher.apply_receipts()  # confirmations first: what they name is not resent
                    self._clips.apply_messages(publisher.session)
                    report = publisher.drain()
                    publisher.apply_receipts()
                    self._record(report)
                    if report.error is None:
                        self._status_if_due(publisher)
                    if report.error is None and report.pending_after == 0:  # detections and verdicts first
                        clips = self._clips.send(publisher.session, self._yield_to_outbox)
                        report = dataclasses.replace(report, error=clips.error)
                except StoreError as exc:  # a failing card: keep the messages, try later
                    log.error("sync: %s", exc)
                    self._update(last_error=str(exc))
                    self._wake.wait(self.settings.interval_s)
                    continue
                if report.error is not None:  # lost link or refused messages: wait before trying again
                    log.warning("sync: %s; retrying in %.0f s", report.error, backoff)
                    self._drop(publisher)
                    publisher = None
                    self._update(connected=False, last_error=report.error)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.backoff_max_s)
                    continue
                backoff = self.backoff_first_s  # a clean drain: the link works again
                self._wake.wait(min(self.settings.interval_s, max(0.05, self._schedule.seconds_left())))
            publisher = self._final_drain(store, publisher)
        except Exception:  # never take the device down with the link; say so loudly
            log.exception("sync: the worker stopped on an unexpected error; detections stay in the outbox")
        finally:
            if publisher is not None:
                try:
                    publisher.close(goodbye=True)
                except Exception:
                    log.exception("sync: closing the connection failed")
            store.close()
            self._update(connected=False)

    def _connect(self, store) -> OutboxPublisher:
        publisher = OutboxPublisher(store, self.settings, self.device_id, client_id=worker_client_id(self.device_id),
                                    status=lambda: self._status(store), on_receipt=self._wake.set,
                                    on_applied=self._count)
        publisher.connect()
        if publisher.connect_status is not None:  # published on connect: the schedule starts from it
            self._schedule.published(publisher.connect_status)
        self._update(connected=True, last_error=publisher.session.subscribe_error,
                     statuses=self.state.statuses + int(publisher.connect_status is not None))
        return publisher

    def _drop(self, publisher: OutboxPublisher) -> None:
        """Close a connection that failed, applying what receipts it still held first (they
        are not acknowledged: the broker delivers them again on the next connection)."""
        from device.store import StoreError

        try:
            publisher.apply_receipts()
            self._clips.apply_messages(publisher.session)
        except StoreError as exc:
            log.error("sync: %s", exc)
        publisher.close()
        self._schedule.forget()

    def _yield_to_outbox(self) -> bool:
        """A clip pass stops at its next chunk: new messages are queued, or the worker stops."""
        return self._queued.is_set() or self._stop.is_set()

    def _clip_sent(self, chunk: ChunkSent) -> None:
        state = self.state
        self._update(clip_chunks=state.clip_chunks + 1, clip_bytes=state.clip_bytes + chunk.wire_bytes)
        if self.on_clip_sent is not None:
            self.on_clip_sent(chunk)

    def _count(self, report: ReceiptReport) -> None:
        """The publisher's `on_applied`: every receipt pass, drains' own included."""
        state = self.state
        self._update(receipts=state.receipts + len(report.applied), confirmed=state.confirmed + report.confirmed,
                     refused=state.refused + report.refused)

    def _status(self, store) -> Status:
        """The status now: the run's facts (when a source is given) and the outbox's."""
        source = None
        if self.status_source is not None:
            try:
                source = self.status_source()
            except Exception as exc:  # a status is a courtesy; say so once, keep delivering
                if not self._source_failed:
                    log.warning("sync: the status source failed (%s); reporting the outbox only", exc)
                    self._source_failed = True
        counts = store.outbox_open_counts(self.destination, self.settings.receipt_timeout_s)
        return device_status.compose(self.device_id, source, counts.pending, counts.unconfirmed,
                                     store.last_detection_on())

    def _status_if_due(self, publisher: OutboxPublisher) -> None:
        status = self._status(publisher.store)
        if not self._schedule.due(status):
            return
        # Tried is as good as published for the schedule: a status that cannot go (refused,
        # unbuildable) is tried again at the next interval, not on every wake.
        self._schedule.published(status)
        if publisher.publish_status(status):
            self._update(statuses=self.state.statuses + 1)

    def _final_drain(self, store, publisher: OutboxPublisher | None) -> OutboxPublisher | None:
        """The last drain at stop: connect first when the worker was still connecting or in
        back-off (bounded by CONNECT_TIMEOUT_S), so what the pipeline just flushed is sent
        whenever the broker can be reached at all; then give receipts up to
        `final_receipt_wait_s` to confirm it. Returns the publisher to close."""
        from device.store import StoreError

        if publisher is None or not publisher.connected:
            if publisher is not None:
                self._drop(publisher)
            try:
                publisher = self._connect(store)
            except SyncError as exc:
                log.info("sync: no last drain (%s); %d message(s) stay pending", exc, store.pending_count())
                self._update(last_error=str(exc))
                return None
        try:
            publisher.apply_receipts()
            self._record(publisher.drain(limit=FINAL_DRAIN_LIMIT))
            deadline = time.monotonic() + self.final_receipt_wait_s
            while (publisher.connected and time.monotonic() < deadline
                   and store.outbox_open_counts(self.destination, self.settings.receipt_timeout_s).unconfirmed):
                publisher.apply_receipts(wait_s=min(0.25, max(0.0, deadline - time.monotonic())))
            self._clips.apply_messages(publisher.session)  # acks already here are recorded, not redelivered
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

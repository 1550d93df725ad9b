"""Deliver the outbox: QoS 1 to the broker, and delivered only when the server's receipt says so.

The outbox (device/store/outbox.py) already holds every message, written in the transaction
that closed its detection or recorded its verdict. A drain reads the pending ones, publishes
each with QoS 1 on the topic it was queued with, and appends one attempt per message: SUCCESS
when the broker's PUBACK arrived, FAILURE (with the reason) otherwise. A PUBACK makes a message
unconfirmed, not delivered: the broker can still lose it. It is delivered when a receipt from
the server names it (device/sync/receipts.py); one whose receipt does not come within
`[sync] receipt_timeout_s` is pending again and sent again (the server upserts on the record's
id, so a resend never duplicates a row).

What is never done: counting "written to the socket" as delivered (QoS 0), dropping a message
while disconnected, or letting paho's in-memory retry queue stand in for the outbox (a power
cut would lose it). Each drain stops at the first sign the connection is gone; what it did not
get acknowledged stays pending. The connection itself is device/sync/session.py.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from device.config import SyncSettings
from device.contracts.status import status_to_json
from device.domain import Status, utc_now
from device.store.outbox import START
from device.sync import status as device_status
from device.sync.receipts import ReceiptReport, apply_receipts
from device.sync.session import (
    CONNECT_TIMEOUT_S, MqttSession, SyncError, destination_of, hand_client_id, worker_client_id,
)

__all__ = ["BATCH", "CONNECT_TIMEOUT_S", "DrainReport", "OutboxPublisher", "PUBACK_TIMEOUT_S", "REFUSED",
           "SyncError", "destination_of", "drain_once", "hand_client_id", "worker_client_id"]

log = logging.getLogger(__name__)

PUBACK_TIMEOUT_S = 10.0
"""Longest wait for one batch's PUBACKs; longer means the link is too poor to count on."""
GOODBYE_TIMEOUT_S = 5.0
"""Longest wait for the PUBACK of the offline status a clean stop publishes."""
BATCH = 200
"""Messages published before waiting for their PUBACKs (paho keeps 20 in flight, the rest queue),
and recorded in one transaction. A stock Mosquitto holds each batch's last PUBACK ~40 ms (no
set_tcp_nodelay): 200 makes that 0.2 ms a message; a crash resends at most one batch."""
REFUSED = "the broker refused it: "
"""How a refused message's FAILURE detail starts (followed by the PUBACK's reason)."""


@dataclass(frozen=True)
class DrainReport:
    """What one drain did (the acoupi send task's selected/attempted/ok/failed counts)."""

    selected: int = 0
    attempted: int = 0
    ok: int = 0
    """Acknowledged by the broker (now unconfirmed until a receipt comes)."""
    failed: int = 0
    pending_after: int = 0
    error: str | None = None
    """Why the drain stopped early (the connection went), or None."""
    unconfirmed_after: int = 0


class OutboxPublisher:
    """One connection to the broker, drains of the outbox over it, and the receipts it brings.

    Use as a context manager, or call `connect()` and `close()`. Not thread-safe: one thread
    drains and applies receipts (the sync worker, or `explorer sync`).

    Args:
        client_id: the MQTT client id; default the run's worker's (`worker_client_id`).
        status: builds the status published on connect (and, offline, set as the will);
            default what the outbox itself knows (`explorer sync`).
        on_receipt: called on paho's thread when a receipt arrives (the worker wakes on it).
        on_applied: called on the draining thread with each ReceiptReport that applied or
            ignored something (the worker counts them), drains' own passes included.
    """

    def __init__(self, store, settings: SyncSettings, device_id: str, batch: int = BATCH,
                 puback_timeout_s: float = PUBACK_TIMEOUT_S, client_id: str | None = None,
                 status: Callable[[], Status] | None = None, on_receipt: Callable[[], None] | None = None,
                 on_applied: Callable[[ReceiptReport], None] | None = None):
        self.store = store
        self.settings = settings
        self.device_id = device_id
        self.destination = destination_of(settings)
        self.batch = batch
        self.puback_timeout_s = puback_timeout_s
        self.client_id = client_id or worker_client_id(device_id)
        self.receipt_timeout_s = settings.receipt_timeout_s
        self.status = status or self.own_status
        self.on_receipt = on_receipt
        self.on_applied = on_applied
        self.session: MqttSession | None = None
        self._connected_on = None
        """When the current connection began (stamped on its statuses and its will)."""
        self.connect_status: Status | None = None
        """The status published on the last connect (None when it could not be built)."""
        self.last_tried: list = []
        """(message, None or why not) for each message the last drain tried (`explorer sync`
        waits on the receipts of those acknowledged)."""

    # -- connection ---------------------------------------------------------------------
    def connect(self) -> "OutboxPublisher":
        """Connect (the will set to this device's status, offline), then publish the status online.

        Raises:
            SyncError: unreachable, refused, TLS, or no answer; the message says which.
        """
        self._connected_on = utc_now()  # every status of this connection, its will too, carries it
        status = self._status_or_none()
        will = None
        if status is not None:
            will = status_to_json(device_status.offline(status)).encode("utf-8")
        self.session = MqttSession(self.settings, self.device_id, self.client_id, will, self.on_receipt).connect()
        self.connect_status = status if status is not None and self.publish_status(status) else None
        return self

    @property
    def connected(self) -> bool:
        return self.session is not None and self.session.connected

    def close(self, goodbye: bool = False) -> None:
        """Disconnect; with `goodbye`, publish this device's status with online false first
        (MQTT 5 sends no will on a normal DISCONNECT, so a clean stop must say it itself)."""
        if self.session is None:
            return
        try:
            if goodbye and self.session.connected:
                status = self._status_or_none()
                if status is not None:
                    self.publish_status(device_status.offline(status), wait_s=GOODBYE_TIMEOUT_S)
        finally:
            self.session.close()
            self.session = None

    def __enter__(self) -> "OutboxPublisher":
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- status ---------------------------------------------------------------------------
    def own_status(self) -> Status:
        """What the sync side knows without a run: release, outbox counts, last detection."""
        counts = self.store.outbox_open_counts(self.destination, self.receipt_timeout_s)
        return device_status.compose(self.device_id, None, counts.pending, counts.unconfirmed,
                                     self.store.last_detection_on())

    def _status_or_none(self) -> Status | None:
        try:
            status = self.status()
        except Exception as exc:  # a status is a courtesy: never let it stop delivery
            log.warning("sync: could not build the status: %s", exc)
            return None
        return dataclasses.replace(status, connected_on=self._connected_on)

    def publish_status(self, status: Status, wait_s: float = 0.0) -> bool:
        """Publish `status` retained on the device's status topic; with `wait_s`, wait that long
        for its PUBACK. False when it could not be built or sent (logged, never raised)."""
        if not self.connected:
            return False
        try:
            payload = status_to_json(status).encode("utf-8")
        except ValueError as exc:
            log.warning("sync: status not published: %s", exc)
            return False
        info = self.session.publish(self.session.status_topic, payload, retain=True)
        if wait_s > 0:
            deadline = time.monotonic() + wait_s
            while not info.is_published() and self.connected and time.monotonic() < deadline:
                info.wait_for_publish(0.05)
            refusal = self.session.refusal_of(info.mid) if self.session else None
            if refusal:
                log.warning("sync: the broker refused this device's status: %s", refusal)
                return False
            return info.is_published()
        return True

    # -- receipts ---------------------------------------------------------------------------
    def apply_receipts(self, wait_s: float = 0.0) -> ReceiptReport:
        """Apply what receipts arrived (waiting up to `wait_s` for one); see device/sync/receipts.py."""
        if self.session is None:
            return ReceiptReport()
        report = apply_receipts(self.store, self.session, self.device_id, wait_s)
        if report.received and self.on_applied is not None:
            self.on_applied(report)
        return report

    # -- draining -----------------------------------------------------------------------
    def drain(self, limit: int | None = None, resend_unconfirmed: bool = False) -> DrainReport:
        """Publish pending messages, oldest first, until none is left (or `limit` were tried).

        With `resend_unconfirmed` (`explorer sync` by hand) every message no receipt has
        confirmed or refused goes, whatever the receipt timeout. Receipts that arrive meanwhile
        are applied between batches. Stops early, with `error` set, when the connection goes;
        never raises for a failed message (its FAILURE attempt says why). Raises SyncError only
        when not connected.
        """
        if self.session is None:
            raise SyncError(f"{self.destination}: not connected")
        selected = attempted = ok = failed = 0
        error = None
        after = START
        self.last_tried = []
        while limit is None or attempted < limit:
            size = self.batch if limit is None else min(self.batch, limit - attempted)
            # Read on from the last message tried: one this drain failed is not read again.
            if resend_unconfirmed:
                batch = self.store.open_messages(size, after)
            else:
                batch = self.store.pending_messages(size, self.destination, self.receipt_timeout_s, after)
            if not batch:
                break
            after = batch[-1].position
            selected += len(batch)
            sent, error = self._publish_batch(batch)
            # One transaction per batch: a crash before it commits leaves the batch pending, and
            # the resend is harmless (the server upserts on the record's id).
            self.store.record_attempts([(message.message_id, self.destination, outcome is None, outcome)
                                        for message, outcome in zip(batch, sent)])
            self.last_tried.extend(zip(batch, sent))
            attempted += len(batch)
            ok += sum(outcome is None for outcome in sent)
            failed += sum(outcome is not None for outcome in sent)
            self.apply_receipts()  # keeps the broker's window of unacknowledged receipts moving
            if error is not None:
                break
        counts = self.store.outbox_open_counts(self.destination, self.receipt_timeout_s)
        report = DrainReport(selected, attempted, ok, failed, counts.pending, error, counts.unconfirmed)
        log.info("sync to %s: %d selected, %d attempted, %d ok, %d failed, %d pending, %d unconfirmed%s",
                 self.destination, report.selected, report.attempted, report.ok, report.failed,
                 report.pending_after, report.unconfirmed_after, f" ({error})" if error else "")
        return report

    def _publish_batch(self, batch) -> tuple[list[str | None], str | None]:
        """Publish `batch` and wait for the PUBACKs: per message None (acknowledged) or why not,
        and the reason the connection failed, if it did."""
        import paho.mqtt.client as mqtt

        session = self.session
        infos: list = []
        for message in batch:
            if not session.connected:
                infos.append(None)
                continue
            infos.append(session.publish(message.topic, message.payload.encode("utf-8")))
        deadline = time.monotonic() + self.puback_timeout_s
        outcomes: list[str | None] = []
        for info in infos:
            if info is None:
                outcomes.append(session.lost or "not connected")
                continue
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
                outcomes.append(f"publish refused by the client: {mqtt.error_string(info.rc)}")
                continue
            try:
                # In slices, so a lost connection ends the wait at once instead of at the deadline.
                while not info.is_published() and session.lost is None and time.monotonic() < deadline:
                    info.wait_for_publish(0.05)
            except (RuntimeError, ValueError) as exc:
                outcomes.append(str(exc))
                continue
            refusal = session.refusal_of(info.mid)
            if not info.is_published():
                lost = f"; {session.lost}" if session.lost else ""
                outcomes.append(f"no PUBACK within {self.puback_timeout_s:.0f} s{lost}")
            elif refusal is not None:
                outcomes.append(REFUSED + refusal)
            else:
                outcomes.append(None)
        link_error = session.lost
        if link_error is None and any(o is not None and o.startswith("no PUBACK") for o in outcomes):
            link_error = f"the broker stopped acknowledging within {self.puback_timeout_s:.0f} s"
        if link_error is None and outcomes and all(o is not None and o.startswith(REFUSED) for o in outcomes):
            # Not one message taken: a configuration problem (credentials, ACL), not a bad
            # message. Stop, so a retry loop appends one attempt per back-off, not per message.
            link_error = f"the broker refuses our messages ({outcomes[0][len(REFUSED):]})"
        return outcomes, link_error


def drain_once(store, settings: SyncSettings, device_id: str, limit: int | None = None) -> DrainReport:
    """Connect, drain what is pending, disconnect (no wait for receipts: see device/sync/by_hand.py)."""
    with OutboxPublisher(store, settings, device_id, client_id=hand_client_id(device_id)) as publisher:
        return publisher.drain(limit)

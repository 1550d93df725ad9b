"""`explorer sync` by hand: send everything the server has not confirmed, then wait for its word.

A guide back in coverage wants to know what reached the server, not what reached the broker.
So a sync by hand sends at once every message no receipt has confirmed or refused (pending or
unconfirmed, whatever the receipt timeout says), waits a bounded time for the receipts, and
reports each sent message's fate. Then it sends the clips the server should have
(device/sync/clips.py), within the daily budget, for up to the same wait. It connects under its
own stable client id (`hand_client_id`), so it never takes over a running worker's session.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from device.config import SyncSettings
from device.sync.clips import ClipUploader
from device.sync.publisher import DrainReport, OutboxPublisher
from device.sync.session import hand_client_id

@dataclass(frozen=True)
class HandSyncReport:
    """What a sync by hand did to the messages it tried."""

    drain: DrainReport
    confirmed: int = 0
    """Sent now and confirmed by a receipt within the wait."""
    unconfirmed: int = 0
    """Acknowledged by the broker, no receipt within the wait (sent again later)."""
    pending: int = 0
    """Tried and not acknowledged (their FAILURE attempts say why)."""
    refused: int = 0
    """Refused for good by the server."""
    waited_s: float = 0.0
    clip_chunks: int = 0
    clip_bytes: int = 0
    clips_complete: int = 0
    """Clips the server said it now holds whole, during this sync."""
    clip_error: str | None = None


def sync_by_hand(store, settings: SyncSettings, device_id: str, wait_s: float) -> HandSyncReport:
    """Connect, send every open message, wait up to `wait_s` for their receipts, close (saying
    goodbye: offline status).

    Raises:
        SyncError: the broker could not be reached or refused the connection.
    """
    named: set[tuple[str, str]] = set()  # what every receipt applied so far named (drain's passes too)
    publisher = OutboxPublisher(store, settings, device_id, client_id=hand_client_id(device_id),
                                on_applied=lambda report: named.update(_named(report)))
    uploader = ClipUploader(store, settings, device_id)
    with publisher:
        try:
            # Clip acks left unacknowledged would hold the broker's window (Receive Maximum)
            # shut to the receipts: apply what came, before the drain and while waiting.
            uploader.apply_messages(publisher.session)
            drain = publisher.drain(resend_unconfirmed=True)
            tried = [message for message, _ in publisher.last_tried]
            sent = {message.message_id for message, outcome in publisher.last_tried if outcome is None}
            outstanding = {(m.kind, m.record_id) for m in tried if m.message_id in sent}
            started = time.monotonic()
            deadline = started + max(0.0, wait_s)
            publisher.apply_receipts()
            while outstanding - named and publisher.connected and time.monotonic() < deadline:
                publisher.apply_receipts(wait_s=min(0.5, max(0.0, deadline - time.monotonic())))
                uploader.apply_messages(publisher.session)
            waited = time.monotonic() - started
            clips = _send_clips(uploader, publisher, wait_s)
        finally:
            if publisher.connected:  # acks for the worker's chunks must not pile up for this session
                publisher.session.unsubscribe_clips()
            publisher.close(goodbye=True)
    states = store.message_states(m.message_id for m in tried)
    fates = [(states.get(m.message_id), m.message_id in sent) for m in tried]
    return HandSyncReport(
        drain=drain,
        confirmed=sum(state == "confirmed" for state, _ in fates),
        unconfirmed=sum(state == "open" and acknowledged for state, acknowledged in fates),
        pending=sum(state == "open" and not acknowledged for state, acknowledged in fates),
        refused=sum(state == "refused" for state, _ in fates),
        waited_s=waited,
        **clips,
    )


def _send_clips(uploader: ClipUploader, publisher: OutboxPublisher, wait_s: float) -> dict:
    """Clip passes until nothing is left to send now (all sent and acked, or over today's
    budget) or `wait_s` is up. An ack that comes after this session left reaches the worker's
    session; without one, the chunk goes again after `[sync] receipt_timeout_s`."""
    chunks = wire = complete = 0
    error = None
    deadline = time.monotonic() + max(0.0, wait_s)
    while uploader.enabled and publisher.connected:
        outcome = uploader.apply_messages(publisher.session)
        complete += outcome.completed if outcome else 0
        report = uploader.send(publisher.session)
        chunks, wire, error = chunks + report.chunks, wire + report.wire_bytes, report.error
        left = deadline - time.monotonic()
        if error or (not report.chunks and not report.waiting) or left <= 0:
            break
        outcome = uploader.apply_messages(publisher.session, wait_s=min(0.5, left))
        complete += outcome.completed if outcome else 0
    return {"clip_chunks": chunks, "clip_bytes": wire, "clips_complete": complete, "clip_error": error}


def _named(report) -> set[tuple[str, str]]:
    """(kind, id) of everything the applied receipts named, stored or refused."""
    named = {(kind, record_id) for receipt in report.applied for kind, ids in receipt.stored.items() for record_id in ids}
    return named | {(r.kind, r.record_id) for receipt in report.applied for r in receipt.refused}

"""Applying the server's receipts: only now is a message delivered.

The ingest publishes a receipt (device/contracts/receipt.py) after each commit, naming the
detection and feedback ids it stored and those it refuses for good. The draining thread takes
what paho queued (device/sync/session.py), checks each receipt, marks the messages it names in
one transaction, and only after that commit acknowledges the receipts to the broker: a crash
between the two leaves the receipt with the broker, which delivers it again (applying one
twice changes nothing).

A receipt that fails `parse_receipt`, or names another device, is logged and acknowledged but
never applied: delivering it again would not make it valid, and anyone allowed to publish on
the topic is the ingest, so such a receipt is a bug to read in the log, not a message to retry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from device.contracts.receipt import parse_receipt
from device.domain import Receipt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceiptReport:
    """What one pass over the queued receipts did."""

    applied: tuple[Receipt, ...] = ()
    """The receipts whose confirmations were committed."""
    ignored: int = 0
    """Receipts refused as malformed or for another device (acknowledged, never applied)."""
    confirmed: int = 0
    refused: int = 0
    unchanged: int = 0
    """Ids that matched no open message (already confirmed: the server receipts resends too)."""
    acknowledged: int = 0
    unacknowledged: int = 0
    """Applied on a connection that has since dropped: the broker will deliver them again."""

    @property
    def received(self) -> int:
        return len(self.applied) + self.ignored


def apply_receipts(store, session, device_id: str, wait_s: float = 0.0) -> ReceiptReport:
    """Apply every receipt `session` has queued (waiting up to `wait_s` for a first one).

    Raises:
        StoreError: the confirmations could not be committed; the receipts are queued again
            (and stay unacknowledged), so nothing the server said is lost.
    """
    from device.store import StoreError

    items = session.take_receipts(wait_s)
    if not items:
        return ReceiptReport()
    good, receipts, bad = [], [], []
    for item in items:
        receipt = _check(item, session.receipt_topic, device_id)
        if receipt is None:
            bad.append(item)
        else:
            good.append(item)
            receipts.append(receipt)
    outcome = None
    if receipts:
        try:
            outcome = store.apply_receipts(receipts)
        except StoreError:
            session.requeue(good)
            raise
    acked = unacked = 0
    for item in good + bad:
        if session.ack(item):
            acked += 1
        else:
            unacked += 1
    if unacked:
        log.info("sync: %d receipt(s) applied after their connection dropped; the broker delivers them again", unacked)
    report = ReceiptReport(
        applied=tuple(receipts), ignored=len(bad),
        confirmed=outcome.confirmed if outcome else 0, refused=outcome.refused if outcome else 0,
        unchanged=outcome.unchanged if outcome else 0, acknowledged=acked, unacknowledged=unacked,
    )
    if receipts:
        log.debug("sync: %d receipt(s): %d confirmed, %d refused, %d already known", len(receipts),
                  report.confirmed, report.refused, report.unchanged)
    if report.refused:
        log.warning("sync: the server refused %d message(s) for good (explorer sync --status lists them)", report.refused)
    return report


def _check(item, expected_topic: str, device_id: str) -> Receipt | None:
    """The item's receipt, or None (logged) when it is not one this device may apply."""
    if item.topic != expected_topic:
        log.warning("sync: ignored a message on %r: this device only reads %r", item.topic[:120], expected_topic)
        return None
    try:
        receipt = parse_receipt(item.payload)
    except ValueError as exc:
        log.warning("sync: ignored a malformed receipt on %s: %s", item.topic, exc)
        return None
    if receipt.device_id != device_id:
        log.warning("sync: ignored a receipt for device %r on %s (this is %r)", receipt.device_id, item.topic, device_id)
        return None
    return receipt

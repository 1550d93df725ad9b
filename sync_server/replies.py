"""What the ingest sends back to devices once a batch is committed (never before): receipts,
clip acks, and each device's retained clip request.

All QoS 1 through the ingest's own paho client; a reply the broker loses costs nothing but a
resend (a device sends again what no receipt named; a clip resumes from the next ack).
"""

from __future__ import annotations

import logging

from device.contracts.clip import ClipRequest, ack_to_json, clip_ack_topic, clip_request_topic, request_to_json
from device.contracts.receipt import receipt_to_json, receipt_topic
from device.domain import utc_now
from sync_server.db import ServerStoreError

log = logging.getLogger(__name__)


def publish_receipts(client, receipts) -> int:
    """Publish each receipt on its device's receipt topic; return how many."""
    for receipt in receipts:
        client.publish(receipt_topic(receipt.device_id), receipt_to_json(receipt).encode("utf-8"), qos=1)
    return len(receipts)


def publish_clip_acks(client, acks) -> int:
    """One ack per clip (the last says what the server holds now); return how many clips are
    now complete."""
    last = {}
    for ack in acks:
        last[(ack.device_id, ack.clip_id)] = ack
    for ack in last.values():
        client.publish(clip_ack_topic(ack.device_id), ack_to_json(ack).encode("utf-8"), qos=1)
    return sum(ack.state == "complete" for ack in last.values())


def publish_clip_requests(client, store, below: float, routed, result, records) -> None:
    """Keep each touched device's retained clip request up to date: the clips of its detections
    under `below` confidence that the server lacks (oldest first, at most 500)."""
    devices = {p["device_id"] for p, outcome in zip(routed.detections, result.detections)
               if outcome == "inserted" and p["confidence"] < below}
    devices |= {record.device_id for record in records}
    for device_id in sorted(devices):
        try:
            wanted = store.wanted_clips(device_id, below)
        except ServerStoreError as exc:  # the next batch asks again
            log.warning("ingest: no clip request for %s: %s", device_id, exc)
            continue
        request = ClipRequest(device_id, utc_now(), tuple(wanted))
        client.publish(clip_request_topic(device_id), request_to_json(request).encode("utf-8"), qos=1, retain=True)

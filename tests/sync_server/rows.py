"""The rows the aggregate-database tests store: detections, verdicts and statuses of a morning
at H02, each built by the device's own contract as the ingest hands it to the store."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from device.contracts.detection import detection_to_payload, parse_payload, payload_to_json
from device.contracts.feedback import feedback_to_json, feedback_to_payload, parse_feedback
from device.domain import Detection, Feedback, Status, iso_utc
from sync_server.db import ServerStore
from sync_server.db.schema import detection

T0 = datetime(2026, 4, 20, 7, 40, 0, tzinfo=timezone.utc)
OWNER, OTHER = "pi-h02", "pi-h03"


def payload(n: int, device_id: str = OWNER, **changes) -> dict:
    """Detection n of a morning at H02, as the ingest hands it to the store: built by the
    device's contract, sent as JSON, checked by `parse_payload`."""
    started = T0 + timedelta(seconds=5 * n)
    event = Detection(
        label="21211", started_on=started, ended_on=started + timedelta(seconds=5), confidence=0.9,
        branch_scores={"birdnet": 0.9, "frog_head": float("nan")}, bundle_name="elsilencio-default",
        bundle_version="1.0.0", bundle_sha256="a" * 64, device_id=device_id,
        source="/recordings/H02_20230420_074000.ogg", start_s=5.0 * n, end_s=5.0 * n + 5,
        detection_id=str(uuid.UUID(int=n + 1, version=4)),
    )
    checked = parse_payload(payload_to_json(detection_to_payload(event)))
    checked.update(changes)
    return checked


def grown(n: int, windows: int, **changes) -> dict:
    """Detection n after `windows` windows: a newer state of the same event."""
    return payload(n, window_count=windows, end_s=5.0 * n + 2.5 * (windows + 1),
                   ended_on=iso_utc(T0 + timedelta(seconds=5 * n + 2.5 * (windows + 1))), **changes)


def stored(store: ServerStore, detection_id: str) -> dict | None:
    with store.engine.connect() as connection:
        row = connection.execute(select(detection).where(detection.c.detection_id == detection_id)).mappings().first()
    return None if row is None else dict(row)


def verdict(n: int, detection_n: int = 0, device_id: str = OWNER, verdict: str = "confirm") -> dict:
    """A guide's verdict n on detection `detection_n`, checked by the device's own contract."""
    given = Feedback(str(uuid.UUID(int=1000 + n, version=4)), payload(detection_n)["detection_id"], verdict,
                     "heard it too" if n % 2 else None, T0 + timedelta(minutes=30, seconds=n))
    return parse_feedback(feedback_to_json(feedback_to_payload(given, device_id)))


def status_at(device_id: str, minute: int, online: bool = True):
    return Status(device_id, online, T0 + timedelta(minutes=minute), "0.1.0", "elsilencio-default", "1.0.0",
                  outbox_pending=minute, outbox_unconfirmed=0)

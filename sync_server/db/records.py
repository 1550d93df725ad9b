"""What goes into the aggregate database and what comes out, and the rows built from it.

Rows are built by explicit functions from checked payloads (never a payload stored wholesale),
so a field added to the wire contract reaches the database only when a column is made for it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from device.contracts.checks import encode_json
from device.contracts.status import status_to_payload
from device.contracts.topics import topic
from device.domain import Status
from sync_server.db.schema import DETECTION_COLUMNS, FEEDBACK_COLUMNS

REJECTED_HEAD_BYTES = 512
"""Bytes of a refused payload kept for diagnosis: enough to read, too few to abuse."""
MAX_TOPIC_CHARS = 512
MAX_REASON_CHARS = 2_000
"""Topic and reason lengths kept: a hostile topic or a long validation message cannot grow a
row without bound."""


@dataclass(frozen=True)
class Rejected:
    """A message the ingest refused, to be kept with its reason."""

    topic: str
    reason: str
    payload: bytes
    """The message as received; only its first REJECTED_HEAD_BYTES are kept."""


@dataclass(frozen=True)
class RejectedRecord:
    """A refused message as stored."""

    rejected_id: int
    received_on: str
    topic: str
    reason: str
    size_bytes: int
    """The whole message's size, though only its head is kept."""
    payload_head: str
    """The head as text: invalid UTF-8 kept as backslash escapes."""


@dataclass(frozen=True)
class IngestResult:
    """What one committed batch did: an outcome per detection, per verdict and per tour message,
    in order ('inserted', 'updated', 'unchanged' or 'foreign'; see sync_server/db/upsert.py)."""

    detections: list[str]
    feedback: list[str]
    tours: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Counts:
    """What the aggregate database holds."""

    detections: int
    devices: int
    """Devices with at least one stored detection."""
    rejected: int


def detection_row(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload columns of a detection row, from a payload `parse_payload` has checked.

    Raises:
        KeyError: a field is missing (the payload was not checked).
    """
    row = {name: payload[name] for name in DETECTION_COLUMNS}  # parse_payload gives schema 1 None places
    row["branch_scores"] = _BRANCH_SCORES.encode(payload["branch_scores"])
    if payload["context_scores"] is not None:
        row["context_scores"] = _BRANCH_SCORES.encode(payload["context_scores"])
    row["secondary"] = int(bool(payload["secondary"]))
    return row


_BRANCH_SCORES = json.JSONEncoder(sort_keys=True, allow_nan=False)
"""`branch_scores` as text: the encoding the first server used (json.dumps with sorted keys), so an
old row and its resend compare equal. One encoder for every row: json.dumps given any option
builds a new one per call, a third of this function's time."""


def feedback_row(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload columns of a feedback row, from a payload `parse_feedback` has checked."""
    return {name: payload[name] for name in FEEDBACK_COLUMNS}


TOUR_COLUMNS = ("tour_id", "device_id", "name", "guide", "started_on", "ended_on", "site", "latitude", "longitude")
"""The columns a tour payload fills (device/contracts/tour.py): all of it."""


def tour_row(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The columns of a tour row, from a payload `parse_tour` has checked."""
    return {name: payload[name] for name in TOUR_COLUMNS}


def later_tour_state(stored: Mapping[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """What a tour message makes of the stored tour (`Keyed.merge`): an ended tour stays ended.
    A tour is reported as started, then as ended; the start may arrive after the end (resent
    past its receipt timeout, or taken by another worker), and must not make it under way again."""
    if row["ended_on"] is None and stored["ended_on"] is not None:
        return dict(row, ended_on=stored["ended_on"])
    return row


def status_row(status: Status, received_on: str) -> dict[str, Any]:
    """The device_status row for a checked status (its whole payload kept as JSON text)."""
    payload = status_to_payload(status)
    return {
        "device_id": status.device_id,
        "status_json": encode_json(payload),
        "online": int(status.online),
        "received_on": received_on,
        "published_on": payload["published_on"],
        "connected_on": payload["connected_on"] or payload["published_on"],
    }


def rejected_row(rejected: Rejected, received_on: str) -> dict[str, Any]:
    """The rejected_message row for a refused message (its id is the database's)."""
    return {
        "received_on": received_on,
        "topic": rejected.topic[:MAX_TOPIC_CHARS],
        "reason": rejected.reason[:MAX_REASON_CHARS],
        "size_bytes": len(rejected.payload),
        "payload_head": bytes(rejected.payload[:REJECTED_HEAD_BYTES]).decode("utf-8", errors="backslashreplace"),
    }


def foreign_rejection(kind: str, payload: Mapping[str, Any], owner: str) -> Rejected:
    """The record of a device claiming a `kind` ('detection', 'feedback', 'tour') id another
    device's record holds."""
    sender = payload["device_id"]
    reason = f"{kind} {payload[kind + '_id']} belongs to device {owner!r}, not {sender!r}"
    return Rejected(topic(sender, kind), reason, encode_json(payload).encode("utf-8"))

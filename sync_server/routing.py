"""From raw MQTT messages to what the database stores: the ingest's trust boundary.

Anyone with broker credentials can publish anything, so every message is checked here by the
device's own contract for its kind (`device.contracts`), and its payload's device id must be
its topic's (the broker's ACL ties each topic to one device's credentials). What fails is
kept as a `Rejected` row with its reason; it is acknowledged like the rest (sending it again
would not make it valid) and never receipted (the device queued only payloads its own
contract accepted, so a refusal here is a bug or an attacker, not a message to retry).

Pure functions, no I/O: the ingest worker (sync_server/ingest.py) routes a batch, commits it
in one transaction, then acknowledges and receipts it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from device.contracts.clip import ClipChunk, parse_chunk
from device.contracts.detection import parse_payload
from device.contracts.feedback import parse_feedback
from device.contracts.receipt import split_receipt
from device.contracts.status import parse_status, rank
from device.contracts.topics import parse_topic
from device.contracts.tour import parse_tour, payload_delivery_id
from device.domain import Receipt, Refusal, Status
from sync_server.db.records import Rejected


@dataclass(frozen=True)
class Incoming:
    """One message as the broker delivered it."""

    topic: str
    payload: bytes
    token: Any = None
    """What the transport needs to acknowledge it (paho: mid, qos and connection number)."""


@dataclass
class Routed:
    """A batch sorted by kind, each list in arrival order."""

    detections: list[dict] = field(default_factory=list)
    feedback: list[dict] = field(default_factory=list)
    tours: list[dict] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    clips: list[ClipChunk] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def route(message: Incoming, routed: Routed) -> None:
    """Check one message and file it under its kind (or as rejected) in `routed`."""
    try:
        device_id, kind = parse_topic(message.topic)
        if kind == "detection":
            checked = parse_payload(message.payload)
        elif kind == "feedback":
            checked = parse_feedback(message.payload)
        elif kind == "status":
            checked = parse_status(message.payload)
        elif kind == "clip":
            checked = parse_chunk(message.payload)
        elif kind == "tour":
            checked = parse_tour(message.payload)
        else:  # a device publishing on a downstream topic: the ACL should have refused it
            raise ValueError(f"topic {message.topic!r}: devices do not publish {kind}s")
        sender = checked.device_id if isinstance(checked, (Status, ClipChunk)) else checked["device_id"]
        if sender != device_id:
            raise ValueError(f"payload device_id {sender!r} does not match the topic's {device_id!r}")
    except ValueError as exc:
        routed.rejected.append(Rejected(message.topic, str(exc), bytes(message.payload)))
        return
    if kind == "detection":
        routed.detections.append(checked)
    elif kind == "feedback":
        routed.feedback.append(checked)
    elif kind == "clip":
        routed.clips.append(checked)
    elif kind == "tour":
        routed.tours.append(checked)
    else:
        routed.statuses.append(checked)


def route_batch(messages: Iterable[Incoming]) -> Routed:
    routed = Routed()
    for message in messages:
        route(message, routed)
    return routed


def newest_statuses(statuses: Sequence[Status]) -> list[Status]:
    """The highest-ranked status per device in a batch (`device.contracts.status.rank`: the
    order the store keeps them in)."""
    newest: dict[str, Status] = {}
    for status in statuses:
        kept = newest.get(status.device_id)
        if kept is None or rank(status) >= rank(kept):
            newest[status.device_id] = status
    return list(newest.values())


def receipts_for(routed: Routed, detection_outcomes: Sequence[str], feedback_outcomes: Sequence[str],
                 issued_on: datetime, tour_outcomes: Sequence[str] = ()) -> list[Receipt]:
    """The receipts to publish once `routed` is committed: per device, every id now stored
    (resends too: the device may have missed the first receipt), and, as refused, the ids the
    store will never take ('foreign': another device owns that id). A tour message is named by
    its state's `delivery_id` (device/contracts/tour.py says why), a stale start merged into an
    ended tour included: the device stops resending it."""
    stored: dict[str, dict[str, dict[str, None]]] = {}  # device -> kind -> ids, in order, each once
    refused: dict[str, list[Refusal]] = {}
    for kind, payloads, outcomes, id_of in (
            ("detection", routed.detections, detection_outcomes, lambda p: p["detection_id"]),
            ("feedback", routed.feedback, feedback_outcomes, lambda p: p["feedback_id"]),
            ("tour", routed.tours, tour_outcomes, payload_delivery_id)):
        for payload, outcome in zip(payloads, outcomes, strict=True):
            device_id, record_id = payload["device_id"], id_of(payload)
            if outcome == "foreign":
                refused.setdefault(device_id, []).append(
                    Refusal(kind, record_id, f"{kind} {record_id} is already stored for another device"))
            else:
                stored.setdefault(device_id, {}).setdefault(kind, {})[record_id] = None
    receipts = []
    for device_id in sorted(set(stored) | set(refused)):
        receipts.extend(split_receipt(device_id, issued_on, stored.get(device_id, {}), refused.get(device_id, ())))
    return receipts

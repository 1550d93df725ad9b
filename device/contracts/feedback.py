"""The feedback payload: a guide's verdict on a detection, from the device's outbox to the server.

Queued in the transaction that records the verdict (device/store/feedback.py), sent like a
detection (QoS 1 on `explorer/<device id>/feedback`, topics.py), upserted by the server on
`feedback_id` and receipted under the kind "feedback" (receipt.py). The server stores it
against its detection: researchers see which detections a guide confirmed or rejected.

Frozen by tests/device/contracts/test_feedback_contract.py; read its header before changing
anything. Schema 1 (JSON object, every field required):

    schema        int, 1
    feedback_id   str, canonical lowercase UUID (the server upserts on it)
    detection_id  str, canonical lowercase UUID of the detection judged
    device_id     str, the device's id (must be its topic's)
    verdict       str, "confirm" or "reject"
    note          str | null, at most MAX_NOTE_CHARS characters
    given_on      str, ISO-8601 UTC ending in Z
"""

from __future__ import annotations

from typing import Any

from device.contracts.checks import (
    CONTROL_CHARS, check_device_id, check_int, check_object, check_text, check_timestamp, check_uuid, decode_json, encode_json, nullable,
)
from device.contracts.topics import topic
from device.domain import MAX_NOTE_CHARS, VERDICTS, Feedback, iso_utc

SCHEMA = 1
FIELDS = ("schema", "feedback_id", "detection_id", "device_id", "verdict", "note", "given_on")
MAX_FEEDBACK_BYTES = 8_192
"""A 2,000-character note in UTF-8 plus the ids fits well under this."""


def feedback_topic(device_id: str) -> str:
    return topic(device_id, "feedback")


def feedback_to_payload(feedback: Feedback, device_id: str) -> dict[str, Any]:
    """The schema-1 payload for a verdict given on `device_id` (validated before it is queued)."""
    payload = {
        "schema": SCHEMA,
        "feedback_id": feedback.feedback_id,
        "detection_id": feedback.detection_id,
        "device_id": device_id,
        "verdict": feedback.verdict,
        "note": _wire_note(feedback.note),
        "given_on": iso_utc(feedback.created_on),
    }
    return validate_feedback(payload)


def feedback_to_json(payload: dict[str, Any]) -> str:
    return encode_json(payload)


def parse_feedback(data: bytes | str) -> dict[str, Any]:
    """Decode and check a received feedback payload; return its checked fields.

    Raises:
        ValueError: naming the first problem.
    """
    return validate_feedback(decode_json(data, "feedback", MAX_FEEDBACK_BYTES))


def _check_verdict(value: Any, where: str) -> str:
    if value not in VERDICTS:
        raise ValueError(f"{where}: {str(value)[:40]!r} is not one of {', '.join(VERDICTS)}")
    return value


def _check_note(value: Any, where: str) -> str:
    return check_text(value, where, MAX_NOTE_CHARS)


def _wire_note(note: str | None) -> str | None:
    """A note as the wire carries it: line breaks and other control characters become spaces
    (a note typed on the trail is never unsendable), and a blank note is null."""
    if note is None:
        return None
    return CONTROL_CHARS.sub(" ", note).strip() or None


_CHECKS = {
    "schema": check_int,
    "feedback_id": check_uuid,
    "detection_id": check_uuid,
    "device_id": check_device_id,
    "verdict": _check_verdict,
    "note": nullable(_check_note),
    "given_on": check_timestamp,
}


def validate_feedback(raw: Any) -> dict[str, Any]:
    return check_object(raw, "feedback", SCHEMA, _CHECKS)

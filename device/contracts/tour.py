"""The tour payload: a guided walk, from the device's outbox to the server.

A tour is reported twice: once when it starts (`ended_on` null) and once when it ends, each
message queued in the transaction that changes the tour (device/store/tours.py), sent like a
detection (QoS 1 on `explorer/<device id>/tour`, topics.py) and upserted by the server on
`tour_id`, the ended state winning over the started one whatever order they arrive in. Without
it the server would know a detection's `tour_id` and nothing else: not its name, its guide,
nor when it ran (what a Species Spotting Rate is computed over).

Receipts name a tour message by its `delivery_id`, not by its tour id: one tour sends two
messages, and a receipt for the start arriving late (a persistent session delivers it once
the device is back in coverage, possibly after the tour ended) must not confirm the end, which
the server may never have seen.

Frozen by tests/device/contracts/test_tour_contract.py; read its header before changing
anything. Schema 1 (JSON object, every field required):

    schema      int, 1
    tour_id     str, canonical lowercase UUID (the server upserts on it)
    device_id   str, the device's id (must be its topic's)
    name        str, at most MAX_TOUR_TEXT_CHARS
    guide       str | null, at most MAX_TOUR_TEXT_CHARS
    started_on  str, ISO-8601 UTC ending in Z
    ended_on    str, ISO-8601 UTC ending in Z, not before started_on | null (under way)
    site        str | null, at most detection.MAX_SITE_CHARS (the device's `[device] site`)
    latitude    float in [-90, 90] | null    decimal degrees, WGS84, where the device was
    longitude   float in [-180, 180] | null  when the tour started; both or neither
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from device.contracts.checks import (
    CONTROL_CHARS, check_device_id, check_int, check_object, check_text, check_timestamp, check_uuid, decode_json,
    encode_json, nullable,
)
from device.contracts.detection import check_latitude, check_longitude, check_site
from device.contracts.topics import topic
from device.domain import Tour, iso_utc, parse_iso_utc

SCHEMA = 1
FIELDS = ("schema", "tour_id", "device_id", "name", "guide", "started_on", "ended_on", "site", "latitude",
          "longitude")
MAX_TOUR_TEXT_CHARS = 200
"""Tour and guide names as the device accepts them (device/store/tours.py MAX_NAME_CHARS)."""
MAX_TOUR_BYTES = 4_096
"""Two 200-character names in UTF-8 (up to 4 bytes a character: 1.6 KB) and the rest fit."""
DELIVERY_NAMESPACE = uuid.UUID("5b0c6c1e-6f0e-4d8a-9f55-2f7c1b8e9a10")
"""The uuid5 namespace of `delivery_id` (fixed forever: device and server compute it apart)."""


def tour_topic(device_id: str) -> str:
    return topic(device_id, "tour")


def delivery_id(tour_id: str, ended_on: str | None) -> str:
    """The id a receipt names for one state of a tour: started (`ended_on` None) or ended.

    A uuid5 of the tour id and its end, so device and server derive the same id from the
    payload alone and the two messages of one tour are receipted apart.
    """
    return str(uuid.uuid5(DELIVERY_NAMESPACE, f"{tour_id} {ended_on or 'under way'}"))


def payload_delivery_id(payload: Mapping[str, Any]) -> str:
    """`delivery_id` of a checked payload."""
    return delivery_id(payload["tour_id"], payload["ended_on"])


def _wire_text(text: str | None) -> str | None:
    """A name as the wire carries it: control characters become spaces, blank is null."""
    if text is None:
        return None
    return CONTROL_CHARS.sub(" ", text).strip() or None


def tour_to_payload(tour: Tour) -> dict[str, Any]:
    """The schema-1 payload for a tour in its current state (validated before it is queued).

    Raises:
        ValueError: the tour has no device id, or holds what the schema cannot carry; the
            message names the field.
    """
    payload = {
        "schema": SCHEMA,
        "tour_id": tour.tour_id,
        "device_id": tour.device_id,
        "name": _wire_text(tour.name) or "Tour",
        "guide": _wire_text(tour.guide),
        "started_on": iso_utc(tour.started_on),
        "ended_on": iso_utc(tour.ended_on) if tour.ended_on is not None else None,
        "site": _wire_text(tour.site),
        "latitude": None if tour.latitude is None else float(tour.latitude),
        "longitude": None if tour.longitude is None else float(tour.longitude),
    }
    return validate_tour(payload)


def tour_to_json(payload: Mapping[str, Any]) -> str:
    return encode_json(payload)


def parse_tour(data: bytes | str) -> dict[str, Any]:
    """Decode and check a received tour payload; return its checked fields.

    Raises:
        ValueError: naming the first problem.
    """
    return validate_tour(decode_json(data, "tour", MAX_TOUR_BYTES))


def _check_tour_text(value: Any, where: str) -> str:
    return check_text(value, where, MAX_TOUR_TEXT_CHARS)


_CHECKS = {
    "schema": check_int,
    "tour_id": check_uuid,
    "device_id": check_device_id,
    "name": _check_tour_text,
    "guide": nullable(_check_tour_text),
    "started_on": check_timestamp,
    "ended_on": nullable(check_timestamp),
    "site": nullable(check_site),
    "latitude": nullable(check_latitude),
    "longitude": nullable(check_longitude),
}


def validate_tour(raw: Any) -> dict[str, Any]:
    checked = check_object(raw, "tour", SCHEMA, _CHECKS)
    if checked["ended_on"] is not None and parse_iso_utc(checked["ended_on"]) < parse_iso_utc(checked["started_on"]):
        raise ValueError(f"tour.ended_on: {checked['ended_on']} is before started_on {checked['started_on']}")
    if (checked["latitude"] is None) != (checked["longitude"] is None):
        given = "latitude" if checked["longitude"] is None else "longitude"
        missing = "longitude" if given == "latitude" else "latitude"
        raise ValueError(f"tour.{missing}: null while {given} is set (both or neither)")
    return checked

"""The status payload: how a device is doing, retained on `explorer/<device id>/status`.

Published on connect, every few minutes and when something a person would act on changes;
retained, so the server (and anyone allowed) reads the latest at once; and set as the
connection's last will with `online: false`, so the broker announces a device that vanished.
The server keeps the newest per device (by `published_on`) with the lag of its detections.

Frozen by tests/device/contracts/test_status_contract.py; read its header before changing
anything. Schema 1 (JSON object, every field required; null means "not known"):

    schema               int, 1
    device_id            str, the device's id (must be its topic's)
    online               bool, false in the last will and in the goodbye of a clean exit
    published_on         str, ISO-8601 UTC ending in Z
    release              str, the explorer release the device runs
    bundle_name          str | null
    bundle_version       str | null
    outbox_pending       int >= 0 | null, messages not yet acknowledged by the broker
    outbox_unconfirmed   int >= 0 | null, acknowledged but no receipt from the server yet
    rtf                  float >= 0 | null, inference time over audio time (below 1 keeps up)
    windows_dropped      int >= 0 | null, since the run started
    clip_disk_free_bytes int >= 0 | null
    battery_percent      int 0-100 | null
    last_detection_on    str ISO-8601 UTC | null
    connected_on         str ISO-8601 UTC | null, when this status's connection began (the
                         last will carries its connection's); the server keeps, per device, the
                         status of the newest connection, and within it an offline one over any
                         online one, else the newest `published_on`
"""

from __future__ import annotations

from typing import Any

from device.contracts.checks import (
    check_bool, check_device_id, check_int, check_object, check_text, check_timestamp, decode_json, encode_json,
    between, check_number, nullable,
)
from device.contracts.topics import topic
from device.domain import Status, iso_utc, parse_iso_utc

SCHEMA = 1
MAX_STATUS_BYTES = 4_096
MAX_NAME_CHARS = 128
MAX_COUNT = 10**12
"""Counts beyond this are corrupt, not busy."""
MAX_RTF = 1_000.0

FIELDS = (
    "schema", "device_id", "online", "published_on", "release", "bundle_name", "bundle_version",
    "outbox_pending", "outbox_unconfirmed", "rtf", "windows_dropped", "clip_disk_free_bytes",
    "battery_percent", "last_detection_on", "connected_on",
)


def rank(status: Status) -> tuple:
    """How statuses of one device order, newest last: by connection, then offline over online
    (a will is fixed at connect time yet comes last), then publication. The server keeps the
    highest (sync_server/db/store.py says it in SQL)."""
    connected = status.connected_on or status.published_on
    return (connected, not status.online, status.published_on)


def status_topic(device_id: str) -> str:
    return topic(device_id, "status")


_count = between(check_int, 0, MAX_COUNT)
_percent = between(check_int, 0, 100)
_rtf = between(check_number, 0.0, MAX_RTF)


def _name(value: Any, where: str) -> str:
    return check_text(value, where, MAX_NAME_CHARS)


_CHECKS = {
    "schema": check_int,
    "device_id": check_device_id,
    "online": check_bool,
    "published_on": check_timestamp,
    "release": _name,
    "bundle_name": nullable(_name),
    "bundle_version": nullable(_name),
    "outbox_pending": nullable(_count),
    "outbox_unconfirmed": nullable(_count),
    "rtf": nullable(_rtf),
    "windows_dropped": nullable(_count),
    "clip_disk_free_bytes": nullable(_count),
    "battery_percent": nullable(_percent),
    "last_detection_on": nullable(check_timestamp),
    "connected_on": nullable(check_timestamp),
}


def status_to_payload(status: Status) -> dict[str, Any]:
    """The schema-1 payload (validated: a device never publishes one the server refuses)."""
    payload = {
        "schema": SCHEMA,
        "device_id": status.device_id,
        "online": bool(status.online),
        "published_on": iso_utc(status.published_on),
        "release": status.release,
        "bundle_name": status.bundle_name,
        "bundle_version": status.bundle_version,
        "outbox_pending": status.outbox_pending,
        "outbox_unconfirmed": status.outbox_unconfirmed,
        "rtf": None if status.rtf is None else round(float(status.rtf), 4),
        "windows_dropped": status.windows_dropped,
        "clip_disk_free_bytes": status.clip_disk_free_bytes,
        "battery_percent": status.battery_percent,
        "last_detection_on": iso_utc(status.last_detection_on) if status.last_detection_on else None,
        "connected_on": iso_utc(status.connected_on) if status.connected_on else None,
    }
    return validate_status(payload)


def status_to_json(status: Status) -> str:
    return encode_json(status_to_payload(status))


def parse_status(data: bytes | str) -> Status:
    """Decode and check a received status.

    Raises:
        ValueError: naming the first problem.
    """
    checked = validate_status(decode_json(data, "status", MAX_STATUS_BYTES))
    values = {name: checked[name] for name in FIELDS if name != "schema"}
    values["published_on"] = parse_iso_utc(values["published_on"])
    for name in ("last_detection_on", "connected_on"):
        if values[name] is not None:
            values[name] = parse_iso_utc(values[name])
    return Status(**values)


def validate_status(raw: Any) -> dict[str, Any]:
    return check_object(raw, "status", SCHEMA, _CHECKS)

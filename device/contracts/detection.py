"""The MQTT detection payload: the one wire format a device sends for each detection.

Built from a `device.domain.Detection` by `detection_to_payload` (an explicit field list,
never the dataclass serialised wholesale), written by `payload_to_json`, and read back on
the server by `parse_payload`, which trusts nothing: anyone on the broker can publish.

The field names and types are frozen by tests/device/contracts/test_detection_contract.py;
read its header before changing anything here. Schema 3 (JSON object, every field required),
what this release sends:

    schema           int, 2
    detection_id     str, canonical lowercase UUID: the server upserts on it, so a resend
                     (the outbox retries until it gets a PUBACK) never duplicates a row
    device_id        str, checks.DEVICE_ID_RULE: 1-64 of A-Z a-z 0-9 . _ : -, starting
                     with a letter or digit
    tour_id          str UUID | null
    label            str, the bundle's primary_label
    scientific_name  str | null   (null when the bundle's label metadata was unknown)
    common_name      str | null
    class_name       str | null   ("Aves", "Amphibia", "Insecta", "Mammalia")
    started_on       str, ISO-8601 UTC ending in Z
    ended_on         str, ISO-8601 UTC ending in Z, not before started_on
    start_s, end_s   float, offsets of the event within its source, 0 <= start_s <= end_s
    confidence       float in [0, 1], the event's peak fused score
    branch_scores    object, branch name -> float in [0, 1] | null (null: the branch does
                     not score this label)
    bundle_name, bundle_version   str
    bundle_sha256    str, 64 lowercase hex digits
    source           str, what the audio came from (file path or "mic:<device>"), "" if unknown
    window_count     int >= 1
    secondary        bool
    site             str | null, at most MAX_SITE_CHARS (the device's `[device] site`)
    latitude         float in [-90, 90] | null     decimal degrees, WGS84; latitude and
    longitude        float in [-180, 180] | null   longitude are both null or both set
    coordinate_uncertainty_m   float in (0, MAX_UNCERTAINTY_M] | null: metres; null when the
                     coordinates are (an uncertainty of nothing means nothing)
    context_scores   object, context name ("Human vocal", "Engine", ...: the bundle's
                     `outputs.context`) -> float in [0, 1], the highest over the event's
                     windows; at most MAX_CONTEXT names; {} when the bundle has none. NOT labels:
                     never a species
    clip_withheld    str | null: "privacy" when a person was heard in or next to the event, so
                     its clip was never written and none will come; null otherwise

Schema 2 (releases before context scores) is schema 3 without its last two fields, and schema 1
(before site and coordinates) is schema 2 without its last four. The server reads all three:
`parse_payload` gives an older payload the fields it lacks as null (context_scores null: the
sender did not say, unlike {}: it had none), keeping its `schema`, so devices not yet upgraded
keep delivering. A device of this release must not send to a server older than it (that server
refuses schema 3 as "not a schema this version reads"): upgrade the server first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from device.contracts.checks import (
    CONTROL_CHARS,
    check_bool,
    check_device_id,
    check_int,
    check_object,
    check_probability,
    check_sha256,
    check_text,
    check_timestamp,
    check_uuid,
    decode_json,
    encode_json,
    between,
    nullable,
    check_number,
)
from device.domain import CLIP_WITHHELD_REASONS, Detection, iso_utc, parse_iso_utc

SCHEMA = 3
"""What this release sends."""
SCHEMAS_READ = (1, 2, 3)
"""What `parse_payload` accepts."""

MAX_PAYLOAD_BYTES = 16_384
"""A real detection with eight branches encodes to under 2 KiB; 16 KiB leaves headroom while
bounding what a hostile publisher can make the server parse."""
MAX_BRANCHES = 32
"""More branches than any bundle would run on a Pi; bounds the object a sender can nest."""
MAX_NAME_CHARS = 128
"""Labels, species names, branch and bundle names: far longer than any real one."""
MAX_SOURCE_CHARS = 1024
"""A source is a file path or mic name; PATH_MAX-scale paths are already pathological."""
MAX_OFFSET_S = 10 * 365 * 24 * 3600.0
"""Offsets beyond ten years of continuous audio are corrupt, not long recordings."""
MAX_WINDOW_COUNT = 10_000_000
MAX_SITE_CHARS = 128
"""A site is a reserve's or a station's name: 128 characters is far more than any needs."""
MAX_UNCERTAINTY_M = 20_037_509.0
"""Half the Earth's circumference: Darwin Core's largest meaningful coordinate uncertainty."""
MAX_CONTEXT = 32
"""Context scores one payload may carry: BirdNET's ten, three times over; bounds what a sender
can make the server parse."""

TOPIC_TEMPLATE = "explorer/{device_id}/detection"
"""Where a device publishes its detections; the device id in the topic lets the broker's
ACL tie a device's credentials to its own topic."""

# Every field, in the order documented above, with the JSON kind it must have.
FIELDS: dict[str, str] = {
    "schema": "int",
    "detection_id": "uuid",
    "device_id": "device_id",
    "tour_id": "uuid|null",
    "label": "name",
    "scientific_name": "name|null",
    "common_name": "name|null",
    "class_name": "name|null",
    "started_on": "timestamp",
    "ended_on": "timestamp",
    "start_s": "offset",
    "end_s": "offset",
    "confidence": "probability",
    "branch_scores": "branch_scores",
    "bundle_name": "name",
    "bundle_version": "name",
    "bundle_sha256": "sha256",
    "source": "source",
    "window_count": "count",
    "secondary": "bool",
    "site": "site|null",
    "latitude": "latitude|null",
    "longitude": "longitude|null",
    "coordinate_uncertainty_m": "uncertainty|null",
    "context_scores": "context_scores",
    "clip_withheld": "withheld|null",
}
PLACE_FIELDS = ("site", "latitude", "longitude", "coordinate_uncertainty_m")
"""The fields schema 2 added (null in a schema-1 payload as parsed)."""
PRIVACY_FIELDS = ("context_scores", "clip_withheld")
"""The fields schema 3 added (null in a schema-1 or schema-2 payload as parsed)."""
FIELDS_V2: dict[str, str] = {name: kind for name, kind in FIELDS.items() if name not in PRIVACY_FIELDS}
"""Schema 2's fields, frozen: what devices of the previous release send."""
FIELDS_V1: dict[str, str] = {name: kind for name, kind in FIELDS_V2.items() if name not in PLACE_FIELDS}
"""Schema 1's fields, frozen: what devices not yet upgraded send."""


def detection_topic(device_id: str) -> str:
    """The MQTT topic a device publishes its detections on."""
    check_device_id(device_id, "device_id")
    return TOPIC_TEMPLATE.format(device_id=device_id)


def _label_fact(meta: Any, key: str) -> str | None:
    if meta is None:
        return None
    value = meta.get(key) if isinstance(meta, Mapping) else getattr(meta, key, None)
    return value if isinstance(value, str) and value else None


def _score_or_null(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _wire_source(source: str) -> str:
    """The source as the wire carries it: control characters (a tab in a file name) become
    '?', and an over-long path keeps its end (the file name), so no detection is ever
    unsendable because of where its audio came from."""
    source = CONTROL_CHARS.sub("?", source)
    if len(source) > MAX_SOURCE_CHARS:
        source = "..." + source[-(MAX_SOURCE_CHARS - 3) :]
    return source


def _wire_site(site: str | None) -> str | None:
    """A site as the wire carries it: blank is null, control characters become spaces."""
    if site is None:
        return None
    return CONTROL_CHARS.sub(" ", site).strip() or None


def _wire_number(value: float | None) -> float | None:
    return None if value is None else float(value)


def detection_to_payload(det: Detection, labels_meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The schema-3 payload for a detection.

    Args:
        det: the detection (its final state, when sent from the outbox).
        labels_meta: primary_label -> that label's facts (a manifest `Label`, or a mapping
            with scientific_name, common_name, class_name); labels it lacks get nulls.

    Raises:
        ValueError: the detection holds something the schema cannot carry (NaN confidence,
            a bad id...); the message names the field. Checked here so a device never
            queues a message the server would refuse.
    """
    meta = (labels_meta or {}).get(det.label)
    payload = {
        "schema": SCHEMA,
        "detection_id": det.detection_id,
        "device_id": det.device_id,
        "tour_id": det.tour_id,
        "label": det.label,
        "scientific_name": _label_fact(meta, "scientific_name"),
        "common_name": _label_fact(meta, "common_name"),
        "class_name": _label_fact(meta, "class_name"),
        "started_on": iso_utc(det.started_on),
        "ended_on": iso_utc(det.ended_on),
        "start_s": float(det.start_s),
        "end_s": float(det.end_s),
        "confidence": float(det.confidence),
        "branch_scores": {str(name): _score_or_null(score) for name, score in det.branch_scores.items()},
        "bundle_name": det.bundle_name,
        "bundle_version": det.bundle_version,
        "bundle_sha256": det.bundle_sha256,
        "source": _wire_source(det.source),
        "window_count": int(det.window_count),
        "secondary": bool(det.secondary),
        "site": _wire_site(det.site),
        "latitude": _wire_number(det.latitude),
        "longitude": _wire_number(det.longitude),
        "coordinate_uncertainty_m": _wire_number(det.coordinate_uncertainty_m),
        "context_scores": {str(name): float(score) for name, score in det.context_scores.items()},
        "clip_withheld": det.clip_withheld,
    }
    return validate_payload(payload)


def payload_to_json(payload: Mapping[str, Any]) -> str:
    """Compact, key-sorted JSON; refuses NaN/Infinity (not JSON, and not meaningful)."""
    return encode_json(payload)


def parse_payload(data: bytes | str) -> dict[str, Any]:
    """Decode and validate a received payload; return it as a dict of checked values.

    A schema-1 or schema-2 payload comes back with the fields it lacks as null (and its own
    `schema`), so every reader sees one shape.

    Raises:
        ValueError: naming the first problem: oversize, not UTF-8, not JSON, NaN, a
            duplicate or unknown key, a missing field, a wrong type, an out-of-range value.
    """
    return validate_payload(decode_json(data, "payload", MAX_PAYLOAD_BYTES))


def validate_payload(raw: Any) -> dict[str, Any]:
    """Check a decoded payload (schema 1, 2 or 3) field by field; return a normalised copy
    (floats as float; an older payload completed with null for the fields it lacks)."""
    if isinstance(raw, dict) and "schema" in raw and not (type(raw["schema"]) is int and raw["schema"] in SCHEMAS_READ):
        raise ValueError(f"payload.schema: {raw['schema']!r} is not a schema this version reads "
                         f"({', '.join(map(str, SCHEMAS_READ[:-1]))} or {SCHEMAS_READ[-1]})")
    schema = raw.get("schema") if isinstance(raw, dict) else None
    if schema == 1:
        checked = check_object(raw, "payload", 1, _FIELD_CHECKS_V1)
        checked.update(dict.fromkeys(PLACE_FIELDS))
        checked.update(dict.fromkeys(PRIVACY_FIELDS))
    elif schema == 2:
        checked = check_object(raw, "payload", 2, _FIELD_CHECKS_V2)
        _check_place(checked)
        checked.update(dict.fromkeys(PRIVACY_FIELDS))
    else:
        checked = check_object(raw, "payload", SCHEMA, _FIELD_CHECKS)
        _check_place(checked)
    if parse_iso_utc(checked["ended_on"]) < parse_iso_utc(checked["started_on"]):
        raise ValueError(f"payload.ended_on: {checked['ended_on']} is before started_on {checked['started_on']}")
    if checked["end_s"] < checked["start_s"]:
        raise ValueError(f"payload.end_s: {checked['end_s']} is before start_s {checked['start_s']}")
    return checked


def _check_place(checked: Mapping[str, Any]) -> None:
    if (checked["latitude"] is None) != (checked["longitude"] is None):
        given = "latitude" if checked["longitude"] is None else "longitude"
        missing = "longitude" if given == "latitude" else "latitude"
        raise ValueError(f"payload.{missing}: null while {given} is set (both or neither)")
    if checked["coordinate_uncertainty_m"] is not None and checked["latitude"] is None:
        raise ValueError("payload.coordinate_uncertainty_m: set while latitude and longitude are null")


_check_count = between(check_int, 1, MAX_WINDOW_COUNT)
_check_offset = between(check_number, 0.0, MAX_OFFSET_S, " s")


def _check_name(value: Any, where: str) -> str:
    return check_text(value, where, MAX_NAME_CHARS)


def check_site(value: Any, where: str) -> str:
    return check_text(value, where, MAX_SITE_CHARS)


def _check_uncertainty(value: Any, where: str) -> float:
    value = check_number(value, where)
    if not 0.0 < value <= MAX_UNCERTAINTY_M:
        raise ValueError(f"{where}: {value} m is outside (0, {MAX_UNCERTAINTY_M:.12g}]")
    return value


check_latitude = between(check_number, -90.0, 90.0, "°")
check_longitude = between(check_number, -180.0, 180.0, "°")


def _check_source(value: Any, where: str) -> str:
    if value == "":
        return value  # unknown source: allowed, a detection is still worth keeping
    return check_text(value, where, MAX_SOURCE_CHARS)


def _check_branch_scores(value: Any, where: str) -> dict[str, float | None]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
    if len(value) > MAX_BRANCHES:
        raise ValueError(f"{where}: {len(value)} branches is over the limit of {MAX_BRANCHES}")
    return {
        _check_name(name, f"{where} key"): None if score is None else check_probability(score, f"{where}.{name}")
        for name, score in value.items()
    }


def _check_context_scores(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
    if len(value) > MAX_CONTEXT:
        raise ValueError(f"{where}: {len(value)} context scores is over the limit of {MAX_CONTEXT}")
    return {_check_name(name, f"{where} key"): check_probability(score, f"{where}.{name}")
            for name, score in value.items()}


def _check_withheld(value: Any, where: str) -> str:
    if type(value) is not str or value not in CLIP_WITHHELD_REASONS:
        raise ValueError(f"{where}: {str(value)[:40]!r} is not one of {CLIP_WITHHELD_REASONS} (or null)")
    return value


_CHECKS = {
    "int": check_int,
    "uuid": check_uuid,
    "uuid|null": nullable(check_uuid),
    "device_id": check_device_id,
    "name": _check_name,
    "name|null": nullable(_check_name),
    "timestamp": check_timestamp,
    "offset": _check_offset,
    "probability": check_probability,
    "branch_scores": _check_branch_scores,
    "sha256": check_sha256,
    "source": _check_source,
    "count": _check_count,
    "bool": check_bool,
    "site|null": nullable(check_site),
    "latitude|null": nullable(check_latitude),
    "longitude|null": nullable(check_longitude),
    "uncertainty|null": nullable(_check_uncertainty),
    "context_scores": _check_context_scores,
    "withheld|null": nullable(_check_withheld),
}
_FIELD_CHECKS = {name: _CHECKS[kind] for name, kind in FIELDS.items()}
"""Each field's check, in FIELDS order (built once: the server checks thousands a second)."""
_FIELD_CHECKS_V2 = {name: _CHECKS[kind] for name, kind in FIELDS_V2.items()}
_FIELD_CHECKS_V1 = {name: _CHECKS[kind] for name, kind in FIELDS_V1.items()}

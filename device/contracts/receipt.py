"""The receipt: the server's word that it has committed what a device sent.

A device's message is delivered when the server's database holds it, not when a broker
acknowledged it (a broker crash loses what it had not saved). So after each commit the ingest
publishes, QoS 1, on `explorer/<device id>/receipt` (topics.py), the ids it stored, batched;
the device subscribes with a persistent session and marks those messages confirmed.

Frozen by tests/device/contracts/test_receipt_contract.py; read its header before changing
anything. Schema 1 (JSON object, every field required):

    schema      int, 1
    device_id   str, the device the receipt is for (must be its topic's device)
    issued_on   str, ISO-8601 UTC ending in Z
    stored      object, kind -> list of canonical UUIDs: "detection" (detection ids),
                "feedback" (feedback ids) and "tour" (`tour.delivery_id`s: one per state of a
                tour); a kind with nothing stored may be left out
    refused     list of {"kind", "id", "reason"}: messages the server will never store (a
                detection id another device owns, say); the device stops resending them

At most MAX_IDS ids in one receipt (stored and refused together); `split_receipt` cuts a
longer list into several.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from device.contracts.checks import (
    CONTROL_CHARS, check_device_id, check_object, check_int, check_text, check_timestamp, check_uuid, decode_json, encode_json,
)
from device.contracts.topics import topic
from device.domain import Receipt, Refusal, iso_utc, parse_iso_utc

SCHEMA = 1
KINDS = ("detection", "feedback", "tour")
"""What a receipt can confirm: the records a device sends through its outbox. "tour" came after
the first release; a receipt names only what its device sent, and only a release that sends
tours receives one with tours in it, so older devices never meet the kind they would refuse."""
MAX_IDS = 500
"""Ids per receipt: one ingest batch's worth for one device, ~20 KB of JSON."""
MAX_REASON_CHARS = 500
"""A refusal's reason is the server's error text; bounded so a receipt stays small."""
MAX_RECEIPT_BYTES = 65_536
"""500 ids of 36 characters with their quoting is ~20 KB; refusals add their reasons."""

FIELDS = ("schema", "device_id", "issued_on", "stored", "refused")


def receipt_topic(device_id: str) -> str:
    """Where the server publishes `device_id`'s receipts."""
    return topic(device_id, "receipt")


def receipt_to_payload(receipt: Receipt) -> dict[str, Any]:
    """The schema-1 payload for a receipt (validated, so the server never publishes one the
    device would refuse)."""
    payload = {
        "schema": SCHEMA,
        "device_id": receipt.device_id,
        "issued_on": iso_utc(receipt.issued_on),
        "stored": {kind: list(ids) for kind, ids in receipt.stored.items() if ids},
        "refused": [{"kind": r.kind, "id": r.record_id, "reason": _reason(r.reason)}
                    for r in receipt.refused],
    }
    _validate(payload)
    return payload


def receipt_to_json(receipt: Receipt) -> str:
    return encode_json(receipt_to_payload(receipt))


def parse_receipt(data: bytes | str) -> Receipt:
    """Decode and check a received receipt.

    Raises:
        ValueError: naming the first problem (oversize, not JSON, an unknown kind, a bad id...).
    """
    raw = decode_json(data, "receipt", MAX_RECEIPT_BYTES)
    _validate(raw)
    return Receipt(
        device_id=raw["device_id"],
        issued_on=parse_iso_utc(raw["issued_on"]),
        stored={kind: tuple(ids) for kind, ids in raw["stored"].items()},
        refused=tuple(Refusal(r["kind"], r["id"], r["reason"]) for r in raw["refused"]),
    )


def split_receipt(device_id: str, issued_on, stored: Mapping[str, Iterable[str]],
                  refused: Iterable[Refusal] = ()) -> Iterator[Receipt]:
    """Receipts of at most MAX_IDS ids each covering everything given, in order."""
    items: list[tuple[str, str | Refusal]] = [(kind, i) for kind, ids in stored.items() for i in ids]
    items += [("refused", r) for r in refused]
    for start in range(0, len(items), MAX_IDS):
        chunk = items[start:start + MAX_IDS]
        grouped: dict[str, list[str]] = {}
        refusals = []
        for kind, item in chunk:
            if kind == "refused":
                refusals.append(item)
            else:
                grouped.setdefault(kind, []).append(item)
        yield Receipt(device_id, issued_on, {k: tuple(v) for k, v in grouped.items()}, tuple(refusals))


def _reason(text: str) -> str:
    """A refusal's reason as the wire carries it: no control characters, bounded, never empty."""
    text = CONTROL_CHARS.sub("?", str(text)).strip()[:MAX_REASON_CHARS]
    return text or "refused"


def _check_kind(value: Any, where: str) -> str:
    if value not in KINDS:
        raise ValueError(f"{where}: {str(value)[:40]!r} is not a kind a receipt confirms ({', '.join(KINDS)})")
    return value


def _validate(raw: Any) -> None:
    check_object(raw, "receipt", SCHEMA, {
        "schema": check_int, "device_id": check_device_id, "issued_on": check_timestamp,
        "stored": lambda value, where: value, "refused": lambda value, where: value,
    })
    stored, refused = raw["stored"], raw["refused"]
    if not isinstance(stored, dict):
        raise ValueError(f"receipt.stored: expected an object, got {type(stored).__name__}")
    if not isinstance(refused, list):
        raise ValueError(f"receipt.refused: expected a list, got {type(refused).__name__}")
    count = len(refused)
    for kind, ids in stored.items():
        _check_kind(kind, "receipt.stored key")
        if not isinstance(ids, list):
            raise ValueError(f"receipt.stored.{kind}: expected a list, got {type(ids).__name__}")
        count += len(ids)
        if count > MAX_IDS:
            raise ValueError(f"receipt: more than {MAX_IDS} ids")
        for n, value in enumerate(ids):
            check_uuid(value, f"receipt.stored.{kind}[{n}]")
    if count > MAX_IDS:
        raise ValueError(f"receipt: more than {MAX_IDS} ids")
    for n, item in enumerate(refused):
        where = f"receipt.refused[{n}]"
        if not isinstance(item, dict) or set(item) != {"kind", "id", "reason"}:
            raise ValueError(f"{where}: expected an object with exactly kind, id and reason")
        _check_kind(item["kind"], f"{where}.kind")
        check_uuid(item["id"], f"{where}.id")
        check_text(item["reason"], f"{where}.reason", MAX_REASON_CHARS)

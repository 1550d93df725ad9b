"""Field checks and the guarded JSON decoder that every wire payload is read with.

Each check takes a decoded value and `where` (the field's dotted name, e.g.
"payload.device_id", which starts every message) and returns the value, or raises ValueError
naming the field and the problem. They are strict about JSON types (`true` is not an integer,
`"0.9"` is not a number): the type is part of the contract, and a lenient reader would let a
sender's bug reach the aggregate database.

The device id rule lives here because three places must agree on it: the payload, the MQTT
topic (the broker's ACL ties a device's credentials to `explorer/<id>/...`) and the `[device]
id` that `config.toml` is validated against at start.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from device.domain import parse_iso_utc

T = TypeVar("T")

DEVICE_ID_RULE = "1-64 of A-Z a-z 0-9 . _ : -, starting with a letter or digit"
"""The device id rule in words, for every message that refuses one. It keeps an id usable as
one MQTT topic level (no '/', '+', '#', spaces) and as a broker user name."""
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
"""Characters no text field may hold: they corrupt logs, CSV exports and terminals."""


def check_device_id(value: Any, where: str) -> str:
    """A device id that follows `DEVICE_ID_RULE`.

    Raises:
        ValueError: "<where>: '<value>' is not a device id (<rule>)".
    """
    if type(value) is not str or not _DEVICE_ID.match(value):
        raise ValueError(f"{where}: {str(value)[:40]!r} is not a device id ({DEVICE_ID_RULE})")
    return value


def check_int(value: Any, where: str) -> int:
    if type(value) is not int:
        raise ValueError(f"{where}: expected an integer, got {type(value).__name__}")
    return value


def check_bool(value: Any, where: str) -> bool:
    if type(value) is not bool:
        raise ValueError(f"{where}: expected true or false, got {type(value).__name__}")
    return value


def check_number(value: Any, where: str) -> float:
    """A finite JSON number (an integer is accepted and returned as float)."""
    if type(value) not in (int, float):
        raise ValueError(f"{where}: expected a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{where}: {value} is not a finite number")
    return value


def check_probability(value: Any, where: str) -> float:
    value = check_number(value, where)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{where}: {value} is outside [0, 1]")
    return value


def check_text(value: Any, where: str, limit: int) -> str:
    """A non-blank string of at most `limit` characters with no control characters."""
    if type(value) is not str:
        raise ValueError(f"{where}: expected a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{where}: empty")
    if len(value) > limit:
        raise ValueError(f"{where}: {len(value)} characters is over the {limit}-character limit")
    if CONTROL_CHARS.search(value):
        raise ValueError(f"{where}: holds control characters")
    return value


def check_uuid(value: Any, where: str) -> str:
    """A canonical (lowercase, hyphenated) UUID: the one spelling, so an id compares equal
    to itself on every side of the wire. (The pattern is exactly what `str(uuid.UUID(...))`
    writes; matching it costs a tenth of parsing one, and the ingest checks three per message.)"""
    if type(value) is not str:
        raise ValueError(f"{where}: expected a UUID string, got {type(value).__name__}")
    if _CANONICAL_UUID.match(value):
        return value
    try:
        uuid.UUID(value)
    except ValueError:
        raise ValueError(f"{where}: {value[:40]!r} is not a UUID") from None
    raise ValueError(f"{where}: {value[:40]!r} is not a canonical lowercase hyphenated UUID")


def check_sha256(value: Any, where: str) -> str:
    if type(value) is not str or not _SHA256.match(value):
        raise ValueError(f"{where}: {str(value)[:70]!r} is not 64 lowercase hex digits")
    return value


def check_timestamp(value: Any, where: str) -> str:
    """ISO-8601 UTC text ending in Z (as `device.domain.iso_utc` writes it) naming a real moment."""
    if type(value) is not str or not _ISO_UTC.match(value):
        raise ValueError(f"{where}: {str(value)[:40]!r} is not ISO-8601 UTC text ending in Z")
    try:
        parse_iso_utc(value)
    except ValueError:
        raise ValueError(f"{where}: {value!r} is not a real date and time") from None
    return value


def nullable(check: Callable[[Any, str], T]) -> Callable[[Any, str], T | None]:
    """`check`, but JSON null passes as None."""

    def check_or_null(value: Any, where: str) -> T | None:
        return None if value is None else check(value, where)

    return check_or_null


def decode_json(data: bytes | str, what: str, max_bytes: int) -> Any:
    """Decode a received message's JSON without trusting its sender.

    Args:
        data: the raw message (str is encoded as UTF-8 first).
        what: the payload's name, which starts every message ("payload", "receipt", ...).
        max_bytes: the most bytes this kind of message may have; checked before decoding, so
            a hostile sender cannot make the reader parse megabytes.

    Raises:
        ValueError: naming the first problem: not bytes, oversize, not UTF-8, not JSON, NaN or
            Infinity (JSON has no such numbers), a key that appears twice (which value would be
            meant?), nested too deeply.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"{what}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise ValueError(f"{what}: {len(data)} bytes is over the {max_bytes}-byte limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what}: not UTF-8 ({exc.reason} at byte {exc.start})") from None

    def refuse_constant(name: str) -> None:
        raise ValueError(f"{what}: {name} is not a number JSON allows")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise ValueError(f"{what}: key {key!r} appears twice")
            result[key] = value
        return result

    try:
        return json.loads(text, parse_constant=refuse_constant, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise ValueError(f"{what}: nested too deeply") from None


def encode_json(payload: Any) -> str:
    """Compact, key-sorted JSON, the one encoding every payload is sent in; refuses NaN and
    Infinity (not JSON, and not meaningful)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def check_object(raw: Any, what: str, schema: int, checks: dict[str, Callable[[Any, str], Any]]) -> dict[str, Any]:
    """Check a decoded payload that must be exactly the fields of `checks` (in that order),
    `schema` among them; return the checked values.

    Raises:
        ValueError: not an object, another schema, an unknown or missing field, or the first
            field whose check fails; the message starts with `what`.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"{what}: expected a JSON object, got {type(raw).__name__}")
    if "schema" not in raw:
        raise ValueError(f"{what}.schema: missing")
    if type(raw["schema"]) is not int or raw["schema"] != schema:
        raise ValueError(f"{what}.schema: {raw['schema']!r} is not a schema this version reads ({schema})")
    if raw.keys() != checks.keys():  # the common case costs one comparison of key views
        unknown = sorted(raw.keys() - checks.keys())
        if unknown:
            raise ValueError(f"{what}: unknown field(s) {unknown[:5]}")
        missing = [name for name in checks if name not in raw]
        raise ValueError(f"{what}.{missing[0]}: missing")
    return {name: check(raw[name], f"{what}.{name}") for name, check in checks.items()}


def between(check: Callable[[Any, str], T], low: Any, high: Any, unit: str = "") -> Callable[[Any, str], T]:
    """`check` (check_int or check_number), and then within [low, high] (`unit` is named in
    the message)."""

    def check_range(value: Any, where: str) -> T:
        value = check(value, where)
        if not low <= value <= high:
            raise ValueError(f"{where}: {value}{unit} is outside [{low:.12g}, {high:.12g}]")
        return value

    return check_range

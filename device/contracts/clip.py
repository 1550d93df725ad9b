"""Clip upload: a detection's FLAC clip sent to the server in chunks, resumable, verified.

Only clips a guide judged (confirmed or rejected) and clips the server asked for are sent,
within a daily byte budget, and never ahead of detections (device/sync). Three messages:

    explorer/<device>/clip          device -> server   one chunk (`encode_chunk`)
    explorer/<device>/clip-ack      server -> device   how many bytes the server holds (`ClipAck`)
    explorer/<device>/clip-request  server -> device   detections whose clips it wants (retained)

A chunk is binary: one line of JSON (the header below), a newline, then the chunk's bytes. The
server appends a chunk only at the offset it already holds, so a resend or a chunk after a gap
changes nothing; its ack names the bytes it holds, and the device resumes from there (after a
power cut, a reconnect or a server restart). When the last byte is in, the server checks the
whole file's sha256 before keeping it: `complete`, or `refused` with the reason (the device
then starts the clip again from byte 0 once; a clip refused twice is given up on).

Frozen by tests/device/contracts/test_clip_contract.py; read its header before changing
anything. Chunk header, schema 1 (every field required):

    schema          int, 1
    device_id       str, the device's id (must be its topic's)
    clip_id         str UUID, the device's clip id (the server's file is named after it)
    detection_id    str UUID, the clip's detection
    sha256          str, 64 lowercase hex digits: the whole file's
    size_bytes      int, the whole file's size, 1 .. MAX_CLIP_BYTES
    offset          int, where this chunk starts, 0 <= offset < size_bytes
    chunk_bytes     int, the bytes after the newline, 1 .. MAX_CHUNK_BYTES, offset + chunk_bytes <= size_bytes
    sample_rate_hz  int, the clip's rate
    duration_s      float > 0
    start_s         float >= 0, where the clip starts in its detection's source

Ack, schema 1: schema, device_id, clip_id, received_bytes (int >= 0), state ("partial" |
"complete" | "refused"), reason (str | null). Request, schema 1: schema, device_id,
issued_on, detection_ids (list of UUIDs, at most MAX_REQUESTED).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from device.contracts.checks import (
    between, check_device_id, check_int, check_number, check_object, check_sha256, check_text, check_timestamp,
    check_uuid, decode_json, encode_json, nullable,
)
from device.contracts.topics import topic
from device.domain import iso_utc, parse_iso_utc

SCHEMA = 1
MAX_CHUNK_BYTES = 65_536
"""Bytes per chunk: a few seconds of a slow link, so a dropped connection costs little."""
MAX_CLIP_BYTES = 16 * 1024 * 1024
"""A clip is a few seconds of 16-bit FLAC (tens of KB); 16 MiB bounds what a sender can make
the server hold for one clip."""
MAX_HEADER_BYTES = 2_048
MAX_REQUESTED = 500
MAX_REASON_CHARS = 500
ACK_STATES = ("partial", "complete", "refused")

HEADER_FIELDS = ("schema", "device_id", "clip_id", "detection_id", "sha256", "size_bytes", "offset",
                 "chunk_bytes", "sample_rate_hz", "duration_s", "start_s")
ACK_FIELDS = ("schema", "device_id", "clip_id", "received_bytes", "state", "reason")
REQUEST_FIELDS = ("schema", "device_id", "issued_on", "detection_ids")


@dataclass(frozen=True)
class ClipChunk:
    """One chunk of a clip, as sent."""

    device_id: str
    clip_id: str
    detection_id: str
    sha256: str
    size_bytes: int
    offset: int
    data: bytes
    sample_rate_hz: int
    duration_s: float
    start_s: float


@dataclass(frozen=True)
class ClipAck:
    """What the server holds of a clip."""

    device_id: str
    clip_id: str
    received_bytes: int
    state: str
    """'partial' (send from received_bytes on), 'complete' (kept, sha256 checked) or 'refused'."""
    reason: str | None = None


@dataclass(frozen=True)
class ClipRequest:
    """The server asking a device for the clips of these detections."""

    device_id: str
    issued_on: datetime
    detection_ids: tuple[str, ...]


def clip_topic(device_id: str) -> str:
    return topic(device_id, "clip")


def clip_ack_topic(device_id: str) -> str:
    return topic(device_id, "clip-ack")


def clip_request_topic(device_id: str) -> str:
    return topic(device_id, "clip-request")


_HEADER_CHECKS = {
    "schema": check_int,
    "device_id": check_device_id,
    "clip_id": check_uuid,
    "detection_id": check_uuid,
    "sha256": check_sha256,
    "size_bytes": between(check_int, 1, MAX_CLIP_BYTES),
    "offset": between(check_int, 0, MAX_CLIP_BYTES - 1),
    "chunk_bytes": between(check_int, 1, MAX_CHUNK_BYTES),
    "sample_rate_hz": between(check_int, 1, 1_000_000),
    "duration_s": between(check_number, 1e-6, 3600.0, " s"),
    "start_s": between(check_number, 0.0, 10 * 365 * 24 * 3600.0, " s"),
}


def encode_chunk(chunk: ClipChunk) -> bytes:
    """The wire bytes of a chunk (checked, so a device never sends one the server refuses)."""
    header = {
        "schema": SCHEMA, "device_id": chunk.device_id, "clip_id": chunk.clip_id,
        "detection_id": chunk.detection_id, "sha256": chunk.sha256, "size_bytes": int(chunk.size_bytes),
        "offset": int(chunk.offset), "chunk_bytes": len(chunk.data), "sample_rate_hz": int(chunk.sample_rate_hz),
        "duration_s": float(chunk.duration_s), "start_s": float(chunk.start_s),
    }
    _check_header(header)
    return encode_json(header).encode("utf-8") + b"\n" + bytes(chunk.data)


def parse_chunk(data: bytes) -> ClipChunk:
    """Split and check a received chunk.

    Raises:
        ValueError: naming the first problem (no header line, oversize, a bad field, a chunk
            whose length is not its header's, one that runs past the clip's end).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"clip chunk: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_HEADER_BYTES + 1 + MAX_CHUNK_BYTES:
        raise ValueError(f"clip chunk: {len(data)} bytes is over the {MAX_HEADER_BYTES + 1 + MAX_CHUNK_BYTES}-byte limit")
    newline = data.find(b"\n", 0, MAX_HEADER_BYTES + 1)
    if newline < 0:
        raise ValueError(f"clip chunk: no header line within its first {MAX_HEADER_BYTES} bytes")
    header = decode_json(data[:newline], "clip chunk", MAX_HEADER_BYTES)
    _check_header(header)
    body = data[newline + 1:]
    if len(body) != header["chunk_bytes"]:
        raise ValueError(f"clip chunk: {len(body)} bytes follow the header, which says {header['chunk_bytes']}")
    return ClipChunk(header["device_id"], header["clip_id"], header["detection_id"], header["sha256"],
                     header["size_bytes"], header["offset"], body, header["sample_rate_hz"],
                     float(header["duration_s"]), float(header["start_s"]))


def _check_header(header: Any) -> None:
    checked = check_object(header, "clip chunk", SCHEMA, _HEADER_CHECKS)
    if checked["offset"] + checked["chunk_bytes"] > checked["size_bytes"]:
        raise ValueError(f"clip chunk: offset {checked['offset']} + {checked['chunk_bytes']} bytes runs past the "
                         f"clip's {checked['size_bytes']} bytes")


def _check_state(value: Any, where: str) -> str:
    if value not in ACK_STATES:
        raise ValueError(f"{where}: {str(value)[:40]!r} is not one of {', '.join(ACK_STATES)}")
    return value


_ACK_CHECKS = {
    "schema": check_int,
    "device_id": check_device_id,
    "clip_id": check_uuid,
    "received_bytes": between(check_int, 0, MAX_CLIP_BYTES),
    "state": _check_state,
    "reason": nullable(lambda value, where: check_text(value, where, MAX_REASON_CHARS)),
}


def ack_to_json(ack: ClipAck) -> str:
    payload = {"schema": SCHEMA, "device_id": ack.device_id, "clip_id": ack.clip_id,
               "received_bytes": int(ack.received_bytes), "state": ack.state,
               "reason": ack.reason[:MAX_REASON_CHARS] if ack.reason else None}
    check_object(payload, "clip ack", SCHEMA, _ACK_CHECKS)
    return encode_json(payload)


def parse_ack(data: bytes | str) -> ClipAck:
    checked = check_object(decode_json(data, "clip ack", 4_096), "clip ack", SCHEMA, _ACK_CHECKS)
    return ClipAck(checked["device_id"], checked["clip_id"], checked["received_bytes"], checked["state"],
                   checked["reason"])


def _check_ids(value: Any, where: str) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
    if len(value) > MAX_REQUESTED:
        raise ValueError(f"{where}: {len(value)} ids is over the limit of {MAX_REQUESTED}")
    return [check_uuid(item, f"{where}[{n}]") for n, item in enumerate(value)]


_REQUEST_CHECKS = {"schema": check_int, "device_id": check_device_id, "issued_on": check_timestamp,
                   "detection_ids": _check_ids}


def request_to_json(request: ClipRequest) -> str:
    payload = {"schema": SCHEMA, "device_id": request.device_id, "issued_on": iso_utc(request.issued_on),
               "detection_ids": list(request.detection_ids)}
    check_object(payload, "clip request", SCHEMA, _REQUEST_CHECKS)
    return encode_json(payload)


def parse_request(data: bytes | str) -> ClipRequest:
    checked = check_object(decode_json(data, "clip request", 32_768), "clip request", SCHEMA, _REQUEST_CHECKS)
    return ClipRequest(checked["device_id"], parse_iso_utc(checked["issued_on"]), tuple(checked["detection_ids"]))

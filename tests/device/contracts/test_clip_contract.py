# CONTRACT TEST: the clip upload messages (device/contracts/clip.py), schema 1: the chunk
# (a JSON header line, a newline, the bytes), the server's ack and its retained request.
#
# Devices and the server both speak these, and a device may run an older release for months.
# To change them: get the sync-server owner's and the lead's approval; a new or changed field
# means a new schema number read alongside the old one until every device is upgraded; update
# the FROZEN_* lists, the golden bytes and clip.py's docstring together, with a release note.
# Never "fix" this test by copying the new output over the golden string.

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

import pytest

from device.contracts import clip as wire
from device.contracts.clip import (
    ClipAck, ClipChunk, ClipRequest, ack_to_json, clip_ack_topic, clip_request_topic, clip_topic, encode_chunk,
    parse_ack, parse_chunk, parse_request, request_to_json,
)
from device.contracts.topics import parse_topic

FROZEN_HEADER = ("schema", "device_id", "clip_id", "detection_id", "sha256", "size_bytes", "offset",
                 "chunk_bytes", "sample_rate_hz", "duration_s", "start_s")
FROZEN_ACK = ("schema", "device_id", "clip_id", "received_bytes", "state", "reason")
FROZEN_REQUEST = ("schema", "device_id", "issued_on", "detection_ids")
CLIP = b"fLaC" + bytes(range(60))
SHA = hashlib.sha256(CLIP).hexdigest()
CHUNK = ClipChunk("pi-h02", "3e4f5a6b-7c8d-4e9f-8a0b-1c2d3e4f5a6b", "0b7c6f4e-3d2a-4c1b-9e8f-7a6b5c4d3e2f", SHA,
                  len(CLIP), 32, CLIP[32:], 32000, 5.0, 12.5)
GOLDEN_HEADER = (
    '{"chunk_bytes":32,"clip_id":"3e4f5a6b-7c8d-4e9f-8a0b-1c2d3e4f5a6b",'
    '"detection_id":"0b7c6f4e-3d2a-4c1b-9e8f-7a6b5c4d3e2f","device_id":"pi-h02","duration_s":5.0,'
    f'"offset":32,"sample_rate_hz":32000,"schema":1,"sha256":"{SHA}","size_bytes":64,"start_s":12.5}}'
)


def test_the_field_lists_are_frozen():
    assert (wire.HEADER_FIELDS, wire.ACK_FIELDS, wire.REQUEST_FIELDS) == (FROZEN_HEADER, FROZEN_ACK, FROZEN_REQUEST)
    assert wire.SCHEMA == 1 and wire.ACK_STATES == ("partial", "complete", "refused")
    assert tuple(wire._HEADER_CHECKS) == FROZEN_HEADER and tuple(wire._ACK_CHECKS) == FROZEN_ACK


def test_a_chunk_is_a_json_header_line_then_its_bytes():
    data = encode_chunk(CHUNK)
    assert data == GOLDEN_HEADER.encode() + b"\n" + CLIP[32:]
    assert parse_chunk(data) == CHUNK


def test_the_topics_are_per_device():
    assert clip_topic("pi-h02") == "explorer/pi-h02/clip"
    assert parse_topic(clip_ack_topic("pi-h02")) == ("pi-h02", "clip-ack")
    assert parse_topic(clip_request_topic("pi-h02")) == ("pi-h02", "clip-request")


def test_acks_and_requests_round_trip():
    for ack in (ClipAck("pi-h02", CHUNK.clip_id, 32, "partial"), ClipAck("pi-h02", CHUNK.clip_id, 64, "complete"),
                ClipAck("pi-h02", CHUNK.clip_id, 0, "refused", "sha256 mismatch: the bytes are not the clip's")):
        assert parse_ack(ack_to_json(ack)) == ack
    request = ClipRequest("pi-h02", datetime(2026, 4, 20, 8, 0, tzinfo=timezone.utc), (CHUNK.detection_id,))
    assert request_to_json(request) == ('{"detection_ids":["0b7c6f4e-3d2a-4c1b-9e8f-7a6b5c4d3e2f"],'
                                        '"device_id":"pi-h02","issued_on":"2026-04-20T08:00:00.000Z","schema":1}')
    assert parse_request(request_to_json(request)) == request


def _header(**changes) -> bytes:
    header = json.loads(GOLDEN_HEADER)
    header.update(changes)
    return json.dumps(header).encode()


@pytest.mark.parametrize(
    "data,expected",
    [
        (b"no newline at all" * 200, "no header line within its first 2048 bytes"),
        (_header() + b"\n" + CLIP[32:40], "8 bytes follow the header, which says 32"),
        (_header(offset=40) + b"\n" + CLIP[32:], "offset 40 + 32 bytes runs past the clip's 64 bytes"),
        (_header(size_bytes=17 * 1024 * 1024) + b"\n" + CLIP[32:], "clip chunk.size_bytes"),
        (_header(sha256="ABC") + b"\n" + CLIP[32:], "clip chunk.sha256"),
        (_header(clip_id="../../etc/passwd") + b"\n" + CLIP[32:], "clip chunk.clip_id"),
        (_header(chunk_bytes=0) + b"\n", "clip chunk.chunk_bytes"),
        (_header(device_id="pi h02") + b"\n" + CLIP[32:], "clip chunk.device_id"),
        (b"\xff\n" + CLIP, "clip chunk: not UTF-8"),
        (b"x" * (2048 + 1 + 65536 + 1), "over the 67585-byte limit"),
    ],
)
def test_a_hostile_chunk_is_refused_naming_the_problem(data, expected):
    with pytest.raises(ValueError) as error:
        parse_chunk(data)
    assert expected in str(error.value)


def test_a_hostile_ack_or_request_is_refused():
    with pytest.raises(ValueError, match="clip ack.state: 'done' is not one of"):
        parse_ack(ack_to_json(ClipAck("pi-h02", CHUNK.clip_id, 1, "partial")).replace("partial", "done"))
    with pytest.raises(ValueError, match="over the limit of 500"):
        parse_request(json.dumps({"schema": 1, "device_id": "pi-h02", "issued_on": "2026-04-20T08:00:00.000Z",
                                  "detection_ids": [CHUNK.detection_id] * 501}))

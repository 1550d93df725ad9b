# CONTRACT TEST: the MQTT feedback payload (device/contracts/feedback.py), schema 1.
#
# Devices publish it and the server stores it; a device may run an older release for months,
# so a change here breaks real deployments.
#
# To change the payload:
#   1. Get approval from the sync-server owner and the lead before editing this file.
#   2. A new or changed field means a new schema number (feedback.SCHEMA + 1), read by the
#      server alongside the old one until every device is upgraded.
#   3. Update FROZEN_FIELDS, GOLDEN_JSON and feedback.py's docstring together, with a release note.
# Never "fix" this test by copying the new output over the golden string.

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from device.contracts import feedback as wire
from device.contracts.feedback import feedback_to_json, feedback_to_payload, feedback_topic, parse_feedback
from device.domain import Feedback
from tests.device.contracts.golden import DROP, varied

FROZEN_FIELDS = ("schema", "feedback_id", "detection_id", "device_id", "verdict", "note", "given_on")
VERDICT = Feedback("2d9e8b6a-5f4c-4e3d-9a8b-9c8d7e6f5a4b", "0b7c6f4e-3d2a-4c1b-9e8f-7a6b5c4d3e2f", "reject",
                   "a tinamou, not\na frog", datetime(2026, 4, 20, 7, 45, 0, 125000, tzinfo=timezone.utc))
GOLDEN_JSON = (
    '{"detection_id":"0b7c6f4e-3d2a-4c1b-9e8f-7a6b5c4d3e2f","device_id":"pi-h02",'
    '"feedback_id":"2d9e8b6a-5f4c-4e3d-9a8b-9c8d7e6f5a4b","given_on":"2026-04-20T07:45:00.125Z",'
    '"note":"a tinamou, not a frog","schema":1,"verdict":"reject"}'
)


def test_the_field_list_is_frozen():
    assert wire.FIELDS == FROZEN_FIELDS and wire.SCHEMA == 1


def test_a_known_verdict_encodes_to_the_golden_json():
    assert feedback_to_json(feedback_to_payload(VERDICT, "pi-h02")) == GOLDEN_JSON
    assert feedback_topic("pi-h02") == "explorer/pi-h02/feedback"


def test_the_golden_json_parses_back():
    parsed = parse_feedback(GOLDEN_JSON.encode())
    assert parsed == json.loads(GOLDEN_JSON)


def test_a_blank_note_is_null_and_every_verdict_is_sendable():
    for note in (None, "", "   ", "\n"):
        payload = feedback_to_payload(Feedback(VERDICT.feedback_id, VERDICT.detection_id, "confirm", note,
                                               VERDICT.created_on), "pi-h02")
        assert payload["note"] is None
        assert parse_feedback(feedback_to_json(payload)) == payload


def _varied(**changes) -> bytes:
    return varied(GOLDEN_JSON, **changes)


@pytest.mark.parametrize(
    "data,expected",
    [
        (b"\x00\xff", "feedback: not UTF-8"),
        (b"x" * 9000, "over the 8192-byte limit"),
        (_varied(schema=0), "feedback.schema: 0 is not a schema this version reads"),
        (_varied(verdict="maybe"), "feedback.verdict: 'maybe' is not one of confirm, reject"),
        (_varied(note="x" * 2001), "feedback.note: 2001 characters is over the 2000-character limit"),
        (_varied(note="two\nlines"), "feedback.note: holds control characters"),
        (_varied(feedback_id="not-a-uuid"), "feedback.feedback_id"),
        (_varied(detection_id=DROP), "feedback.detection_id: missing"),
        (_varied(device_id="pi/h02"), "feedback.device_id"),
        (_varied(given_on="2026-04-20 07:45"), "feedback.given_on"),
        (_varied(extra=True), "feedback: unknown field(s) ['extra']"),
    ],
)
def test_a_hostile_feedback_payload_is_refused_naming_the_problem(data, expected):
    with pytest.raises(ValueError) as error:
        parse_feedback(data)
    assert expected in str(error.value)

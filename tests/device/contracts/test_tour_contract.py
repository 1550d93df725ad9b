# CONTRACT TEST: the MQTT tour payload (device/contracts/tour.py), schema 1.
#
# Devices publish it when a tour starts and when it ends; the server stores it. A device may run
# an older release for months, so a change here breaks real deployments.
#
# To change the payload:
#   1. Get approval from the sync-server owner and the lead before editing this file.
#   2. A new or changed field means a new schema number (tour.SCHEMA + 1), read by the server
#      alongside the old one until every device is upgraded.
#   3. Update FROZEN_FIELDS, GOLDEN_JSON and tour.py's docstring together, with a release note.
#   4. `delivery_id` is computed apart by device and server: its namespace and input never change.
# Never "fix" this test by copying the new output over the golden string.

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from device.contracts import tour as wire
from device.contracts.receipt import parse_receipt, receipt_to_json
from device.contracts.topics import UPSTREAM, parse_topic
from device.contracts.tour import delivery_id, parse_tour, payload_delivery_id, tour_to_json, tour_to_payload, tour_topic
from device.domain import Receipt, Tour
from tests.device.contracts.golden import DROP, varied

FROZEN_FIELDS = ("schema", "tour_id", "device_id", "name", "guide", "started_on", "ended_on", "site", "latitude",
                 "longitude")
TOUR_ID = "0b7e6f2a-1c3d-4e5f-9a8b-7c6d5e4f3a2b"
ENDED = Tour(TOUR_ID, "Dawn chorus", "Ana", datetime(2026, 4, 20, 5, 30, tzinfo=timezone.utc),
             datetime(2026, 4, 20, 7, 45, 0, 250000, tzinfo=timezone.utc), "pi-h02", "El Silencio Natural Reserve",
             6.23, -74.71)
GOLDEN_JSON = (
    '{"device_id":"pi-h02","ended_on":"2026-04-20T07:45:00.250Z","guide":"Ana","latitude":6.23,'
    '"longitude":-74.71,"name":"Dawn chorus","schema":1,"site":"El Silencio Natural Reserve",'
    '"started_on":"2026-04-20T05:30:00.000Z","tour_id":"0b7e6f2a-1c3d-4e5f-9a8b-7c6d5e4f3a2b"}'
)


def test_the_field_list_is_frozen_and_the_topic_is_upstream():
    assert wire.FIELDS == FROZEN_FIELDS and wire.SCHEMA == 1
    assert "tour" in UPSTREAM
    assert tour_topic("pi-h02") == "explorer/pi-h02/tour" and parse_topic("explorer/pi-h02/tour") == ("pi-h02", "tour")


def test_a_known_tour_encodes_to_the_golden_json_and_parses_back():
    assert tour_to_json(tour_to_payload(ENDED)) == GOLDEN_JSON
    assert parse_tour(GOLDEN_JSON.encode()) == json.loads(GOLDEN_JSON)


def test_a_tour_under_way_and_one_with_no_place_or_guide_are_sendable():
    started = tour_to_payload(replace(ENDED, ended_on=None, guide=None, site=None, latitude=None, longitude=None))
    assert (started["ended_on"], started["guide"], started["site"], started["latitude"]) == (None,) * 4
    assert parse_tour(tour_to_json(started)) == started
    # Names typed on the trail are made sendable, never refused: control characters become spaces.
    odd = tour_to_payload(replace(ENDED, name="Dawn\tchorus\n", guide="  "))
    assert (odd["name"], odd["guide"]) == ("Dawn chorus", None)


def test_the_delivery_id_tells_the_two_states_of_one_tour_apart_and_is_the_same_on_both_sides():
    started = delivery_id(TOUR_ID, None)
    ended = delivery_id(TOUR_ID, "2026-04-20T07:45:00.250Z")
    # Frozen: device and server compute it apart (uuid5 of the tour id and its end).
    assert started == str(uuid.uuid5(uuid.UUID("5b0c6c1e-6f0e-4d8a-9f55-2f7c1b8e9a10"), f"{TOUR_ID} under way"))
    assert ended == str(uuid.uuid5(uuid.UUID("5b0c6c1e-6f0e-4d8a-9f55-2f7c1b8e9a10"),
                                   f"{TOUR_ID} 2026-04-20T07:45:00.250Z"))
    assert started != ended and payload_delivery_id(parse_tour(GOLDEN_JSON)) == ended
    # A receipt carries it under the kind "tour".
    receipt = Receipt("pi-h02", ENDED.ended_on, {"tour": (started, ended)})
    assert parse_receipt(receipt_to_json(receipt)) == receipt


def test_a_tour_without_a_device_is_refused_when_built():
    with pytest.raises(ValueError, match="tour.device_id"):
        tour_to_payload(replace(ENDED, device_id=None))


HOSTILE = [
    (b"x" * (wire.MAX_TOUR_BYTES + 1), "over the"),
    (b"{not json", "not valid JSON"),
    (varied(GOLDEN_JSON, extra=1), r"unknown field\(s\) \['extra'\]"),
    (varied(GOLDEN_JSON, ended_on=DROP), "tour.ended_on: missing"),
    (varied(GOLDEN_JSON, schema=2), "not a schema this version reads"),
    (varied(GOLDEN_JSON, tour_id="not-a-uuid"), "tour.tour_id"),
    (varied(GOLDEN_JSON, device_id="pi/#"), "tour.device_id"),
    (varied(GOLDEN_JSON, name=""), "tour.name: empty"),
    (varied(GOLDEN_JSON, name=None), "tour.name: expected a string"),
    (varied(GOLDEN_JSON, name="x" * 201), "tour.name: 201 characters"),
    (varied(GOLDEN_JSON, guide="A\x00na"), "tour.guide: holds control characters"),
    (varied(GOLDEN_JSON, started_on="2026-04-20 05:30"), "tour.started_on"),
    (varied(GOLDEN_JSON, ended_on="2026-04-20T05:00:00.000Z"), "tour.ended_on: .* is before started_on"),
    (varied(GOLDEN_JSON, latitude=-91), "tour.latitude"),
    (varied(GOLDEN_JSON, longitude=181.0), "tour.longitude"),
    (varied(GOLDEN_JSON, longitude=None), "tour.longitude: null while latitude is set"),
    (varied(GOLDEN_JSON, site="x" * 129), "tour.site: 129 characters"),
]


@pytest.mark.parametrize("data, problem", HOSTILE, ids=[f"hostile-{i}" for i in range(len(HOSTILE))])
def test_malformed_or_hostile_input_is_a_clear_value_error(data, problem):
    with pytest.raises(ValueError, match=problem):
        parse_tour(data)

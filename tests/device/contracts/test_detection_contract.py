# CONTRACT TEST: the MQTT detection payload (device/contracts/detection.py), schema 3 (and the
# schemas 2 and 1 that devices not yet upgraded still send).
#
# Every field name, its JSON type and the exact encoding of a known detection are frozen
# here. Devices in the field and the sync server both speak this format, and a device may
# run an older release for months, so a change here breaks real deployments.
#
# To change the payload:
#   1. Get approval from the sync-server owner and the lead before editing this file.
#   2. Adding or changing a field means a new schema number (detection.SCHEMA + 1): the server
#      must accept both the old and new schema until every device is upgraded, and its
#      ingest needs a migration for the new column(s).
#   3. Update FROZEN_FIELDS, GOLDEN_JSON and detection.py's docstring together, and write a
#      release note naming the field, its type and the schema number.
# Never "fix" this test by copying the new output over the golden string.
#
# Schema 2 (issue 9) added site, latitude, longitude and coordinate_uncertainty_m, so the
# researchers' exports know where each detection was heard. GOLDEN_JSON_V1 is schema 1 as the
# first releases send it, frozen: the server must go on reading it.
#
# Schema 3 (issue 10) added context_scores (object: BirdNET's non-species outputs such as
# "Human vocal" -> the highest probability over the event; {} when the bundle has none; never
# labels) and clip_withheld ("privacy" | null: a person was heard in or next to the event, its
# clip was never written and none will come). GOLDEN_JSON_V2 is schema 2 as issue 9's release
# sends it, frozen likewise. Release note: detection payload schema 3, fields context_scores
# (object of name -> float in [0, 1]) and clip_withheld (string "privacy" or null).

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import pytest

from device.bundle.manifest import Label
from device.contracts import detection as wire
from device.contracts.detection import detection_to_payload, detection_topic, parse_payload, payload_to_json
from device.domain import Detection
from tests.device.contracts.golden import DROP, varied

FROZEN_FIELDS = {
    "schema": int,
    "detection_id": str,
    "device_id": str,
    "tour_id": (str, type(None)),
    "label": str,
    "scientific_name": (str, type(None)),
    "common_name": (str, type(None)),
    "class_name": (str, type(None)),
    "started_on": str,
    "ended_on": str,
    "start_s": float,
    "end_s": float,
    "confidence": float,
    "branch_scores": dict,
    "bundle_name": str,
    "bundle_version": str,
    "bundle_sha256": str,
    "source": str,
    "window_count": int,
    "secondary": bool,
    "site": (str, type(None)),
    "latitude": (float, type(None)),
    "longitude": (float, type(None)),
    "coordinate_uncertainty_m": (float, type(None)),
    "context_scores": dict,
    "clip_withheld": (str, type(None)),
}
FROZEN_FIELDS_V2 = list(FROZEN_FIELDS)[:24]
"""Schema 2: every field of schema 3 but context_scores and clip_withheld, in the same order."""
FROZEN_FIELDS_V1 = list(FROZEN_FIELDS)[:20]
"""Schema 1: every field of schema 2 but the four places, in the same order."""

CONTEXT = {"Human vocal": 0.0625, "Engine": 0.5, "Dog": 0.001}
GOLDEN_JSON = (
    '{"branch_scores":{"birdnet":null,"perch":0.875},"bundle_name":"elsilencio-default",'
    '"bundle_sha256":"' + "0123456789abcdef" * 4 + '","bundle_version":"1.0.0","class_name":"Aves",'
    '"clip_withheld":"privacy","common_name":"Little Tinamou","confidence":0.875,'
    '"context_scores":{"Dog":0.001,"Engine":0.5,"Human vocal":0.0625},"coordinate_uncertainty_m":1000.0,'
    '"detection_id":"6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f",'
    '"device_id":"pi-h02","end_s":15.0,"ended_on":"2023-04-20T07:40:15.000Z","label":"littin1",'
    '"latitude":6.23,"longitude":-74.71,'
    '"schema":3,"scientific_name":"Crypturellus soui","secondary":false,"site":"El Silencio Natural Reserve",'
    '"source":"examples/H02_20230420_074000.ogg","start_s":5.0,"started_on":"2023-04-20T07:40:05.000Z",'
    '"tour_id":"0b7e6f2a-1c3d-4e5f-9a8b-7c6d5e4f3a2b","window_count":2}'
)
GOLDEN_JSON_V2 = (
    '{"branch_scores":{"birdnet":null,"perch":0.875},"bundle_name":"elsilencio-default",'
    '"bundle_sha256":"' + "0123456789abcdef" * 4 + '","bundle_version":"1.0.0","class_name":"Aves",'
    '"common_name":"Little Tinamou","confidence":0.875,"coordinate_uncertainty_m":1000.0,'
    '"detection_id":"6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f",'
    '"device_id":"pi-h02","end_s":15.0,"ended_on":"2023-04-20T07:40:15.000Z","label":"littin1",'
    '"latitude":6.23,"longitude":-74.71,'
    '"schema":2,"scientific_name":"Crypturellus soui","secondary":false,"site":"El Silencio Natural Reserve",'
    '"source":"examples/H02_20230420_074000.ogg","start_s":5.0,"started_on":"2023-04-20T07:40:05.000Z",'
    '"tour_id":"0b7e6f2a-1c3d-4e5f-9a8b-7c6d5e4f3a2b","window_count":2}'
)
GOLDEN_JSON_V1 = (
    '{"branch_scores":{"birdnet":null,"perch":0.875},"bundle_name":"elsilencio-default",'
    '"bundle_sha256":"' + "0123456789abcdef" * 4 + '","bundle_version":"1.0.0","class_name":"Aves",'
    '"common_name":"Little Tinamou","confidence":0.875,"detection_id":"6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f",'
    '"device_id":"pi-h02","end_s":15.0,"ended_on":"2023-04-20T07:40:15.000Z","label":"littin1",'
    '"schema":1,"scientific_name":"Crypturellus soui","secondary":false,'
    '"source":"examples/H02_20230420_074000.ogg","start_s":5.0,"started_on":"2023-04-20T07:40:05.000Z",'
    '"tour_id":"0b7e6f2a-1c3d-4e5f-9a8b-7c6d5e4f3a2b","window_count":2}'
)
PLACE = dict(site="El Silencio Natural Reserve", latitude=6.23, longitude=-74.71, coordinate_uncertainty_m=1000.0)
PRIVACY = dict(context_scores=CONTEXT, clip_withheld="privacy")

TINAMOU = Label("littin1", "Crypturellus soui", "Little Tinamou", "Aves")


def known_detection(**changes) -> Detection:
    start = datetime(2023, 4, 20, 7, 40, 5, tzinfo=timezone.utc)
    values = dict(
        label="littin1", started_on=start, ended_on=start + timedelta(seconds=10), confidence=0.875,
        branch_scores={"perch": 0.875, "birdnet": float("nan")}, bundle_name="elsilencio-default",
        bundle_version="1.0.0", bundle_sha256="0123456789abcdef" * 4, device_id="pi-h02",
        tour_id="0b7e6f2a-1c3d-4e5f-9a8b-7c6d5e4f3a2b", source="examples/H02_20230420_074000.ogg",
        start_s=5.0, end_s=15.0, window_count=2, detection_id="6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f", **PLACE,
        **PRIVACY,
    )  # fmt: skip
    values.update(changes)
    return Detection(**values)


def good_payload(**changes) -> dict:
    data = json.loads(GOLDEN_JSON)
    data.update(changes)
    return data


def encode(data) -> bytes:
    return json.dumps(data).encode()


def test_schema_version_is_3_and_2_and_1_are_still_read():
    assert wire.SCHEMA == 3 and wire.SCHEMAS_READ == (1, 2, 3)


def test_field_names_and_types_are_frozen():
    built = detection_to_payload(known_detection(), {"littin1": TINAMOU})
    assert list(wire.FIELDS) == list(FROZEN_FIELDS)
    assert list(wire.FIELDS_V2) == FROZEN_FIELDS_V2 and set(json.loads(GOLDEN_JSON_V2)) == set(FROZEN_FIELDS_V2)
    assert list(wire.FIELDS_V1) == FROZEN_FIELDS_V1 and set(json.loads(GOLDEN_JSON_V1)) == set(FROZEN_FIELDS_V1)
    assert set(built) == set(FROZEN_FIELDS)
    for name, kind in FROZEN_FIELDS.items():
        assert isinstance(built[name], kind), name
    assert all(isinstance(k, str) for k in built["branch_scores"])
    assert all(isinstance(k, str) and isinstance(v, float) for k, v in built["context_scores"].items())


def test_the_encoding_of_a_known_detection_is_frozen():
    assert payload_to_json(detection_to_payload(known_detection(), {"littin1": TINAMOU})) == GOLDEN_JSON


def test_it_round_trips_through_parse_payload():
    built = detection_to_payload(known_detection(), {"littin1": TINAMOU})
    assert parse_payload(payload_to_json(built).encode("utf-8")) == built
    assert parse_payload(GOLDEN_JSON) == built


def test_a_schema_2_payload_from_the_previous_release_reads_with_no_context():
    parsed = parse_payload(GOLDEN_JSON_V2)
    built = detection_to_payload(known_detection(), {"littin1": TINAMOU})
    # null, not {}: a schema-2 sender did not say what else was loud (a schema-3 one with no
    # context outputs says {}).
    assert parsed == dict(built, schema=2, context_scores=None, clip_withheld=None)
    assert list(parsed) == list(FROZEN_FIELDS)  # one shape for every reader, whatever the sender's schema
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['clip_withheld'\]"):
        parse_payload(varied(GOLDEN_JSON_V2, clip_withheld="privacy"))
    with pytest.raises(ValueError, match="payload.context_scores: missing"):
        parse_payload(varied(GOLDEN_JSON, context_scores=DROP))


def test_a_schema_1_payload_from_a_device_not_yet_upgraded_reads_with_no_place():
    parsed = parse_payload(GOLDEN_JSON_V1)
    built = detection_to_payload(known_detection(), {"littin1": TINAMOU})
    assert parsed == dict(built, schema=1, site=None, latitude=None, longitude=None, coordinate_uncertainty_m=None,
                          context_scores=None, clip_withheld=None)
    assert list(parsed) == list(FROZEN_FIELDS)  # one shape for every reader, whatever the sender's schema
    # Schema 1 is exactly its twenty fields: a place field in it is unknown, not half a schema 2.
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['site'\]"):
        parse_payload(varied(GOLDEN_JSON_V1, site="H02"))
    with pytest.raises(ValueError, match="payload.site: missing"):
        parse_payload(varied(GOLDEN_JSON_V2, site=DROP))


def test_a_detection_without_context_or_privacy_sends_an_empty_object_and_null():
    built = detection_to_payload(known_detection(context_scores={}, clip_withheld=None))
    assert (built["context_scores"], built["clip_withheld"]) == ({}, None)
    assert parse_payload(payload_to_json(built)) == built


def test_a_device_with_no_coordinates_sends_nulls_and_no_uncertainty():
    built = detection_to_payload(known_detection(site=None, latitude=None, longitude=None,
                                                 coordinate_uncertainty_m=None))
    assert [built[name] for name in wire.PLACE_FIELDS] == [None] * 4
    assert detection_to_payload(known_detection(site="  "))["site"] is None  # blank is no site
    assert detection_to_payload(known_detection(site="Quebrada\tH02"))["site"] == "Quebrada H02"


def test_unknown_species_facts_are_null_and_nan_branch_scores_are_null():
    built = detection_to_payload(known_detection(tour_id=None))
    assert (built["scientific_name"], built["common_name"], built["class_name"], built["tour_id"]) == (None,) * 4
    assert built["branch_scores"] == {"perch": 0.875, "birdnet": None}
    with_mapping = detection_to_payload(known_detection(), {"littin1": {"common_name": "Little Tinamou"}})
    assert with_mapping["common_name"] == "Little Tinamou" and with_mapping["scientific_name"] is None


def test_a_detection_the_schema_cannot_carry_is_refused_when_built():
    with pytest.raises(ValueError, match="payload.confidence"):
        detection_to_payload(known_detection(confidence=math.nan))
    with pytest.raises(ValueError, match="payload.device_id"):
        detection_to_payload(known_detection(device_id="pi/#"))


def test_an_awkward_source_is_made_sendable_not_refused():
    built = detection_to_payload(known_detection(source="/data/a\tb\nc.wav"))
    assert built["source"] == "/data/a?b?c.wav"
    long = "/data/" + "d" * 5000 + "/H02.ogg"
    built = detection_to_payload(known_detection(source=long))
    assert len(built["source"]) == wire.MAX_SOURCE_CHARS and built["source"].endswith("/H02.ogg")


def test_the_topic_carries_the_device_id_and_refuses_wildcards():
    assert detection_topic("pi-h02") == "explorer/pi-h02/detection"
    for bad in ("pi/h02", "pi+", "#", ""):
        with pytest.raises(ValueError, match="device id"):
            detection_topic(bad)


HOSTILE = [
    (b"x" * (wire.MAX_PAYLOAD_BYTES + 1), "over the"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'"just a string"', "expected a JSON object"),
    (GOLDEN_JSON.replace('"confidence":0.875', '"confidence":NaN').encode(), "not a number JSON allows"),
    (GOLDEN_JSON.replace('"start_s":5.0', '"start_s":Infinity').encode(), "not a number JSON allows"),
    (GOLDEN_JSON.replace('{"branch_scores"', '{"schema":1,"branch_scores"').encode(), "appears twice"),
    (b"[" * 5000 + b"]" * 5000, "nested too deeply|expected a JSON object"),
    (encode(good_payload(extra="x")), r"unknown field\(s\) \['extra'\]"),
    (encode({k: v for k, v in good_payload().items() if k != "schema"}), "payload.schema: missing"),
    (encode({k: v for k, v in good_payload().items() if k != "ended_on"}), "payload.ended_on: missing"),
    (encode(good_payload(schema=4)), r"payload.schema: 4 is not a schema this version reads \(1, 2 or 3\)"),
    (encode(good_payload(schema=0)), "not a schema this version reads"),
    (encode(good_payload(latitude=90.5)), "payload.latitude: 90.5° is outside"),
    (encode(good_payload(longitude=-180.01)), "payload.longitude: -180.01° is outside"),
    (encode(good_payload(latitude="6.23")), "payload.latitude: expected a number"),
    (encode(good_payload(latitude=None)), "payload.latitude: null while longitude is set"),
    (encode(good_payload(longitude=None)), "payload.longitude: null while latitude is set"),
    (encode(good_payload(latitude=None, longitude=None)), "coordinate_uncertainty_m: set while latitude"),
    (encode(good_payload(coordinate_uncertainty_m=0)), "payload.coordinate_uncertainty_m: 0.0 m is outside"),
    (encode(good_payload(coordinate_uncertainty_m=-5.0)), "payload.coordinate_uncertainty_m"),
    (encode(good_payload(coordinate_uncertainty_m=3e7)), "payload.coordinate_uncertainty_m"),
    (encode(good_payload(site="")), "payload.site: empty"),
    (encode(good_payload(site="x" * 200)), "payload.site: 200 characters"),
    (encode(good_payload(site="H\x0202")), "payload.site: holds control characters"),
    (encode(good_payload(schema="1")), "not a schema this version reads"),
    (encode(good_payload(schema=True)), "not a schema this version reads"),
    (encode(good_payload(confidence="0.9")), "payload.confidence: expected a number"),
    (encode(good_payload(confidence=True)), "payload.confidence: expected a number"),
    (encode(good_payload(confidence=1.5)), "outside"),
    (encode(good_payload(window_count=2.0)), "payload.window_count: expected an integer"),
    (encode(good_payload(window_count=0)), "payload.window_count"),
    (encode(good_payload(secondary=0)), "payload.secondary: expected true or false"),
    (encode(good_payload(detection_id="not-a-uuid")), "payload.detection_id.*not a UUID"),
    (encode(good_payload(detection_id="6F1C2D3E-4A5B-4C6D-8E7F-0A1B2C3D4E5F")), "canonical"),
    (encode(good_payload(detection_id="6f1c2d3e4a5b4c6d8e7f0a1b2c3d4e5f")), "canonical"),
    (encode(good_payload(tour_id=12)), "payload.tour_id"),
    (encode(good_payload(started_on="2023-04-20 07:40:05")), "payload.started_on.*ending in Z"),
    (encode(good_payload(started_on="2023-04-20T07:40:05+02:00")), "payload.started_on"),
    (encode(good_payload(started_on="2023-02-30T07:40:05.000Z")), "not a real date"),
    (encode(good_payload(ended_on="2023-04-20T07:40:00.000Z")), "payload.ended_on.*before started_on"),
    (encode(good_payload(end_s=1.0)), "payload.end_s.*before start_s"),
    (encode(good_payload(start_s=-1.0)), "payload.start_s"),
    (encode(good_payload(device_id="pi/#")), "payload.device_id"),
    (encode(good_payload(bundle_sha256="A" * 64)), "payload.bundle_sha256"),
    (encode(good_payload(label="")), "payload.label: empty"),
    (encode(good_payload(label="littin1\x00")), "control characters"),
    (encode(good_payload(label="x" * 500)), "character limit"),
    (encode(good_payload(common_name=["a"])), "payload.common_name: expected a string"),
    (encode(good_payload(branch_scores=[0.5])), "payload.branch_scores: expected an object"),
    (encode(good_payload(branch_scores={"perch": 2.0})), r"payload.branch_scores.perch"),
    (encode(good_payload(branch_scores={"perch": "high"})), r"payload.branch_scores.perch"),
    (encode(good_payload(branch_scores={f"b{i}": 0.5 for i in range(wire.MAX_BRANCHES + 1)})), "branches"),
    (encode(good_payload(context_scores=None)), "payload.context_scores: expected an object"),
    (encode(good_payload(context_scores=[0.5])), "payload.context_scores: expected an object"),
    (encode(good_payload(context_scores={"Human vocal": 1.5})), r"payload.context_scores.Human vocal.*outside"),
    (encode(good_payload(context_scores={"Human vocal": None})), r"payload.context_scores.Human vocal"),
    (encode(good_payload(context_scores={"": 0.5})), "payload.context_scores key: empty"),
    (encode(good_payload(context_scores={f"c{i}": 0.5 for i in range(wire.MAX_CONTEXT + 1)})), "context scores"),
    (encode(good_payload(clip_withheld="")), "payload.clip_withheld.*not one of"),
    (encode(good_payload(clip_withheld="noise")), "payload.clip_withheld.*not one of"),
    (encode(good_payload(clip_withheld=True)), "payload.clip_withheld.*not one of"),
]


@pytest.mark.parametrize("data, problem", HOSTILE, ids=[f"hostile-{i}" for i in range(len(HOSTILE))])
def test_malformed_or_hostile_input_is_a_clear_value_error(data, problem):
    with pytest.raises(ValueError, match=problem):
        parse_payload(data)


def test_parse_accepts_whole_number_floats_as_numbers():
    parsed = parse_payload(GOLDEN_JSON.replace('"start_s":5.0', '"start_s":5'))
    assert parsed["start_s"] == 5.0 and isinstance(parsed["start_s"], float)


def test_parse_refuses_what_is_not_bytes():
    with pytest.raises(ValueError, match="expected bytes"):
        parse_payload(12345)

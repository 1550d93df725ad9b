# CONTRACT TEST: the MQTT status payload (device/contracts/status.py), schema 1.
#
# Devices publish it (retained, and as their last will) and the server keeps the latest per
# device; a device may run an older release for months, so a change here breaks deployments.
#
# To change the payload:
#   1. Get approval from the sync-server owner and the lead before editing this file.
#   2. A new or changed field means a new schema number (status.SCHEMA + 1), read by the
#      server alongside the old one until every device is upgraded.
#   3. Update FROZEN_FIELDS, GOLDEN_JSON and status.py's docstring together, with a release note.
# Never "fix" this test by copying the new output over the golden string.

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from device.contracts import status as wire
from device.contracts.status import parse_status, status_to_json, status_topic
from device.domain import Status
from tests.device.contracts.golden import varied

FROZEN_FIELDS = (
    "schema", "device_id", "online", "published_on", "release", "bundle_name", "bundle_version",
    "outbox_pending", "outbox_unconfirmed", "rtf", "windows_dropped", "clip_disk_free_bytes",
    "battery_percent", "last_detection_on", "connected_on",
)
T = datetime(2026, 4, 20, 7, 45, 0, tzinfo=timezone.utc)
ONLINE = Status("pi-h02", True, T, "0.1.0", "elsilencio-default", "1.0.0", 3, 12, 0.0712, 0, 50_000_000_000, 81,
                datetime(2026, 4, 20, 7, 44, 30, tzinfo=timezone.utc), datetime(2026, 4, 20, 6, 0, tzinfo=timezone.utc))
GOLDEN_JSON = (
    '{"battery_percent":81,"bundle_name":"elsilencio-default","bundle_version":"1.0.0",'
    '"clip_disk_free_bytes":50000000000,"connected_on":"2026-04-20T06:00:00.000Z","device_id":"pi-h02","last_detection_on":"2026-04-20T07:44:30.000Z",'
    '"online":true,"outbox_pending":3,"outbox_unconfirmed":12,"published_on":"2026-04-20T07:45:00.000Z",'
    '"release":"0.1.0","rtf":0.0712,"schema":1,"windows_dropped":0}'
)


def test_the_field_list_is_frozen():
    assert wire.FIELDS == FROZEN_FIELDS and wire.SCHEMA == 1


def test_a_known_status_encodes_to_the_golden_json_and_back():
    assert status_to_json(ONLINE) == GOLDEN_JSON
    assert parse_status(GOLDEN_JSON.encode()) == ONLINE
    assert status_topic("pi-h02") == "explorer/pi-h02/status"


def test_a_last_will_knows_little_and_says_so_with_nulls():
    will = Status("pi-h02", False, T, "0.1.0")
    parsed = parse_status(status_to_json(will))
    assert parsed == will and parsed.outbox_pending is None and not parsed.online


def _varied(**changes) -> bytes:
    return varied(GOLDEN_JSON, **changes)


@pytest.mark.parametrize(
    "data,expected",
    [
        (b"x" * 5000, "over the 4096-byte limit"),
        (_varied(online="yes"), "status.online: expected true or false"),
        (_varied(battery_percent=101), "status.battery_percent: 101 is outside [0, 100]"),
        (_varied(outbox_pending=-1), "status.outbox_pending: -1 is outside"),
        (_varied(rtf=float("inf")), "Infinity is not a number JSON allows"),
        (_varied(rtf=-0.5), "status.rtf: -0.5 is outside"),
        (_varied(release=""), "status.release: empty"),
        (_varied(device_id="a b"), "status.device_id"),
        (_varied(last_detection_on="now"), "status.last_detection_on"),
        (_varied(schema=2), "status.schema: 2 is not a schema this version reads"),
        (_varied(uptime=5), "status: unknown field(s) ['uptime']"),
    ],
)
def test_a_hostile_status_is_refused_naming_the_problem(data, expected):
    with pytest.raises(ValueError) as error:
        parse_status(data)
    assert expected in str(error.value)

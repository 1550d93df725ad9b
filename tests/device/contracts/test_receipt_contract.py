# CONTRACT TEST: the MQTT receipt payload (device/contracts/receipt.py), schema 1.
#
# The server publishes receipts and every device in the field parses them: a device may run
# an older release for months, so a change here breaks real deployments.
#
# To change the payload:
#   1. Get approval from the sync-server owner and the lead before editing this file.
#   2. Adding or changing a field means a new schema number (receipt.SCHEMA + 1): the server
#      must publish the old schema to devices that have not upgraded (their status message
#      says which release they run).
#   3. Update FROZEN_FIELDS, GOLDEN_JSON and receipt.py's docstring together, and write a
#      release note naming the field, its type and the schema number.
# Never "fix" this test by copying the new output over the golden string.

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from device.contracts import receipt as wire
from device.contracts.receipt import parse_receipt, receipt_to_json, receipt_topic, split_receipt
from device.contracts.topics import parse_topic, subscription, topic
from device.domain import Receipt, Refusal
from tests.device.contracts.golden import DROP, varied

FROZEN_FIELDS = ("schema", "device_id", "issued_on", "stored", "refused")
D1 = "0b7c6f4e-3d2a-4c1b-9e8f-7a6b5c4d3e2f"
D2 = "1c8d7a5f-4e3b-4d2c-8f9a-8b7c6d5e4f3a"
F1 = "2d9e8b6a-5f4c-4e3d-9a8b-9c8d7e6f5a4b"
ISSUED = datetime(2026, 4, 20, 7, 41, 2, 500000, tzinfo=timezone.utc)
RECEIPT = Receipt("pi-h02", ISSUED, {"detection": (D1, D2), "feedback": (F1,)},
                  (Refusal("detection", D2, "detection belongs to device 'pi-h03'"),))
GOLDEN_JSON = (
    '{"device_id":"pi-h02","issued_on":"2026-04-20T07:41:02.500Z",'
    '"refused":[{"id":"1c8d7a5f-4e3b-4d2c-8f9a-8b7c6d5e4f3a","kind":"detection",'
    '"reason":"detection belongs to device \'pi-h03\'"}],"schema":1,'
    '"stored":{"detection":["0b7c6f4e-3d2a-4c1b-9e8f-7a6b5c4d3e2f","1c8d7a5f-4e3b-4d2c-8f9a-8b7c6d5e4f3a"],'
    '"feedback":["2d9e8b6a-5f4c-4e3d-9a8b-9c8d7e6f5a4b"]}}'
)


def test_the_field_list_is_frozen():
    assert wire.FIELDS == FROZEN_FIELDS
    # "tour" came with the tour message (issue 9): only devices that send tours are sent it.
    assert wire.SCHEMA == 1 and wire.KINDS == ("detection", "feedback", "tour")


def test_a_known_receipt_encodes_to_the_golden_json():
    assert receipt_to_json(RECEIPT) == GOLDEN_JSON


def test_the_golden_json_parses_back_to_the_same_receipt():
    assert parse_receipt(GOLDEN_JSON.encode()) == RECEIPT


def test_the_topic_is_per_device_and_in_the_tree():
    assert receipt_topic("pi-h02") == "explorer/pi-h02/receipt"
    assert parse_topic("explorer/pi-h02/receipt") == ("pi-h02", "receipt")
    assert subscription("detection", "ingest") == "$share/ingest/explorer/+/detection"
    with pytest.raises(ValueError, match="is not a device id"):
        receipt_topic("pi h02")
    with pytest.raises(ValueError, match="unknown kind 'clips'"):
        topic("pi-h02", "clips")
    for bad in ("explorer/pi-h02", "explorer/pi-h02/receipt/x", "other/pi-h02/receipt", "explorer/+/receipt"):
        with pytest.raises(ValueError):
            parse_topic(bad)


def test_a_long_list_is_split_into_receipts_of_at_most_max_ids():
    import uuid

    ids = [str(uuid.UUID(int=n)) for n in range(1, 1201)]
    receipts = list(split_receipt("pi-h02", ISSUED, {"detection": ids[:1000], "feedback": ids[1000:]},
                                  [Refusal("detection", ids[0], "no")]))
    assert [r.size for r in receipts] == [500, 500, 201]
    assert [i for r in receipts for k in ("detection", "feedback") for i in r.stored.get(k, ())] == ids
    assert receipts[-1].refused == (Refusal("detection", ids[0], "no"),)
    for receipt in receipts:  # each encodes within the size limit and parses back
        assert parse_receipt(receipt_to_json(receipt)) == receipt


def test_a_reason_with_control_characters_is_sent_clean():
    receipt = Receipt("pi-h02", ISSUED, {}, (Refusal("feedback", F1, "bad\tvalue\n" + "x" * 900),))
    parsed = parse_receipt(receipt_to_json(receipt))
    assert parsed.refused[0].reason.startswith("bad?value") and len(parsed.refused[0].reason) == 500


def _varied(**changes) -> bytes:
    return varied(GOLDEN_JSON, **changes)


@pytest.mark.parametrize(
    "data,expected",
    [
        (b"\xff\xfe", "receipt: not UTF-8"),
        (b"[1, 2]", "receipt: expected a JSON object"),
        (b'{"schema": 1, "schema": 1}', "appears twice"),
        (b"x" * 70_000, "over the 65536-byte limit"),
        (_varied(schema=2), "receipt.schema: 2 is not a schema this version reads"),
        (_varied(extra=1), "unknown field(s) ['extra']"),
        (_varied(refused=DROP), "receipt.refused: missing"),
        (_varied(device_id="pi h02"), "receipt.device_id"),
        (_varied(issued_on="yesterday"), "receipt.issued_on"),
        (_varied(stored={"clip": [D1]}), "'clip' is not a kind a receipt confirms"),
        (_varied(stored={"detection": D1}), "receipt.stored.detection: expected a list"),
        (_varied(stored={"detection": [D1.upper()]}), "receipt.stored.detection[0]"),
        (_varied(stored={"detection": [str(n) for n in range(501)]}), "more than 500 ids"),
        (_varied(refused=[{"kind": "detection", "id": D1}]), "exactly kind, id and reason"),
        (_varied(refused=[{"kind": "detection", "id": D1, "reason": ""}]), "receipt.refused[0].reason: empty"),
        (b'{"schema": NaN}', "NaN is not a number JSON allows"),
    ],
)
def test_a_hostile_receipt_is_refused_naming_the_problem(data, expected):
    with pytest.raises(ValueError) as error:
        parse_receipt(data)
    assert expected in str(error.value)

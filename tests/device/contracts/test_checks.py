"""The shared field checks: the device id rule (which config.toml's [device] id is held to as
well as the wire) and the guarded decoder every received payload goes through."""

from __future__ import annotations

import re

import pytest

from device.contracts.checks import DEVICE_ID_RULE, check_device_id, check_uuid, decode_json, nullable


@pytest.mark.parametrize("device_id", ["pi-h02", "a", "Pi_5.guide:01", "0" * 64])
def test_a_device_id_within_the_rule_passes_unchanged(device_id):
    assert check_device_id(device_id, "[device] id") == device_id


@pytest.mark.parametrize("device_id", [
    "guide pi 01",   # a space: not one MQTT topic level, not a broker user name
    "pi/h02",        # would split the topic
    "pi+", "pi#",    # MQTT wildcards
    "-pi", ".pi",    # must start with a letter or digit
    "",
    "a" * 65,
    "pí",            # ASCII only
    17,
    None,
])
def test_a_device_id_outside_the_rule_is_refused_naming_the_rule(device_id):
    with pytest.raises(ValueError) as refused:
        check_device_id(device_id, "config.toml [device] id")
    message = str(refused.value)
    assert message.startswith("config.toml [device] id: ")
    assert message.endswith(f"is not a device id ({DEVICE_ID_RULE})")


def test_the_rule_reads_as_the_regex_it_stands_for():
    assert DEVICE_ID_RULE == "1-64 of A-Z a-z 0-9 . _ : -, starting with a letter or digit"


@pytest.mark.parametrize("data, problem", [
    (b"x" * 101, "receipt: 101 bytes is over the 100-byte limit"),
    (b"\xff{}", "receipt: not UTF-8"),
    (b"{", "receipt: not valid JSON"),
    (b'{"a": NaN}', "receipt: NaN is not a number JSON allows"),
    (b'{"a": -Infinity}', "receipt: -Infinity is not a number JSON allows"),
    (b'{"a": 1, "a": 2}', "receipt: key 'a' appears twice"),
    (12, "receipt: expected bytes, got int"),
])
def test_decode_json_names_the_payload_and_the_problem(data, problem):
    with pytest.raises(ValueError, match="^" + re.escape(problem)):
        decode_json(data, "receipt", 100)


def test_decode_json_refuses_nesting_deeper_than_python_can_parse():
    deep = b"[" * 100_000 + b"]" * 100_000  # a hostile sender's 200 kB, under this made-up limit
    with pytest.raises(ValueError, match="^receipt: nested too deeply"):
        decode_json(deep, "receipt", 1_000_000)


def test_decode_json_returns_what_a_well_formed_message_holds():
    assert decode_json('{"b": [1, 2.5, null], "a": "é"}', "receipt", 100) == {"b": [1, 2.5, None], "a": "é"}


def test_nullable_passes_null_and_checks_the_rest():
    check = nullable(check_uuid)
    assert check(None, "receipt.tour_id") is None
    with pytest.raises(ValueError, match="receipt.tour_id: 'x' is not a UUID"):
        check("x", "receipt.tour_id")

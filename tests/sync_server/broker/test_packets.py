"""The in-process broker's MQTT 5 codec: every packet round-trips, the bytes are the spec's (and
what paho-mqtt 2 itself sends and reads), and malformed input raises `PacketError` with the
reason code the connection must close with, never another exception."""

from __future__ import annotations

import random
import socket
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sync_server.broker.packets import (
    Ack, ConnAck, Connect, Disconnect, PacketError, PingReq, PingResp, Publish, SubAck, SubOptions, Subscribe,
    UnsubAck, Unsubscribe, UnsupportedProtocol, Will, decode, encode, encode_v3_connack, split_packet,
)
from sync_server.broker.wire import (
    MALFORMED_PACKET, PROTOCOL_ERROR, PUBACK, PUBCOMP, PUBREC, PUBREL, decode_varint, encode_varint,
)
from tests.helpers import wait_until

PACKETS = [
    Connect("explorer-pi-h02", False, 30, {"SessionExpiryInterval": 604_800, "ReceiveMaximum": 100,
                                           "UserProperty": [("site", "H02"), ("site", "H07")]},
            Will("explorer/pi-h02/status", b'{"online": false}', 1, True,
                 {"MessageExpiryInterval": 60, "ContentType": "application/json", "WillDelayInterval": 5}),
            "pi-h02", b"\x00secret\xff"),
    Connect("", True, 0),
    ConnAck(True, 0, {"MaximumQoS": 1, "MaximumPacketSize": 262_144, "AssignedClientIdentifier": "auto-1"}),
    ConnAck(False, 0x84),
    Publish("explorer/pi-h02/detection", b"{}" * 40_000, 1, False, True, 65_535,
            {"PayloadFormatIndicator": 1, "CorrelationData": b"\x00\x01", "SubscriptionIdentifier": [3, 200_000]}),
    Publish("a", b"", 0, True),
    Ack(PUBACK, 7),
    Ack(PUBACK, 8, 0x95, {"ReasonString": "payload over 131072 bytes"}),
    Ack(PUBREC, 9, 0x10),
    Ack(PUBREL, 10),
    Ack(PUBCOMP, 11, 0x92),
    Subscribe(12, [("explorer/+/receipt", SubOptions(1)), ("$share/ingest/explorer/+/detection",
                                                           SubOptions(1, False, True, 2)), ("#", SubOptions(0, True))],
              {"SubscriptionIdentifier": [4]}),
    SubAck(12, [1, 0, 0x8F], {"ReasonString": "one refused"}),
    Unsubscribe(13, ["explorer/+/clip-ack", "a/#"]),
    UnsubAck(13, [0, 0x11]),
    PingReq(),
    PingResp(),
    Disconnect(),
    Disconnect(0x04, {"SessionExpiryInterval": 0, "ReasonString": "bye"}),
]


@pytest.mark.parametrize("packet", PACKETS, ids=lambda p: type(p).__name__)
def test_every_packet_round_trips(packet):
    data = encode(packet)
    first, body, used = split_packet(data + b"\xc0\x00")  # another packet after it stays unread
    assert used == len(data)
    assert decode(first, body) == packet


def test_the_bytes_are_the_specs():
    assert encode(ConnAck(False, 0)) == b"\x20\x03\x00\x00\x00"
    assert encode(Ack(PUBACK, 0x0102)) == b"\x40\x02\x01\x02"  # spec 3.4.2.1: Success needs no reason byte
    assert encode(Ack(PUBREL, 1)) == b"\x62\x02\x00\x01"  # PUBREL's reserved flags are 0b0010
    assert encode(PingResp()) == b"\xd0\x00" and encode(Disconnect()) == b"\xe0\x00"
    assert encode_v3_connack(1) == b"\x20\x02\x00\x01"  # MQTT 3.1.1: unacceptable protocol version
    assert encode(Subscribe(1, [("a", SubOptions(1, True, True, 2))]))[-1] == 0b101101
    assert encode(Publish("t", b"x", 1, True, True, 5)) == b"\x3b\x07\x00\x01t\x00\x05\x00x"


@pytest.mark.parametrize("value,size", [(0, 1), (127, 1), (128, 2), (16_383, 2), (16_384, 3), (2_097_151, 3),
                                        (2_097_152, 4), (268_435_455, 4)])
def test_variable_byte_integers_at_their_boundaries(value, size):
    encoded = encode_varint(value)
    assert len(encoded) == size and decode_varint(encoded + b"\xff", 0) == (value, size)


def test_variable_byte_integers_out_of_range_or_badly_formed_are_refused():
    with pytest.raises(ValueError, match="outside"):
        encode_varint(268_435_456)
    for bad, words in [(b"\xff\xff\xff\xff\x01", "longer than four"), (b"\x80\x00", "shortest"), (b"\x80", "past")]:
        with pytest.raises(PacketError, match=words) as caught:
            decode_varint(bad, 0)
        assert caught.value.reason == MALFORMED_PACKET


def body_of(packet) -> tuple[int, bytes]:
    first, body, _ = split_packet(encode(packet))
    return first, body


def connect_body(level: int = 5, name: str = "MQTT", flags: int = 0x02) -> bytes:
    raw = name.encode()
    return len(raw).to_bytes(2, "big") + raw + bytes((level, flags)) + b"\x00\x1e" + b"\x00" + b"\x00\x01c"


@pytest.mark.parametrize("first,body,reason,words", [
    (0x30, b"\x00\x02\xc3\x28\x00", MALFORMED_PACKET, "not valid UTF-8"),
    (0x30, b"\x00\x02a\x00\x00", MALFORMED_PACKET, "U\\+0000"),
    (0x36, b"\x00\x01a\x00\x01\x00", MALFORMED_PACKET, "QoS 3"),
    (0x38, b"\x00\x01a\x00", MALFORMED_PACKET, "DUP set on a QoS 0"),
    (0x32, b"\x00\x01a\x00\x00\x00", MALFORMED_PACKET, "packet identifier 0"),
    (0x30, b"\x00\x01a\x05\x11\x00\x00\x00\x01", PROTOCOL_ERROR, "SessionExpiryInterval is not allowed"),
    (0x30, b"\x00\x01a\x04\x01\x01\x01\x01", PROTOCOL_ERROR, "appears twice"),
    (0x30, b"\x00\x01a\x02\x7f\x00", MALFORMED_PACKET, "unknown property 0x7F"),
    (0x30, b"\x00\x01a\x09\x02\x00\x00", MALFORMED_PACKET, "properties: 9 bytes announced"),
    (0x30, b"\x00\x01a\x02\x01\x02", PROTOCOL_ERROR, "PayloadFormatIndicator may not be 2"),
    (0x30, b"\x00\x09a", MALFORMED_PACKET, "9 bytes announced"),
    (0x80, b"\x00\x01\x00\x00\x01a\x01", MALFORMED_PACKET, "reserved fixed-header flags"),
    (0x82, b"\x00\x01\x00", PROTOCOL_ERROR, "no topic filter"),
    (0x82, b"\x00\x01\x00\x00\x01a\x41", MALFORMED_PACKET, "bad subscription options"),
    (0x82, b"\x00\x01\x00\x00\x01a\x30", PROTOCOL_ERROR, "retain handling 3"),
    (0x82, b"\x00\x01\x00\x00\x01a", MALFORMED_PACKET, "subscription options: runs past"),
    (0xA2, b"\x00\x01\x00", PROTOCOL_ERROR, "no topic filter"),
    (0x40, b"\x00", MALFORMED_PACKET, "at least 2"),
    (0x40, b"\x00\x01\x00\x04\x1f\x00\x01a\x00", MALFORMED_PACKET, "stray bytes"),
    (0xC0, b"\x00", MALFORMED_PACKET, "should carry none"),
    (0xE0, b"\x00\x02\x11\x00", MALFORMED_PACKET, "SessionExpiryInterval: runs past"),
    (0xF0, b"", PROTOCOL_ERROR, "enhanced authentication"),
    (0x00, b"", MALFORMED_PACKET, "reserved"),
    (0x21, b"\x00\x00\x00", MALFORMED_PACKET, "reserved fixed-header flags"),
    (0x10, connect_body(flags=0x03), MALFORMED_PACKET, "reserved flag"),
    (0x10, connect_body(flags=0x1C), MALFORMED_PACKET, "will flags"),
    (0x10, connect_body(flags=0x22), MALFORMED_PACKET, "will flags"),
    (0x10, connect_body() + b"\x00", MALFORMED_PACKET, "stray bytes"),
    (0x10, connect_body()[:-1], MALFORMED_PACKET, "client identifier"),
    (0x10, connect_body().replace(b"\x00\x1e\x00", b"\x00\x1e\x03\x21\x00\x00"), PROTOCOL_ERROR,
     "ReceiveMaximum may not be 0"),
])
def test_malformed_packets_name_their_fault_and_reason_code(first, body, reason, words):
    with pytest.raises(PacketError, match=words) as caught:
        decode(first, body)
    assert caught.value.reason == reason


@pytest.mark.parametrize("name,level", [("MQTT", 4), ("MQIsdp", 3), ("MQTT", 6), ("MQTX", 5)])
def test_a_connect_of_another_protocol_is_told_apart(name, level):
    with pytest.raises(UnsupportedProtocol, match=f"level {level}") as caught:
        decode(0x10, connect_body(level, name))
    assert caught.value.level == level and caught.value.reason == 0x84


def test_random_and_mutated_bytes_raise_packet_errors_only():
    """A hostile client cannot make the decoder fail any other way (IndexError, struct.error ...)."""
    rng = random.Random(20260420)
    valid = [body_of(p) for p in PACKETS]
    for _ in range(6000):
        if rng.random() < 0.5:
            first, body = rng.randrange(256), rng.randbytes(rng.randrange(40))
        else:
            first, body = rng.choice(valid)
            body = bytearray(body[:rng.randrange(len(body) + 1)])
            for _ in range(rng.randrange(4)):
                if body:
                    body[rng.randrange(len(body))] = rng.randrange(256)
            body = bytes(body)
        try:
            decode(first, body)
        except PacketError as exc:
            assert exc.reason in (0x81, 0x82, 0x84) and str(exc)


def test_split_packet_waits_for_a_whole_packet():
    data = encode(Publish("t", b"x" * 300, 1, packet_id=1))
    assert all(split_packet(data[:n]) is None for n in range(len(data)))
    with pytest.raises(PacketError, match="longer than four"):
        split_packet(b"\x30\xff\xff\xff\xff\x01")


def test_paho_reads_what_we_encode_and_we_read_what_paho_sends():
    """One real paho-mqtt 2 MQTTv5 client against a bare socket speaking through this codec:
    its CONNECT (will, credentials, properties), SUBSCRIBE and PUBLISH decode to what it was
    given; it accepts our CONNACK, SUBACK and PUBACK as a broker's."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list = []
    events = {"connect": [], "subscribe": [], "publish": []}

    def broker_side() -> None:
        conn, _ = listener.accept()
        buffer = b""
        with conn:
            while len(seen) < 3:
                chunk = conn.recv(65_536)
                if not chunk:
                    return
                buffer += chunk
                while (whole := split_packet(buffer)) is not None:
                    first, body, used = whole
                    buffer = buffer[used:]
                    packet = decode(first, body)
                    seen.append(packet)
                    if isinstance(packet, Connect):
                        conn.sendall(encode(ConnAck(True, 0, {"MaximumQoS": 1})))
                    elif isinstance(packet, Subscribe):
                        conn.sendall(encode(SubAck(packet.packet_id, [1, 0x8F])))
                    elif isinstance(packet, Publish):
                        conn.sendall(encode(Ack(PUBACK, packet.packet_id, 0x97, {"ReasonString": "quota"})))

    thread = threading.Thread(target=broker_side, daemon=True)
    thread.start()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="explorer-pi-h02", protocol=mqtt.MQTTv5)
    client.username_pw_set("pi-h02", "s3cret")
    client.will_set("explorer/pi-h02/status", b'{"online": false}', qos=1, retain=True)
    client.on_connect = lambda c, u, flags, reason, p: events["connect"].append((flags.session_present, str(reason)))
    client.on_subscribe = lambda c, u, mid, codes, p: events["subscribe"].append([str(code) for code in codes])
    client.on_publish = lambda c, u, mid, reason, p: events["publish"].append(str(reason))
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 604_800
    properties.ReceiveMaximum = 100
    client.connect("127.0.0.1", port, keepalive=30, clean_start=False, properties=properties)
    client.loop_start()
    try:
        assert wait_until(lambda: events["connect"], 10)
        client.subscribe([("explorer/pi-h02/receipt", 1), ("explorer/+/clip-ack", 1)])
        assert wait_until(lambda: events["subscribe"], 10)
        sent = Properties(PacketTypes.PUBLISH)
        sent.UserProperty = ("kind", "detection")
        client.publish("explorer/pi-h02/detection", b'{"n": 1}', qos=1, properties=sent)
        assert wait_until(lambda: events["publish"], 10)
    finally:
        client.disconnect()
        client.loop_stop()
        listener.close()
    connect, subscribe, publish = seen[:3]
    assert (connect.client_id, connect.clean_start, connect.keepalive) == ("explorer-pi-h02", False, 30)
    assert connect.properties == {"SessionExpiryInterval": 604_800, "ReceiveMaximum": 100}
    assert (connect.username, connect.password) == ("pi-h02", b"s3cret")
    assert connect.will == Will("explorer/pi-h02/status", b'{"online": false}', 1, True, {})
    assert [(f, o.qos) for f, o in subscribe.subscriptions] == [("explorer/pi-h02/receipt", 1),
                                                                ("explorer/+/clip-ack", 1)]
    assert (publish.topic, publish.payload, publish.qos) == ("explorer/pi-h02/detection", b'{"n": 1}', 1)
    assert publish.properties == {"UserProperty": [("kind", "detection")]}
    assert events == {"connect": [(True, "Success")], "subscribe": [["Granted QoS 1", "Topic filter invalid"]],
                      "publish": ["Quota exceeded"]}

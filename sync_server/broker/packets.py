"""MQTT 5 packets as bytes and back: the wire format of the in-process broker (OASIS MQTT 5.0).

Every packet type is a small dataclass; `encode(packet)` gives its bytes (fixed header
included) and `decode(first_byte, body)` parses one from its first byte and the body the
fixed header's remaining length announced. Both directions are covered for every type, so a
test can round-trip what a client sends and what the broker answers. The data types inside
(strings, properties, reason codes, `PacketError`) are sync_server/broker/wire.py.

A CONNECT for MQTT 3.1 / 3.1.1 raises `UnsupportedProtocol` (its level attached): such a client
must be answered in its own protocol's CONNACK (`encode_v3_connack`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from sync_server.broker.wire import (
    WILL_PROPERTIES, AUTH, CONNACK, CONNECT, DISCONNECT, NAMES, PINGREQ, PINGRESP, PROTOCOL_ERROR, PUBACK,
    PUBCOMP, PUBLISH, PUBREC, PUBREL, SUBACK, SUBSCRIBE, SUCCESS, UNSUBACK, UNSUBSCRIBE, PacketError,
    UnsupportedProtocol, read_uint, decode_bin, decode_properties, decode_str, encode_bin, encode_properties,
    encode_str, encode_varint, malformed, split_packet,
)

__all__ = ["Ack", "ConnAck", "Connect", "Disconnect", "PacketError", "PingReq", "PingResp", "Publish", "SubAck",
           "SubOptions", "Subscribe", "UnsubAck", "Unsubscribe", "UnsupportedProtocol", "Will", "decode", "encode",
           "encode_v3_connack", "split_packet"]


# -- the packets -------------------------------------------------------------------------------
@dataclass
class Will:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    properties: dict = field(default_factory=dict)


@dataclass
class Connect:
    client_id: str = ""
    clean_start: bool = True
    keepalive: int = 60
    properties: dict = field(default_factory=dict)
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None


@dataclass
class ConnAck:
    session_present: bool = False
    reason: int = SUCCESS
    properties: dict = field(default_factory=dict)


@dataclass
class Publish:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: dict = field(default_factory=dict)


@dataclass
class Ack:
    """PUBACK, PUBREC, PUBREL or PUBCOMP (`kind`): one packet id and its reason."""

    kind: int
    packet_id: int
    reason: int = SUCCESS
    properties: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SubOptions:
    """A subscription's options byte (spec 3.8.3.1)."""

    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    """0: send retained messages on subscribe; 1: only if the subscription is new; 2: never."""


@dataclass
class Subscribe:
    packet_id: int
    subscriptions: list[tuple[str, SubOptions]]
    properties: dict = field(default_factory=dict)


@dataclass
class SubAck:
    packet_id: int
    reasons: list[int]
    properties: dict = field(default_factory=dict)


@dataclass
class Unsubscribe:
    packet_id: int
    filters: list[str]
    properties: dict = field(default_factory=dict)


@dataclass
class UnsubAck:
    packet_id: int
    reasons: list[int]
    properties: dict = field(default_factory=dict)


@dataclass
class PingReq:
    pass


@dataclass
class PingResp:
    pass


@dataclass
class Disconnect:
    reason: int = SUCCESS
    properties: dict = field(default_factory=dict)


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + encode_varint(len(body)) + body


def _pid(packet_id: int) -> bytes:
    return struct.pack("!H", packet_id)


def encode(packet) -> bytes:
    """The packet's bytes, fixed header included."""
    kind = type(packet)
    if kind is Publish:
        flags = (packet.dup << 3) | (packet.qos << 1) | int(packet.retain)
        pid = _pid(packet.packet_id) if packet.qos else b""
        return _packet(0x30 | flags, encode_str(packet.topic) + pid + encode_properties(packet.properties)
                       + packet.payload)
    if kind is Ack:
        body = _pid(packet.packet_id)
        if packet.reason or packet.properties:  # spec 3.4.2.1: two bytes alone mean Success
            body += bytes((packet.reason,)) + encode_properties(packet.properties)
        return _packet((packet.kind << 4) | (0x02 if packet.kind == PUBREL else 0), body)
    if kind is ConnAck:
        return _packet(0x20, bytes((int(packet.session_present), packet.reason)) + encode_properties(packet.properties))
    if kind in (SubAck, UnsubAck):
        return _packet(0x90 if kind is SubAck else 0xB0,
                       _pid(packet.packet_id) + encode_properties(packet.properties) + bytes(packet.reasons))
    if kind is Subscribe:
        body = bytearray(_pid(packet.packet_id) + encode_properties(packet.properties))
        for topic_filter, o in packet.subscriptions:
            body += encode_str(topic_filter)
            body.append(o.qos | (o.no_local << 2) | (o.retain_as_published << 3) | (o.retain_handling << 4))
        return _packet(0x82, bytes(body))
    if kind is Unsubscribe:
        return _packet(0xA2, _pid(packet.packet_id) + encode_properties(packet.properties)
                       + b"".join(encode_str(f) for f in packet.filters))
    if kind is Disconnect:
        if packet.reason == SUCCESS and not packet.properties:
            return b"\xe0\x00"
        return _packet(0xE0, bytes((packet.reason,)) + encode_properties(packet.properties))
    if kind is PingReq:
        return b"\xc0\x00"
    if kind is PingResp:
        return b"\xd0\x00"
    if kind is Connect:
        return _encode_connect(packet)
    raise TypeError(f"not an MQTT packet: {packet!r}")


def _encode_connect(c: Connect) -> bytes:
    will = c.will
    flags = (c.clean_start << 1) | ((c.username is not None) << 7) | ((c.password is not None) << 6)
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (will.retain << 5)
    body = encode_str("MQTT") + bytes((5, flags)) + struct.pack("!H", c.keepalive)
    body += encode_properties(c.properties) + encode_str(c.client_id)
    if will is not None:
        body += encode_properties(will.properties) + encode_str(will.topic) + encode_bin(will.payload)
    if c.username is not None:
        body += encode_str(c.username)
    if c.password is not None:
        body += encode_bin(c.password)
    return _packet(0x10, body)


def encode_v3_connack(return_code: int) -> bytes:
    """An MQTT 3.1 / 3.1.1 CONNACK (no session, `return_code`): how a v3 client hears a refusal."""
    return bytes((0x20, 0x02, 0x00, return_code))


_FLAGS_REQUIRED = {PUBREL: 0x02, SUBSCRIBE: 0x02, UNSUBSCRIBE: 0x02}
"""Fixed-header flags the spec reserves (2.1.3): 0b0010 for these, 0 for all but PUBLISH."""


def decode(first_byte: int, body: bytes):
    """The packet of type `first_byte >> 4` in `body` (the bytes after the fixed header).

    Raises:
        PacketError: malformed or against the protocol; `reason` says which.
        UnsupportedProtocol: a CONNECT of MQTT 3.1 / 3.1.1.
    """
    kind, flags = first_byte >> 4, first_byte & 0x0F
    if kind == 0:
        raise malformed("packet type 0 is reserved")
    if kind != PUBLISH and flags != _FLAGS_REQUIRED.get(kind, 0):
        raise malformed(f"{NAMES[kind]}: reserved fixed-header flags 0x{flags:X}")
    if kind == PUBLISH:
        return _decode_publish(flags, body)
    if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        if len(body) < 2:
            raise malformed(f"{NAMES[kind]}: {len(body)} bytes, at least 2 needed")
        pid = _packet_id(body, 0, kind)
        reason, properties = body[2] if len(body) > 2 else SUCCESS, {}
        if len(body) > 3:
            properties, end = decode_properties(body, 3, kind)
            _at_end(body, end, kind)
        return Ack(kind, pid, reason, properties)
    if kind in (PINGREQ, PINGRESP):
        if body:
            raise malformed(f"{NAMES[kind]}: carries {len(body)} bytes, should carry none")
        return PingReq() if kind == PINGREQ else PingResp()
    if kind == AUTH:  # only meaningful after a CONNECT with an Authentication Method, refused
        raise PacketError(PROTOCOL_ERROR, "AUTH: enhanced authentication is not supported")
    if kind == DISCONNECT:
        if not body:
            return Disconnect()
        properties, end = decode_properties(body, 1, kind) if len(body) > 1 else ({}, 1)
        _at_end(body, end, kind)
        return Disconnect(body[0], properties)
    if kind == CONNECT:
        return _decode_connect(body)
    if kind == CONNACK:
        if len(body) < 2 or body[0] > 1:
            raise malformed("CONNACK: bad acknowledge flags or too short")
        properties, end = decode_properties(body, 2, CONNACK) if len(body) > 2 else ({}, 2)
        _at_end(body, end, kind)
        return ConnAck(bool(body[0]), body[1], properties)
    pid = _packet_id(body, 0, kind)
    properties, pos = decode_properties(body, 2, kind)
    if kind in (SUBACK, UNSUBACK):
        return (SubAck if kind == SUBACK else UnsubAck)(pid, list(body[pos:]), properties)
    entries = []
    while pos < len(body):
        topic_filter, pos = decode_str(body, pos, "topic filter")
        if kind == UNSUBSCRIBE:
            entries.append(topic_filter)
            continue
        options, pos = read_uint(body, pos, 1, "subscription options")
        if options & 0xC0 or options & 0x03 == 3:
            raise malformed(f"SUBSCRIBE: bad subscription options 0x{options:02X} for {topic_filter!r}")
        if options >> 4 & 0x03 == 3:
            raise PacketError(PROTOCOL_ERROR, f"SUBSCRIBE: retain handling 3 for {topic_filter!r}")
        entries.append((topic_filter, SubOptions(options & 0x03, bool(options & 0x04), bool(options & 0x08),
                                                 options >> 4 & 0x03)))
    if not entries:
        raise PacketError(PROTOCOL_ERROR, f"{NAMES[kind]}: no topic filter")
    return Subscribe(pid, entries, properties) if kind == SUBSCRIBE else Unsubscribe(pid, entries, properties)


def _packet_id(body: bytes, pos: int, kind: int) -> int:
    pid, _ = read_uint(body, pos, 2, f"{NAMES[kind]} packet identifier")
    if pid == 0:
        raise malformed(f"{NAMES[kind]}: packet identifier 0")
    return pid


def _at_end(body: bytes, end: int, kind: int) -> None:
    if end != len(body):
        raise malformed(f"{NAMES[kind]}: {len(body) - end} stray bytes after its end")


def _decode_publish(flags: int, body: bytes) -> Publish:
    qos, dup, retain = flags >> 1 & 0x03, bool(flags & 0x08), bool(flags & 0x01)
    if qos == 3:
        raise malformed("PUBLISH: QoS 3")
    if dup and qos == 0:
        raise malformed("PUBLISH: DUP set on a QoS 0 message")
    topic, pos = decode_str(body, 0, "PUBLISH topic")
    pid = None
    if qos:
        pid = _packet_id(body, pos, PUBLISH)
        pos += 2
    properties, pos = decode_properties(body, pos, PUBLISH)
    return Publish(topic, body[pos:], qos, retain, dup, pid, properties)


def _decode_connect(body: bytes) -> Connect:
    name, pos = decode_str(body, 0, "CONNECT protocol name")
    level, pos = read_uint(body, pos, 1, "CONNECT protocol level")
    if name != "MQTT" or level != 5:
        raise UnsupportedProtocol(level, name)
    flags, pos = read_uint(body, pos, 1, "CONNECT flags")
    keepalive, pos = read_uint(body, pos, 2, "CONNECT keep alive")
    if flags & 0x01:
        raise malformed("CONNECT: the reserved flag is set")
    will_flag, will_qos, will_retain = bool(flags & 0x04), flags >> 3 & 0x03, bool(flags & 0x20)
    if will_qos == 3 or (not will_flag and (will_qos or will_retain)):
        raise malformed(f"CONNECT: will flags 0x{flags:02X} are inconsistent")
    properties, pos = decode_properties(body, pos, CONNECT)
    client_id, pos = decode_str(body, pos, "client identifier")
    will = None
    if will_flag:
        will_properties, pos = decode_properties(body, pos, WILL_PROPERTIES)
        topic, pos = decode_str(body, pos, "will topic")
        payload, pos = decode_bin(body, pos, "will payload")
        will = Will(topic, payload, will_qos, will_retain, will_properties)
    username = password = None
    if flags & 0x80:
        username, pos = decode_str(body, pos, "user name")
    if flags & 0x40:
        password, pos = decode_bin(body, pos, "password")
    _at_end(body, pos, CONNECT)
    return Connect(client_id, bool(flags & 0x02), keepalive, properties, will, username, password)

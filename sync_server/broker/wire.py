"""MQTT 5's data types on the wire: packet types, reason codes, variable byte integers, UTF-8
strings, binary data and properties (OASIS MQTT 5.0, sections 1.5, 2.1-2.4).

Properties are a dict by their spec names (paho's spelling: "SessionExpiryInterval",
"ReceiveMaximum", ...). "UserProperty" is a list of (name, value) pairs and
"SubscriptionIdentifier" a list of ints, because those two may repeat; every other property
appears once.

Anything malformed raises `PacketError` with the MQTT 5 reason code the broker must close the
connection with (0x81 Malformed Packet, 0x82 Protocol Error, ...), so the connection that sent
it ends and the broker carries on. The packets themselves are sync_server/broker/packets.py.
"""

from __future__ import annotations

import struct

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15
NAMES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL", 7: "PUBCOMP",
         8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK", 12: "PINGREQ", 13: "PINGRESP",
         14: "DISCONNECT", 15: "AUTH"}
WILL_PROPERTIES = 0
"""Pseudo packet type of the will's properties (their own set in the spec's table 2-2)."""

# Reason codes the broker uses (spec 2.4); names as paho prints them.
SUCCESS = 0x00
DISCONNECT_WITH_WILL = 0x04
NO_SUBSCRIPTION_EXISTED = 0x11
UNSPECIFIED_ERROR = 0x80
MALFORMED_PACKET = 0x81
PROTOCOL_ERROR = 0x82
IMPLEMENTATION_SPECIFIC_ERROR = 0x83
UNSUPPORTED_PROTOCOL_VERSION = 0x84
CLIENT_ID_NOT_VALID = 0x85
BAD_AUTHENTICATION_METHOD = 0x8C
SERVER_SHUTTING_DOWN = 0x8B
KEEP_ALIVE_TIMEOUT = 0x8D
SESSION_TAKEN_OVER = 0x8E
TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90
PACKET_ID_NOT_FOUND = 0x92
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95
QUOTA_EXCEEDED = 0x97
QOS_NOT_SUPPORTED = 0x9B
SUBSCRIPTION_IDS_NOT_SUPPORTED = 0xA1
V3_REFUSED_PROTOCOL_VERSION = 0x01
"""MQTT 3.1 / 3.1.1 CONNACK return code 1: unacceptable protocol version."""

MAX_VARINT = 268_435_455
"""The largest Variable Byte Integer (four bytes): also the largest remaining length."""


class PacketError(Exception):
    """A packet the broker cannot accept; `reason` is the reason code to close with."""

    def __init__(self, reason: int, message: str):
        super().__init__(message)
        self.reason = reason


class UnsupportedProtocol(PacketError):
    """A CONNECT for another protocol version than 5 (`level`: 3 for 3.1, 4 for 3.1.1)."""

    def __init__(self, level: int, name: str):
        super().__init__(UNSUPPORTED_PROTOCOL_VERSION,
                         f"CONNECT: protocol {name!r} level {level}: this broker speaks MQTT 5 only")
        self.level = level


def malformed(message: str) -> PacketError:
    return PacketError(MALFORMED_PACKET, message)


# -- properties (spec 2.2.2.2) ---------------------------------------------------------------
_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)
_PUB = {PUBLISH, WILL_PROPERTIES}
_ACKS = {PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, DISCONNECT, AUTH, CONNACK}
PROPERTIES: dict[int, tuple[str, int, set[int]]] = {
    0x01: ("PayloadFormatIndicator", _BYTE, _PUB), 0x02: ("MessageExpiryInterval", _U32, _PUB),
    0x03: ("ContentType", _STR, _PUB), 0x08: ("ResponseTopic", _STR, _PUB),
    0x09: ("CorrelationData", _BIN, _PUB), 0x0B: ("SubscriptionIdentifier", _VARINT, {PUBLISH, SUBSCRIBE}),
    0x11: ("SessionExpiryInterval", _U32, {CONNECT, CONNACK, DISCONNECT}),
    0x12: ("AssignedClientIdentifier", _STR, {CONNACK}), 0x13: ("ServerKeepAlive", _U16, {CONNACK}),
    0x15: ("AuthenticationMethod", _STR, {CONNECT, CONNACK, AUTH}),
    0x16: ("AuthenticationData", _BIN, {CONNECT, CONNACK, AUTH}),
    0x17: ("RequestProblemInformation", _BYTE, {CONNECT}), 0x18: ("WillDelayInterval", _U32, {WILL_PROPERTIES}),
    0x19: ("RequestResponseInformation", _BYTE, {CONNECT}), 0x1A: ("ResponseInformation", _STR, {CONNACK}),
    0x1C: ("ServerReference", _STR, {CONNACK, DISCONNECT}), 0x1F: ("ReasonString", _STR, _ACKS),
    0x21: ("ReceiveMaximum", _U16, {CONNECT, CONNACK}), 0x22: ("TopicAliasMaximum", _U16, {CONNECT, CONNACK}),
    0x23: ("TopicAlias", _U16, {PUBLISH}), 0x24: ("MaximumQoS", _BYTE, {CONNACK}),
    0x25: ("RetainAvailable", _BYTE, {CONNACK}), 0x26: ("UserProperty", _PAIR, set(range(16))),
    0x27: ("MaximumPacketSize", _U32, {CONNECT, CONNACK}),
    0x28: ("WildcardSubscriptionAvailable", _BYTE, {CONNACK}),
    0x29: ("SubscriptionIdentifierAvailable", _BYTE, {CONNACK}),
    0x2A: ("SharedSubscriptionAvailable", _BYTE, {CONNACK}),
}
_BY_NAME = {name: (ident, kind) for ident, (name, kind, _) in PROPERTIES.items()}
_REPEATABLE = {"UserProperty", "SubscriptionIdentifier"}
_NONZERO = {"ReceiveMaximum", "MaximumPacketSize", "TopicAlias", "SubscriptionIdentifier"}
"""Properties whose value 0 the spec calls a protocol error."""
_FLAGS = {"PayloadFormatIndicator", "RequestProblemInformation", "RequestResponseInformation", "MaximumQoS",
          "RetainAvailable", "WildcardSubscriptionAvailable", "SubscriptionIdentifierAvailable",
          "SharedSubscriptionAvailable"}
"""Byte properties that may only be 0 or 1."""


def encode_varint(value: int) -> bytes:
    if not 0 <= value <= MAX_VARINT:
        raise ValueError(f"variable byte integer {value} is outside 0..{MAX_VARINT}")
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it); four bytes at most, the shortest encoding only (spec 1.5.5)."""
    value = 0
    for shift in range(4):
        if pos >= len(data):
            raise malformed("a variable byte integer runs past the end of the packet")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * shift)
        if not byte & 0x80:
            if shift and byte == 0:
                raise malformed("a variable byte integer is not in its shortest form")
            return value, pos
    raise malformed("a variable byte integer is longer than four bytes")


def encode_str(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 65_535:
        raise ValueError(f"UTF-8 string of {len(raw)} bytes: at most 65,535")
    return struct.pack("!H", len(raw)) + raw


def encode_bin(raw: bytes) -> bytes:
    if len(raw) > 65_535:
        raise ValueError(f"binary data of {len(raw)} bytes: at most 65,535")
    return struct.pack("!H", len(raw)) + bytes(raw)


def decode_bin(data: bytes, pos: int, what: str = "binary data") -> tuple[bytes, int]:
    if pos + 2 > len(data):
        raise malformed(f"{what}: its length runs past the end of the packet")
    size = (data[pos] << 8) | data[pos + 1]
    end = pos + 2 + size
    if end > len(data):
        raise malformed(f"{what}: {size} bytes announced, {len(data) - pos - 2} left in the packet")
    return data[pos + 2:end], end


def decode_str(data: bytes, pos: int, what: str = "string") -> tuple[str, int]:
    """A UTF-8 string (spec 1.5.4): valid UTF-8 without U+0000, else Malformed Packet."""
    raw, pos = decode_bin(data, pos, what)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise malformed(f"{what}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if "\x00" in text:
        raise malformed(f"{what}: contains U+0000")
    return text, pos


def read_uint(data: bytes, pos: int, size: int, what: str) -> tuple[int, int]:
    if pos + size > len(data):
        raise malformed(f"{what}: runs past the end of the packet")
    return int.from_bytes(data[pos:pos + size], "big"), pos + size


def encode_properties(properties: dict) -> bytes:
    """The property block: its length (a varint) and each property; b"\\x00" when empty."""
    if not properties:
        return b"\x00"
    out = bytearray()
    for name, value in properties.items():
        try:
            ident, kind = _BY_NAME[name]
        except KeyError:
            raise ValueError(f"unknown MQTT 5 property {name!r}") from None
        for item in (value if name in _REPEATABLE else (value,)):
            out += encode_varint(ident)
            if kind == _BYTE:
                out.append(item)
            elif kind in (_U16, _U32):
                out += item.to_bytes(2 if kind == _U16 else 4, "big")
            elif kind == _VARINT:
                out += encode_varint(item)
            elif kind == _STR:
                out += encode_str(item)
            elif kind == _BIN:
                out += encode_bin(item)
            else:
                out += encode_str(item[0]) + encode_str(item[1])
    return encode_varint(len(out)) + bytes(out)


def decode_properties(data: bytes, pos: int, packet_type: int) -> tuple[dict, int]:
    """The property block at `pos` of a `packet_type` packet (0 for a will's), checked: known,
    allowed in that packet, not repeated unless the spec allows it, values in range."""
    length, pos = decode_varint(data, pos)
    end = pos + length
    if end > len(data):
        raise malformed(f"properties: {length} bytes announced, {len(data) - pos} left in the packet")
    where = "will" if packet_type == WILL_PROPERTIES else NAMES[packet_type]
    properties: dict = {}
    while pos < end:
        ident, pos = decode_varint(data, pos)
        if ident not in PROPERTIES:
            raise malformed(f"{where}: unknown property 0x{ident:02X}")
        name, kind, allowed = PROPERTIES[ident]
        if packet_type not in allowed:
            raise PacketError(PROTOCOL_ERROR, f"{where}: property {name} is not allowed here")
        if kind == _BYTE:
            value, pos = read_uint(data, pos, 1, name)
        elif kind in (_U16, _U32):
            value, pos = read_uint(data, pos, 2 if kind == _U16 else 4, name)
        elif kind == _VARINT:
            value, pos = decode_varint(data, pos)
        elif kind == _STR:
            value, pos = decode_str(data, pos, name)
        elif kind == _BIN:
            value, pos = decode_bin(data, pos, name)
        else:
            key, pos = decode_str(data, pos, name)
            text, pos = decode_str(data, pos, name)
            value = (key, text)
        if pos > end:
            raise malformed(f"{where}: property {name} runs past the property block")
        if (name in _NONZERO and value == 0) or (name in _FLAGS and value > 1):
            raise PacketError(PROTOCOL_ERROR, f"{where}: property {name} may not be {value}")
        if name in _REPEATABLE:
            properties.setdefault(name, []).append(value)
        elif name in properties:
            raise PacketError(PROTOCOL_ERROR, f"{where}: property {name} appears twice")
        else:
            properties[name] = value
    return properties, end


def split_packet(data: bytes) -> tuple[int, bytes, int] | None:
    """The first whole packet in `data`: (first byte, body, bytes used), or None if incomplete
    (tests read raw sockets with it; the broker reads its streams itself)."""
    if not any(not byte & 0x80 for byte in data[1:5]):  # the remaining length is not all there yet
        if len(data) < 5:
            return None
        raise malformed("a variable byte integer is longer than four bytes")
    length, pos = decode_varint(data, 1)
    if len(data) < pos + length:
        return None
    return data[0], data[pos:pos + length], pos + length

"""One client's TCP connection to the in-process broker: its CONNECT, then its packets in order.

A connection reads one packet at a time (fixed header first, so an oversized packet is refused
before its body is read), decodes it (sync_server/broker/packets.py) and answers it at once on
the broker's asyncio thread. A packet that is malformed or against the protocol ends this
connection only: a DISCONNECT with the reason code (0x81 Malformed Packet, 0x82 Protocol Error,
0x95 Packet Too Large, 0x9B QoS Not Supported ...) once connected, a CONNACK with it during the
handshake, nothing at all when the first packet is not even a CONNECT. The broker carries on.

Its end (whatever the cause) goes to `BrokerCore.ended`, which publishes the will unless the
client said a normal DISCONNECT (reason 0x00).
"""

from __future__ import annotations

import asyncio
import logging
import time

from sync_server.broker.packets import (
    Ack, ConnAck, Connect, Disconnect, PingReq, Publish, SubAck, Subscribe, UnsubAck, Unsubscribe, decode, encode,
    encode_v3_connack,
)
from sync_server.broker.sessions import MAX_QOS, Message
from sync_server.broker.topics import check_topic_name
from sync_server.broker.wire import (
    BAD_AUTHENTICATION_METHOD, CONNECT, IMPLEMENTATION_SPECIFIC_ERROR, MAX_VARINT, NAMES, PACKET_ID_NOT_FOUND,
    PACKET_TOO_LARGE, PROTOCOL_ERROR, PUBACK, PUBCOMP, PUBREL, QOS_NOT_SUPPORTED, QUOTA_EXCEEDED,
    SUBSCRIPTION_IDS_NOT_SUPPORTED, SUCCESS, TOPIC_ALIAS_INVALID, TOPIC_NAME_INVALID, UNSUPPORTED_PROTOCOL_VERSION,
    V3_REFUSED_PROTOCOL_VERSION, PacketError, UnsupportedProtocol, malformed,
)

log = logging.getLogger(__name__)

DEFAULT_RECEIVE_MAXIMUM = 1000
"""QoS 1 messages in flight to a client that states no Receive Maximum: the deployed
Mosquitto's `max_inflight_messages` (deploy/broker/mosquitto.conf), not the spec's 65,535,
so a client that forgot it is not flooded."""
NO_PACKET_LIMIT = MAX_VARINT + 5
"""A client that states no Maximum Packet Size takes any packet MQTT can frame."""


class Connection:
    """One client's connection; the attributes its session reads: `write`, `receive_maximum`,
    `max_packet_size`."""

    def __init__(self, core, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.core = core
        self.reader, self.writer = reader, writer
        self.transport = writer.transport
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.opened = self.last_heard = time.monotonic()
        self.keepalive = 0
        self.client_id: str | None = None
        self.session = None
        self.will: Message | None = None
        self.receive_maximum = DEFAULT_RECEIVE_MAXIMUM
        self.max_packet_size = NO_PACKET_LIMIT
        self.connect_expiry = 0
        self.connected = False
        """The CONNACK accepting it was sent."""
        self.closed = False
        self.graceful = False
        """It ended with a normal DISCONNECT: no will."""

    @property
    def name(self) -> str:
        return f"{self.client_id} ({self.peer})" if self.client_id else self.peer

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def close(self, reason: int | None = None, why: str = "") -> None:
        """Close the link; with `reason`, tell a connected client why first (a DISCONNECT)."""
        if self.closed:
            return
        if reason is not None and self.connected:
            self.transport.write(encode(Disconnect(reason, {"ReasonString": why[:200]} if why else {})))
        self.closed = True
        self.transport.close()  # what is buffered is still sent, then the socket closes

    # -- reading ----------------------------------------------------------------------------
    async def serve(self) -> None:
        try:
            await self._handshake()
            while not self.closed:
                first, body = await self._read()
                if self.closed:  # taken over or timed out meanwhile: what it still sent is not ours to act on
                    break
                self.last_heard = time.monotonic()
                self._handle(decode(first, body))
                await self.writer.drain()  # a client that does not read its acks is not fed more
        except PacketError as exc:
            self.core.stats.refused += 1
            log.warning("broker: %s: %s; closing it (reason 0x%02X)", self.name, exc, exc.reason)
            self.close(exc.reason, str(exc))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the link went (or we closed it: a take-over, a late keepalive, a stop)
        except Exception as exc:  # a bug here must cost this connection only, never the broker
            log.exception("broker: %s: failed handling a packet", self.name)
            self.close(IMPLEMENTATION_SPECIFIC_ERROR, f"broker error: {exc}")
        finally:
            self.core.ended(self)

    async def _read(self, first_packet: bool = False) -> tuple[int, bytes]:
        head = await self.reader.readexactly(2)
        if first_packet and head[0] >> 4 != CONNECT:  # not MQTT at all, likely: do not wait for a body
            raise PacketError(PROTOCOL_ERROR, f"sent {NAMES.get(head[0] >> 4, 'a reserved packet type')} "
                                              "before CONNECT")
        byte, length, count = head[1], head[1] & 0x7F, 1
        while byte & 0x80:
            if count == 4:
                raise malformed("the remaining length is longer than four bytes")
            byte = (await self.reader.readexactly(1))[0]
            length |= (byte & 0x7F) << (7 * count)
            count += 1
        if count > 1 and byte == 0:
            raise malformed("the remaining length is not in its shortest form")
        if 1 + count + length > self.core.max_packet_bytes:
            kind = NAMES.get(head[0] >> 4, "packet")
            raise PacketError(PACKET_TOO_LARGE, f"{kind} of {1 + count + length} bytes: this broker's "
                                                f"Maximum Packet Size is {self.core.max_packet_bytes}")
        return head[0], (await self.reader.readexactly(length) if length else b"")

    async def _handshake(self) -> None:
        first, body = await self._read(first_packet=True)
        try:
            connect = decode(first, body)
            refusal = _refusal(connect)
            if refusal is not None:
                raise refusal
        except UnsupportedProtocol as exc:  # a 3.1 / 3.1.1 client reads only its own CONNACK
            self.write(encode_v3_connack(V3_REFUSED_PROTOCOL_VERSION) if exc.level in (3, 4)
                       else encode(ConnAck(reason=UNSUPPORTED_PROTOCOL_VERSION)))
            raise
        except PacketError as exc:
            self.write(encode(ConnAck(reason=exc.reason, properties={"ReasonString": str(exc)[:200]})))
            raise
        self.core.connect(self, connect)

    # -- answering --------------------------------------------------------------------------
    def _handle(self, packet) -> None:
        kind = type(packet)
        if kind is Publish:
            self._publish(packet)
        elif kind is Ack:
            if packet.kind == PUBACK:
                self.session.acknowledged(packet.packet_id)  # an unknown id: a late duplicate, ignored
            elif packet.kind == PUBREL:  # we never sent a PUBREC (QoS 2 is refused)
                self.write(encode(Ack(PUBCOMP, packet.packet_id, PACKET_ID_NOT_FOUND)))
        elif kind is Subscribe:
            self._subscribe(packet)
        elif kind is Unsubscribe:
            codes = [self.core.sessions.unsubscribe(self.session, text) for text in packet.filters]
            self.write(encode(UnsubAck(packet.packet_id, codes)))
        elif kind is PingReq:
            self.write(b"\xd0\x00")
        elif kind is Disconnect:
            self._disconnect(packet)
        else:
            raise PacketError(PROTOCOL_ERROR, f"{kind.__name__.upper()}: a client may not send this here")

    def _publish(self, packet: Publish) -> None:
        if packet.qos > MAX_QOS:
            raise PacketError(QOS_NOT_SUPPORTED, f"PUBLISH QoS {packet.qos}: this broker's Maximum QoS is {MAX_QOS}")
        properties = packet.properties
        if "TopicAlias" in properties:
            raise PacketError(TOPIC_ALIAS_INVALID, "PUBLISH with a Topic Alias: this broker's Topic Alias Maximum is 0")
        if "SubscriptionIdentifier" in properties:
            raise PacketError(PROTOCOL_ERROR, "PUBLISH from a client with a Subscription Identifier")
        why = check_topic_name(packet.topic)
        if why is not None:
            raise PacketError(TOPIC_NAME_INVALID, f"PUBLISH to {why}")
        limit = self.core.message_size_limit
        if len(packet.payload) > limit:  # refused, the connection kept (as Mosquitto's message_size_limit)
            # 0x97 Quota Exceeded: 0x95 (what Mosquitto sends) is no PUBACK reason code in the
            # spec (3.4.2.1), and paho drops such a PUBACK as malformed, leaving the publish hanging.
            self.core.stats.too_large += 1
            log.warning("broker: %s: refused a %d-byte message on %s (limit %d bytes)", self.name,
                        len(packet.payload), packet.topic[:120], limit)
            if packet.qos:
                self.write(encode(Ack(PUBACK, packet.packet_id, QUOTA_EXCEEDED,
                                      {"ReasonString": f"payload over {limit} bytes"})))
            return
        expiry = properties.get("MessageExpiryInterval")
        self.core.sessions.publish(Message(packet.topic, packet.payload, packet.qos, packet.retain, properties,
                                           time.monotonic() + expiry if expiry else None, self.client_id))
        if packet.qos:
            # Success, never 0x10 No Matching Subscribers: Mosquitto sends 0 too, and a device
            # would record "refused" for a message merely nobody was listening for yet.
            self.write(b"\x40\x02" + packet.packet_id.to_bytes(2, "big"))

    def _subscribe(self, packet: Subscribe) -> None:
        if "SubscriptionIdentifier" in packet.properties:
            raise PacketError(SUBSCRIPTION_IDS_NOT_SUPPORTED, "SUBSCRIBE with a Subscription Identifier: "
                                                              "this broker does not support them")
        codes, retained = [], []
        for text, options in packet.subscriptions:
            code, kept = self.core.sessions.subscribe(self.session, text, options)
            codes.append(code)
            retained.extend(kept)
        self.write(encode(SubAck(packet.packet_id, codes)))
        for out in retained:  # after the SUBACK, as Mosquitto does
            self.session.offer(out)

    def _disconnect(self, packet: Disconnect) -> None:
        expiry = packet.properties.get("SessionExpiryInterval")
        if expiry is not None:
            if self.connect_expiry == 0 and expiry:
                raise PacketError(PROTOCOL_ERROR, "DISCONNECT sets a Session Expiry Interval after a CONNECT gave 0")
            self.session.expiry_s = expiry
        self.graceful = packet.reason == SUCCESS  # 0x04 (and any error) still sends the will
        self.close()


def _refusal(connect: Connect) -> PacketError | None:
    """Why an MQTT 5 CONNECT is refused (its CONNACK reason), or None."""
    if "AuthenticationMethod" in connect.properties:
        return PacketError(BAD_AUTHENTICATION_METHOD, "CONNECT: enhanced authentication is not supported")
    will = connect.will
    if will is not None:
        if will.qos > MAX_QOS:
            return PacketError(QOS_NOT_SUPPORTED, f"CONNECT: a will of QoS {will.qos}: this broker's Maximum QoS is 1")
        why = check_topic_name(will.topic)
        if why is not None:
            return PacketError(TOPIC_NAME_INVALID, f"CONNECT: a will on {why}")
    return None

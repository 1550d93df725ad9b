"""What the in-process broker remembers apart from sockets: sessions, subscriptions, retained
messages and the queues towards each client.

Everything here runs on the broker's one asyncio thread (sync_server/broker/server.py), so
nothing is locked; nothing here touches asyncio either, so the rules can be read (and tested)
as plain code:

- a `Session` outlives its connection while its expiry interval runs (the devices and the
  ingest ask for a week): its subscriptions stay, QoS 1 messages queue for it (QoS 0 ones are
  dropped while it is offline, as Mosquitto does by default), and what was in flight when the
  link went is sent again first on the next connection, with DUP set and its packet id;
- towards a connected client at most its Receive Maximum QoS 1 messages are unacknowledged at
  once (the ingest acknowledges only after its commit: this is its flow control);
- a queue holds at most MAX_QUEUED_MESSAGES messages and MAX_QUEUED_BYTES of payload; beyond
  that the oldest is dropped, counted and logged (its device sends it again: no receipt named it);
- subscriptions live in a tree by topic level (sync_server/broker/topics.py); a shared
  subscription `$share/<group>/<filter>` hands each message to one member of its group, round
  robin over every member with a session, connected or not (a member offline gets its share
  queued, as Mosquitto does);
- retained messages: the last one per topic, an empty payload deletes it; sent on a new
  subscription with the retain flag set; a live message keeps its retain flag only for a
  subscription that asked for Retain As Published (MQTT 5, 3.3.1.3).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, replace

from sync_server.broker.packets import Publish, SubOptions, encode
from sync_server.broker.topics import SubscriptionTree, matches, parse_filter
from sync_server.broker.wire import NO_SUBSCRIPTION_EXISTED, PROTOCOL_ERROR, TOPIC_FILTER_INVALID, PacketError

log = logging.getLogger(__name__)

MAX_QUEUED_MESSAGES = 1_000_000
"""Messages queued for one client (offline, or beyond its Receive Maximum): the deployed
Mosquitto's `max_queued_messages` (deploy/broker/mosquitto.conf). A week offline of a device
sending a detection a minute is ~10,000; the ingest's backlog after an outage is the sum."""
MAX_QUEUED_BYTES = 1 << 30
"""Payload bytes queued for one client: the deployed `max_queued_bytes` (1 GiB), so devices
resending into a dead ingest cannot exhaust the laptop."""
MAX_QOS = 1
"""The highest QoS granted: our clients use QoS 1 only, and QoS 2's handshake is not built."""
NEVER_EXPIRES = 0xFFFF_FFFF
"""A Session Expiry Interval of this value: the session never expires (spec 3.1.2.11.2)."""
DROP_LOG_EVERY = 10_000
"""A full queue logs its first drop and every this-many after it, not each one."""


@dataclass
class BrokerStats:
    """What the broker has done since it started (read through `OwnBroker.snapshot().stats`)."""

    connections: int = 0
    """Connected clients now."""
    connects: int = 0
    """CONNECTs accepted in all."""
    refused: int = 0
    """Connections refused or closed for a bad packet, a wrong protocol, a late keepalive."""
    received: int = 0
    """PUBLISH packets taken from clients (wills included)."""
    delivered: int = 0
    """PUBLISH packets written to clients (resends included)."""
    dropped: int = 0
    """Queued messages dropped because a queue was full."""
    too_large: int = 0
    """Messages refused for their size, or not sent to a client whose Maximum Packet Size they exceed."""


@dataclass(slots=True)
class Message:
    """One application message as published (or a will), shared by every queue it is in."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: dict
    """Its PUBLISH properties, forwarded as given (a Topic Alias, which names a topic on one
    connection only, is refused on arrival, so none is ever kept)."""
    expires_at: float | None = None
    """time.monotonic() after which it is no longer sent (MessageExpiryInterval), or None."""
    publisher: str | None = None
    """The client id that published it (No Local subscriptions skip their own messages)."""

    def properties_at(self, now: float) -> dict | None:
        """The properties to send it with now (the expiry interval counted down), or None when
        it has expired and must not be sent (spec 3.3.2.3.3)."""
        if self.expires_at is None:
            return self.properties
        left = self.expires_at - now
        if left <= 0:
            return None
        return {**self.properties, "MessageExpiryInterval": max(1, int(left))}


@dataclass(slots=True)
class Outgoing:
    """One message on its way to one session, at the QoS and retain flag it is sent with."""

    message: Message
    qos: int
    retain: bool
    packet_id: int | None = None
    sent: bool = False
    """Written once already: a resend carries DUP."""


class Session:
    """One client id's state, connected or not (see the module docstring for its rules)."""

    def __init__(self, client_id: str, expiry_s: int, stats: BrokerStats,
                 max_queued: int = MAX_QUEUED_MESSAGES, max_queued_bytes: int = MAX_QUEUED_BYTES):
        self.client_id = client_id
        self.expiry_s = expiry_s
        self.stats = stats
        self.max_queued, self.max_queued_bytes = max_queued, max_queued_bytes
        self.subscriptions: dict[str, SubOptions] = {}
        """Full filter text ($share/... included) -> its options as granted."""
        self.pending: deque[Outgoing] = deque()
        """QoS 1 messages not yet sent (offline, or beyond the Receive Maximum), oldest first."""
        self.queued_bytes = 0
        self.inflight: dict[int, Outgoing] = {}
        """Sent, not yet acknowledged, by packet id, in the order sent."""
        self.connection = None
        """The connection holding it (has `write(bytes)`, `receive_maximum`, `max_packet_size`)."""
        self.offline_since: float | None = time.monotonic()
        self.dropped = 0
        self._held: set[int] = set()
        """Packet ids in use: in flight, or queued for a resend that must keep its id."""
        self._next_id = 1

    def expired(self, now: float) -> bool:
        return (self.connection is None and self.expiry_s != NEVER_EXPIRES and self.offline_since is not None
                and now - self.offline_since >= self.expiry_s)

    def attach(self, connection) -> None:
        """`connection` takes the session over: what was in flight is sent first again (DUP
        set, its packet id kept, spec 4.4) once the caller has sent the CONNACK and calls `flush()`."""
        if self.inflight:
            resend = list(self.inflight.values())
            self.inflight.clear()
            self.pending.extendleft(reversed(resend))
            self.queued_bytes += sum(len(out.message.payload) for out in resend)
        self.connection, self.offline_since = connection, None

    def detach(self) -> None:
        self.connection, self.offline_since = None, time.monotonic()

    def offer(self, out: Outgoing) -> None:
        """Send `out` now if the window allows, else queue it (QoS 0: send now or never)."""
        if out.qos == 0:
            if self.connection is not None:
                self._write(out, time.monotonic())
            return
        self.pending.append(out)
        self.queued_bytes += len(out.message.payload)
        while len(self.pending) > 1 and (len(self.pending) > self.max_queued
                                         or self.queued_bytes > self.max_queued_bytes):
            self._drop_oldest()  # the newest stays: whatever the limits, the latest message is kept
        self.flush()

    def flush(self) -> None:
        """Send queued messages while the client's Receive Maximum leaves room."""
        connection = self.connection
        if connection is None:
            return
        now = time.monotonic()
        room = connection.receive_maximum - len(self.inflight)
        while room > 0 and self.pending:
            out = self.pending.popleft()
            self.queued_bytes -= len(out.message.payload)
            if out.packet_id is None:
                out.packet_id = self._take_id()
            if self._write(out, now):
                self.inflight[out.packet_id] = out
                room -= 1
            else:  # expired or too large for this client: never to be sent, as if delivered
                self._held.discard(out.packet_id)

    def restore(self, out: Outgoing) -> None:
        """Queue a message read back from a saved state (persist.py), keeping its packet id."""
        if out.packet_id is not None:
            self._held.add(out.packet_id)
        self.pending.append(out)
        self.queued_bytes += len(out.message.payload)

    def acknowledged(self, packet_id: int) -> bool:
        """A PUBACK: free the slot, send what waits. False for an id not in flight."""
        if self.inflight.pop(packet_id, None) is None:
            return False
        self._held.discard(packet_id)
        self.flush()
        return True

    def _write(self, out: Outgoing, now: float) -> bool:
        message = out.message
        properties = message.properties_at(now)
        if properties is None:
            return False
        packet = encode(Publish(message.topic, message.payload, out.qos, out.retain, out.sent,
                                out.packet_id if out.qos else None, properties))
        if len(packet) > self.connection.max_packet_size:
            self.stats.too_large += 1
            log.warning("broker: not sent to %s: %d bytes on %s exceed its Maximum Packet Size (%d)",
                        self.client_id, len(packet), message.topic[:120], self.connection.max_packet_size)
            return False
        self.connection.write(packet)
        out.sent = True
        self.stats.delivered += 1
        return True

    def _take_id(self) -> int:
        while self._next_id in self._held:  # at most Receive Maximum (<= 65,535) ids are held
            self._next_id = self._next_id % 65_535 + 1
        packet_id = self._next_id
        self._held.add(packet_id)
        self._next_id = packet_id % 65_535 + 1
        return packet_id

    def _drop_oldest(self) -> None:
        out = self.pending.popleft()
        self.queued_bytes -= len(out.message.payload)
        if out.packet_id is not None:
            self._held.discard(out.packet_id)
        self.dropped += 1
        self.stats.dropped += 1
        if (self.dropped - 1) % DROP_LOG_EVERY == 0:
            log.warning("broker: the queue for %s is full (%d messages, %d bytes): dropped its oldest (%d so far); "
                        "a device resends what no receipt named", self.client_id, len(self.pending),
                        self.queued_bytes, self.dropped)


class Sessions:
    """Every session, the subscription tree and the retained messages: routing lives here."""

    def __init__(self, stats: BrokerStats | None = None, max_queued: int = MAX_QUEUED_MESSAGES,
                 max_queued_bytes: int = MAX_QUEUED_BYTES):
        self.stats = stats or BrokerStats()
        self.max_queued, self.max_queued_bytes = max_queued, max_queued_bytes
        self.by_id: dict[str, Session] = {}
        self.tree = SubscriptionTree()
        self.retained: dict[str, Message] = {}

    def open(self, client_id: str, clean_start: bool, expiry_s: int) -> tuple[Session, bool]:
        """The session a CONNECT gets, and whether it was resumed (CONNACK's Session Present).
        A stored session is resumed unless the client asks for a clean start, it expired, or it
        was never meant to outlive its connection (expiry 0)."""
        old = self.by_id.get(client_id)
        if old is not None and (clean_start or old.expiry_s == 0 or old.expired(time.monotonic())):
            self.remove(old)
            old = None
        if old is not None:
            old.expiry_s = expiry_s
            return old, True
        session = Session(client_id, expiry_s, self.stats, self.max_queued, self.max_queued_bytes)
        self.by_id[client_id] = session
        return session, False

    def remove(self, session: Session) -> None:
        """End a session: its subscriptions go (its share of a group passes to the others)."""
        for text in list(session.subscriptions):
            self.unsubscribe(session, text)
        if self.by_id.get(session.client_id) is session:
            del self.by_id[session.client_id]

    def expire(self, now: float) -> list[str]:
        """Remove every offline session whose expiry interval has run out; their ids."""
        gone = [s for s in self.by_id.values() if s.expired(now)]
        for session in gone:
            log.info("broker: session %s expired (%d queued message(s) dropped)", session.client_id,
                     len(session.pending) + len(session.inflight))
            self.remove(session)
        return [s.client_id for s in gone]

    def subscribe(self, session: Session, text: str, options: SubOptions) -> tuple[int, list[Outgoing]]:
        """Add or replace one subscription: (SUBACK reason code, retained messages to send it).

        Raises:
            PacketError: No Local on a shared subscription (a protocol error, spec 3.8.3.1).
        """
        try:
            group, topic_filter = parse_filter(text)
        except ValueError as exc:
            log.info("broker: %s: subscription refused: %s", session.client_id, exc)
            return TOPIC_FILTER_INVALID, []
        if group is not None and options.no_local:
            raise PacketError(PROTOCOL_ERROR, f"SUBSCRIBE: No Local on shared subscription {text[:120]!r}")
        options = replace(options, qos=min(options.qos, MAX_QOS))
        existed = text in session.subscriptions
        session.subscriptions[text] = options
        self.tree.add(topic_filter, session.client_id, options, group)
        retained: list[Outgoing] = []
        if group is None and (options.retain_handling == 0 or (options.retain_handling == 1 and not existed)):
            now = time.monotonic()
            for topic, message in list(self.retained.items()):
                if message.expires_at is not None and message.expires_at <= now:
                    del self.retained[topic]
                elif matches(topic_filter, topic):
                    retained.append(Outgoing(message, min(message.qos, options.qos), True))
        return options.qos, retained

    def unsubscribe(self, session: Session, text: str) -> int:
        """Remove one subscription; the UNSUBACK reason code."""
        if session.subscriptions.pop(text, None) is None:
            return NO_SUBSCRIPTION_EXISTED
        group, topic_filter = parse_filter(text)
        self.tree.remove(topic_filter, session.client_id, group)
        return 0

    def publish(self, message: Message) -> int:
        """Keep it if retained, and hand it to every matching session; how many it went to."""
        self.stats.received += 1
        if message.retain:
            if message.payload:
                self.retained[message.topic] = message
            else:
                self.retained.pop(message.topic, None)
        plain, groups = self.tree.match(message.topic)
        best: dict[str, tuple[int, bool]] = {}
        for client_id, options in plain:  # overlapping subscriptions: one copy, the highest QoS
            if options.no_local and client_id == message.publisher:
                continue
            qos, keep = best.get(client_id, (-1, False))
            best[client_id] = (max(qos, options.qos), keep or options.retain_as_published)
        targets = [(client_id, qos, keep) for client_id, (qos, keep) in best.items()]
        for group in groups:
            client_id, options = group.pick()
            targets.append((client_id, options.qos, options.retain_as_published))
        for client_id, qos, keep in targets:
            self.by_id[client_id].offer(Outgoing(message, min(message.qos, qos), message.retain and keep))
        return len(targets)

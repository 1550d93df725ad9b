"""Clients for the in-process broker's tests: `Peer`, a real paho-mqtt 2 MQTTv5 client set up as
our own clients set theirs up (persistent sessions, Receive Maximum, manual acknowledgements, a
will), recording everything it hears; `Raw`, a bare socket for what no well-behaved client sends.

No fixed sleeps: a test that must show something did NOT arrive sends a QoS 0 marker through
the broker after the event (`Peer.settle`); the broker handles a connection's packets in order
and writes each delivery at once, so when the marker arrives, anything the event caused has.
"""

from __future__ import annotations

import socket
import threading
import uuid
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from sync_server.broker.packets import decode, split_packet
from tests.helpers import wait_until

TIMEOUT_S = 10.0
LIVE: list = []
"""Every Peer and Raw made, so `close_all()` can end them after a test (no socket left open)."""


def close_all() -> None:
    """Close every client the tests made (the broker fixtures call it before stopping the broker)."""
    while LIVE:
        LIVE.pop().shut()


@dataclass(frozen=True)
class Heard:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    mid: int


class Peer:
    """One connection of a paho MQTTv5 client; a reconnect is a new Peer with the same id."""

    def __init__(self, broker, client_id: str | None = None, *, clean_start: bool = True, expiry_s: int = 0,
                 receive_maximum: int | None = None, manual_ack: bool = False, will: tuple | None = None,
                 keepalive: int = 60, connect: bool = True, settle_topic: bool = True,
                 protocol=mqtt.MQTTv5, reconnect_on_failure: bool = False):
        self.broker = broker
        self.client_id = client_id or f"peer-{uuid.uuid4().hex[:8]}"
        self.heard: list[Heard] = []
        self.connacks: list[tuple[bool, str]] = []
        self.disconnects: list[str] = []
        self._subacks: dict[int, list[str]] = {}
        self._unsubacks: dict[int, list[str]] = {}
        self._pubacks: dict[int, str] = {}
        self._lock = threading.Condition()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=protocol,
                             manual_ack=manual_ack, reconnect_on_failure=reconnect_on_failure)
        client.max_inflight_messages_set(0)  # no paho-side limit: what is measured is the broker's
        if will is not None:
            client.will_set(*will[:2], qos=1, retain=will[2] if len(will) > 2 else False)
        client.on_connect = self._on_connect
        client.on_disconnect = lambda c, u, flags, reason, p: self._note(self.disconnects, str(reason))
        client.on_message = self._on_message
        client.on_subscribe = lambda c, u, mid, codes, p: self._put(self._subacks, mid, [str(x) for x in codes])
        client.on_unsubscribe = lambda c, u, mid, codes, p: self._put(self._unsubacks, mid, [str(x) for x in codes])
        client.on_publish = lambda c, u, mid, reason, p: self._put(self._pubacks, mid, str(reason))
        self.client = client
        LIVE.append(self)
        self.settle_topic = f"settle/{self.client_id}" if settle_topic else None
        if connect:
            properties = None
            if protocol == mqtt.MQTTv5:
                properties = Properties(PacketTypes.CONNECT)
                if expiry_s:
                    properties.SessionExpiryInterval = expiry_s
                if receive_maximum:
                    properties.ReceiveMaximum = receive_maximum
            kwargs = {"clean_start": clean_start, "properties": properties} if protocol == mqtt.MQTTv5 else {}
            client.connect(broker.host, broker.port, keepalive=keepalive, **kwargs)
            client.loop_start()
            if not wait_until(lambda: self.connacks or self.disconnects, TIMEOUT_S):
                raise RuntimeError(f"{self.client_id}: no CONNACK within {TIMEOUT_S} s")
            if self.connected and self.settle_topic:
                self.subscribe(self.settle_topic, 0)

    # -- paho's thread ------------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        self._note(self.connacks, (bool(flags.session_present), str(reason)))

    def _on_message(self, client, userdata, message) -> None:
        self._note(self.heard, Heard(message.topic, bytes(message.payload), message.qos, bool(message.retain),
                                     bool(message.dup), message.mid))

    def _note(self, items: list, item) -> None:
        with self._lock:
            items.append(item)
            self._lock.notify_all()

    def _put(self, table: dict, key, value) -> None:
        with self._lock:
            table[key] = value
            self._lock.notify_all()

    def _wait(self, table: dict, key, what: str):
        with self._lock:
            if not self._lock.wait_for(lambda: key in table, TIMEOUT_S):
                raise RuntimeError(f"{self.client_id}: no {what} within {TIMEOUT_S} s")
            return table.pop(key)

    # -- the test's side ----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return bool(self.connacks) and self.connacks[-1][1] == "Success" and not self.disconnects

    @property
    def session_present(self) -> bool:
        return self.connacks[-1][0]

    def subscribe(self, topic: str, qos: int = 1, retain_as_published: bool = False, retain_handling: int = 0,
                  no_local: bool = False) -> list[str]:
        """Subscribe and wait for the SUBACK; its reason codes as paho names them."""
        options = SubscribeOptions(qos=qos, noLocal=no_local, retainAsPublished=retain_as_published,
                                   retainHandling=retain_handling)
        return self._wait(self._subacks, self.client.subscribe(topic, options=options)[1], "SUBACK")

    def unsubscribe(self, topic: str) -> list[str]:
        return self._wait(self._unsubacks, self.client.unsubscribe(topic)[1], "UNSUBACK")

    def publish(self, topic: str, payload: bytes | str = b"", qos: int = 1, retain: bool = False) -> str:
        """Publish; for QoS 1 wait for the PUBACK and return its reason ('Success', ...)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        return self._wait(self._pubacks, info.mid, "PUBACK") if qos else "sent"

    def publish_many(self, topic: str, payloads, qos: int = 1) -> list[str]:
        infos = [self.client.publish(topic, payload, qos=qos) for payload in payloads]
        return [self._wait(self._pubacks, info.mid, "PUBACK") for info in infos] if qos else []

    def ack(self, heard: Heard) -> None:
        self.client.ack(heard.mid, heard.qos)

    def received(self, prefix: str = "") -> list[Heard]:
        """What arrived on topics starting with `prefix`, settle markers left out."""
        with self._lock:
            return [h for h in self.heard if h.topic.startswith(prefix) and not h.topic.startswith("settle/")]

    def wait_for(self, count: int, prefix: str = "") -> list[Heard]:
        """Wait until `count` messages (of `prefix`) arrived; those that did."""
        wait_until(lambda: len(self.received(prefix)) >= count, TIMEOUT_S, every_s=0.01)
        return self.received(prefix)

    def settle(self, via: "Peer") -> None:
        """Return once a QoS 0 marker `via` sends now has reached this peer (see the module docstring)."""
        marker = uuid.uuid4().hex.encode()
        via.publish(self.settle_topic, marker, qos=0)
        if not wait_until(lambda: any(h.payload == marker for h in list(self.heard)), TIMEOUT_S, every_s=0.01):
            raise RuntimeError(f"{self.client_id}: the settle marker never came")

    def wait_disconnected(self) -> str:
        if not wait_until(lambda: self.disconnects, TIMEOUT_S, every_s=0.01):
            raise RuntimeError(f"{self.client_id}: still connected after {TIMEOUT_S} s")
        return self.disconnects[0]

    def drop(self) -> None:
        """Lose the link without a DISCONNECT (a power cut, a lost radio): the broker sees EOF.
        Returns once the broker has seen it (what is published next finds the session offline)."""
        self.client.socket().shutdown(socket.SHUT_RDWR)
        self.wait_disconnected()
        self.client.loop_stop()
        self._wait_broker_let_go()

    def close(self) -> None:
        """A normal DISCONNECT (reason 0: the will is dropped), once the broker has handled it."""
        if self.connected:
            self.client.disconnect()
            self.wait_disconnected()
            self._wait_broker_let_go()
        self.client.loop_stop()

    def shut(self) -> None:
        """End this client whatever its state (test clean-up)."""
        self.client.loop_stop()
        self.client.disconnect()  # closes paho's socket too, connected or not

    def _wait_broker_let_go(self) -> None:
        def gone() -> bool:
            view = self.broker.snapshot().sessions.get(self.client_id)
            return view is None or not view.connected

        if not wait_until(gone, TIMEOUT_S, every_s=0.01):
            raise RuntimeError(f"{self.client_id}: the broker still holds the connection after {TIMEOUT_S} s")


class Raw:
    """A bare TCP connection to the broker, for bytes no client library would send."""

    def __init__(self, broker):
        self.sock = socket.create_connection((broker.host, broker.port), timeout=TIMEOUT_S)
        self.buffer = b""
        LIVE.append(self)

    def send(self, data: bytes) -> "Raw":
        self.sock.sendall(data)
        return self

    def read(self):
        """The next packet the broker sends, decoded, or None when it closed the connection."""
        while (whole := split_packet(self.buffer)) is None:
            try:
                chunk = self.sock.recv(65_536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self.buffer += chunk
        first, body, used = whole
        self.buffer = self.buffer[used:]
        return decode(first, body)

    def read_bytes(self) -> bytes:
        """Everything the broker sends until it closes the connection."""
        while True:
            try:
                chunk = self.sock.recv(65_536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return self.buffer
            self.buffer += chunk

    def shut(self) -> None:
        self.sock.close()

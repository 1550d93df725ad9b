"""One MQTT 5 connection to the broker: the outbox goes up over it, the server's receipts come back.

The session is persistent (clean_start False, a SessionExpiryInterval of a week, a stable
client id), so receipts the server publishes while the device is out of coverage wait on the
broker and arrive when it reconnects. Every connect subscribes (QoS 1) to the device's own
receipt topic again, in case the broker forgot the session. Receipts are acknowledged by hand
(`manual_ack`), and only once the confirmations they carry are committed: one lost between
the broker and the outbox is delivered again. paho's packet ids (`mid`) belong to one
connection, so a receipt is acknowledged only on the connection that delivered it; each
`MqttSession` is one connection (paho's own reconnect is off), and one that dropped never
acknowledges anything again: the broker redelivers what it had not been told.

The connection's last will is the device's status with `online: false` (retained), so the
broker announces a device that vanished (power cut, kill -9, lost link). A normal MQTT 5
DISCONNECT discards the will: a clean stop publishes that status itself first.

The same session subscribes to the server's clip acks and its retained clip request
(device/contracts/clip.py), QoS 1, acknowledged by hand likewise once the store has recorded
what they say (device/sync/clips.py).

Threads: paho calls back on its network thread; receipts cross to the draining thread through
a queue (`take_receipts`), clip messages through another (`take_clip_messages`), because the
Store is bound to the thread that opened it.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from device.config import SyncSettings
from device.contracts.clip import clip_ack_topic, clip_request_topic
from device.contracts.receipt import receipt_topic
from device.contracts.status import status_topic

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
"""Longest wait for the broker's CONNACK (and then the SUBACK of the receipt subscription)."""
KEEPALIVE_S = 30
"""Seconds between pings on an idle link: a dead link is noticed (and the will published) within
about one and a half of these."""
SESSION_EXPIRY_S = 7 * 86_400
"""How long the broker keeps a disconnected device's session, and so its receipts: a week on the
trail without coverage. Beyond that a receipt may be lost; the message is then sent again after
its receipt timeout and receipted again (the server upserts), so nothing is lost, only resent."""
INFLIGHT = 20
"""Publishes paho keeps unacknowledged at once (the rest of a batch queue in paho)."""
RECEIVE_MAXIMUM = 100
"""Receipts the broker may send before the device acknowledges any (MQTT 5 Receive Maximum).
Receipts are acknowledged only after their confirmations commit, so this is how many one
transaction can apply; without it the broker's own window (20 by default) would make a week's
backlog of receipts arrive 20 per commit. 100 receipts of at most 64 KiB bound paho's memory."""


class SyncError(Exception):
    """The broker could not be reached or refused us; the message names host, port and reason."""


def destination_of(settings: SyncSettings) -> str:
    """The name attempts are recorded under: one broker, one destination."""
    scheme = "mqtts" if settings.tls else "mqtt"
    return f"{scheme}://{settings.host}:{settings.port}"


def worker_client_id(device_id: str) -> str:
    """The run's sync worker: stable, so the broker keeps its session (and its receipts)."""
    return f"explorer-{device_id}"


def hand_client_id(device_id: str) -> str:
    """`explorer sync` by hand: stable too, and another id than the worker's, so a sync by hand
    during a run never takes over (and so disconnects) the worker's session."""
    return f"explorer-{device_id}-by-hand"


@dataclass(frozen=True)
class InboundReceipt:
    """A message on one of the session's subscriptions (a receipt, a clip ack or request), as
    paho delivered it (not yet parsed)."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    session: "MqttSession"
    """The connection it arrived on: the only one its `mid` may be acknowledged on."""


class MqttSession:
    """One connection: connect, publish, receive receipts, acknowledge them, close."""

    def __init__(self, settings: SyncSettings, device_id: str, client_id: str, will: bytes | None = None,
                 on_receipt: Callable[[], None] | None = None):
        self.settings = settings
        self.device_id = device_id
        self.client_id = client_id
        self.will = will
        self.on_receipt = on_receipt
        """Called on paho's thread after a receipt or clip message is queued (the worker wakes on it)."""
        self.receipt_topic = receipt_topic(device_id)
        self.clip_topics = (clip_ack_topic(device_id), clip_request_topic(device_id))
        self.status_topic = status_topic(device_id)
        self.where = f"MQTT broker {settings.host}:{settings.port}"
        self.session_present = False
        self.subscribe_error: str | None = None
        """Why the broker refused the receipt subscription, or None."""
        self.clip_subscribe_error: str | None = None
        """Why the broker refused the clip ack or request subscription, or None (no clip is
        sent then: its acks could never come)."""
        self._client = None
        self._connack = threading.Event()
        self._suback = threading.Event()
        self._subscribe_mid: int | None = None
        self._refusal: str | None = None
        self._lost: str | None = None
        self._refused_mids: dict[int, str] = {}
        """mid -> reason, for PUBACKs that carry a failure (paho still counts them published)."""
        self._inbox: queue.Queue[InboundReceipt] = queue.Queue()
        self._clip_inbox: queue.Queue[InboundReceipt] = queue.Queue()

    # -- connecting -------------------------------------------------------------------------
    def connect(self) -> "MqttSession":
        """Connect, wait for the CONNACK and for the receipt subscription's SUBACK.

        Raises:
            SyncError: unreachable, refused (bad credentials, not authorised), a TLS failure,
                or no answer within CONNECT_TIMEOUT_S; the message says which.
        """
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        settings, where = self.settings, self.where
        # MQTT 5: a 3.1.1 broker acknowledges a publish its ACL refused with a plain PUBACK (the
        # message silently dropped); a 5 broker says "Not authorized" in it. No paho reconnect:
        # a new connection is a new MqttSession, so a packet id never outlives its connection.
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5,
                             reconnect_on_failure=False, manual_ack=True)
        client.max_inflight_messages_set(INFLIGHT)
        if settings.username:
            client.username_pw_set(settings.username, settings.password or None)
        if settings.tls:
            try:
                client.tls_set(ca_certs=settings.ca_file or None, cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise SyncError(f"{where}: cannot set up TLS with CA file {settings.ca_file!r}: {exc}") from None
        if self.will is not None:
            client.will_set(self.status_topic, self.will, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
        try:
            client.connect(settings.host, settings.port, keepalive=KEEPALIVE_S, clean_start=False,
                           properties=properties)
        except ssl.SSLError as exc:
            raise SyncError(f"{where}: TLS handshake failed: {exc}") from None
        except OSError as exc:
            raise SyncError(f"{where}: cannot connect: {exc.strerror or exc}") from None
        sock = client.socket()
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Our side of the Nagle / delayed-ACK stall that bench/sync_cost measures (~40 ms a
            # batch); the broker needs `set_tcp_nodelay true` for its side (deploy/broker/).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client = client
        client.loop_start()
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        if not self._connack.wait(CONNECT_TIMEOUT_S):
            self.close()
            raise SyncError(f"{where}: no answer to CONNECT within {CONNECT_TIMEOUT_S:.0f} s")
        if self._refusal is not None:
            self.close()
            raise SyncError(f"{where}: refused the connection: {self._refusal}")
        # Receipts the broker kept for this session come before the SUBACK (it sends them on
        # connect), so after this wait they are queued here, ahead of the first drain.
        if not self._suback.wait(max(0.0, deadline - time.monotonic())) and self._lost is None:
            self.close()
            raise SyncError(f"{where}: no answer to SUBSCRIBE {self.receipt_topic} within {CONNECT_TIMEOUT_S:.0f} s")
        if self._lost is not None:
            self.close()
            raise SyncError(f"{where}: {self._lost} right after connecting")
        if self.subscribe_error:
            log.error("sync: %s: %s; messages will be sent again every receipt timeout", where, self.subscribe_error)
        return self

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refusal = str(reason_code)
        else:
            self.session_present = bool(getattr(flags, "session_present", False))
            # Again on every connect: the broker may have lost the session (expired, restarted
            # without persistence), and a subscription already there is simply replaced.
            topics = (self.receipt_topic, *self.clip_topics)
            self._subscribe_mid = client.subscribe([(name, 1) for name in topics])[1]
        self._connack.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if mid != self._subscribe_mid:
            return
        codes = list(reason_codes)  # one per topic, in the order subscribed
        if not codes or codes[0].is_failure:
            self.subscribe_error = f"the broker refuses this device's receipts ({codes[0] if codes else 'no answer'})"
        failed = [str(code) for code in codes[1:] if code.is_failure]
        if failed or len(codes) != 1 + len(self.clip_topics):
            self.clip_subscribe_error = f"the broker refuses this device's clip acks ({(failed or ['no answer'])[0]})"
        self._suback.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._lost = f"connection lost ({reason_code})"
        if not self._connack.is_set():  # dropped before any CONNACK: a refusal, not a wait
            self._refusal = self._lost
            self._connack.set()
        self._suback.set()  # nothing more will come on this connection

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused_mids[mid] = str(reason_code)

    def _on_message(self, client, userdata, message) -> None:
        inbox = self._clip_inbox if message.topic in self.clip_topics else self._inbox
        inbox.put(InboundReceipt(message.topic, bytes(message.payload), message.mid, message.qos, self))
        if self.on_receipt is not None:
            self.on_receipt()

    # -- using it ---------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected() and self._lost is None

    @property
    def lost(self) -> str | None:
        """Why the connection went, or None while it holds."""
        return self._lost

    def publish(self, topic: str, payload: bytes, retain: bool = False):
        """Publish QoS 1; return paho's MQTTMessageInfo (wait on it for the PUBACK)."""
        return self._client.publish(topic, payload, qos=1, retain=retain)

    def refusal_of(self, mid: int) -> str | None:
        """The failure the broker's PUBACK for `mid` carried (once), or None."""
        return self._refused_mids.pop(mid, None)

    def take_receipts(self, wait_s: float = 0.0) -> list[InboundReceipt]:
        """Every receipt queued so far, waiting up to `wait_s` for a first one."""
        return _take(self._inbox, wait_s)

    def take_clip_messages(self, wait_s: float = 0.0) -> list[InboundReceipt]:
        """Every clip ack and request queued so far, waiting up to `wait_s` for a first one."""
        return _take(self._clip_inbox, wait_s)

    def requeue(self, items: list[InboundReceipt]) -> None:
        """Put back messages that could not be applied (a failing card), for the next try."""
        for item in items:
            (self._clip_inbox if item.topic in self.clip_topics else self._inbox).put(item)

    def ack(self, item: InboundReceipt) -> bool:
        """Acknowledge a receipt, only on the connection that delivered it and only while it
        holds; False otherwise (the broker will deliver it again on the next connection)."""
        if item.session is not self or not self.connected:
            return False
        if item.qos == 0:  # nothing to acknowledge
            return True
        import paho.mqtt.client as mqtt

        return self._client.ack(item.mid, item.qos) == mqtt.MQTT_ERR_SUCCESS

    def unsubscribe_clips(self, wait_s: float = 2.0) -> bool:
        """Drop the clip ack and request subscriptions from the persistent session, waiting up
        to `wait_s` for the UNSUBACK: `explorer sync` by hand does this as it leaves, so the
        acks of chunks the run's worker sends do not pile up for it for a week (unacknowledged
        on its next connect, they would hold the broker's window shut to its receipts)."""
        if not self.connected:
            return False
        done = threading.Event()
        self._client.on_unsubscribe = lambda *_: done.set()
        self._client.unsubscribe(list(self.clip_topics))
        return done.wait(wait_s)

    def close(self) -> None:
        """A normal DISCONNECT (the broker keeps the session and drops the will), then stop paho."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.disconnect()
        finally:
            client.loop_stop()


def _take(inbox: queue.Queue, wait_s: float) -> list[InboundReceipt]:
    items: list[InboundReceipt] = []
    try:
        items.append(inbox.get(timeout=wait_s) if wait_s > 0 else inbox.get_nowait())
        while True:
            items.append(inbox.get_nowait())
    except queue.Empty:
        return items

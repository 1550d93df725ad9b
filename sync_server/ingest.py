"""MQTT ingest: every device's detections from the broker into the aggregate database.

Trusts nothing on the wire. Each message is checked by the device's own contract
(`device.contracts.detection.parse_payload`), its payload's device id must be the one in its topic
(the broker's ACL ties the topic to the device's credentials), and a detection id already
stored for another device is never overwritten. A refused message is recorded with its reason
and acknowledged (sending it again would not make it valid); a stored one is acknowledged only
after its row is committed, so a crash or a full disk before the commit leaves it with the
broker, which delivers it again to this persistent session.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field

from device.contracts.detection import parse_payload
from sync_server.db import Rejected, ServerStore, ServerStoreError

log = logging.getLogger(__name__)

SUBSCRIPTION = "explorer/+/detection"
_TOPIC = re.compile(r"^explorer/([^/]+)/detection$")
SESSION_EXPIRY_S = 7 * 24 * 3600
"""How long the broker keeps this subscriber's queue while it is down: a week of outage."""


@dataclass(frozen=True)
class BrokerSettings:
    host: str = "localhost"
    port: int = 8883
    username: str = "sync-server"
    password: str = field(default="", repr=False)
    tls: bool = True
    ca_file: str = ""


@dataclass
class IngestStats:
    stored: int = 0
    unchanged: int = 0
    rejected: int = 0
    store_errors: int = 0
    reasons: list[str] = field(default_factory=list)


def ingest_message(store: ServerStore, topic: str, payload: bytes, stats: IngestStats | None = None) -> str:
    """Check and store one message; return 'inserted', 'updated', 'unchanged' or 'rejected'.

    Raises only for a failure of the database itself (ServerStoreError): the caller must then
    leave the message unacknowledged.
    """
    stats = stats if stats is not None else IngestStats()
    try:
        match = _TOPIC.match(topic)
        if match is None:
            raise ValueError(f"topic {topic!r} is not explorer/<device id>/detection")
        checked = parse_payload(payload)
        if checked["device_id"] != match.group(1):
            raise ValueError(f"payload device_id {checked['device_id']!r} does not match the topic's "
                             f"{match.group(1)!r}")
    except ValueError as exc:
        store.store_batch([], [Rejected(topic, str(exc), payload)])
        return _refused(stats, topic, str(exc))
    (outcome,) = store.store_batch([checked], [])
    if outcome == "foreign":  # the store kept the claim in rejected_message, naming both devices
        return _refused(stats, topic, f"detection {checked['detection_id']} belongs to another device")
    if outcome == "unchanged":
        stats.unchanged += 1
    else:
        stats.stored += 1
    return outcome


def _refused(stats: IngestStats, topic: str, reason: str) -> str:
    stats.rejected += 1
    stats.reasons.append(reason)
    del stats.reasons[:-20]
    log.warning("ingest: refused a message on %s: %s", topic, reason)
    return "rejected"


class Ingestor:
    """A persistent MQTT 5 session subscribed to every device's detections, on paho's thread."""

    def __init__(self, store: ServerStore, settings: BrokerSettings, client_id: str = "explorer-ingest"):
        self.store = store
        self.settings = settings
        self.client_id = client_id
        self.stats = IngestStats()
        self.subscribed = threading.Event()
        self._client = None

    def start(self) -> "Ingestor":
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5, manual_ack=True)
        if self.settings.username:
            client.username_pw_set(self.settings.username, self.settings.password or None)
        if self.settings.tls:
            client.tls_set(ca_certs=self.settings.ca_file or None)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        client.connect(self.settings.host, self.settings.port, keepalive=30, clean_start=False,
                       properties=properties)
        client.loop_start()
        self._client = client
        return self

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("ingest: the broker refused the connection: %s", reason_code)
            return
        client.subscribe(SUBSCRIPTION, qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            log.error("ingest: the broker refused the subscription to %s: %s", SUBSCRIPTION, ", ".join(refused))
            return
        log.info("ingest: subscribed to %s", SUBSCRIPTION)
        self.subscribed.set()

    def _on_message(self, client, userdata, message) -> None:
        try:
            ingest_message(self.store, message.topic, bytes(message.payload), self.stats)
        except ServerStoreError as exc:
            # Not acknowledged: the broker keeps it for this session and sends it again after
            # we reconnect. Drop the connection so that happens once the disk is back.
            self.stats.store_errors += 1
            log.error("ingest: could not store a message from %s (%s); it stays with the broker", message.topic, exc)
            client.disconnect()
            return
        client.ack(message.mid, message.qos)

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

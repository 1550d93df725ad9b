"""Deliver the outbox to an MQTT broker: QoS 1, and a message counts as sent only on its PUBACK.

The outbox (device/store/outbox.py) already holds every message, written in the transaction
that closed its detection. The publisher reads the oldest pending ones, publishes each with
QoS 1 on the topic it was queued with, and appends one attempt per message: SUCCESS when the
broker's PUBACK arrived, FAILURE (with the reason) otherwise. A message without a SUCCESS for
this destination stays pending and is sent again on the next drain; the server upserts on the
detection's UUID, so a resend never duplicates a row.

What is never done: counting "written to the socket" as delivered (QoS 0), dropping a message
while disconnected, or letting paho's own in-memory retry queue stand in for the outbox (a
power cut would lose it). Each drain stops at the first sign the connection is gone; what it
did not get acknowledged stays pending.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass

from device.config import SyncSettings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
"""Longest wait for the broker's CONNACK."""
PUBACK_TIMEOUT_S = 10.0
"""Longest wait for one batch's PUBACKs; longer means the link is too poor to count on."""
BATCH = 200
"""Messages published before waiting for their PUBACKs (paho keeps 20 in flight, the rest queue),
and recorded in one transaction. A stock Mosquitto holds each batch's last PUBACK ~40 ms (no
set_tcp_nodelay): 200 makes that 0.2 ms a message; a crash resends at most one batch."""
REFUSED = "the broker refused it: "
"""How a refused message's FAILURE detail starts (followed by the PUBACK's reason)."""


class SyncError(Exception):
    """The broker could not be reached or refused us; the message names host, port and reason."""


@dataclass(frozen=True)
class DrainReport:
    """What one drain did (the acoupi send task's selected/attempted/ok/failed counts)."""

    selected: int = 0
    attempted: int = 0
    ok: int = 0
    failed: int = 0
    pending_after: int = 0
    error: str | None = None
    """Why the drain stopped early (the connection went), or None."""


def destination_of(settings: SyncSettings) -> str:
    """The name attempts are recorded under: one broker, one destination."""
    scheme = "mqtts" if settings.tls else "mqtt"
    return f"{scheme}://{settings.host}:{settings.port}"


class OutboxPublisher:
    """One connection to the broker, and drains of the outbox over it.

    Use as a context manager, or call `connect()` and `close()`. Not thread-safe: one
    thread drains (the sync worker, or `explorer sync`).
    """

    def __init__(self, store, settings: SyncSettings, device_id: str, batch: int = BATCH,
                 puback_timeout_s: float = PUBACK_TIMEOUT_S):
        self.store = store
        self.settings = settings
        self.device_id = device_id
        self.destination = destination_of(settings)
        self.batch = batch
        self.puback_timeout_s = puback_timeout_s
        self._client = None
        self._connack = threading.Event()
        self._refusal: str | None = None
        self._lost: str | None = None
        self._refused_mids: dict[int, str] = {}
        """mid -> reason, for PUBACKs that carry a failure (paho still counts them published)."""

    # -- connection ---------------------------------------------------------------------
    def connect(self) -> "OutboxPublisher":
        """Connect and wait for the CONNACK.

        Raises:
            SyncError: unreachable, refused (bad credentials, not authorised), a TLS failure,
                or no answer within CONNECT_TIMEOUT_S; the message says which.
        """
        import paho.mqtt.client as mqtt

        settings = self.settings
        where = f"MQTT broker {settings.host}:{settings.port}"
        # MQTT 5, because a 3.1.1 broker acknowledges a publish its ACL refused with a plain
        # PUBACK (the message is silently dropped); a 5 broker says "Not authorized" in it.
        # A fresh client id and a clean start per connection: the outbox, not the broker,
        # remembers what is unsent.
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"explorer-{self.device_id}-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        client.max_inflight_messages_set(20)
        if settings.username:
            client.username_pw_set(settings.username, settings.password or None)
        if settings.tls:
            try:
                client.tls_set(ca_certs=settings.ca_file or None, cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise SyncError(f"{where}: cannot set up TLS with CA file {settings.ca_file!r}: {exc}") from None
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._connack.clear()
        self._refusal = self._lost = None
        self._refused_mids.clear()
        try:
            client.connect(settings.host, settings.port, keepalive=30, clean_start=True)
        except ssl.SSLError as exc:
            raise SyncError(f"{where}: TLS handshake failed: {exc}") from None
        except OSError as exc:
            raise SyncError(f"{where}: cannot connect: {exc.strerror or exc}") from None
        sock = client.socket()
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Our side of the Nagle / delayed-ACK stall that bench/sync_cost measures (~40 ms a
            # batch); the broker needs `set_tcp_nodelay true` for its side (deploy/broker/).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.loop_start()
        if not self._connack.wait(CONNECT_TIMEOUT_S):
            self._stop(client)
            raise SyncError(f"{where}: no answer to CONNECT within {CONNECT_TIMEOUT_S:.0f} s")
        if self._refusal is not None:
            self._stop(client)
            raise SyncError(f"{where}: refused the connection: {self._refusal}")
        self._client = client
        return self

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refusal = str(reason_code)
        self._connack.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._lost = f"connection lost ({reason_code})"
        if not self._connack.is_set():  # dropped before any CONNACK: a refusal, not a wait
            self._refusal = self._lost
            self._connack.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused_mids[mid] = str(reason_code)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected() and self._lost is None

    def close(self) -> None:
        if self._client is not None:
            self._stop(self._client)
            self._client = None

    @staticmethod
    def _stop(client) -> None:
        try:
            client.disconnect()
        finally:
            client.loop_stop()

    def __enter__(self) -> "OutboxPublisher":
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- draining -----------------------------------------------------------------------
    def drain(self, limit: int | None = None) -> DrainReport:
        """Publish pending messages, oldest first, until none is left (or `limit` were tried).

        Stops early, with `error` set, when the connection goes; never raises for a failed
        message (its FAILURE attempt says why). Raises SyncError only when not connected.
        """
        if self._client is None:
            raise SyncError(f"{self.destination}: not connected")
        selected = attempted = ok = failed = 0
        error = None
        tried: set[str] = set()
        while limit is None or attempted < limit:
            size = self.batch if limit is None else min(self.batch, limit - attempted)
            # Ask for more than a batch: messages tried in this drain (failed) are skipped.
            batch = [m for m in self.store.pending_messages(size + len(tried), self.destination)
                     if m.message_id not in tried][:size]
            if not batch:
                break
            selected += len(batch)
            sent, error = self._publish_batch(batch)
            # One transaction per batch: a crash before it commits leaves the batch pending, and
            # the resend is harmless (the server upserts on the detection's UUID).
            self.store.record_attempts([(message.message_id, self.destination, outcome is None, outcome)
                                        for message, outcome in zip(batch, sent)])
            tried.update(message.message_id for message in batch)
            attempted += len(batch)
            ok += sum(outcome is None for outcome in sent)
            failed += sum(outcome is not None for outcome in sent)
            if error is not None:
                break
        report = DrainReport(selected, attempted, ok, failed, self.store.pending_count(self.destination), error)
        log.info("sync to %s: %d selected, %d attempted, %d ok, %d failed, %d pending%s", self.destination,
                 report.selected, report.attempted, report.ok, report.failed, report.pending_after,
                 f" ({error})" if error else "")
        return report

    def _publish_batch(self, batch) -> tuple[list[str | None], str | None]:
        """Publish `batch` and wait for the PUBACKs: per message None (acknowledged) or why not,
        and the reason the connection failed, if it did."""
        import paho.mqtt.client as mqtt

        client = self._client
        infos: list = []
        for message in batch:
            if not self.connected:
                infos.append(None)
                continue
            infos.append(client.publish(message.topic, message.payload.encode("utf-8"), qos=1))
        deadline = time.monotonic() + self.puback_timeout_s
        outcomes: list[str | None] = []
        for info in infos:
            if info is None:
                outcomes.append(self._lost or "not connected")
                continue
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
                outcomes.append(f"publish refused by the client: {mqtt.error_string(info.rc)}")
                continue
            try:
                # In slices, so a lost connection ends the wait at once instead of at the deadline.
                while not info.is_published() and self._lost is None and time.monotonic() < deadline:
                    info.wait_for_publish(0.05)
            except (RuntimeError, ValueError) as exc:
                outcomes.append(str(exc))
                continue
            if not info.is_published():
                outcomes.append(f"no PUBACK within {self.puback_timeout_s:.0f} s" + (f"; {self._lost}" if self._lost else ""))
            elif info.mid in self._refused_mids:
                outcomes.append(REFUSED + self._refused_mids.pop(info.mid))
            else:
                outcomes.append(None)
        link_error = self._lost if self._lost else None
        if link_error is None and any(o is not None and o.startswith("no PUBACK") for o in outcomes):
            link_error = f"the broker stopped acknowledging within {self.puback_timeout_s:.0f} s"
        if link_error is None and outcomes and all(o is not None and o.startswith(REFUSED) for o in outcomes):
            # Not one message taken: a configuration problem (credentials, ACL), not a bad
            # message. Stop, so a retry loop appends one attempt per back-off, not per message.
            link_error = f"the broker refuses our messages ({outcomes[0][len(REFUSED):]})"
        return outcomes, link_error


def drain_once(store, settings: SyncSettings, device_id: str, limit: int | None = None) -> DrainReport:
    """Connect, drain, disconnect (`explorer sync`)."""
    with OutboxPublisher(store, settings, device_id) as publisher:
        return publisher.drain(limit)

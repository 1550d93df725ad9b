"""MQTT ingest: every device's messages from the broker into the aggregate database, and a
receipt back to each device for what was committed.

    paho's thread       on_message: the message goes on a queue, unacknowledged
    committer thread    takes a batch (up to BATCH, waiting at most BATCH_WAIT_S for it to fill),
                        checks each message (sync_server/routing.py), commits the whole batch in
                        one transaction (sync_server/db), then acknowledges every message of it
                        and publishes one receipt per device (device/contracts/receipt.py)

Delivery means the destination has it: a message is acknowledged only after its row is
committed, and the device counts it delivered only when the receipt names it. So:

- a database error (a full disk, a stopped PostgreSQL, a lock held too long) leaves the batch
  unacknowledged and in memory; the committer retries it with back-off, and the broker, which
  holds at most RECEIVE_MAXIMUM unacknowledged messages for us, stops sending more meanwhile.
  The session is never dropped for it.
- a lost broker link is re-established by paho with back-off (RECONNECT_MIN_S..RECONNECT_MAX_S);
  the persistent session (clean_start false, SESSION_EXPIRY_S) means the broker redelivers what
  we had not acknowledged. Acknowledgements are tied to the connection that received the
  message (MQTT packet ids are per connection): a batch received before a reconnect is still
  committed and receipted, but acknowledged only through the redelivery, which the upsert
  turns into a counted resend.
- a refused login (bad credentials, not authorised) or a TLS failure cannot get better by
  retrying: the ingest stops and `wait()` returns the reason (`explorer-server ingest` exits 1
  naming it).
- the ingest dying between its commit and its receipt (or the broker losing the receipt) costs
  nothing: the device sends what no receipt named again after its timeout, and the resend is
  receipted.

Several workers may share the load (`share_group`): each subscribes with `$share/<group>/...`
under its own client id and persistent session. Mosquitto hands a shared message to a member
even while that member is offline, and drops it if that member's session expires; the device's
resend after its receipt timeout is what makes that safe. Give every worker a long session
expiry (the default week) and a stable client id, so a restarted worker finds its queue.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from device.contracts.topics import UPSTREAM, subscription
from device.domain import utc_now
from sync_server.clips import ClipAssembler
from sync_server.db import Rejected, ServerStore, ServerStoreError
from sync_server import replies
from sync_server.metrics import IngestMetrics
from sync_server.routing import Incoming, newest_statuses, receipts_for, route_batch

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 24 * 3600
"""How long the broker keeps this worker's queue while it is down: a week of outage."""
RECEIVE_MAXIMUM = 2000
"""Unacknowledged messages the broker may have out to us at once (MQTT 5 Receive Maximum;
Mosquitto 2.0 honours it whatever its max_inflight_messages): two batches' worth, so the next
batch arrives while one commits, and what a worker holds in memory (~2 MB) while its database
is down."""
BATCH = 1000
"""Messages committed in one transaction: one fsync (or one PostgreSQL commit) for many.
(`python -m bench.ingest_cost`: 1,000 sustained ~10 % more than 500 on SQLite.)"""
BATCH_WAIT_S = 0.02
"""Once a message is in, how long to wait for the batch to fill: the latency a trickle pays
(a live device sends a detection a minute) for the throughput a backlog drain gets."""
BATCH_GAP_S = 0.002
"""A pause this long in the flow ends the batch early. It is also how often the committer looks
at the queue while a batch fills: it sleeps, then takes all that came, rather than being woken
for each message. (Woken per message, handing a message over and waiting for the next took ~9 %
of the worker's busy time; polling, ~3 %: py-spy under `python -m bench.ingest_cost`.)"""
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
"""A failing database is tried again at most every 30 s."""
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 60
FATAL_CONNACK = {"Bad user name or password", "Not authorized", "Banned", "Bad authentication method"}
"""CONNACK refusals that retrying cannot cure: the ingest stops and says so."""


class IngestError(Exception):
    """The ingest cannot work (refused login, TLS failure, unreachable at start); the message
    names the broker and the cause."""


@dataclass(frozen=True)
class BrokerSettings:
    host: str = "localhost"
    port: int = 8883
    username: str = "sync-server"
    password: str = field(default="", repr=False)
    tls: bool = True
    ca_file: str = ""
    client_id: str = "explorer-ingest"
    """The persistent session's id: keep it stable, the broker queues for it while we are down."""
    share_group: str | None = None
    """With several workers: the shared subscription group they split the messages over."""


@dataclass
class IngestStats:
    """What the ingest has done since it started (read by `status`, the CLI and /metrics)."""

    received: int = 0
    stored: int = 0
    """Detections, verdicts and tours inserted or updated."""
    unchanged: int = 0
    """Resends: already stored, counted in `deliveries`."""
    rejected: Counter = field(default_factory=Counter)
    """Refused messages by reason kind (the first words of the reason)."""
    statuses: int = 0
    receipts_sent: int = 0
    clips_complete: int = 0
    batches: int = 0
    store_errors: int = 0
    reconnects: int = 0
    latencies_s: list[float] = field(default_factory=list)
    """Seconds from receipt off the wire to commit, per message of the last batches (bounded)."""

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass(slots=True)
class _Pending:
    message: Incoming
    generation: int
    mid: int
    qos: int
    arrived: float


class Ingestor:
    """One ingest worker: a persistent MQTT 5 session, a committer thread, receipts."""

    def __init__(self, store: ServerStore, settings: BrokerSettings, batch: int = BATCH,
                 retry_first_s: float = RETRY_FIRST_S, retry_max_s: float = RETRY_MAX_S,
                 metrics: IngestMetrics | None = None, clips_dir: Path | str | None = None,
                 clip_requests_below: float | None = None):
        """
        Args:
            clips_dir: where whole clips are kept (shared by every worker); None refuses clips.
            clip_requests_below: ask each device for the clips of its detections under this
                confidence (a retained clip request, kept up to date); None asks for none.
        """
        self.store = store
        self.clips = ClipAssembler(clips_dir) if clips_dir is not None else None
        self.clip_requests_below = clip_requests_below
        self.settings = settings
        self.metrics = metrics or IngestMetrics()
        self.batch = batch
        self.retry_first_s = retry_first_s
        self.retry_max_s = retry_max_s
        self.stats = IngestStats()
        self.subscribed = threading.Event()
        """Set while the broker holds every subscription of the current connection (cleared
        when the link drops; tests wait on it)."""
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._connected = threading.Event()
        self._fatal: str | None = None
        self._last_store_error: str | None = None
        self._generation = 0
        self._lock = threading.Lock()
        self._client = None
        self._committer = threading.Thread(target=self._commit_loop, name="explorer-ingest-commit", daemon=True)

    # -- control -----------------------------------------------------------------------
    def start(self) -> "Ingestor":
        """Connect (waiting for the first CONNACK) and start committing.

        Raises:
            IngestError: TLS failed, the broker refused our login, or it cannot be reached.
        """
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        s = self.settings
        where = f"MQTT broker {s.host}:{s.port}"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=s.client_id, protocol=mqtt.MQTTv5,
                             manual_ack=True)
        if s.username:
            client.username_pw_set(s.username, s.password or None)
        if s.tls:
            try:
                client.tls_set(ca_certs=s.ca_file or None, cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise IngestError(f"{where}: cannot set up TLS with CA file {s.ca_file!r}: {exc}") from None
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
        try:
            client.connect(s.host, s.port, keepalive=30, clean_start=False, properties=properties)
        except ssl.SSLError as exc:
            raise IngestError(f"{where}: TLS handshake failed: {exc}") from None
        except OSError as exc:
            raise IngestError(f"{where}: cannot connect: {exc.strerror or exc}") from None
        self._client = client
        client.loop_start()
        if not self._connected.wait(30):
            self._shutdown_client()
            raise IngestError(f"{where}: no answer to CONNECT within 30 s")
        if self._fatal:
            self._shutdown_client()
            raise IngestError(self._fatal)
        self._committer.start()
        return self

    def health(self) -> tuple[bool, dict]:
        """(healthy, details) for /health: connected to the broker, the database committing,
        the committer alive."""
        client = self._client
        broker = client is not None and client.is_connected() and self.subscribed.is_set()
        details = {"broker": "connected" if broker else "disconnected",
                   "database": "failing: " + self._last_store_error if self._last_store_error else "ok",
                   "queued": self._queue.qsize(), "fatal": self._fatal}
        return broker and not self._last_store_error and not self._fatal, details

    def wait(self, timeout: float | None = None) -> str | None:
        """Block until the ingest stops; the fatal reason it stopped for, or None."""
        self._done.wait(timeout)
        return self._fatal

    def stop(self) -> None:
        """Finish the batch in hand (commit, acknowledge, receipt), then disconnect. Messages
        still queued stay unacknowledged: the broker delivers them again next time."""
        self._stop.set()
        if self._committer.is_alive():
            self._committer.join(60)
        self._shutdown_client()
        self._done.set()

    def _shutdown_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def _die(self, reason: str) -> None:
        """A fault retrying cannot cure: log it, stop everything, let `wait()` return it."""
        if self._fatal is None:
            self._fatal = reason
            log.error("ingest: %s; stopping", reason)
        self._stop.set()
        self._done.set()
        self._connected.set()

    # -- paho's thread -------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        s = self.settings
        if reason_code.is_failure:
            reason = f"MQTT broker {s.host}:{s.port} refused the ingest's login as {s.username!r}: {reason_code}"
            if str(reason_code) in FATAL_CONNACK:
                self._die(reason)
            else:
                log.error("ingest: %s; retrying", reason)
            return
        with self._lock:
            self._generation += 1
            if self._connected.is_set():
                self.stats.reconnects += 1
        log.info("ingest: connected to %s:%d (session %s, %s)", s.host, s.port, s.client_id,
                 "resumed" if flags.session_present else "new")
        client.subscribe([(subscription(kind, s.share_group), 1) for kind in UPSTREAM])
        self._connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            self._die(f"MQTT broker {self.settings.host}:{self.settings.port} refused the ingest's "
                      f"subscriptions: {', '.join(refused)}")
            return
        log.info("ingest: subscribed to %s", ", ".join(subscription(kind, self.settings.share_group) for kind in UPSTREAM))
        self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:  # from here no acknowledgement of this connection's messages is sent
            self._generation += 1
        self.subscribed.clear()
        if not self._stop.is_set():
            log.warning("ingest: lost the broker (%s); reconnecting with back-off", reason_code)

    def _on_message(self, client, userdata, message) -> None:
        # No lock: this runs on paho's thread, the only one that changes the generation outside
        # _acknowledge's lock, and reading an int is atomic.
        self._queue.put(_Pending(Incoming(message.topic, bytes(message.payload)), self._generation, message.mid,
                                 message.qos, time.monotonic()))

    # -- the committer -----------------------------------------------------------------
    def _next_batch(self) -> list[_Pending]:
        """Up to `batch` messages: as many as arrive within BATCH_WAIT_S of the first, ending
        early when the flow pauses for BATCH_GAP_S (the broker has sent all it may until we
        acknowledge: waiting longer would only add latency)."""
        pending = self._queue
        try:
            batch = [pending.get(timeout=0.2)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + BATCH_WAIT_S
        while True:
            try:
                while len(batch) < self.batch:
                    batch.append(pending.get_nowait())
                return batch
            except queue.Empty:  # all that came is taken: let more come, unless it is time
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                return batch
            time.sleep(min(BATCH_GAP_S, left))
            if pending.empty():
                return batch

    def _commit_loop(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self._next_batch()
                if batch:
                    self._commit(batch)
        except Exception as exc:  # a bug, not a fault: say so and stop rather than ack blindly
            log.exception("ingest: the committer failed")
            self._die(f"the committer failed: {exc}")

    def _commit(self, batch: list[_Pending]) -> None:
        routed = route_batch(p.message for p in batch)
        if routed.clips and self.clips is None:
            routed.rejected.extend(Rejected(f"explorer/{c.device_id}/clip", "clip: this server keeps no clips "
                                            "(start its ingest with --clips-dir)", b"") for c in routed.clips)
            routed.clips = []
        delay = self.retry_first_s
        while True:
            try:
                # Chunks reach the disk (fsynced) before the batch commits; taking one twice is
                # harmless (it is appended only at the held offset), so a retry redoes both.
                clip_results = [self.clips.accept(chunk) for chunk in routed.clips]
                records = [record for _, record in clip_results if record is not None]
                result = self.store.store_ingest(routed.detections, routed.feedback, newest_statuses(routed.statuses),
                                                 routed.rejected, records, routed.tours)
                break
            except (ServerStoreError, OSError) as exc:
                self.stats.store_errors += 1
                self.metrics.store_errors.inc()
                self._last_store_error = str(exc)
                log.error("ingest: %s; %d message(s) stay unacknowledged, retrying in %.1f s", exc, len(batch), delay)
                if self._stop.wait(delay):
                    return  # stopping: the broker keeps them for the next start
                delay = min(delay * 2, self.retry_max_s)
        self._last_store_error = None
        self._account(batch, routed, result)
        self._acknowledge(batch)
        client = self._client
        if client is None:
            return
        sent = replies.publish_receipts(client, receipts_for(routed, result.detections, result.feedback, utc_now(),
                                                             result.tours))
        self.stats.receipts_sent += sent
        self.metrics.receipts.inc(sent)
        self.stats.clips_complete += replies.publish_clip_acks(client, [ack for ack, _ in clip_results])
        if self.clip_requests_below is not None:
            replies.publish_clip_requests(client, self.store, self.clip_requests_below, routed, result, records)

    def _account(self, batch, routed, result) -> None:
        stats, metrics = self.stats, self.metrics
        now = time.monotonic()
        stats.batches += 1
        metrics.batches.inc()
        stats.received += len(batch)
        kinds = Counter()
        for pending in batch:
            kinds[pending.message.topic.rpartition("/")[2]] += 1
            waited = now - pending.arrived
            metrics.latency.observe(waited)
            stats.latencies_s.append(waited)
        del stats.latencies_s[:-10_000]
        for kind, count in kinds.items():
            metrics.messages.labels(kind if kind in UPSTREAM else "other").inc(count)
        for kind, outcomes in (("detection", result.detections), ("feedback", result.feedback), ("tour", result.tours)):
            stored = sum(o in ("inserted", "updated") for o in outcomes)
            resent = sum(o == "unchanged" for o in outcomes)
            stats.stored += stored
            stats.unchanged += resent
            metrics.stored.labels(kind).inc(stored)
            metrics.resends.labels(kind).inc(resent)
            for outcome in outcomes:
                if outcome == "foreign":
                    stats.rejected[f"foreign {kind} id"] += 1
                    metrics.refusal(f"foreign {kind} id")
        stats.statuses += len(routed.statuses)
        for item in routed.rejected:
            stats.rejected[item.reason.split(":")[0][:60]] += 1
            metrics.refusal(item.reason)
            log.warning("ingest: refused a message on %s: %s", item.topic[:120], item.reason)

    def _acknowledge(self, batch: list[_Pending]) -> None:
        client = self._client
        if client is None:
            return
        # Under the lock on_disconnect takes: every acknowledgement goes out on the connection
        # that received the message, or not at all (a packet id names nothing on a later one).
        with self._lock:
            current = self._generation
            for pending in batch:
                if pending.generation == current:
                    client.ack(pending.mid, pending.qos)

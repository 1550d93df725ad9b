"""An MQTT 5 broker in this process, for `explorer-server run` on a machine without Mosquitto.

`OwnBroker(host, port).start()` listens (127.0.0.1 by default: this machine only) and serves,
on its own asyncio loop in a daemon thread, exactly what our clients use: the devices' sync
(device/sync/session.py) and the server's ingest (sync_server/ingest.py), both paho-mqtt 2
speaking MQTT 5. So one command on a laptop gives a working server.

What it serves: CONNECT with persistent sessions (clean start, session expiry, session present),
Receive Maximum flow control towards each client (the ingest's manual acknowledgements rely on
it), QoS 0 and 1, retained messages, wildcards, shared subscriptions (`$share/<group>/...`),
last wills, keepalive enforcement (1.5 x the client's keepalive), a take-over by a second
connection with the same client id. Its rules are sync_server/broker/sessions.py's docstring.

What it leaves out or keeps small, on purpose:
- no TLS, no passwords, no ACL: any local client may read and write any topic. In the field,
  put Mosquitto as shipped in deploy/broker/ (TLS, a user per device, an ACL) in front of devices;
- QoS 2: CONNACK says Maximum QoS 1; subscriptions are granted QoS 1 at most; a QoS 2 PUBLISH
  closes the connection with 0x9B (QoS Not Supported), as the spec requires after that CONNACK;
- MQTT 3.1 / 3.1.1: refused with their CONNACK return code 1 (unacceptable protocol version);
  any other level with MQTT 5's 0x84;
- will delay: a will is published as soon as the connection ends (Will Delay Interval ignored);
- QoS 0 for an offline session is dropped, not queued (Mosquitto's default), and QoS 0 towards
  a slow reader is not bounded beyond the socket's buffers (our clients send QoS 1 only);
- topic aliases, subscription identifiers, enhanced authentication (AUTH): refused with their
  reason codes (Topic Alias Maximum 0 and Subscription Identifiers Available 0 in the CONNACK);
- persistence across a restart only in part: with `folder`, retained messages and sessions (subscriptions,
  queued and in-flight messages) are saved there at a clean stop and read back (then removed)
  at the next start (sync_server/broker/persist.py); a crash loses what memory held. Nothing
  is lost for good either way: a device sends again whatever no receipt named.

A take-over (a CONNECT with a client id already connected) closes the old connection with
DISCONNECT 0x8E and, as Mosquitto does, publishes the old connection's will unless the new one
resumes the session (clean start false on a session that had not expired).

Sizes: a packet over MAX_PACKET_BYTES closes its connection with 0x95 (the header is read
first, the body never); a message payload over MESSAGE_SIZE_LIMIT is refused with a PUBACK
0x97 (Quota Exceeded), the connection kept, as the deployed Mosquitto's `message_size_limit`
refuses it (Mosquitto says 0x95, which the spec does not allow in a PUBACK and paho rejects).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from sync_server.broker.connection import DEFAULT_RECEIVE_MAXIMUM, NO_PACKET_LIMIT, Connection
from sync_server.broker.packets import ConnAck, Connect, encode
from sync_server.broker.sessions import MAX_QOS, MAX_QUEUED_BYTES, MAX_QUEUED_MESSAGES, BrokerStats, Message, Sessions
from sync_server.broker.wire import SERVER_SHUTTING_DOWN, KEEP_ALIVE_TIMEOUT, SESSION_TAKEN_OVER

log = logging.getLogger(__name__)

MAX_PACKET_BYTES = 256 * 1024
"""The largest packet taken, and the Maximum Packet Size the CONNACK states: a clip chunk (64 KiB
of FLAC and a 2 KiB header, device/contracts/clip.py) with room to spare; a detection is under
2 KiB, a receipt of 500 ids ~20 KB."""
MESSAGE_SIZE_LIMIT = 131_072
"""The largest payload taken: the deployed Mosquitto's `message_size_limit`, so what the laptop
broker takes, the field's takes too."""
CONNECT_TIMEOUT_S = 10.0
"""A connection that sends no CONNECT within this long is closed (a port scan, a stuck client)."""
KEEPALIVE_GRACE = 1.5
"""A client silent for this many keepalive periods is gone (spec 3.1.2.10): its will goes out."""
SWEEP_S = 0.5
"""How often keepalives, CONNECT timeouts and session expiries are checked."""
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


class BrokerCore:
    """The broker on its asyncio loop: connections, sessions, what happens at connect and end."""

    def __init__(self, max_packet_bytes: int = MAX_PACKET_BYTES, message_size_limit: int = MESSAGE_SIZE_LIMIT,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S, max_queued: int = MAX_QUEUED_MESSAGES,
                 max_queued_bytes: int = MAX_QUEUED_BYTES):
        self.max_packet_bytes, self.message_size_limit = max_packet_bytes, message_size_limit
        self.connect_timeout_s = connect_timeout_s
        self.stats = BrokerStats()
        self.sessions = Sessions(self.stats, max_queued, max_queued_bytes)
        self.connections: set[Connection] = set()
        self.stopping = False
        self._tasks: set[asyncio.Task] = set()

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(self, reader, writer)
        if self.stopping:
            connection.close()
            return
        self.connections.add(connection)
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            await connection.serve()
        finally:
            self._tasks.discard(task)

    def connect(self, connection: Connection, connect: Connect) -> None:
        """Accept a checked MQTT 5 CONNECT: take over a connection with its id, open or resume
        its session, send the CONNACK, then what the session holds for it."""
        client_id = connect.client_id or f"auto-{uuid.uuid4().hex}"
        properties = connect.properties
        connection.client_id, connection.keepalive = client_id, connect.keepalive
        connection.receive_maximum = properties.get("ReceiveMaximum", DEFAULT_RECEIVE_MAXIMUM)
        connection.max_packet_size = properties.get("MaximumPacketSize", NO_PACKET_LIMIT)
        connection.connect_expiry = expiry = properties.get("SessionExpiryInterval", 0)
        if connect.will is not None:
            will = connect.will
            kept = {k: v for k, v in will.properties.items() if k != "WillDelayInterval"}
            lifetime = kept.get("MessageExpiryInterval")
            connection.will = Message(will.topic, will.payload, will.qos, will.retain, kept,
                                      time.monotonic() + lifetime if lifetime else None, client_id)
        old = self.sessions.by_id.get(client_id)
        if old is not None and old.connection is not None:
            self._take_over(old.connection, resumed=not connect.clean_start and old.expiry_s > 0)
        session, present = self.sessions.open(client_id, connect.clean_start, expiry)
        session.attach(connection)
        connection.session, connection.connected = session, True
        self.stats.connects += 1
        self.stats.connections += 1
        acknowledgement = {"MaximumQoS": MAX_QOS, "MaximumPacketSize": self.max_packet_bytes,
                           "SubscriptionIdentifierAvailable": 0}
        if not connect.client_id:
            acknowledgement["AssignedClientIdentifier"] = client_id
        connection.write(encode(ConnAck(present, 0, acknowledgement)))
        log.debug("broker: %s connected (session %s, keepalive %d s, receive maximum %d)", connection.name,
                  "resumed" if present else "new", connect.keepalive, connection.receive_maximum)
        session.flush()

    def _take_over(self, old: Connection, resumed: bool) -> None:
        log.info("broker: %s connected again: the old connection is closed (session %s)", old.name,
                 "continues" if resumed else "starts anew")
        will, old.will = old.will, None
        if old.session is not None and old.session.connection is old:
            old.session.detach()
        old.session = None  # its end must not touch the session the new connection takes
        old.close(SESSION_TAKEN_OVER, "another connection took over this client id")
        if will is not None and not resumed:
            self.sessions.publish(will)

    def ended(self, connection: Connection) -> None:
        """A connection is over: its session goes offline (or ends, expiry 0), its will goes out
        unless it said a normal DISCONNECT."""
        self.connections.discard(connection)
        connection.close()
        if connection.connected:
            connection.connected = False
            self.stats.connections -= 1
        session = connection.session
        if session is not None and session.connection is connection:
            session.detach()
            if session.expiry_s == 0:
                self.sessions.remove(session)
        will, connection.will = connection.will, None
        if will is not None and not connection.graceful and not self.stopping:
            log.debug("broker: %s ended without DISCONNECT: its will goes to %s", connection.name, will.topic)
            self.sessions.publish(will)

    async def sweep(self) -> None:
        """Forever: close late connections, end expired sessions."""
        while True:
            await asyncio.sleep(SWEEP_S)
            now = time.monotonic()
            for connection in list(self.connections):
                if not connection.connected:
                    if not connection.closed and now - connection.opened > self.connect_timeout_s:
                        self.stats.refused += 1
                        log.info("broker: %s sent no CONNECT within %.0f s; closed", connection.name,
                                 self.connect_timeout_s)
                        connection.close()
                elif connection.keepalive and now - connection.last_heard > KEEPALIVE_GRACE * connection.keepalive:
                    self.stats.refused += 1
                    log.info("broker: %s silent for %.1f x its keepalive of %d s; closed", connection.name,
                             KEEPALIVE_GRACE, connection.keepalive)
                    connection.close(KEEP_ALIVE_TIMEOUT, f"nothing heard for {KEEPALIVE_GRACE} x the keepalive")
            self.sessions.expire(now)

    async def shut_down(self) -> None:
        """Close every connection (DISCONNECT 0x8B, no wills: the broker, not the client, goes)."""
        self.stopping = True
        for connection in list(self.connections):
            connection.will = None
            connection.close(SERVER_SHUTTING_DOWN, "the broker is stopping")
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=STOP_TIMEOUT_S / 2)


@dataclass(frozen=True)
class SessionView:
    """One session as `OwnBroker.snapshot()` shows it."""

    connected: bool
    subscriptions: tuple[str, ...]
    queued: int
    inflight: int
    dropped: int
    expiry_s: int


@dataclass(frozen=True)
class BrokerSnapshot:
    stats: BrokerStats
    sessions: dict[str, SessionView]
    retained: tuple[str, ...]


class OwnBroker:
    """The broker on a daemon thread; `start()` returns once it listens, `stop()` ends it.

    Args:
        host: the address to listen on (127.0.0.1: this machine only; see the module docstring
            before listening wider: no TLS, no authentication).
        port: the TCP port (0: a free one, in `port` after `start()`).
        folder: where sessions and retained messages are kept across a clean restart; None: in
            memory only.
    """

    kind = "in-process"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, folder: Path | str | None = None, *,
                 max_packet_bytes: int = MAX_PACKET_BYTES, message_size_limit: int = MESSAGE_SIZE_LIMIT,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S, max_queued: int = MAX_QUEUED_MESSAGES,
                 max_queued_bytes: int = MAX_QUEUED_BYTES):
        self.host, self.port = host, port
        self.folder = Path(folder) if folder is not None else None
        self._core_args = dict(max_packet_bytes=max_packet_bytes, message_size_limit=message_size_limit,
                               connect_timeout_s=connect_timeout_s, max_queued=max_queued,
                               max_queued_bytes=max_queued_bytes)
        self.core: BrokerCore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task | None = None

    def start(self) -> "OwnBroker":
        """Listen and serve.

        Raises:
            OSError: the address cannot be listened on (the port is taken, the host is not
                this machine's); the message names host, port and cause.
        """
        if self._thread is not None:
            raise RuntimeError("this broker was started already")
        self.core = BrokerCore(**self._core_args)
        if self.folder is not None:
            from sync_server.broker.persist import load

            load(self.folder, self.core.sessions)
        loop = self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:  # noqa: BLE001 (handed to the starting thread)
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=serve, name="explorer-own-broker", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT_S):
            raise OSError(f"the in-process MQTT broker did not listen on {self.host}:{self.port} "
                          f"within {START_TIMEOUT_S:.0f} s")
        if failure:
            exc = failure[0]
            if isinstance(exc, OSError):
                raise OSError(exc.errno, f"the in-process MQTT broker cannot listen on {self.host}:{self.port}: "
                                         f"{exc.strerror or exc}") from None
            raise exc
        log.info("broker: in-process MQTT 5 broker listening on %s:%d", self.host, self.port)
        return self

    async def _open(self) -> None:
        core = self.core
        self._server = await asyncio.start_server(core.accept, self.host, self.port, limit=core.max_packet_bytes)
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.get_running_loop().create_task(core.sweep())

    def stop(self) -> None:
        """Close every connection and stop listening; save the state when a folder was given."""
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(STOP_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 (stopping anyway)
            log.warning("broker: did not stop cleanly: %s", exc)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
        log.info("broker: stopped (%d message(s) taken, %d delivered, %d dropped from full queues)",
                 self.core.stats.received, self.core.stats.delivered, self.core.stats.dropped)

    async def _close(self) -> None:
        self._server.close()
        await self.core.shut_down()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self._server.wait_closed()
        if self.folder is not None:
            from sync_server.broker.persist import save

            save(self.folder, self.core.sessions)

    def __enter__(self) -> "OwnBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def snapshot(self, timeout_s: float = 5.0) -> BrokerSnapshot:
        """The broker's counters, sessions and retained topics now (read on its own thread)."""
        async def read() -> BrokerSnapshot:
            core = self.core
            views = {cid: SessionView(s.connection is not None, tuple(s.subscriptions), len(s.pending),
                                      len(s.inflight), s.dropped, s.expiry_s) for cid, s in core.sessions.by_id.items()}
            return BrokerSnapshot(replace(core.stats), views, tuple(core.sessions.retained))

        return asyncio.run_coroutine_threadsafe(read(), self._loop).result(timeout_s)

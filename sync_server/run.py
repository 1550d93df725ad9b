"""`explorer-server run`: the ingest and the API in one process, with a broker of its own if need be.

One command on a laptop gives a working server: with no `--mqtt-host` it starts a broker for
itself, listening for the devices, and stops it when it stops:

- Mosquitto as a child process when it is installed (apt `mosquitto`), on a free local port,
  its configuration generated in `broker/` beside a SQLite database (a temporary folder with
  PostgreSQL), with persistence there, so a device's unreceipted messages and the ingest's
  session survive a restart of the server;
- else our own MQTT 5 broker in this process (sync_server/broker/: asyncio on a daemon thread,
  loopback by default, no TLS or passwords), its sessions and retained messages saved in the
  same `broker/` folder at a clean stop and read back at the next start.

The API (uvicorn) runs in the main thread; the Ingestor runs its MQTT client and committer
threads as `explorer-server ingest` starts them. SIGINT/SIGTERM stop uvicorn (its own
handlers), then the ingest finishes its batch in hand, then the broker, then the database.
A fatal ingest error (refused login, lost TLS) stops the API too, and `run` exits 1 naming it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sync_server.ingest import BrokerSettings, Ingestor

log = logging.getLogger("explorer.run")

BROKER_START_TIMEOUT_S = 10.0
"""Mosquitto listens within milliseconds; ten seconds without it means it will not."""
OWN_BROKER_KINDS = ("auto", "mosquitto", "in-process")
MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto")
"""apt installs it in /usr/sbin, which is not on every user's PATH."""


class OwnBrokerError(RuntimeError):
    """The broker `run` starts for itself could not be started or cannot serve; says why."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (the OS's pick)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def find_mosquitto() -> str | None:
    for candidate in MOSQUITTO_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def _wait_listening(host: str, port: int, alive, timeout_s: float = BROKER_START_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            return False
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class MosquittoChild:
    """Mosquitto as a child process, configured by a file written into `folder`."""

    kind = "mosquitto"

    def __init__(self, executable: str, folder: Path, host: str, port: int):
        self.executable, self.folder, self.host, self.port = executable, Path(folder), host, port
        self.log = self.folder / "mosquitto.log"
        self._process: subprocess.Popen | None = None

    def config(self) -> Path:
        """The configuration: anonymous clients on one plain listener (a local broker; put a
        real one, with TLS and passwords, in front of devices in the field: deploy/broker/),
        persistence in the folder, queues as deep as the deployed broker's."""
        lines = [
            "# Written by explorer-server run; rewritten at every start.",
            f"listener {self.port} {self.host}", "allow_anonymous true", "set_tcp_nodelay true",
            "persistence true", f"persistence_location {self.folder}/", "autosave_interval 60",
            "max_queued_messages 1000000", "max_inflight_messages 1000", "message_size_limit 131072",
            f"log_dest file {self.log}", "log_type error", "log_type warning", "log_type notice",
        ]
        if os.getuid() == 0:  # as root Mosquitto would switch to its own user, who cannot write here
            lines.insert(1, f"user {pwd.getpwuid(os.getuid()).pw_name}")
        conf = self.folder / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> "MosquittoChild":
        self.folder.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen([self.executable, "-c", str(self.config())], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not _wait_listening(self.host, self.port, lambda: self._process.poll() is None):
            self.stop()
            said = self._process.stderr.read().decode(errors="replace").strip() if self._process.stderr else ""
            if self.log.is_file():
                said = (said + " " + " ".join(self.log.read_text(errors="replace").splitlines()[-3:])).strip()
            raise OwnBrokerError(f"mosquitto on {self.host}:{self.port} did not start: {said or 'no message'}")
        return self

    def stop(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()  # Mosquitto saves its persistence file on SIGTERM
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_own_broker(folder: Path, host: str = "127.0.0.1", port: int = 0, kind: str = "auto"):
    """Start the broker `run` uses when none is named (Mosquitto if installed, else our own in-process one).

    Args:
        folder: where Mosquitto's configuration, log and persistence go (or the in-process broker's saved state).
        host: the address it listens on (127.0.0.1: this machine only; 0.0.0.0: devices on the LAN).
        port: its port (0: a free one).
        kind: 'auto', or 'mosquitto' / 'in-process' to insist on one.

    Raises:
        OwnBrokerError: the broker asked for is not installed, or did not start (its port taken).
    """
    if kind not in OWN_BROKER_KINDS:
        raise OwnBrokerError(f"broker kind {kind!r}: expected one of {', '.join(OWN_BROKER_KINDS)}")
    port = port or free_port(host)
    mosquitto = find_mosquitto() if kind in ("auto", "mosquitto") else None
    if kind == "mosquitto" and mosquitto is None:
        raise OwnBrokerError("mosquitto is not installed (apt install mosquitto)")
    if mosquitto is not None:
        return MosquittoChild(mosquitto, folder, host, port).start()
    from sync_server.broker import OwnBroker  # MQTT 5 in this process: sync_server/broker/server.py

    try:
        return OwnBroker(host, port, folder=folder).start()
    except OSError as exc:
        raise OwnBrokerError(str(exc)) from None


@dataclass
class RunSettings:
    """What `explorer-server run` was given."""

    http_host: str = "127.0.0.1"
    http_port: int = 8080
    """0: any free port (logged)."""
    broker: BrokerSettings | None = None
    """The broker to ingest from; None: start one (`start_own_broker`)."""
    own_broker_host: str = "127.0.0.1"
    own_broker_port: int = 0
    own_broker_kind: str = "auto"
    clips_dir: Path | None = None
    request_clips_below: float | None = None
    api: object = None
    """sync_server.api.app.ApiSettings (None: its defaults)."""
    log_level: str = "info"
    listening: list = field(default_factory=list)
    """Filled with (what, url) as each part starts listening (tests and the log read it)."""


def run_server(store, settings: RunSettings) -> str | None:
    """Run the broker (if ours), the ingest and the API until a signal or a fatal ingest error.

    Returns:
        The fatal ingest error that stopped it, or None after a clean stop.

    Raises:
        OwnBrokerError: our own broker could not start.
        IngestError: the ingest could not start (broker unreachable, login refused).
        OSError: the HTTP port cannot be bound.
    """
    import uvicorn

    from sync_server.api.app import create_app

    scratch, broker = None, None
    stopping = threading.Event()
    originals = {}
    if threading.current_thread() is threading.main_thread():  # a signal before uvicorn listens for its own
        originals = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        mqtt = settings.broker
        if mqtt is None:
            if store.sqlite_path is not None:
                folder = store.sqlite_path.resolve().parent / "broker"
            else:
                folder = scratch = Path(tempfile.mkdtemp(prefix="explorer-broker-"))
            broker = start_own_broker(folder, settings.own_broker_host, settings.own_broker_port,
                                      settings.own_broker_kind)
            _announce(settings, "broker", f"mqtt://{broker.host}:{broker.port} ({broker.kind}, started by run)")
            mqtt = BrokerSettings(host=broker.host, port=broker.port, username="", tls=False)
        clips_dir = settings.clips_dir
        if clips_dir is None and store.sqlite_path is not None:
            clips_dir = store.sqlite_path.parent / "clips"
        runner = Ingestor(store, mqtt, clips_dir=clips_dir, clip_requests_below=settings.request_clips_below,
                          retry_first_s=0.5).start()
        runner.subscribed.wait(BROKER_START_TIMEOUT_S)  # so 'listening' means devices' messages are taken
        _announce(settings, "ingest", f"mqtt://{mqtt.host}:{mqtt.port} into {store.label}")
        try:
            return _serve_api(store, settings, runner, create_app, uvicorn, stopping)
        finally:
            runner.stop()
            stats = runner.stats
            log.info("ingest stopped: %d stored, %d resends, %d refused, %d receipts sent", stats.stored,
                     stats.unchanged, stats.rejected_total, stats.receipts_sent)
    finally:
        if broker is not None:
            broker.stop()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        for sig, handler in originals.items():
            signal.signal(sig, handler)


def _quiet_server_class(uvicorn, stopping: threading.Event):
    class QuietServer(uvicorn.Server):
        """uvicorn's server without its re-raise of the stopping signal after shutdown (which
        would kill the process before the ingest, the broker and the database are closed)."""

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            if stopping.is_set():  # signalled while starting: start, then stop at once
                self.should_exit = True
            try:
                yield
            finally:
                for sig, handler in originals.items():
                    signal.signal(sig, handler)

    return QuietServer


def _serve_api(store, settings: RunSettings, runner: Ingestor, create_app, uvicorn,
               stopping: threading.Event) -> str | None:
    _QuietServer = _quiet_server_class(uvicorn, stopping)
    app = create_app(store, settings.api)
    listener = socket.socket(socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((settings.http_host, settings.http_port))
    listener.listen(128)
    host, port = listener.getsockname()[:2]
    server = _QuietServer(uvicorn.Config(app, log_level=settings.log_level, access_log=False,
                                           lifespan="off", timeout_graceful_shutdown=10))
    fatal: list[str] = []

    def watch_ingest() -> None:
        reason = runner.wait()
        if reason:
            fatal.append(reason)
            log.error("ingest stopped: %s; stopping the API", reason)
        server.should_exit = True

    threading.Thread(target=watch_ingest, name="explorer-run-watch", daemon=True).start()
    _announce(settings, "api", f"http://{host}:{port} (docs at /docs, dashboard at /)")
    try:
        server.run(sockets=[listener])
    finally:
        listener.close()
    return fatal[0] if fatal else None


def _announce(settings: RunSettings, what: str, where: str) -> None:
    settings.listening.append((what, where))
    log.info("%s: %s", what, where)

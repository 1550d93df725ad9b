"""A real PostgreSQL server for tests: a plain process on loopback, in its own throwaway folder.

`Postgres().start()` runs initdb into a folder made by tempfile.mkdtemp, then `pg_ctl start`
on a free loopback port with its unix socket in that folder and trust authentication (it
listens on 127.0.0.1 only, so trust reaches nobody else). `create_database()` gives each test
a fresh database and its URL; `stop()` and `start()` take the server away and bring it back on
the same port (a database server restarting under the ingest); `remove()` stops it and deletes
the folder.

initdb refuses to run as root, and CI runs as root: then every server program runs through
`runuser -u postgres --`, in a folder chowned to the `postgres` user (pytest's own temporary
folders are 0700 root, which postgres cannot enter; so $TMPDIR, if set, must be one it can).
Without PostgreSQL installed, `Postgres()` fails naming the apt package: the aggregate
database must be tested on both engines, never skipped.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.mqtt import free_port

APT_PACKAGE = "postgresql"
"""Debian's package for the distribution's PostgreSQL (postgresql-15 on bookworm); its
programs live in /usr/lib/postgresql/<major>/bin, off PATH."""
START_TIMEOUT_S = 120
"""pg_ctl's wait for the server to accept connections: seconds normally, much longer on a
loaded 2-core CI machine while other tests start processes."""
TEST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")
"""A test server's data is thrown away, so it need not survive a power cut: without fsync
CREATE DATABASE and every commit cost far less. `Postgres(durable=True)` (benchmarks) keeps
PostgreSQL's defaults."""


class PostgresMissing(RuntimeError):
    """PostgreSQL's server programs are not installed."""


def find_bindir() -> Path:
    """Where initdb, pg_ctl and postgres are: $EXPLORER_PG_BINDIR, PATH, or Debian's newest
    /usr/lib/postgresql/<major>/bin."""
    candidates = []
    if os.environ.get("EXPLORER_PG_BINDIR"):
        candidates.append(Path(os.environ["EXPLORER_PG_BINDIR"]))
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).resolve().parent)
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)], reverse=True)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    raise PostgresMissing(
        "PostgreSQL is not installed (no initdb, pg_ctl and postgres in $EXPLORER_PG_BINDIR, on PATH or in "
        f"/usr/lib/postgresql/*/bin): install the apt package {APT_PACKAGE!r} (make system-deps does)")


class Postgres:
    """One PostgreSQL server, its data and socket in a private folder; superuser `postgres`."""

    def __init__(self, port: int | None = None, durable: bool = False):
        self.bindir = find_bindir()
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._chosen_port = port is None
        self.durable = durable
        self.user = "postgres"
        self.folder = Path(tempfile.mkdtemp(prefix="explorer-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresMissing(f"running as root, PostgreSQL needs the 'postgres' user, which the apt "
                                      f"package {APT_PACKAGE!r} creates") from None
            os.chown(self.folder, account.pw_uid, account.pw_gid)
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        self.running = False

    def _run(self, tool: str, *args: str, timeout: float = START_TIMEOUT_S) -> None:
        command = [*self._as_postgres, str(self.bindir / tool), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stdout}{result.stderr}\n"
                               f"server log: {log}")

    def start(self) -> "Postgres":
        """Create the cluster (first time), start the server, return once a real connection works."""
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "--encoding=UTF8",
                      "--locale=C", "--no-sync", "--no-instructions")
        for attempt in range(3):
            settings = [f"port={self.port}", f"listen_addresses={self.host}",
                        f"unix_socket_directories={self.folder}", "max_connections=100"]
            settings += [] if self.durable else list(TEST_SETTINGS)
            options = " ".join(f"-c {item}" for item in settings)
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                          "-w", "-t", str(START_TIMEOUT_S), "start", timeout=START_TIMEOUT_S + 30)
                break
            except RuntimeError:
                # free_port() only found a port free a moment ago; another process may have
                # taken it since. Try another, unless the caller fixed the port.
                if not self._chosen_port or attempt == 2 or "Address already in use" not in self._log_tail():
                    raise
                self.port = free_port()
        self.running = True
        self._wait_for_a_connection()
        return self

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def _wait_for_a_connection(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with psycopg.connect(**self._admin(), connect_timeout=10) as connection:
                    connection.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL on port {self.port} accepted no connection within "
                                       f"{START_TIMEOUT_S} s; server log: {self._log_tail()}") from None
                time.sleep(0.1)

    def _admin(self) -> dict:
        return {"host": self.host, "port": self.port, "user": self.user, "dbname": "postgres", "autocommit": True}

    def stop(self) -> None:
        """Stop the server (fast shutdown: sessions are cut, as when an operator restarts it)."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop", timeout=90)
            self.running = False

    def remove(self) -> None:
        """Stop the server and delete its folder."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str) -> str:
        """The URL a ServerStore (or `explorer-server --db`) opens this database with."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; returns its name."""
        import psycopg

        name = f"test_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(**self._admin(), connect_timeout=30) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, cutting any session still connected to it."""
        import psycopg

        with psycopg.connect(**self._admin(), connect_timeout=30) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def __enter__(self) -> "Postgres":
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.remove()

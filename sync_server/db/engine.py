"""Opening a target: a path or sqlite:/// URL (SQLite), or a postgresql:// URL (psycopg 3).

Everything engine-specific about a connection is set here, once per connection, so the store
above it has one code path:

- SQLite: WAL (readers never wait for the writer), synchronous=FULL (a commit the ingest
  acknowledges survives a power cut), busy_timeout (several ingest processes share one file
  and queue for its write lock), foreign_keys on. SQLAlchemy, not the sqlite3 module, emits
  BEGIN: IMMEDIATE for a writing transaction, so it holds the write lock from its first
  statement and cannot fail halfway with SQLITE_BUSY when a read turns into a write; plain
  (deferred) BEGIN for a read, which in WAL mode waits for no one.
- PostgreSQL: psycopg 3, READ COMMITTED (the default), lock_timeout as SQLite's busy timeout,
  a connect timeout, and pool_pre_ping, so a connection the server dropped (a restart) is
  replaced at the next checkout instead of failing the next batch.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from sync_server.db.errors import ServerStoreError

BUSY_TIMEOUT_MS = 15_000
"""How long a writer waits for another's lock before its batch fails. A 500-detection batch holds
SQLite's write lock for tens of milliseconds; 15 s of waiting means a stuck writer, and the
ingest is better off leaving its messages with the broker than waiting longer."""
WAL_SWITCH_RETRY_S = 0.01
"""Pause between tries of the switch to WAL (see `_enable_wal`), within BUSY_TIMEOUT_MS in all."""
CONNECT_TIMEOUT_S = 10
"""A PostgreSQL server that has not answered in 10 s is down, not slow."""
READ_ONLY = "explorer_read_only"
"""Execution option: this transaction only reads (SQLite then begins it deferred)."""

_PASSWORD = re.compile(r"(://[^/:@]*:)[^/]*@")
"""The password in a URL that did not parse, hidden before the URL is shown."""
SCHEMES = "a file path, sqlite:///path or postgresql://user@host:port/database"


@dataclass(frozen=True)
class Target:
    """Where the aggregate database lives, parsed from what the operator gave."""

    url: URL
    label: str
    """How messages name it: the path, or the URL with its password hidden."""
    sqlite_path: Path | None
    """The database file, for SQLite; None for PostgreSQL."""


def parse_target(target: str | Path) -> Target:
    """Read a `--db` value.

    Raises:
        ServerStoreError: an unknown scheme, a URL that does not parse, an in-memory SQLite
            database (it would lose everything at exit), a PostgreSQL URL naming no database.
    """
    if isinstance(target, Path) or "://" not in target:
        path = Path(target)
        if str(target) in ("", ":memory:"):
            raise ServerStoreError(f"aggregate database {str(target)!r}: expected {SCHEMES}")
        return Target(URL.create("sqlite", database=str(path)), str(path), path)
    try:
        url = make_url(target)
        url.port  # noqa: B018  (parsed lazily: a port that is not a number fails here)
    except (ArgumentError, ValueError) as exc:
        # Not chained, and SQLAlchemy's words left out: they quote the URL, password and all.
        why = "its port is not a number" if isinstance(exc, ValueError) else "it does not parse"
        shown = _PASSWORD.sub(r"\1***@", target)
        raise ServerStoreError(f"aggregate database {shown!r}: not a database URL ({why}); "
                               f"expected {SCHEMES}") from None
    scheme = url.drivername
    if scheme in ("sqlite", "sqlite+pysqlite"):
        if not url.database or url.database == ":memory:":
            raise ServerStoreError(f"aggregate database {target!r}: names no file (an in-memory database "
                                   "would lose everything at exit); expected sqlite:///path")
        path = Path(url.database)
        return Target(URL.create("sqlite", database=str(path)), str(path), path)
    if scheme in ("postgresql", "postgresql+psycopg", "postgres"):
        label = url.render_as_string(hide_password=True)
        url = url.set(drivername="postgresql+psycopg")
        if not url.database:
            raise ServerStoreError(f"aggregate database {label}: names no database; expected {SCHEMES}")
        return Target(url, label, None)
    raise ServerStoreError(f"aggregate database {url.render_as_string(hide_password=True)}: unknown scheme "
                           f"{scheme!r}; expected {SCHEMES}")


def open_engine(target: Target) -> Engine:
    """An engine for the target, each of its connections set up as the module docstring says."""
    if target.sqlite_path is not None:
        return _sqlite_engine(target.url)
    return _postgresql_engine(target.url)


def _sqlite_engine(url: URL) -> Engine:
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def set_up(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN (below), not sqlite3
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _enable_wal(cursor)
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def begin(connection) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _enable_wal(cursor) -> None:
    """Switch the file to WAL, waiting as busy_timeout would: SQLite answers a switch that
    races another connection's (several workers opening a new file at once) with SQLITE_BUSY
    at once, without calling its busy handler. Once the file is in WAL this is a no-op."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "") != "SQLITE_BUSY" or time.monotonic() > deadline:
                raise
            time.sleep(WAL_SWITCH_RETRY_S)


def _postgresql_engine(url: URL) -> Engine:
    engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def set_up(dbapi_connection, _record) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET lock_timeout = {BUSY_TIMEOUT_MS}")
        dbapi_connection.commit()  # a SET inside a transaction that is rolled back is undone

    return engine

"""The device's SQLite file: connection settings, transactions and failures named.

One file holds everything the device records (tours, detections, clips, feedback, the
outbox), so a detection and the message that announces it commit in one transaction.

Connections are made by `connect`, which applies the same settings every time:

* WAL journal, so the TUI's reader never blocks the pipeline's writer;
* `synchronous=FULL`, so a commit that returned survives a power cut, not only a crash
  (WAL's usual NORMAL may lose the last commits when the power goes; a detection a guide
  saw on screen must not vanish, and at a few commits a minute the fsync costs nothing);
* `foreign_keys=ON` (SQLite's default is off, per connection);
* `busy_timeout`, so a second writer (the `explorer tour` CLI while `explorer run` writes)
  waits for the lock instead of failing at once.

The schema and its migrations: device/store/migrations.py (`connect` applies them).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import sqlite_utils

BUSY_TIMEOUT_MS = 5_000
"""How long a connection waits for another's write lock. Commits take milliseconds; five
seconds rides out a slow SD card's fsync yet never hangs the pipeline for long."""

SQLITE_FULL = 13
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26


class StoreError(Exception):
    """The store could not do what was asked; the message names the file and the reason."""


class NotFoundError(StoreError):
    """A tour, detection or message id that the database does not hold."""


class TourActiveError(StoreError):
    """A tour was started while another is active (only one tour runs at a time)."""

    def __init__(self, message: str, active_tour_id: str):
        super().__init__(message)
        self.active_tour_id = active_tour_id


@contextlib.contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """One write transaction, taking the write lock up front (BEGIN IMMEDIATE).

    A deferred BEGIN that later upgrades to a writer can fail at once with SQLITE_BUSY
    (busy_timeout does not apply when its snapshot went stale); taking the lock first makes
    a second writer wait its turn instead.
    """
    conn = db.conn
    if conn.in_transaction:
        raise StoreError("a store transaction is already open on this connection (nested write)")
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    else:
        try:
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


@contextlib.contextmanager
def snapshot(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """One read transaction: every query inside sees the same committed state.

    In WAL mode a reader never blocks the writer nor waits for it; this only keeps a
    multi-query read (a tour summary) from mixing states when a commit lands mid-way.
    """
    conn = db.conn
    if conn.in_transaction:
        raise StoreError("a store transaction is already open on this connection (nested read)")
    conn.execute("BEGIN")
    try:
        yield db
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")  # nothing was written; ending it releases the snapshot


def is_disk_full(exc: BaseException) -> bool:
    """True for SQLITE_FULL: no space on the device, or the database at its max_page_count."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF == SQLITE_FULL:
        return True
    return "database or disk is full" in str(exc)


@contextlib.contextmanager
def guard(path: Path | str, action: str) -> Iterator[None]:
    """Turn SQLite's errors into a `StoreError` naming the database file and what failed.

    The transaction has already rolled back when this runs, so rows committed before the
    failure are intact; the message says so for the one failure guides will meet in the
    field, a full SD card.
    """
    try:
        yield
    except StoreError:
        raise
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", None)
        base = code & 0xFF if code is not None else None
        if is_disk_full(exc):
            raise StoreError(
                f"{path}: the disk is full: {action} failed and none of it was saved (everything saved "
                "before is intact); free some space (old clips, exported logs) and try again"
            ) from exc
        if base == SQLITE_IOERR:
            raise StoreError(
                f"{path}: the disk refused a write ({exc}: full, over a file-size limit, or failing): "
                f"{action} failed and none of it was saved (everything saved before is intact)"
            ) from exc
        if base in (SQLITE_CORRUPT, SQLITE_NOTADB):
            raise StoreError(f"{path}: not a healthy explorer database ({exc}) while trying {action}") from exc
        raise StoreError(f"{path}: {action} failed: {exc}") from exc


def _enable_wal(db: sqlite_utils.Database) -> None:
    """Switch a new file to WAL, waiting out a second opener.

    Leaving the rollback journal takes an exclusive lock, and SQLite answers "database is
    locked" at once, without its busy handler, while another connection holds any lock (two
    threads of one run opening a brand-new file at once: the watch folder and its sync
    worker). A file already in WAL needs no lock, so only a fresh file ever retries.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            db.execute("PRAGMA journal_mode = wal")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
        if time.monotonic() >= deadline:
            raise sqlite3.OperationalError(f"could not switch to WAL within {BUSY_TIMEOUT_MS} ms: database is locked")
        time.sleep(0.01)


def connect(path: Path | str) -> sqlite_utils.Database:
    """Open (creating if needed) the database at `path`, configured and migrated.

    The connection is bound to the calling thread (sqlite3's `check_same_thread`): a second
    thread opens its own. Opening an up-to-date database costs a few PRAGMAs.

    Raises:
        StoreError: the path is a directory, not a database, unwritable, or from a newer release.
    """
    path = Path(path)
    if path.is_dir():
        raise StoreError(f"{path}: is a directory, not a database file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{path}: cannot create its directory ({exc.strerror})") from exc
    with guard(path, "opening the database"):
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            db = sqlite_utils.Database(conn, execute_plugins=False)
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA foreign_keys = ON")
            _enable_wal(db)
            db.execute("PRAGMA synchronous = FULL")
            from device.store.migrations import migrate  # it uses this module's transaction

            migrate(db, path)
        except BaseException:
            conn.close()
            raise
    return db

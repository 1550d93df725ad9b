"""The one exception the aggregate database raises, and how a driver's failure is put into words."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError, SQLAlchemyError


class ServerStoreError(Exception):
    """The aggregate database could not do what was asked; nothing of that call was written.

    Raised for a target that cannot be opened (bad URL, unknown scheme, unreachable server, not
    a database file) and for a failure while reading or writing (disk full, server gone, locked
    past the timeout). The message names the database and the reason; the driver's exception
    is chained as `__cause__`. The ingest catches this one type: it then leaves the messages
    unacknowledged, and the broker delivers them again.
    """


SQLITE_HINTS = {
    "SQLITE_FULL": "the disk is full",
    "SQLITE_IOERR": "the disk refused a write or a read: full or failing?",
    "SQLITE_BUSY": "another writer held the lock past the busy timeout",
    "SQLITE_NOTADB": "the file is not a SQLite database",
    "SQLITE_CANTOPEN": "the file cannot be opened (a folder? no permission?)",
    "SQLITE_READONLY": "the file or its folder is read-only",
}
"""What an operator should read into SQLite's terser codes (by primary code: SQLITE_IOERR_WRITE
is an SQLITE_IOERR). A file-size limit (EFBIG) reaches SQLite as an I/O error, a full disk
(ENOSPC) as SQLITE_FULL."""


def describe(exc: BaseException) -> str:
    """The driver's own words for a failure on one line, without SQLAlchemy's SQL and
    parameter dump (which can hold a whole batch of payloads), with a hint for SQLite's codes."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    words = " ".join(str(cause).split()) or type(cause).__name__
    code = getattr(cause, "sqlite_errorname", None)
    if code:
        hint = next((text for prefix, text in SQLITE_HINTS.items() if code == prefix or code.startswith(prefix + "_")),
                    None)
        words = f"{words} ({code}{': ' + hint if hint else ''})"
    return words


@contextmanager
def failures_named(where: str, doing: str) -> Iterator[None]:
    """Turn a driver or SQLAlchemy failure into a ServerStoreError naming `where` and `doing`.

    sqlite3's own errors are caught too: one raised while a connection is being set up (a
    PRAGMA on a file that is not a database) can reach us unwrapped.
    """
    try:
        yield
    except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
        raise ServerStoreError(f"aggregate database {where}: {doing}: {describe(exc)}") from exc

"""Transitional: the aggregate database moved to `sync_server.db` (SQLite or PostgreSQL).

Kept only because tests/sync_server/test_ingest.py (which the ingest rewrite replaces) still
opens the store as `ServerStore(path)` and reads it through sqlite-utils' `db.query`. Delete
this module with that rewrite; nothing under sync_server/ imports it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sync_server.db import ServerStore as _ServerStore


class _Query:
    def __init__(self, store: _ServerStore):
        self._store = store

    def query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
        """Rows as dicts for driver-level SQL (`?` placeholders on SQLite), like sqlite-utils'."""
        with self._store.engine.connect() as connection:
            rows = [dict(row) for row in connection.exec_driver_sql(sql, tuple(params)).mappings()]
        return iter(rows)


class _LegacyServerStore(_ServerStore):
    @property
    def db(self) -> _Query:
        return _Query(self)


def ServerStore(target: str | Path) -> _ServerStore:  # noqa: N802  (the old class's name)
    """Open the aggregate database as the old constructor did."""
    return _LegacyServerStore.open(target)

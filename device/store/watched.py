"""Files seen by the watch-folder mode, so a restart neither reprocesses nor skips one.

A file is known by its absolute path plus the size and mtime it had when processed: a
file replaced or appended to since then (either changes) counts as new again. The watcher
marks a file 'processing' before it starts and 'done' or 'failed' after; a file still
'processing' at start-up was interrupted and must be processed again.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlite_utils

from device.domain import iso_utc, parse_iso_utc, utc_now

WATCH_STATUSES = ("processing", "done", "failed")
MAX_DETAIL_CHARS = 2_000


@dataclass(frozen=True)
class WatchedFile:
    path: str
    size_bytes: int
    mtime_s: float
    status: str
    first_seen_on: datetime
    processed_on: datetime | None
    result_csv_path: str | None
    detail: str | None


def row_to_watched_file(row: dict) -> WatchedFile:
    return WatchedFile(
        path=row["path"],
        size_bytes=row["size_bytes"],
        mtime_s=row["mtime_s"],
        status=row["status"],
        first_seen_on=parse_iso_utc(row["first_seen_on"]),
        processed_on=parse_iso_utc(row["processed_on"]) if row["processed_on"] else None,
        result_csv_path=row["result_csv_path"],
        detail=row["detail"],
    )


def _key(path: Path | str) -> str:
    return os.path.abspath(os.fspath(path))


def watched_file(db: sqlite_utils.Database, path: Path | str) -> WatchedFile | None:
    rows = list(db.query("SELECT * FROM watched_file WHERE path = ?", [_key(path)]))
    return row_to_watched_file(rows[0]) if rows else None


def watched_file_status(db: sqlite_utils.Database, path: Path | str, size: int, mtime: float) -> str | None:
    """The recorded status of this exact file ('processing', 'done', 'failed').

    None when the path was never seen, or its size or mtime changed since: process it.
    'processing' means a previous run was interrupted: process it again.
    """
    found = watched_file(db, path)
    if found is None or found.size_bytes != int(size) or found.mtime_s != float(mtime):
        return None
    return found.status


def mark_watched_file(
    db: sqlite_utils.Database,
    path: Path | str,
    size: int,
    mtime: float,
    status: str,
    result_csv: Path | str | None = None,
    detail: str | None = None,
) -> None:
    """Record a file's state (call inside a write transaction).

    Raises:
        ValueError: an unknown status.
    """
    if status not in WATCH_STATUSES:
        raise ValueError(f"watched file status {status!r} is not one of {WATCH_STATUSES}")
    now = iso_utc(utc_now())
    db.execute(
        """INSERT INTO watched_file (watched_file_id, path, size_bytes, mtime_s, status, first_seen_on,
               processed_on, result_csv_path, detail)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (path) DO UPDATE SET size_bytes = excluded.size_bytes, mtime_s = excluded.mtime_s,
               status = excluded.status, processed_on = excluded.processed_on,
               result_csv_path = excluded.result_csv_path, detail = excluded.detail""",
        [
            str(uuid.uuid4()),
            _key(path),
            int(size),
            float(mtime),
            status,
            now,
            None if status == "processing" else now,
            os.fspath(result_csv) if result_csv is not None else None,
            detail[:MAX_DETAIL_CHARS] if detail else None,
        ],
    )

"""The aggregate database: every detection every device delivered, once, and what was refused.

SQLite through sqlite-utils (WAL, synchronous=FULL) today; the upsert is plain
`INSERT ... ON CONFLICT (detection_id) DO UPDATE`, which PostgreSQL speaks too. Rows are built
from payloads that `device.sync.payload.parse_payload` has already checked; the raw text of a
refused message is kept (its head only) with the reason, so an operator can see what a
misbehaving device sent without the server storing whatever anyone publishes.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from device.domain import iso_utc, utc_now

REJECTED_HEAD_BYTES = 512
"""Bytes of a refused payload kept for diagnosis: enough to read, too few to abuse."""

DETECTION_COLUMNS = (
    "detection_id", "device_id", "tour_id", "label", "scientific_name", "common_name", "class_name",
    "started_on", "ended_on", "start_s", "end_s", "confidence", "branch_scores", "bundle_name",
    "bundle_version", "bundle_sha256", "source", "window_count", "secondary", "schema",
)

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS detection (
    detection_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    tour_id TEXT,
    label TEXT NOT NULL,
    scientific_name TEXT,
    common_name TEXT,
    class_name TEXT,
    started_on TEXT NOT NULL,
    ended_on TEXT NOT NULL,
    start_s REAL NOT NULL,
    end_s REAL NOT NULL,
    confidence REAL NOT NULL,
    branch_scores TEXT NOT NULL,
    bundle_name TEXT NOT NULL,
    bundle_version TEXT NOT NULL,
    bundle_sha256 TEXT NOT NULL,
    source TEXT NOT NULL,
    window_count INTEGER NOT NULL,
    secondary INTEGER NOT NULL,
    schema INTEGER NOT NULL,
    first_received_on TEXT NOT NULL,
    last_received_on TEXT NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS detection_device_started ON detection (device_id, started_on);
CREATE INDEX IF NOT EXISTS detection_label ON detection (label);
CREATE TABLE IF NOT EXISTS rejected_message (
    rejected_id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_on TEXT NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    payload_head TEXT NOT NULL
);
"""


class ForeignDetectionError(ValueError):
    """A detection id already stored for another device: never overwritten by a second device."""


@dataclass(frozen=True)
class Counts:
    detections: int
    devices: int
    rejected: int


class ServerStore:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db = sqlite_utils.Database(connection)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = FULL")
        self.db.conn.executescript(SCHEMA_SQL)

    def close(self) -> None:
        self.db.conn.close()

    def upsert_detection(self, payload: dict[str, Any]) -> str:
        """Store a checked payload: 'inserted', 'updated' (a newer state of the same event) or
        'unchanged' (a resend). Raises ForeignDetectionError when another device owns the id."""
        row = {name: payload[name] for name in DETECTION_COLUMNS}
        row["branch_scores"] = json.dumps(payload["branch_scores"], sort_keys=True, allow_nan=False)
        row["secondary"] = int(payload["secondary"])
        now = iso_utc(utc_now())
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            cursor = conn.execute("SELECT * FROM detection WHERE detection_id = ?", [row["detection_id"]])
            found = cursor.fetchone()
            if found is not None:
                existing = dict(zip([d[0] for d in cursor.description], found))
                if existing["device_id"] != row["device_id"]:
                    raise ForeignDetectionError(
                        f"detection {row['detection_id']} belongs to device {existing['device_id']!r}, "
                        f"not {row['device_id']!r}")
                same = all(existing[name] == row[name] for name in DETECTION_COLUMNS)
                outcome = "unchanged" if same else "updated"
            else:
                outcome = "inserted"
            columns = ", ".join(DETECTION_COLUMNS)
            marks = ", ".join("?" for _ in DETECTION_COLUMNS)
            updates = ", ".join(f"{name} = excluded.{name}" for name in DETECTION_COLUMNS if name != "detection_id")
            conn.execute(
                f"""INSERT INTO detection ({columns}, first_received_on, last_received_on) VALUES ({marks}, ?, ?)
                    ON CONFLICT (detection_id) DO UPDATE SET {updates},
                        last_received_on = excluded.last_received_on, deliveries = deliveries + 1""",
                [row[name] for name in DETECTION_COLUMNS] + [now, now],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return outcome

    def reject(self, topic: str, reason: str, payload: bytes) -> None:
        """Keep a refused message's reason and the head of its bytes (as escaped text)."""
        head = bytes(payload[:REJECTED_HEAD_BYTES]).decode("utf-8", errors="backslashreplace")
        self.db.conn.execute(
            "INSERT INTO rejected_message (received_on, topic, reason, size_bytes, payload_head) VALUES (?, ?, ?, ?, ?)",
            [iso_utc(utc_now()), topic[:512], reason[:2000], len(payload), head],
        )

    def counts(self) -> Counts:
        one = self.db.conn.execute
        return Counts(
            detections=one("SELECT count(*) FROM detection").fetchone()[0],
            devices=one("SELECT count(DISTINCT device_id) FROM detection").fetchone()[0],
            rejected=one("SELECT count(*) FROM rejected_message").fetchone()[0],
        )

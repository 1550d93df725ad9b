"""The outbox: every message the device must deliver, and every attempt to deliver it.

Nothing is sent fire-and-forget. A message is written (in the same transaction as the
detection it announces) before any send is tried; each try appends an `outbox_attempt`
row; a message stays pending while no SUCCESS attempt exists for it (`NOT EXISTS`), per
destination when one is named. Resends are harmless because the server upserts on the
detection's UUID.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlite_utils

from device.domain import iso_utc, parse_iso_utc, utc_now
from device.store.database import NotFoundError

MAX_DETAIL_CHARS = 2_000
"""An attempt's detail is a broker's error string; cap it so a looping failure cannot fill the disk."""

_PENDING = """
    SELECT m.*,
           (SELECT count(*) FROM outbox_attempt a WHERE a.message_id = m.message_id) AS attempt_count
    FROM outbox_message m
    WHERE NOT EXISTS (
        SELECT 1 FROM outbox_attempt a
        WHERE a.message_id = m.message_id AND a.result = 'SUCCESS' {destination_clause}
    )
    ORDER BY m.created_on, m.rowid
    LIMIT ?
"""


@dataclass(frozen=True)
class OutboxMessage:
    message_id: str
    detection_id: str | None
    topic: str
    payload: str
    """The JSON text to publish, exactly as queued."""
    created_on: datetime
    attempt_count: int = 0
    """Attempts made so far, to any destination (for back-off)."""


def row_to_message(row: dict) -> OutboxMessage:
    return OutboxMessage(
        message_id=row["message_id"],
        detection_id=row["detection_id"],
        topic=row["topic"],
        payload=row["payload"],
        created_on=parse_iso_utc(row["created_on"]),
        attempt_count=row.get("attempt_count", 0) or 0,
    )


def enqueue(db: sqlite_utils.Database, topic: str, payload: str, detection_id: str | None = None) -> str:
    """Queue one message; return its message_id (call inside the transaction that made it)."""
    message_id = str(uuid.uuid4())
    db.execute(
        "INSERT INTO outbox_message (message_id, detection_id, topic, payload, created_on) VALUES (?, ?, ?, ?, ?)",
        [message_id, detection_id, topic, payload, iso_utc(utc_now())],
    )
    return message_id


def pending_messages(
    db: sqlite_utils.Database, limit: int = 100, destination: str | None = None
) -> list[OutboxMessage]:
    """Messages with no SUCCESS attempt (for `destination`, when given), oldest first."""
    if limit < 1:
        raise ValueError(f"limit: {limit} must be at least 1")
    if destination is None:
        sql, params = _PENDING.format(destination_clause=""), [limit]
    else:
        sql, params = _PENDING.format(destination_clause="AND a.destination = ?"), [destination, limit]
    return [row_to_message(row) for row in db.query(sql, params)]


def pending_count(db: sqlite_utils.Database, destination: str | None = None) -> int:
    """How many messages still wait for a SUCCESS (the sync backlog shown to the guide)."""
    clause = "" if destination is None else "AND a.destination = ?"
    params = [] if destination is None else [destination]
    return db.execute(
        f"""SELECT count(*) FROM outbox_message m WHERE NOT EXISTS (
                SELECT 1 FROM outbox_attempt a WHERE a.message_id = m.message_id AND a.result = 'SUCCESS' {clause})""",
        params,
    ).fetchone()[0]


def record_attempt(
    db: sqlite_utils.Database, message_id: str, destination: str, ok: bool, detail: str | None = None
) -> str:
    """Append one delivery attempt; return its attempt_id (call inside a write transaction).

    Raises:
        NotFoundError: `message_id` was never queued.
        ValueError: an empty destination.
    """
    if not isinstance(destination, str) or not destination.strip():
        raise ValueError("destination: empty")
    if db.execute("SELECT 1 FROM outbox_message WHERE message_id = ?", [message_id]).fetchone() is None:
        raise NotFoundError(f"no outbox message with id {message_id!r}")
    attempt_id = str(uuid.uuid4())
    db.execute(
        """INSERT INTO outbox_attempt (attempt_id, message_id, attempted_on, destination, result, detail)
           VALUES (?, ?, ?, ?, ?, ?)""",
        [
            attempt_id,
            message_id,
            iso_utc(utc_now()),
            destination,
            "SUCCESS" if ok else "FAILURE",
            detail[:MAX_DETAIL_CHARS] if detail else None,
        ],
    )
    return attempt_id


def record_attempts(db: sqlite_utils.Database, attempts: list[tuple[str, str, bool, str | None]]) -> list[str]:
    """Append several attempts, (message_id, destination, ok, detail) each, in the caller's
    transaction: one fsync for a batch of PUBACKs instead of one per message."""
    return [record_attempt(db, message_id, destination, ok, detail) for message_id, destination, ok, detail in attempts]


def last_delivery_on(db: sqlite_utils.Database) -> datetime | None:
    """The time of the newest SUCCESS attempt to any destination (None before the first)."""
    found = db.execute("SELECT max(attempted_on) FROM outbox_attempt WHERE result = 'SUCCESS'").fetchone()
    return parse_iso_utc(found[0]) if found and found[0] else None

"""The outbox: every message the device must deliver, every attempt, and the server's word on it.

Nothing is sent fire-and-forget. A message is written (in the same transaction as the
detection or verdict it carries) before any send is tried, and each try appends an
`outbox_attempt` row. Delivery is the server's receipt (device/contracts/receipt.py), not the
broker's PUBACK: a broker acknowledges what it may still lose in a crash. A message is in one
of four states (per destination where a broker is named):

- **pending**: no receipt yet, and no PUBACK (a SUCCESS attempt) within the receipt timeout:
  never acknowledged, or acknowledged so long ago that its receipt is not coming. Sent next.
- **unconfirmed** (sent-unconfirmed): acknowledged by the broker within the timeout, waiting
  for its receipt. Not sent again until the timeout passes; the timeout doubles with each
  PUBACK the message had (up to 64 times: `RESEND_DOUBLINGS`), so a server down for a day costs
  a backlog a handful of resends, not one every ten minutes.
- **confirmed**: a receipt named it as stored (`confirmed_on`). Never sent again.
- **refused**: a receipt named it as refused (`refused_on`, `refused_reason`), e.g. an id
  another device owns. Never sent again; the reason is kept for `explorer sync --status`.

Resends are harmless: the server upserts on the record's id and receipts resends too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlite_utils

from device.config import SyncSettings
from device.domain import Receipt, iso_utc, parse_iso_utc, utc_now
from device.store.database import NotFoundError

MAX_DETAIL_CHARS = 2_000
"""An attempt's detail is a broker's error string; cap it so a looping failure cannot fill the disk."""
RECEIPT_TIMEOUT_S: float = SyncSettings.receipt_timeout_s
"""The default receipt timeout, `[sync] receipt_timeout_s` (the reason lives there)."""
KINDS = ("detection", "feedback", "tour")
"""What an outbox message carries: the kinds a receipt confirms."""
START = ("", 0)
"""The position before every message (see `OutboxMessage.position`)."""
_IDS_PER_QUERY = 500
"""Ids bound in one IN (...) list: far below SQLite's variable limit on any release."""

_OPEN = "m.confirmed_on IS NULL AND m.refused_on IS NULL"
RESEND_DOUBLINGS = 6
"""A message the broker acknowledged k times without a receipt waits receipt_timeout_s x 2^(k-1)
before it goes again, at most x 64 (600 s grows to ~10.7 h): while the ingest is down for a day,
a backlog is resent a handful of times over a metered link, not every ten minutes."""
_SUCCESSES = """(SELECT count(*) FROM outbox_attempt b
    WHERE b.message_id = m.message_id AND b.result = 'SUCCESS' {destination_b})"""
_ACKNOWLEDGED = """EXISTS (
    SELECT 1 FROM outbox_attempt a
    WHERE a.message_id = m.message_id AND a.result = 'SUCCESS' {destination_a}
      AND a.attempted_on >= CASE {successes} {whens} ELSE ? END
)"""
_SELECT = """
    SELECT m.*, m.rowid AS position_rowid,
           (SELECT count(*) FROM outbox_attempt a WHERE a.message_id = m.message_id) AS attempt_count
    FROM outbox_message m
    WHERE {open} {extra}
      AND m.created_on >= ? AND (m.created_on > ? OR m.rowid > ?)
    ORDER BY m.created_on, m.rowid
    LIMIT ?
"""


@dataclass(frozen=True)
class OutboxMessage:
    message_id: str
    detection_id: str | None
    """The detection the message is about: the one it announces, or the one a verdict judges."""
    topic: str
    payload: str
    """The JSON text to publish, exactly as queued."""
    created_on: datetime
    attempt_count: int = 0
    """Attempts made so far, to any destination (for back-off)."""
    kind: str = "detection"
    record_id: str = ""
    """The id a receipt names for it: the detection's id, the verdict's (feedback) id, or the
    tour state's delivery id."""
    position: tuple[str, int] = START
    """Where it sits in send order (its created_on text and rowid): pass the last one a query
    returned as `after` to read on from there."""


@dataclass(frozen=True)
class OutboxCounts:
    """How many messages are in each state (`explorer sync --status`, the status payload)."""

    pending: int = 0
    unconfirmed: int = 0
    confirmed: int = 0
    refused: int = 0

    @property
    def not_confirmed(self) -> int:
        """What the server does not hold yet as far as the device knows: pending + unconfirmed."""
        return self.pending + self.unconfirmed


@dataclass(frozen=True)
class ReceiptOutcome:
    """What applying receipts changed."""

    confirmed: int = 0
    """Messages newly confirmed."""
    refused: int = 0
    """Messages newly refused."""
    unchanged: int = 0
    """Ids that matched no open message: already confirmed (the server receipts resends too),
    or unknown here."""


def row_to_message(row: dict) -> OutboxMessage:
    return OutboxMessage(
        message_id=row["message_id"],
        detection_id=row["detection_id"],
        topic=row["topic"],
        payload=row["payload"],
        created_on=parse_iso_utc(row["created_on"]),
        attempt_count=row.get("attempt_count", 0) or 0,
        kind=row["kind"],
        record_id=row["record_id"],
        position=(row["created_on"], row.get("position_rowid", 0) or 0),
    )


def enqueue(db: sqlite_utils.Database, topic: str, payload: str, detection_id: str | None = None,
            kind: str = "detection", record_id: str | None = None) -> str:
    """Queue one message; return its message_id (call inside the transaction that made it).

    Args:
        detection_id: the detection the message is about.
        kind: 'detection', 'feedback' or 'tour'.
        record_id: the id receipts will name; a detection's message defaults to its detection id
            (a verdict's is its feedback id, a tour's its `device.contracts.tour.delivery_id`).

    Raises:
        ValueError: an unknown kind, or no record id.
    """
    if kind not in KINDS:
        raise ValueError(f"outbox kind {kind!r} is not one of {KINDS}")
    record_id = record_id or (detection_id if kind == "detection" else None)
    if not record_id:
        raise ValueError(f"outbox message of kind {kind!r}: no record id for receipts to name")
    message_id = str(uuid.uuid4())
    db.execute(
        """INSERT INTO outbox_message (message_id, detection_id, topic, payload, created_on, kind, record_id)
           VALUES (?, ?, ?, ?, ?, ?, ?)""",
        [message_id, detection_id, topic, payload, iso_utc(utc_now()), kind, record_id],
    )
    return message_id


def _acknowledged(destination: str | None, receipt_timeout_s: float, now: datetime | None) -> tuple[str, list]:
    """The SQL (and its parameters) true for an open message still waiting for its receipt: a
    PUBACK within its timeout, which doubles with each PUBACK the message already had (see
    RESEND_DOUBLINGS). A message this is false for (and that is open) is pending."""
    if receipt_timeout_s < 0:
        raise ValueError(f"receipt_timeout_s: {receipt_timeout_s} must not be negative")
    now = now or utc_now()
    cutoffs = [iso_utc(now - timedelta(seconds=receipt_timeout_s * 2 ** k)) for k in range(RESEND_DOUBLINGS + 1)]
    where, dest = ("", []) if destination is None else ("AND {t}.destination = ?", [destination])
    sql = _ACKNOWLEDGED.format(
        destination_a=where.format(t="a"),
        successes=_SUCCESSES.format(destination_b=where.format(t="b")),
        whens=" ".join(f"WHEN {k + 1} THEN ?" for k in range(RESEND_DOUBLINGS)),
    )
    return sql, [*dest, *dest, *cutoffs]


def _select(db: sqlite_utils.Database, extra: str, params: list, limit: int,
            after: tuple[str, int]) -> list[OutboxMessage]:
    if limit < 1:
        raise ValueError(f"limit: {limit} must be at least 1")
    created_on, rowid = after
    sql = _SELECT.format(open=_OPEN, extra=extra)
    return [row_to_message(row) for row in db.query(sql, [*params, created_on, created_on, rowid, limit])]


def pending_messages(
    db: sqlite_utils.Database, limit: int = 100, destination: str | None = None,
    receipt_timeout_s: float = RECEIPT_TIMEOUT_S, after: tuple[str, int] = START, now: datetime | None = None,
) -> list[OutboxMessage]:
    """Pending messages (see the module doc; for `destination`, when given), oldest first,
    from just after `after`."""
    clause, params = _acknowledged(destination, receipt_timeout_s, now)
    return _select(db, f"AND NOT {clause}", params, limit, after)


def open_messages(db: sqlite_utils.Database, limit: int = 100, after: tuple[str, int] = START) -> list[OutboxMessage]:
    """Every message no receipt has confirmed or refused, pending or not, oldest first: what
    `explorer sync` by hand sends at once, whatever the timeout."""
    return _select(db, "", [], limit, after)


def pending_count(db: sqlite_utils.Database, destination: str | None = None,
                  receipt_timeout_s: float = RECEIPT_TIMEOUT_S, now: datetime | None = None) -> int:
    """How many messages are pending (to be sent on the next drain)."""
    return open_counts(db, destination, receipt_timeout_s, now).pending


def open_counts(db: sqlite_utils.Database, destination: str | None = None,
                receipt_timeout_s: float = RECEIPT_TIMEOUT_S, now: datetime | None = None) -> OutboxCounts:
    """Pending and unconfirmed counts (confirmed and refused left 0): reads only the open rows
    (a partial index), so the status line and the status payload can ask every few seconds."""
    clause, params = _acknowledged(destination, receipt_timeout_s, now)
    found = db.execute(
        f"SELECT count(*), coalesce(sum({clause}), 0) FROM outbox_message m WHERE {_OPEN}", params,
    ).fetchone()
    return OutboxCounts(pending=found[0] - found[1], unconfirmed=found[1])


def not_confirmed_count(db: sqlite_utils.Database) -> int:
    """Messages no receipt has confirmed or refused (pending + unconfirmed, any destination)."""
    return db.execute(f"SELECT count(*) FROM outbox_message m WHERE {_OPEN}").fetchone()[0]


def state_counts(db: sqlite_utils.Database, destination: str | None = None,
                 receipt_timeout_s: float = RECEIPT_TIMEOUT_S, now: datetime | None = None) -> OutboxCounts:
    """Every state's count (scans the table: for `explorer sync --status`, not for a loop)."""
    closed = db.execute(
        "SELECT coalesce(sum(confirmed_on IS NOT NULL), 0), "
        "coalesce(sum(confirmed_on IS NULL AND refused_on IS NOT NULL), 0) FROM outbox_message"
    ).fetchone()
    counts = open_counts(db, destination, receipt_timeout_s, now)
    return OutboxCounts(counts.pending, counts.unconfirmed, closed[0], closed[1])


def message_states(db: sqlite_utils.Database, message_ids: Iterable[str]) -> dict[str, str]:
    """message_id -> 'confirmed', 'refused' or 'open' (unknown ids are left out)."""
    ids = list(message_ids)
    states: dict[str, str] = {}
    for start in range(0, len(ids), _IDS_PER_QUERY):
        chunk = ids[start:start + _IDS_PER_QUERY]
        rows = db.execute(
            f"""SELECT message_id, CASE WHEN confirmed_on IS NOT NULL THEN 'confirmed'
                                        WHEN refused_on IS NOT NULL THEN 'refused' ELSE 'open' END
                FROM outbox_message WHERE message_id IN ({", ".join("?" for _ in chunk)})""",
            chunk,
        ).fetchall()
        states.update(dict(rows))
    return states


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


def apply_receipts(db: sqlite_utils.Database, receipts: Sequence[Receipt]) -> ReceiptOutcome:
    """Mark what these receipts name confirmed or refused (call inside a write transaction).

    A confirmation wins over an earlier refusal (the server did store it); a refusal never
    undoes a confirmation. Ids of a kind the outbox does not carry match nothing.
    """
    now = iso_utc(utc_now())
    stored = [(now, kind, record_id) for receipt in receipts for kind, ids in receipt.stored.items() for record_id in ids]
    refused = [(now, r.reason, r.kind, r.record_id) for receipt in receipts for r in receipt.refused]
    conn = db.conn
    confirmed = conn.executemany(
        "UPDATE outbox_message SET confirmed_on = ? WHERE kind = ? AND record_id = ? AND confirmed_on IS NULL",
        stored,
    ).rowcount if stored else 0
    newly_refused = conn.executemany(
        """UPDATE outbox_message SET refused_on = ?, refused_reason = ?
           WHERE kind = ? AND record_id = ? AND confirmed_on IS NULL AND refused_on IS NULL""",
        refused,
    ).rowcount if refused else 0
    named = len(stored) + len(refused)
    return ReceiptOutcome(confirmed, newly_refused, max(0, named - confirmed - newly_refused))


def refusals(db: sqlite_utils.Database, limit: int = 10) -> list[tuple[str, str, datetime, str]]:
    """The newest refused messages: (kind, record_id, refused_on, reason) each."""
    rows = db.execute(
        """SELECT kind, record_id, refused_on, refused_reason FROM outbox_message
           WHERE confirmed_on IS NULL AND refused_on IS NOT NULL ORDER BY refused_on DESC, rowid DESC LIMIT ?""",
        [limit],
    ).fetchall()
    return [(kind, record_id, parse_iso_utc(on), reason or "") for kind, record_id, on, reason in rows]


def last_delivery_on(db: sqlite_utils.Database) -> datetime | None:
    """The time of the newest SUCCESS attempt to any destination (None before the first)."""
    found = db.execute("SELECT max(attempted_on) FROM outbox_attempt WHERE result = 'SUCCESS'").fetchone()
    return parse_iso_utc(found[0]) if found and found[0] else None


def last_confirmed_on(db: sqlite_utils.Database) -> datetime | None:
    """When a receipt last confirmed a message (None before the first)."""
    found = db.execute("SELECT max(confirmed_on) FROM outbox_message WHERE confirmed_on IS NOT NULL").fetchone()
    return parse_iso_utc(found[0]) if found and found[0] else None

"""Clip upload state: which clips are wanted, where each stands with the server, the daily bytes.

The tables are migration 3's (device/store/migrations.py). The uploader (device/sync/clips.py)
sends one chunk of a clip at a time and waits for the server's ack before the next, so each
ack answers the one chunk in flight, `[acked_bytes, sent_bytes)`:

- **complete**: the server holds the whole file, sha256 checked. Final, whatever came before
  (a clip retention deleted after its last chunk went is complete, not gone).
- **partial** with `received_bytes` R: while a chunk is in flight, R is where to go on from:
  its end when the server appended it, less when the server lost some or restarted (the next
  chunk starts there), more when it held more. R equal to the in-flight chunk's start cannot
  answer that chunk (the server appends a chunk that starts where it stands), so it is a stale
  ack (one delivered again after a reconnect, or one meant for `explorer sync` by hand's
  session) and changes nothing. With nothing in flight only an R beyond `acked_bytes` is news.
- **refused** (the whole file's sha256 was not the one announced): answers only a last chunk
  in flight. The first refusal starts the clip again from byte 0; the second gives it up.

Budget: `reserve_chunk` checks today's bytes and counts the chunk's, in the transaction that
marks it in flight, before it is published: a crash after that commit counts a chunk that
never left (the budget errs on the side of the bill), never one that left uncounted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlite_utils

from device.domain import iso_utc, parse_iso_utc

MAX_REFUSALS = 2
"""A clip the server refuses this many times is given up: the file on the card no longer hashes
to what it did when the upload began (a failing card), so sending it again cannot help."""
STATES = ("sending", "complete", "refused", "gone")
_IDS_PER_QUERY = 500
"""Ids bound in one IN (...) list: a clip request names at most 500."""


@dataclass(frozen=True)
class UploadCandidate:
    """A clip the uploader may work on: wanted (judged or requested), not yet finished."""

    clip_id: str
    detection_id: str
    path: str
    sample_rate_hz: int
    duration_s: float
    start_s: float
    clip_size_bytes: int
    """The size the clip row recorded when the file was written."""
    deleted: bool
    """Retention deleted its file."""
    judged: bool
    """A guide gave its detection a verdict (else only the server asked for it)."""
    sha256: str | None = None
    """None until the upload begins (read once from the file)."""
    size_bytes: int = 0
    acked_bytes: int = 0
    sent_bytes: int = 0
    sent_on: datetime | None = None
    refusals: int = 0

    @property
    def started(self) -> bool:
        return self.sha256 is not None

    @property
    def in_flight(self) -> bool:
        """A chunk went and its ack has not come."""
        return self.sent_bytes > self.acked_bytes


@dataclass(frozen=True)
class ClipUpload:
    """One clip_upload row, as stored."""

    clip_id: str
    sha256: str | None
    size_bytes: int
    acked_bytes: int
    sent_bytes: int
    sent_on: datetime | None
    state: str
    refusals: int
    reason: str | None
    updated_on: datetime


@dataclass(frozen=True)
class AckOutcome:
    """What applying clip acks and requests changed."""

    completed: int = 0
    moved: int = 0
    """Partial acks that set where the next chunk starts."""
    refused: int = 0
    """Refusals counted (the clip starts again from 0, or is given up)."""
    given_up: int = 0
    stale: int = 0
    """Acks that answered no chunk in flight, or for a finished clip."""
    unknown: int = 0
    """Acks for a clip this device has no upload of."""
    requested: int | None = None
    """How many detection ids the stored request now names (None: no request applied)."""


@dataclass(frozen=True)
class UploadCounts:
    """Where the wanted clips stand (`explorer sync --status`)."""

    to_send: int = 0
    to_send_bytes: int = 0
    """What is left of them: whole clips not started, the rest of those under way."""
    complete: int = 0
    refused: int = 0
    gone: int = 0
    sent_today_bytes: int = 0


def utc_day(moment: datetime) -> str:
    """The budget's day: 'YYYY-MM-DD' in UTC (a device on the trail has no useful local midnight)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d")


_WANTED = """
    WITH wanted AS (
        SELECT w.detection_id, max(w.judged) AS judged FROM (
            SELECT detection_id, 1 AS judged FROM feedback
            UNION ALL SELECT detection_id, 0 AS judged FROM clip_request
        ) w JOIN detection d ON d.detection_id = w.detection_id
        WHERE d.clip_withheld IS NULL
        GROUP BY w.detection_id
    )
"""
"""Detections whose clip is wanted: judged or requested, and not withheld. A withheld clip (a
person was heard: `detection.clip_withheld`) is never written, so there is none to send; the
filter makes sure of it whatever a folder holds, and however a guide judges the detection."""


def upload_candidates(db: sqlite_utils.Database, limit: int) -> list[UploadCandidate]:
    """Wanted clips not yet complete, refused or gone: judged ones first, then requested ones,
    each oldest first (retention deletes the oldest first, so those are nearest to being lost).

    Retention-deleted clips are included while unfinished, so the uploader can mark them gone.
    """
    rows = db.execute(
        _WANTED + """
        SELECT c.clip_id, c.detection_id, c.path, c.sample_rate_hz, c.duration_s, c.start_s, c.size_bytes,
               c.deleted_on IS NOT NULL, w.judged, u.sha256, u.size_bytes, u.acked_bytes, u.sent_bytes,
               u.sent_on, u.refusals
        FROM wanted w
        JOIN clip c ON c.detection_id = w.detection_id
        LEFT JOIN clip_upload u ON u.clip_id = c.clip_id
        WHERE u.clip_id IS NULL OR u.state = 'sending'
        ORDER BY w.judged DESC, c.created_on, c.rowid
        LIMIT ?""",
        [limit],
    ).fetchall()
    return [
        UploadCandidate(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), bool(r[8]), r[9], r[10] or 0,
                        r[11] or 0, r[12] or 0, parse_iso_utc(r[13]) if r[13] else None, r[14] or 0)
        for r in rows
    ]


def begin_upload(db: sqlite_utils.Database, clip_id: str, sha256: str, size_bytes: int, now: datetime) -> None:
    """Record a clip's sha256 and size (read once from its file): its upload starts at byte 0."""
    stamp = iso_utc(now)
    db.execute(
        """INSERT INTO clip_upload (clip_id, sha256, size_bytes, acked_bytes, sent_bytes, state, refusals,
               created_on, updated_on) VALUES (?, ?, ?, 0, 0, 'sending', 0, ?, ?)
           ON CONFLICT (clip_id) DO NOTHING""",
        [clip_id, sha256, int(size_bytes), stamp, stamp],
    )


def mark_gone(db: sqlite_utils.Database, clip_id: str, size_bytes: int, reason: str, now: datetime) -> None:
    """A wanted clip whose file is no more (retention deleted it, or it is missing): never sent."""
    stamp = iso_utc(now)
    db.execute(
        """INSERT INTO clip_upload (clip_id, sha256, size_bytes, acked_bytes, sent_bytes, state, refusals, reason,
               created_on, updated_on) VALUES (?, NULL, ?, 0, 0, 'gone', 0, ?, ?, ?)
           ON CONFLICT (clip_id) DO UPDATE SET state = 'gone', reason = excluded.reason,
               sent_bytes = acked_bytes, sent_on = NULL, updated_on = excluded.updated_on
           WHERE state = 'sending'""",
        [clip_id, max(0, int(size_bytes)), reason, stamp, stamp],
    )


def reserve_chunk(db: sqlite_utils.Database, clip_id: str, expected: tuple[int, int], end: int, wire_bytes: int,
                  budget_bytes: int, now: datetime) -> str:
    """Mark the chunk `[acked_bytes, end)` in flight and count its `wire_bytes` against today's
    budget, in one transaction (call inside one), before publishing it.

    Args:
        expected: the (acked_bytes, sent_bytes) the uploader read: if an ack moved them since,
            nothing is reserved.

    Returns:
        'ok'; 'budget' when today's bytes plus these would pass `budget_bytes`; 'moved' when
        the row is no longer as read (an ack came, or another process sent).
    """
    day = utc_day(now)
    if bytes_sent_on(db, day) + wire_bytes > budget_bytes:
        return "budget"
    stamp = iso_utc(now)
    cursor = db.execute(
        """UPDATE clip_upload SET sent_bytes = ?, sent_on = ?, updated_on = ?
           WHERE clip_id = ? AND state = 'sending' AND acked_bytes = ? AND sent_bytes = ?""",
        [end, stamp, stamp, clip_id, expected[0], expected[1]],
    )
    if cursor.rowcount != 1:
        return "moved"
    db.execute(
        """INSERT INTO clip_upload_day (utc_day, sent_bytes, chunks) VALUES (?, ?, 1)
           ON CONFLICT (utc_day) DO UPDATE SET sent_bytes = sent_bytes + excluded.sent_bytes, chunks = chunks + 1""",
        [day, int(wire_bytes)],
    )
    return "ok"


def unsend_chunk(db: sqlite_utils.Database, clip_id: str, end: int, now: datetime) -> None:
    """The broker never acknowledged the chunk ending at `end`: nothing is in flight (its bytes
    stay counted: they may have crossed the link)."""
    db.execute(
        """UPDATE clip_upload SET sent_bytes = acked_bytes, sent_on = NULL, updated_on = ?
           WHERE clip_id = ? AND state = 'sending' AND sent_bytes = ?""",
        [iso_utc(now), clip_id, end],
    )


def apply_clip_messages(db: sqlite_utils.Database, acks: Sequence, requests: Sequence, now: datetime) -> AckOutcome:
    """Apply the server's clip acks, in arrival order, and its newest clip request (call inside
    a write transaction). See the module docstring for what each ack means.

    A request replaces the stored one whole (it is retained and always complete) unless it was
    issued before it; ids of detections this device does not hold are left out.
    """
    counts = dict(completed=0, moved=0, refused=0, given_up=0, stale=0, unknown=0)
    stamp = iso_utc(now)
    for ack in acks:
        row = db.execute("SELECT acked_bytes, sent_bytes, size_bytes, state, refusals FROM clip_upload "
                         "WHERE clip_id = ?", [ack.clip_id]).fetchone()
        if row is None:
            counts["unknown"] += 1
            continue
        acked, sent, size, state, refusals = row
        if state == "complete":
            counts["stale"] += 1
        elif ack.state == "complete":
            db.execute("""UPDATE clip_upload SET state = 'complete', acked_bytes = size_bytes, sent_bytes = size_bytes,
                              sent_on = NULL, reason = NULL, updated_on = ? WHERE clip_id = ?""", [stamp, ack.clip_id])
            counts["completed"] += 1
        elif state != "sending":
            counts["stale"] += 1
        elif ack.state == "refused":
            if not (sent > acked and sent == size):
                counts["stale"] += 1
                continue
            refusals += 1
            final = refusals >= MAX_REFUSALS
            db.execute("""UPDATE clip_upload SET acked_bytes = 0, sent_bytes = 0, sent_on = NULL, refusals = ?,
                              state = ?, reason = ?, updated_on = ? WHERE clip_id = ?""",
                       [refusals, "refused" if final else "sending", ack.reason, stamp, ack.clip_id])
            counts["refused"] += 1
            counts["given_up"] += final
        else:
            held = int(ack.received_bytes)
            in_flight = sent > acked
            # Only a completed clip is held whole: a partial R at or past the end answers nothing.
            if held < size and ((in_flight and held != acked) or (not in_flight and held > acked)):
                db.execute("""UPDATE clip_upload SET acked_bytes = ?, sent_bytes = ?, sent_on = NULL, updated_on = ?
                              WHERE clip_id = ?""", [held, held, stamp, ack.clip_id])
                counts["moved"] += 1
            else:
                counts["stale"] += 1
    requested = _replace_request(db, max(requests, key=lambda r: r.issued_on), stamp) if requests else None
    return AckOutcome(**counts, requested=requested)


def _replace_request(db: sqlite_utils.Database, request, stamp: str) -> int:
    issued = iso_utc(request.issued_on)
    newest = db.execute("SELECT max(issued_on) FROM clip_request").fetchone()[0]
    if newest is not None and newest > issued:  # an older request delivered late: keep the newer
        return db.execute("SELECT count(*) FROM clip_request").fetchone()[0]
    db.execute("DELETE FROM clip_request")
    ids = list(dict.fromkeys(request.detection_ids))
    for start in range(0, len(ids), _IDS_PER_QUERY):
        part = ids[start:start + _IDS_PER_QUERY]
        db.execute(
            f"""INSERT INTO clip_request (detection_id, issued_on, received_on)
                SELECT detection_id, ?, ? FROM detection WHERE detection_id IN ({", ".join("?" * len(part))})""",
            [issued, stamp, *part],
        )
    return db.execute("SELECT count(*) FROM clip_request").fetchone()[0]


def requested_ids(db: sqlite_utils.Database) -> set[str]:
    """The detection ids the stored clip request names (those this device holds)."""
    return {row[0] for row in db.execute("SELECT detection_id FROM clip_request")}


def bytes_sent_on(db: sqlite_utils.Database, day: str) -> int:
    """Chunk bytes sent on this UTC day ('YYYY-MM-DD'), resends included."""
    row = db.execute("SELECT sent_bytes FROM clip_upload_day WHERE utc_day = ?", [day]).fetchone()
    return row[0] if row else 0


def upload_counts(db: sqlite_utils.Database, now: datetime) -> UploadCounts:
    """Wanted clips still to send (live, not finished) and their bytes left, finished ones by
    state, and today's bytes sent."""
    to_send, left = db.execute(
        _WANTED + """
        SELECT count(*), coalesce(sum(CASE WHEN u.clip_id IS NULL THEN c.size_bytes
                                           ELSE u.size_bytes - u.acked_bytes END), 0)
        FROM wanted w JOIN clip c ON c.detection_id = w.detection_id
        LEFT JOIN clip_upload u ON u.clip_id = c.clip_id
        WHERE c.deleted_on IS NULL AND (u.clip_id IS NULL OR u.state = 'sending')"""
    ).fetchone()
    states = dict(db.execute("SELECT state, count(*) FROM clip_upload GROUP BY state").fetchall())
    return UploadCounts(to_send, left, states.get("complete", 0), states.get("refused", 0), states.get("gone", 0),
                        bytes_sent_on(db, utc_day(now)))


def clip_upload(db: sqlite_utils.Database, clip_id: str) -> ClipUpload | None:
    """A clip's upload row, or None when it was never considered."""
    rows = list(db.query("SELECT * FROM clip_upload WHERE clip_id = ?", [clip_id]))
    if not rows:
        return None
    r = rows[0]
    return ClipUpload(r["clip_id"], r["sha256"], r["size_bytes"], r["acked_bytes"], r["sent_bytes"],
                      parse_iso_utc(r["sent_on"]) if r["sent_on"] else None, r["state"], r["refusals"], r["reason"],
                      parse_iso_utc(r["updated_on"]))

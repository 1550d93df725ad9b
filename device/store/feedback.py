"""Feedback: a guide confirms or rejects a detection, which feeds retraining.

Feedback rows are appended, never edited: a guide who changes their mind adds a new row,
and the latest verdict is the one that counts (summaries leave out rejected detections).
Each verdict queues its outbox message (device/contracts/feedback.py) in the same
transaction, so a verdict is never stored without being sent, nor sent without being stored;
it drains and is receipted like a detection (kind 'feedback', named by its feedback id).
"""

from __future__ import annotations

import uuid

import sqlite_utils

from device.contracts.feedback import feedback_to_json, feedback_to_payload, feedback_topic
from device.domain import MAX_NOTE_CHARS, VERDICTS, Feedback, iso_utc, parse_iso_utc, utc_now
from device.store.database import NotFoundError
from device.store.outbox import enqueue

__all__ = ["MAX_NOTE_CHARS", "VERDICTS", "Feedback", "add_feedback", "feedback_for", "row_to_feedback"]


def row_to_feedback(row: dict) -> Feedback:
    return Feedback(
        feedback_id=row["feedback_id"],
        detection_id=row["detection_id"],
        verdict=row["verdict"],
        note=row["note"],
        created_on=parse_iso_utc(row["created_on"]),
    )


def add_feedback(db: sqlite_utils.Database, detection_id: str, verdict: str, note: str | None = None) -> Feedback:
    """Append a verdict on a detection (call inside a write transaction).

    Raises:
        ValueError: the verdict is not 'confirm' or 'reject', or the note is too long (nothing
            is stored or queued).
        NotFoundError: no detection has that id.
    """
    if verdict not in VERDICTS:
        raise ValueError(f"feedback verdict {verdict!r} is not one of {VERDICTS}")
    if note is not None and len(note) > MAX_NOTE_CHARS:
        raise ValueError(f"feedback note: {len(note)} characters is over the {MAX_NOTE_CHARS}-character limit")
    found = db.execute("SELECT device_id FROM detection WHERE detection_id = ?", [detection_id]).fetchone()
    if found is None:
        raise NotFoundError(f"cannot record feedback: no detection with id {detection_id!r}")
    now = parse_iso_utc(iso_utc(utc_now()))  # what the row holds (millisecond precision)
    feedback = Feedback(str(uuid.uuid4()), detection_id, verdict, note or None, now)
    # The detection's own device id: the verdict travels under the topic its detection did.
    device_id = found[0]
    payload = feedback_to_json(feedback_to_payload(feedback, device_id))
    db.execute(
        "INSERT INTO feedback (feedback_id, detection_id, verdict, note, created_on) VALUES (?, ?, ?, ?, ?)",
        [feedback.feedback_id, detection_id, verdict, feedback.note, iso_utc(feedback.created_on)],
    )
    enqueue(db, feedback_topic(device_id), payload, detection_id, kind="feedback", record_id=feedback.feedback_id)
    return feedback


def feedback_for(db: sqlite_utils.Database, detection_id: str) -> list[Feedback]:
    """Every verdict on a detection, oldest first (the last one counts)."""
    rows = db.query("SELECT * FROM feedback WHERE detection_id = ? ORDER BY created_on, rowid", [detection_id])
    return [row_to_feedback(row) for row in rows]

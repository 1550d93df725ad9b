"""The device database's schema: migrations, applied in order by `migrate`.

Migrations are plain functions registered with `@migration(version)`. Each runs inside
the same `BEGIN IMMEDIATE` transaction as its bookkeeping row in `schema_migration` and
the `PRAGMA user_version` bump, so a crash mid-migration leaves the previous version.
sqlite-utils' own `Migrations` was not used because it neither sets `user_version` nor
takes the write lock before reading what is applied (two processes opening a new file at
once would both try to create the tables).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from device.domain import iso_utc, utc_now
from device.store.database import StoreError, transaction


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[sqlite_utils.Database], None]


MIGRATIONS: list[Migration] = []


def migration(version: int) -> Callable[[Callable[[sqlite_utils.Database], None]], Callable]:
    """Register a schema migration; versions must be 1, 2, 3... in order of registration."""

    def register(fn: Callable[[sqlite_utils.Database], None]) -> Callable:
        expected = len(MIGRATIONS) + 1
        if version != expected:
            raise ValueError(f"migration {fn.__name__}: version {version}, expected {expected}")
        MIGRATIONS.append(Migration(version, fn.__name__, fn))
        return fn

    return register


def latest_version() -> int:
    return MIGRATIONS[-1].version if MIGRATIONS else 0


@migration(1)
def create_initial_schema(db: sqlite_utils.Database) -> None:
    """Every table of the first release.

    Conventions: singular snake_case tables, UUID text keys, units in column names,
    `_on` columns hold `device.domain.iso_utc` text (which sorts as time does), enums
    are CHECKed, and every foreign key has an index (SQLite makes none by itself).
    """
    statements = [
        """CREATE TABLE tour (
            tour_id TEXT PRIMARY KEY NOT NULL,
            name TEXT NOT NULL,
            guide TEXT,
            started_on TEXT NOT NULL,
            ended_on TEXT,
            CHECK (ended_on IS NULL OR ended_on >= started_on)
        )""",
        # At most one row may have ended_on NULL: one active tour, even across processes.
        "CREATE UNIQUE INDEX tour_single_active ON tour (ended_on IS NULL) WHERE ended_on IS NULL",
        "CREATE INDEX tour_started_on ON tour (started_on)",
        """CREATE TABLE bundle (
            bundle_id TEXT PRIMARY KEY NOT NULL,
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            sha256 TEXT NOT NULL UNIQUE CHECK (length(sha256) = 64),
            first_used_on TEXT NOT NULL,
            last_used_on TEXT NOT NULL
        )""",
        """CREATE TABLE bundle_label (
            bundle_label_id TEXT PRIMARY KEY NOT NULL,
            bundle_id TEXT NOT NULL REFERENCES bundle (bundle_id) ON DELETE CASCADE,
            position INTEGER NOT NULL CHECK (position >= 0),
            primary_label TEXT NOT NULL,
            scientific_name TEXT NOT NULL,
            common_name TEXT NOT NULL,
            class_name TEXT NOT NULL,
            UNIQUE (bundle_id, primary_label)  -- its index, led by bundle_id, serves the foreign key
        )""",
        """CREATE TABLE detection (
            detection_id TEXT PRIMARY KEY NOT NULL,
            device_id TEXT NOT NULL,
            tour_id TEXT REFERENCES tour (tour_id),
            label TEXT NOT NULL,
            started_on TEXT NOT NULL,
            ended_on TEXT NOT NULL,
            start_s REAL NOT NULL,
            end_s REAL NOT NULL,
            peak_start_s REAL NOT NULL,
            confidence REAL NOT NULL CHECK (confidence BETWEEN 0 AND 1),
            branch_scores TEXT NOT NULL CHECK (json_valid(branch_scores)),
            bundle_name TEXT NOT NULL,
            bundle_version TEXT NOT NULL,
            bundle_sha256 TEXT NOT NULL,
            source TEXT NOT NULL,
            window_count INTEGER NOT NULL CHECK (window_count >= 1),
            secondary INTEGER NOT NULL CHECK (secondary IN (0, 1)),
            status TEXT NOT NULL CHECK (status IN ('open', 'closed')),
            close_reason TEXT CHECK (close_reason IN ('ended', 'recovered')),
            created_on TEXT NOT NULL,
            updated_on TEXT NOT NULL,
            closed_on TEXT,
            CHECK (ended_on >= started_on),
            CHECK (end_s >= start_s),
            CHECK ((status = 'open') = (close_reason IS NULL AND closed_on IS NULL))
        )""",
        "CREATE INDEX detection_tour_id ON detection (tour_id)",
        "CREATE INDEX detection_started_on ON detection (started_on)",
        "CREATE INDEX detection_label ON detection (label)",
        "CREATE INDEX detection_open ON detection (status) WHERE status = 'open'",
        """CREATE TABLE clip (
            clip_id TEXT PRIMARY KEY NOT NULL,
            detection_id TEXT NOT NULL REFERENCES detection (detection_id),
            path TEXT NOT NULL UNIQUE,
            sample_rate_hz INTEGER NOT NULL CHECK (sample_rate_hz > 0),
            duration_s REAL NOT NULL CHECK (duration_s > 0),
            start_s REAL NOT NULL,
            size_bytes INTEGER NOT NULL CHECK (size_bytes >= 0),
            created_on TEXT NOT NULL,
            deleted_on TEXT
        )""",
        "CREATE INDEX clip_detection_id ON clip (detection_id)",
        "CREATE INDEX clip_live ON clip (created_on) WHERE deleted_on IS NULL",
        """CREATE TABLE feedback (
            feedback_id TEXT PRIMARY KEY NOT NULL,
            detection_id TEXT NOT NULL REFERENCES detection (detection_id),
            verdict TEXT NOT NULL CHECK (verdict IN ('confirm', 'reject')),
            note TEXT,
            created_on TEXT NOT NULL
        )""",
        "CREATE INDEX feedback_detection_id ON feedback (detection_id, created_on)",
        """CREATE TABLE outbox_message (
            message_id TEXT PRIMARY KEY NOT NULL,
            detection_id TEXT REFERENCES detection (detection_id),
            topic TEXT NOT NULL,
            payload TEXT NOT NULL CHECK (json_valid(payload)),
            created_on TEXT NOT NULL
        )""",
        "CREATE INDEX outbox_message_detection_id ON outbox_message (detection_id)",
        "CREATE INDEX outbox_message_created_on ON outbox_message (created_on)",
        """CREATE TABLE outbox_attempt (
            attempt_id TEXT PRIMARY KEY NOT NULL,
            message_id TEXT NOT NULL REFERENCES outbox_message (message_id) ON DELETE CASCADE,
            attempted_on TEXT NOT NULL,
            destination TEXT NOT NULL,
            result TEXT NOT NULL CHECK (result IN ('SUCCESS', 'FAILURE')),
            detail TEXT
        )""",
        "CREATE INDEX outbox_attempt_message_id ON outbox_attempt (message_id, result, destination)",
        """CREATE TABLE watched_file (
            watched_file_id TEXT PRIMARY KEY NOT NULL,
            path TEXT NOT NULL UNIQUE,
            size_bytes INTEGER NOT NULL CHECK (size_bytes >= 0),
            mtime_s REAL NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('processing', 'done', 'failed')),
            first_seen_on TEXT NOT NULL,
            processed_on TEXT,
            result_csv_path TEXT,
            detail TEXT
        )""",
    ]
    for statement in statements:
        db.execute(statement)


@migration(2)
def add_outbox_receipts(db: sqlite_utils.Database) -> None:
    """Delivery is the server's receipt, not the broker's PUBACK (device/contracts/receipt.py).

    A message now says what it carries (`kind`: 'detection' or 'feedback') and the id a
    receipt names for it (`record_id`: the detection's or the verdict's id), and when a
    receipt confirmed it (`confirmed_on`) or refused it for good (`refused_on`,
    `refused_reason`); either way it is never sent again. Rows queued before this release are
    detections: backfilled with kind 'detection' and their detection id.

    Columns are added, not the table rebuilt: rebuilding would mean dropping `outbox_message`,
    whose attempts cascade on delete, and foreign keys cannot be switched off inside the
    migration's transaction. SQLite's ADD COLUMN needs a default for NOT NULL; every insert
    names both (device/store/outbox.py `enqueue`).
    """
    statements = [
        "ALTER TABLE outbox_message ADD COLUMN kind TEXT NOT NULL DEFAULT 'detection' "
        "CHECK (kind IN ('detection', 'feedback'))",
        "ALTER TABLE outbox_message ADD COLUMN record_id TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE outbox_message ADD COLUMN confirmed_on TEXT",
        "ALTER TABLE outbox_message ADD COLUMN refused_on TEXT",
        "ALTER TABLE outbox_message ADD COLUMN refused_reason TEXT",
        "UPDATE outbox_message SET record_id = coalesce(detection_id, message_id) WHERE record_id = ''",
        # Applying a receipt: one lookup per id it names.
        "CREATE INDEX outbox_message_record ON outbox_message (kind, record_id)",
        # What is still to deliver, in send order: the drains and the status line read only these
        # rows, however many months of confirmed messages the table holds.
        "CREATE INDEX outbox_message_open ON outbox_message (created_on) "
        "WHERE confirmed_on IS NULL AND refused_on IS NULL",
        # The status line's "last" confirmation: max() from the index, not a scan.
        "CREATE INDEX outbox_message_confirmed_on ON outbox_message (confirmed_on) WHERE confirmed_on IS NOT NULL",
    ]
    for statement in statements:
        db.execute(statement)


@migration(3)
def add_clip_upload(db: sqlite_utils.Database) -> None:
    """Clip upload (device/sync/clips.py, device/store/uploads.py): where each clip stands with
    the server, what the server asked for, and the bytes sent per UTC day (the daily budget).

    `clip_upload` has a row once a clip is first considered for upload: its sha256 and size,
    read once from the file; `acked_bytes`, what the server's last ack said it holds (the
    offset the next chunk starts from); `sent_bytes`, the end of the one chunk in flight
    (equal to `acked_bytes` when none is) and `sent_on`, when it went; `state`. `sha256` is
    NULL only for a clip found gone before it was ever read. `clip_request` holds the
    detection ids of the server's latest (retained, always complete) clip request, replaced
    whole by each new one. `clip_upload_day` counts the chunk bytes sent per UTC day, resends
    included: one row a day, however many chunks.
    """
    statements = [
        """CREATE TABLE clip_upload (
            clip_id TEXT PRIMARY KEY NOT NULL REFERENCES clip (clip_id),
            sha256 TEXT CHECK (sha256 IS NULL OR length(sha256) = 64),
            size_bytes INTEGER NOT NULL CHECK (size_bytes >= 0),
            acked_bytes INTEGER NOT NULL DEFAULT 0 CHECK (acked_bytes BETWEEN 0 AND size_bytes),
            sent_bytes INTEGER NOT NULL DEFAULT 0 CHECK (sent_bytes BETWEEN acked_bytes AND size_bytes),
            sent_on TEXT,
            state TEXT NOT NULL CHECK (state IN ('sending', 'complete', 'refused', 'gone')),
            refusals INTEGER NOT NULL DEFAULT 0 CHECK (refusals >= 0),
            reason TEXT,
            created_on TEXT NOT NULL,
            updated_on TEXT NOT NULL,
            CHECK (sha256 IS NOT NULL OR state = 'gone')
        )""",
        """CREATE TABLE clip_request (
            detection_id TEXT PRIMARY KEY NOT NULL REFERENCES detection (detection_id),
            issued_on TEXT NOT NULL,
            received_on TEXT NOT NULL
        )""",
        """CREATE TABLE clip_upload_day (
            utc_day TEXT PRIMARY KEY NOT NULL CHECK (length(utc_day) = 10),
            sent_bytes INTEGER NOT NULL CHECK (sent_bytes >= 0),
            chunks INTEGER NOT NULL CHECK (chunks >= 0)
        )""",
    ]
    for statement in statements:
        db.execute(statement)


@migration(4)
def add_places_and_tour_messages(db: sqlite_utils.Database) -> None:
    """Where the device was, and tours reported to the server (detection payload schema 2, the
    tour message: device/contracts/detection.py, tour.py).

    `detection` gains `site`, `latitude`, `longitude`, `coordinate_uncertainty_m` (NULL for
    detections logged before: their device did not record places, and nothing invents one).
    `tour` gains the device it was walked with and that device's place when it started, so
    the message sent at its end says what the one sent at its start said.

    `outbox_message.kind` must now also allow 'tour', and SQLite cannot change a CHECK in
    place, so the table is rebuilt: a copy with the wider CHECK, then the old dropped and the
    copy renamed. Foreign keys stay on (they cannot be switched off inside the migration's
    transaction) and dropping `outbox_message` would cascade to its attempts, so
    `outbox_attempt` is rebuilt the same way first, its copy referencing the new table; the
    drops then cascade to nothing, and every message, attempt and state is kept (tested:
    tests/device/store/test_places_migration.py).
    """
    statements = [
        "ALTER TABLE detection ADD COLUMN site TEXT",
        "ALTER TABLE detection ADD COLUMN latitude REAL CHECK (latitude BETWEEN -90 AND 90)",
        "ALTER TABLE detection ADD COLUMN longitude REAL CHECK (longitude BETWEEN -180 AND 180)",
        "ALTER TABLE detection ADD COLUMN coordinate_uncertainty_m REAL CHECK (coordinate_uncertainty_m > 0)",
        "ALTER TABLE tour ADD COLUMN device_id TEXT",
        "ALTER TABLE tour ADD COLUMN site TEXT",
        "ALTER TABLE tour ADD COLUMN latitude REAL CHECK (latitude BETWEEN -90 AND 90)",
        "ALTER TABLE tour ADD COLUMN longitude REAL CHECK (longitude BETWEEN -180 AND 180)",
        """CREATE TABLE outbox_message_new (
            message_id TEXT PRIMARY KEY NOT NULL,
            detection_id TEXT REFERENCES detection (detection_id),
            topic TEXT NOT NULL,
            payload TEXT NOT NULL CHECK (json_valid(payload)),
            created_on TEXT NOT NULL,
            kind TEXT NOT NULL DEFAULT 'detection' CHECK (kind IN ('detection', 'feedback', 'tour')),
            record_id TEXT NOT NULL DEFAULT '',
            confirmed_on TEXT,
            refused_on TEXT,
            refused_reason TEXT
        )""",
        """INSERT INTO outbox_message_new (message_id, detection_id, topic, payload, created_on, kind, record_id,
                                          confirmed_on, refused_on, refused_reason)
           SELECT message_id, detection_id, topic, payload, created_on, kind, record_id, confirmed_on, refused_on,
                  refused_reason
           FROM outbox_message ORDER BY rowid""",
        """CREATE TABLE outbox_attempt_new (
            attempt_id TEXT PRIMARY KEY NOT NULL,
            message_id TEXT NOT NULL REFERENCES outbox_message_new (message_id) ON DELETE CASCADE,
            attempted_on TEXT NOT NULL,
            destination TEXT NOT NULL,
            result TEXT NOT NULL CHECK (result IN ('SUCCESS', 'FAILURE')),
            detail TEXT
        )""",
        """INSERT INTO outbox_attempt_new (attempt_id, message_id, attempted_on, destination, result, detail)
           SELECT attempt_id, message_id, attempted_on, destination, result, detail FROM outbox_attempt ORDER BY rowid""",
        "DROP TABLE outbox_attempt",
        "DROP TABLE outbox_message",
        # The rename also rewrites outbox_attempt_new's REFERENCES to the final name.
        "ALTER TABLE outbox_message_new RENAME TO outbox_message",
        "ALTER TABLE outbox_attempt_new RENAME TO outbox_attempt",
        "CREATE INDEX outbox_message_detection_id ON outbox_message (detection_id)",
        "CREATE INDEX outbox_message_created_on ON outbox_message (created_on)",
        "CREATE INDEX outbox_message_record ON outbox_message (kind, record_id)",
        "CREATE INDEX outbox_message_open ON outbox_message (created_on) "
        "WHERE confirmed_on IS NULL AND refused_on IS NULL",
        "CREATE INDEX outbox_message_confirmed_on ON outbox_message (confirmed_on) WHERE confirmed_on IS NOT NULL",
        "CREATE INDEX outbox_attempt_message_id ON outbox_attempt (message_id, result, destination)",
    ]
    for statement in statements:
        db.execute(statement)


@migration(5)
def add_context_scores_and_withheld_clips(db: sqlite_utils.Database) -> None:
    """Context scores and privacy (detection payload schema 3: device/contracts/detection.py).

    `detection` gains `context_scores` (JSON: "Human vocal", "Engine", ... -> the highest score
    over the event's windows; never labels) and `clip_withheld` ('privacy': a person was heard in
    or next to the event, so its clip was never written and never will be). Rows logged before
    get NULL for both: their bundle's context was not kept, and their clips were not filtered.
    """
    statements = [
        "ALTER TABLE detection ADD COLUMN context_scores TEXT "
        "CHECK (context_scores IS NULL OR json_valid(context_scores))",
        "ALTER TABLE detection ADD COLUMN clip_withheld TEXT CHECK (clip_withheld IS NULL OR clip_withheld IN ('privacy'))",
    ]
    for statement in statements:
        db.execute(statement)


def _bookkeeping_table(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE IF NOT EXISTS schema_migration (
            version INTEGER PRIMARY KEY NOT NULL,
            name TEXT NOT NULL,
            applied_on TEXT NOT NULL
        )"""
    )


def user_version(db: sqlite_utils.Database) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def migrate(db: sqlite_utils.Database, path: Path | str) -> int:
    """Apply every pending migration, each in its own transaction; return the final version.

    Raises:
        StoreError: the file was written by a newer release (its `user_version` is ahead).
    """
    found = user_version(db)
    if found == latest_version():
        return found  # the common case: one PRAGMA read, no lock taken
    if found < latest_version():
        for step in MIGRATIONS:
            with transaction(db):
                current = user_version(db)  # re-read under the write lock: another process may have run it
                if step.version <= current:
                    continue
                _bookkeeping_table(db)
                step.apply(db)
                db.execute(
                    "INSERT INTO schema_migration (version, name, applied_on) VALUES (?, ?, ?)",
                    [step.version, step.name, iso_utc(utc_now())],
                )
                # PRAGMA user_version is transactional: it commits or rolls back with the step.
                db.execute(f"PRAGMA user_version = {int(step.version)}")
        found = user_version(db)
    if found > latest_version():
        raise StoreError(
            f"{path}: schema version {found} was written by a newer release of the explorer "
            f"(this one knows up to {latest_version()}); upgrade the software, the data is untouched"
        )
    return found

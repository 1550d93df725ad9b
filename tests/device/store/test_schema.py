"""The schema itself: renaming a column, dropping an index or a PRAGMA fails here."""

from __future__ import annotations

import contextlib
import sqlite3

import pytest

from device.store import Store, StoreError
from device.store import database, migrations
from device.store.migrations import MIGRATIONS, Migration, latest_version

# table -> [(column, declared type, NOT NULL, primary key)] exactly as PRAGMA table_info reports.
EXPECTED_COLUMNS = {
    "tour": [
        ("tour_id", "TEXT", 1, 1), ("name", "TEXT", 1, 0), ("guide", "TEXT", 0, 0),
        ("started_on", "TEXT", 1, 0), ("ended_on", "TEXT", 0, 0), ("device_id", "TEXT", 0, 0),
        ("site", "TEXT", 0, 0), ("latitude", "REAL", 0, 0), ("longitude", "REAL", 0, 0),
    ],
    "bundle": [
        ("bundle_id", "TEXT", 1, 1), ("name", "TEXT", 1, 0), ("version", "TEXT", 1, 0), ("sha256", "TEXT", 1, 0),
        ("first_used_on", "TEXT", 1, 0), ("last_used_on", "TEXT", 1, 0),
    ],
    "bundle_label": [
        ("bundle_label_id", "TEXT", 1, 1), ("bundle_id", "TEXT", 1, 0), ("position", "INTEGER", 1, 0),
        ("primary_label", "TEXT", 1, 0), ("scientific_name", "TEXT", 1, 0), ("common_name", "TEXT", 1, 0),
        ("class_name", "TEXT", 1, 0),
    ],
    "detection": [
        ("detection_id", "TEXT", 1, 1), ("device_id", "TEXT", 1, 0), ("tour_id", "TEXT", 0, 0),
        ("label", "TEXT", 1, 0), ("started_on", "TEXT", 1, 0), ("ended_on", "TEXT", 1, 0),
        ("start_s", "REAL", 1, 0), ("end_s", "REAL", 1, 0), ("peak_start_s", "REAL", 1, 0),
        ("confidence", "REAL", 1, 0), ("branch_scores", "TEXT", 1, 0), ("bundle_name", "TEXT", 1, 0),
        ("bundle_version", "TEXT", 1, 0), ("bundle_sha256", "TEXT", 1, 0), ("source", "TEXT", 1, 0),
        ("window_count", "INTEGER", 1, 0), ("secondary", "INTEGER", 1, 0), ("status", "TEXT", 1, 0),
        ("close_reason", "TEXT", 0, 0), ("created_on", "TEXT", 1, 0), ("updated_on", "TEXT", 1, 0),
        ("closed_on", "TEXT", 0, 0), ("site", "TEXT", 0, 0), ("latitude", "REAL", 0, 0),
        ("longitude", "REAL", 0, 0), ("coordinate_uncertainty_m", "REAL", 0, 0),
        ("context_scores", "TEXT", 0, 0), ("clip_withheld", "TEXT", 0, 0),
    ],
    "clip": [
        ("clip_id", "TEXT", 1, 1), ("detection_id", "TEXT", 1, 0), ("path", "TEXT", 1, 0),
        ("sample_rate_hz", "INTEGER", 1, 0), ("duration_s", "REAL", 1, 0), ("start_s", "REAL", 1, 0),
        ("size_bytes", "INTEGER", 1, 0), ("created_on", "TEXT", 1, 0), ("deleted_on", "TEXT", 0, 0),
    ],
    "feedback": [
        ("feedback_id", "TEXT", 1, 1), ("detection_id", "TEXT", 1, 0), ("verdict", "TEXT", 1, 0),
        ("note", "TEXT", 0, 0), ("created_on", "TEXT", 1, 0),
    ],
    "outbox_message": [
        ("message_id", "TEXT", 1, 1), ("detection_id", "TEXT", 0, 0), ("topic", "TEXT", 1, 0),
        ("payload", "TEXT", 1, 0), ("created_on", "TEXT", 1, 0), ("kind", "TEXT", 1, 0),
        ("record_id", "TEXT", 1, 0), ("confirmed_on", "TEXT", 0, 0), ("refused_on", "TEXT", 0, 0),
        ("refused_reason", "TEXT", 0, 0),
    ],
    "outbox_attempt": [
        ("attempt_id", "TEXT", 1, 1), ("message_id", "TEXT", 1, 0), ("attempted_on", "TEXT", 1, 0),
        ("destination", "TEXT", 1, 0), ("result", "TEXT", 1, 0), ("detail", "TEXT", 0, 0),
    ],
    "watched_file": [
        ("watched_file_id", "TEXT", 1, 1), ("path", "TEXT", 1, 0), ("size_bytes", "INTEGER", 1, 0),
        ("mtime_s", "REAL", 1, 0), ("status", "TEXT", 1, 0), ("first_seen_on", "TEXT", 1, 0),
        ("processed_on", "TEXT", 0, 0), ("result_csv_path", "TEXT", 0, 0), ("detail", "TEXT", 0, 0),
    ],
    "clip_upload": [
        ("clip_id", "TEXT", 1, 1), ("sha256", "TEXT", 0, 0), ("size_bytes", "INTEGER", 1, 0),
        ("acked_bytes", "INTEGER", 1, 0), ("sent_bytes", "INTEGER", 1, 0), ("sent_on", "TEXT", 0, 0),
        ("state", "TEXT", 1, 0), ("refusals", "INTEGER", 1, 0), ("reason", "TEXT", 0, 0),
        ("created_on", "TEXT", 1, 0), ("updated_on", "TEXT", 1, 0),
    ],
    "clip_request": [("detection_id", "TEXT", 1, 1), ("issued_on", "TEXT", 1, 0), ("received_on", "TEXT", 1, 0)],
    "clip_upload_day": [("utc_day", "TEXT", 1, 1), ("sent_bytes", "INTEGER", 1, 0), ("chunks", "INTEGER", 1, 0)],
    "schema_migration": [("version", "INTEGER", 1, 1), ("name", "TEXT", 1, 0), ("applied_on", "TEXT", 1, 0)],
}  # fmt: skip

EXPECTED_FOREIGN_KEYS = {
    ("bundle_label", "bundle_id", "bundle", "bundle_id"),
    ("detection", "tour_id", "tour", "tour_id"),
    ("clip", "detection_id", "detection", "detection_id"),
    ("feedback", "detection_id", "detection", "detection_id"),
    ("outbox_message", "detection_id", "detection", "detection_id"),
    ("outbox_attempt", "message_id", "outbox_message", "message_id"),
    ("clip_upload", "clip_id", "clip", "clip_id"),
    ("clip_request", "detection_id", "detection", "detection_id"),
}


def test_every_table_has_exactly_the_expected_columns(store):
    assert set(store.db.table_names()) == set(EXPECTED_COLUMNS)
    for table, expected in EXPECTED_COLUMNS.items():
        found = [(r[1], r[2], r[3], r[5]) for r in store.db.execute(f"PRAGMA table_info({table})")]
        assert found == expected, table


def test_foreign_keys_are_declared_and_each_has_an_index(store):
    found = set()
    for table in EXPECTED_COLUMNS:
        for fk in store.db.execute(f"PRAGMA foreign_key_list({table})"):
            found.add((table, fk[3], fk[2], fk[4]))
            leading = {
                store.db.execute(f"PRAGMA index_info({index[1]})").fetchone()[2]
                for index in store.db.execute(f"PRAGMA index_list({table})")
            }
            assert fk[3] in leading, f"{table}.{fk[3]} has no index led by it"
    assert found == EXPECTED_FOREIGN_KEYS


def test_connection_settings(store):
    pragma = lambda name: store.db.execute(f"PRAGMA {name}").fetchone()[0]  # noqa: E731
    assert pragma("journal_mode") == "wal"
    assert pragma("foreign_keys") == 1
    assert pragma("busy_timeout") == database.BUSY_TIMEOUT_MS
    assert pragma("synchronous") == 2  # FULL: a returned commit survives a power cut
    assert pragma("user_version") == latest_version() >= 1


def test_every_migration_is_recorded_once_and_reopening_changes_nothing(db_path):
    first = Store.open(db_path)
    rows = [(r[0], r[1]) for r in first.db.execute("SELECT version, name FROM schema_migration ORDER BY version")]
    assert rows == [(m.version, m.name) for m in MIGRATIONS]
    first.close()
    again = Store.open(db_path)
    assert again.db.execute("SELECT count(*) FROM schema_migration").fetchone()[0] == len(MIGRATIONS)


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO feedback VALUES ('f', 'd', 'maybe', NULL, '2026-01-01T00:00:00.000Z')",
        "INSERT INTO outbox_attempt VALUES ('a', 'm', '2026-01-01T00:00:00.000Z', 'broker', 'SENT', NULL)",
        "INSERT INTO watched_file VALUES ('w', '/x.wav', 1, 1.0, 'queued', '2026-01-01T00:00:00.000Z', NULL, NULL, NULL)",
        "INSERT INTO outbox_message (message_id, topic, payload, created_on, kind, record_id) "
        "VALUES ('m', 't', '{}', '2026-01-01T00:00:00.000Z', 'clip', 'r')",
        "INSERT INTO tour (tour_id, name, started_on, latitude, longitude) "
        "VALUES ('t', 'x', '2026-01-01T00:00:00.000Z', 91, 0)",
        "INSERT INTO tour (tour_id, name, started_on, latitude, longitude) "
        "VALUES ('t', 'x', '2026-01-01T00:00:00.000Z', 0, -181)",
    ],
)
def test_check_constraints_refuse_unknown_enum_values(store, sql):
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        store.db.execute(sql)


def test_a_detection_row_must_be_consistent_about_being_open(store, make_detection):
    det = make_detection()
    store.save_detection(det)
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        store.db.execute("UPDATE detection SET status = 'closed' WHERE detection_id = ?", [det.detection_id])


def test_a_failing_migration_rolls_back_with_its_bookkeeping(db_path, monkeypatch):
    Store.open(db_path).close()

    def add_column_then_fail(db):
        db.execute("ALTER TABLE tour ADD COLUMN weather TEXT")
        raise RuntimeError("migration bug")

    with monkeypatch.context() as patch:
        patch.setattr(migrations, "MIGRATIONS", MIGRATIONS + [Migration(latest_version() + 1, "bad", add_column_then_fail)])
        with pytest.raises(RuntimeError, match="migration bug"):
            Store.open(db_path)
    store = Store.open(db_path)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == latest_version()
    assert "weather" not in {r[1] for r in store.db.execute("PRAGMA table_info(tour)")}
    assert store.db.execute("SELECT count(*) FROM schema_migration").fetchone()[0] == len(MIGRATIONS)


def test_a_new_migration_applies_once_and_bumps_user_version(db_path, monkeypatch):
    Store.open(db_path).close()

    def add_weather(db):
        db.execute("ALTER TABLE tour ADD COLUMN weather TEXT")

    base = latest_version()
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS + [Migration(base + 1, "add_weather", add_weather)])
    for _ in range(2):
        store = Store.open(db_path)
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == base + 1
        assert "weather" in {r[1] for r in store.db.execute("PRAGMA table_info(tour)")}
        store.close()
    with contextlib.closing(sqlite3.connect(db_path)) as raw:
        names = [r[0] for r in raw.execute("SELECT name FROM schema_migration ORDER BY version")]
    assert names[-1] == "add_weather" and names.count("add_weather") == 1


def test_a_database_from_a_newer_release_is_refused_untouched(db_path):
    Store.open(db_path).close()
    raw = sqlite3.connect(db_path)
    raw.execute(f"PRAGMA user_version = {latest_version() + 5}")
    raw.close()
    with pytest.raises(StoreError, match=rf"{db_path}.*newer release"):
        Store.open(db_path)
    raw = sqlite3.connect(db_path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == latest_version() + 5
    raw.close()


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    bogus = tmp_path / "explorer.db"
    bogus.write_bytes(b"this is a text file, not SQLite\n" * 200)
    with pytest.raises(StoreError, match=rf"{bogus}.*not a healthy explorer database"):
        Store.open(bogus)


def test_a_directory_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="is a directory"):
        Store.open(tmp_path)


def test_open_creates_missing_parent_folders(tmp_path):
    path = tmp_path / "new" / "home" / "explorer.db"
    with Store.open(path) as store:
        assert store.active_tour() is None
    assert path.is_file()


def test_several_processes_creating_the_database_at_once_migrate_it_once(db_path):
    import subprocess
    import sys

    code = "import sys; from device.store import Store; Store.open(sys.argv[1]).close(); print('ok')"
    command = [sys.executable, "-c", code, str(db_path)]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [child.communicate(timeout=60)[0] for child in children]
    assert [child.returncode for child in children] == [0, 0, 0, 0] and outputs == ["ok\n"] * 4
    with contextlib.closing(sqlite3.connect(db_path)) as raw:
        assert raw.execute("SELECT count(*) FROM schema_migration").fetchone()[0] == len(MIGRATIONS)
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

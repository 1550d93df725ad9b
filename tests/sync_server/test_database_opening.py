"""Opening the aggregate database: a bad target named with its reason, a file that is not a
database, an unreachable PostgreSQL, a new SQLite file two workers open at once, and an
aggregate.db written by the first (SQLite-only) server."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest
from sqlalchemy import inspect

from device.contracts.detection import FIELDS_V1, PLACE_FIELDS, parse_payload, payload_to_json
from sync_server.db import Counts, Rejected, ServerStore, ServerStoreError
from tests.mqtt import free_port
from tests.sync_server.rows import payload, stored

FIRST_SERVER_SCHEMA = """
CREATE TABLE IF NOT EXISTS detection (
    detection_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, tour_id TEXT, label TEXT NOT NULL,
    scientific_name TEXT, common_name TEXT, class_name TEXT, started_on TEXT NOT NULL,
    ended_on TEXT NOT NULL, start_s REAL NOT NULL, end_s REAL NOT NULL, confidence REAL NOT NULL,
    branch_scores TEXT NOT NULL, bundle_name TEXT NOT NULL, bundle_version TEXT NOT NULL,
    bundle_sha256 TEXT NOT NULL, source TEXT NOT NULL, window_count INTEGER NOT NULL,
    secondary INTEGER NOT NULL, schema INTEGER NOT NULL, first_received_on TEXT NOT NULL,
    last_received_on TEXT NOT NULL, deliveries INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS detection_device_started ON detection (device_id, started_on);
CREATE INDEX IF NOT EXISTS detection_label ON detection (label);
CREATE TABLE IF NOT EXISTS rejected_message (
    rejected_id INTEGER PRIMARY KEY AUTOINCREMENT, received_on TEXT NOT NULL, topic TEXT NOT NULL,
    reason TEXT NOT NULL, size_bytes INTEGER NOT NULL, payload_head TEXT NOT NULL
);
"""
"""The DDL of the first server's sync_server/database.py (SQLite only), verbatim but for layout."""


def test_a_worker_opening_a_new_sqlite_file_that_another_is_writing_waits_for_it(tmp_path):
    # SQLite answers a switch to WAL that races another connection's write lock with SQLITE_BUSY
    # at once, busy timeout or not: several workers starting on a new file must still all open it.
    db = tmp_path / "aggregate.db"
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE early (x)")  # the file exists, still in rollback-journal mode
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO early VALUES (1)")
    release = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        with ServerStore.open(db) as store:
            assert store.counts() == Counts(detections=0, devices=0, rejected=0)
    finally:
        release.join()
        holder.close()


def test_an_aggregate_db_written_by_the_first_server_opens_and_goes_on(tmp_path):
    db = tmp_path / "aggregate.db"
    old = sqlite3.connect(db)
    old.executescript(FIRST_SERVER_SCHEMA)
    first = payload(0, schema=1)  # a device of the first server's time: schema 1, no place (parsed as nulls)
    assert [first[name] for name in PLACE_FIELDS] == [None] * 4
    for name in [name for name in first if name not in FIELDS_V1]:  # the fields later schemas added
        del first[name]
    row = dict(first, branch_scores=json.dumps(first["branch_scores"], sort_keys=True, allow_nan=False),
               secondary=int(first["secondary"]), first_received_on="2026-04-20T07:41:00.000Z",
               last_received_on="2026-04-20T07:41:00.000Z")
    first = parse_payload(payload_to_json(first))  # its resend, as the ingest hands it on
    old.execute(f"INSERT INTO detection ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
    old.execute("INSERT INTO rejected_message (received_on, topic, reason, size_bytes, payload_head) "
                "VALUES ('2026-04-20T07:42:00.000Z', 'explorer/pi-h02/detection', 'not valid JSON', 9, '{not json')")
    old.commit()
    old.close()

    with ServerStore.open(db) as store:
        assert store.counts() == Counts(detections=1, devices=1, rejected=1)
        assert store.store_batch([first, payload(1)], [Rejected("explorer/pi-h02/detection", "not UTF-8", b"\xff")]) \
            == ["unchanged", "inserted"]  # the old row's encoding compares equal to a resend
        assert stored(store, first["detection_id"])["deliveries"] == 2
        assert [(r.rejected_id, r.reason) for r in store.recent_rejections(5)] == [
            (2, "not UTF-8"), (1, "not valid JSON")]
        assert set(inspect(store.engine).get_table_names()) == {
            "detection", "rejected_message", "device_status", "feedback", "clip", "tour", "api_token"}
        # The old row is numbered first (it was received first), the new one after it.
        assert (stored(store, first["detection_id"])["seq"], stored(store, payload(1)["detection_id"])["seq"]) == (1, 2)
    check = sqlite3.connect(db)
    assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    (ddl,) = check.execute("SELECT sql FROM sqlite_master WHERE name = 'rejected_message'").fetchone()
    assert "AUTOINCREMENT" in ddl  # the old table is left as it was
    check.close()


@pytest.mark.parametrize("target, expected", [
    ("mysql://explorer@db.example.org/explorer", "unknown scheme 'mysql'"),
    ("postgresql://explorer:s3cret@db.example.org:port/explorer", "its port is not a number"),
    ("sqlite://", "names no file"),
    ("postgresql://explorer@127.0.0.1:5432", "names no database"),
])
def test_a_bad_target_is_named_with_the_reason(target, expected):
    with pytest.raises(ServerStoreError, match="aggregate database") as raised:
        ServerStore.open(target)
    assert expected in str(raised.value) and "s3cret" not in str(raised.value)


def test_a_file_that_is_not_a_database_or_cannot_be_one_is_named(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("field notes, not a database\n" * 100)
    with pytest.raises(ServerStoreError, match=f"aggregate database {junk}: cannot open it: file is not a database"):
        ServerStore.open(junk)
    with pytest.raises(ServerStoreError, match="cannot open it: unable to open database file"):
        ServerStore.open(tmp_path)
    with pytest.raises(ServerStoreError, match="no such file"):
        ServerStore.open(tmp_path / "missing.db", must_exist=True)
    assert not (tmp_path / "missing.db").exists()
    with ServerStore.open(f"sqlite:///{tmp_path / 'deep' / 'er' / 'aggregate.db'}") as store:
        assert store.dialect == "sqlite" and store.counts() == Counts(0, 0, 0)


def test_an_unreachable_or_missing_postgresql_database_is_named(postgres_server):
    port = free_port()
    with pytest.raises(ServerStoreError) as raised:
        ServerStore.open(f"postgresql://explorer:s3cret@127.0.0.1:{port}/explorer")
    message = str(raised.value)
    assert message.startswith(f"aggregate database postgresql://explorer:***@127.0.0.1:{port}/explorer: cannot open it")
    assert "Connection refused" in message and "s3cret" not in message
    with pytest.raises(ServerStoreError, match='database "no_such_db" does not exist'):
        ServerStore.open(postgres_server.url("no_such_db"))


# ---------------------------------------------------------------------------------------------
# Verdicts and statuses, in the same transaction as the detections

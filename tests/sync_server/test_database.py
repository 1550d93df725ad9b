"""The aggregate database on SQLite and on a real PostgreSQL: upsert outcomes, whole batches,
two worker processes racing on the same ids, a full disk, a lock held too long, a PostgreSQL
restart (opening it: test_database_opening.py; verdicts and statuses: test_verdicts_statuses.py)."""

from __future__ import annotations

import json
import random
import resource
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from device.contracts.detection import SCHEMA
from sync_server.db import Counts, Rejected, ServerStore, ServerStoreError
from sync_server.db.records import REJECTED_HEAD_BYTES
from sync_server.db.schema import detection, feedback
from tests.helpers import REPO
from tests.sync_server.rows import OTHER, OWNER, T0, grown, payload, stored

# ---------------------------------------------------------------------------------------------
# The schema


def test_both_engines_hold_the_same_tables_columns_and_indexes(server_db, server_target):
    inspector = inspect(server_db.engine)
    columns = {table: [c["name"] for c in inspector.get_columns(table)] for table in inspector.get_table_names()}
    assert columns == {
        "detection": ["detection_id", "device_id", "tour_id", "label", "scientific_name", "common_name",
                      "class_name", "started_on", "ended_on", "start_s", "end_s", "confidence", "branch_scores",
                      "bundle_name", "bundle_version", "bundle_sha256", "source", "window_count", "secondary",
                      "schema", "first_received_on", "last_received_on", "deliveries", "seq", "site", "latitude",
                      "longitude", "coordinate_uncertainty_m", "context_scores", "clip_withheld"],
        "rejected_message": ["rejected_id", "received_on", "topic", "reason", "size_bytes", "payload_head"],
        "device_status": ["device_id", "status_json", "online", "received_on", "published_on", "connected_on"],
        "feedback": ["feedback_id", "detection_id", "device_id", "verdict", "note", "given_on",
                     "first_received_on", "last_received_on", "deliveries"],
        "clip": ["clip_id", "device_id", "detection_id", "path", "sha256", "size_bytes", "sample_rate_hz",
                 "duration_s", "start_s", "received_on"],
        "tour": ["tour_id", "device_id", "name", "guide", "started_on", "ended_on", "site", "latitude", "longitude",
                 "first_received_on", "last_received_on", "deliveries"],
        "api_token": ["token_id", "name", "token_sha256", "created_on", "revoked_on", "last_used_on"],
    }
    assert {i["name"]: i["column_names"] for i in inspector.get_indexes("detection")} == {
        "detection_device_started": ["device_id", "started_on"], "detection_label": ["label"],
        "detection_seq": ["seq"], "detection_tour": ["tour_id"]}
    assert {i["name"]: i["column_names"] for i in inspector.get_indexes("feedback")} == {
        "feedback_detection": ["detection_id"]}
    assert {i["name"]: i["column_names"] for i in inspector.get_indexes("clip")} == {"clip_detection": ["detection_id"]}
    primary = {table: inspector.get_pk_constraint(table)["constrained_columns"] for table in columns}
    assert primary == {"detection": ["detection_id"], "rejected_message": ["rejected_id"],
                       "device_status": ["device_id"], "feedback": ["feedback_id"], "clip": ["clip_id"],
                       "tour": ["tour_id"], "api_token": ["token_id"]}
    # Opening again (a second worker, a restart) changes nothing.
    with ServerStore.open(server_target) as again:
        assert again.counts() == Counts(0, 0, 0)


def test_feedback_verdicts_are_limited_to_confirm_and_reject(server_db):
    row = {"feedback_id": str(uuid.uuid4()), "detection_id": payload(0)["detection_id"], "device_id": OWNER,
           "note": None, "given_on": "2026-04-20T08:00:00.000Z", "first_received_on": "2026-04-20T08:00:01.000Z",
           "last_received_on": "2026-04-20T08:00:01.000Z"}
    with server_db.engine.begin() as connection:
        connection.execute(feedback.insert(), dict(row, verdict="confirm"))
    with pytest.raises(IntegrityError, match="feedback_verdict_known"):
        with server_db.engine.begin() as connection:
            connection.execute(feedback.insert(), dict(row, feedback_id=str(uuid.uuid4()), verdict="maybe"))


# ---------------------------------------------------------------------------------------------
# Upserts


def test_a_new_detection_then_a_resend_then_a_newer_state(server_db):
    first = payload(0)
    assert server_db.store_batch([first], []) == ["inserted"]
    row = stored(server_db, first["detection_id"])
    assert {k: row[k] for k in ("device_id", "label", "confidence", "started_on", "start_s", "secondary", "deliveries",
                                "tour_id", "schema")} == {
        "device_id": OWNER, "label": "21211", "confidence": 0.9, "started_on": "2026-04-20T07:40:00.000Z",
        "start_s": 0.0, "secondary": 0, "deliveries": 1, "tour_id": None, "schema": SCHEMA}  # what devices send now
    assert json.loads(row["branch_scores"]) == {"birdnet": 0.9, "frog_head": None}
    assert row["first_received_on"] == row["last_received_on"] and row["first_received_on"].endswith("Z")

    time.sleep(0.002)  # the receipt time has millisecond resolution
    assert server_db.store_batch([first], []) == ["unchanged"]
    resent = stored(server_db, first["detection_id"])
    assert resent["deliveries"] == 2
    assert resent["first_received_on"] == row["first_received_on"] < resent["last_received_on"]

    newer = grown(0, windows=3, confidence=0.97, secondary=True)
    assert server_db.store_batch([newer], []) == ["updated"]
    updated = stored(server_db, first["detection_id"])
    assert (updated["window_count"], updated["confidence"], updated["secondary"], updated["ended_on"],
            updated["deliveries"]) == (3, 0.97, 1, newer["ended_on"], 3)
    assert server_db.counts() == Counts(detections=1, devices=1, rejected=0)


def test_the_same_detection_several_times_in_one_batch(server_db):
    first, later = payload(0), grown(0, windows=2)
    outcomes = server_db.store_batch([first, first, later, payload(1), later], [])
    assert outcomes == ["inserted", "unchanged", "updated", "inserted", "unchanged"]
    row = stored(server_db, first["detection_id"])
    assert (row["window_count"], row["deliveries"]) == (2, 4)
    assert server_db.counts() == Counts(detections=2, devices=1, rejected=0)


def test_a_detection_id_claimed_by_another_device_is_refused_and_recorded_with_both_names(server_db):
    owned = payload(0)
    server_db.store_batch([owned], [])
    claim = payload(0, device_id=OTHER, label="littin1")
    assert server_db.store_batch([claim, payload(1, device_id=OTHER)], []) == ["foreign", "inserted"]
    row = stored(server_db, owned["detection_id"])
    assert (row["device_id"], row["label"], row["deliveries"]) == (OWNER, "21211", 1)  # never overwritten
    (refusal,) = server_db.recent_rejections(5)
    assert refusal.reason == f"detection {owned['detection_id']} belongs to device '{OWNER}', not '{OTHER}'"
    assert refusal.topic == f"explorer/{OTHER}/detection"
    assert refusal.payload_head.startswith("{") and '"littin1"' in refusal.payload_head
    assert server_db.counts() == Counts(detections=2, devices=2, rejected=1)


def test_refused_messages_keep_their_reason_and_only_the_head_of_their_bytes(server_db):
    huge = b"x" * 20_000
    server_db.store_batch([], [Rejected("explorer/pi-h02/detection", "over the 16384-byte limit", huge),
                               Rejected("explorer/pi-h02/detection", "not UTF-8", b"\xff\xfe{")])
    newest, oldest = server_db.recent_rejections(5)
    assert (oldest.reason, oldest.size_bytes, oldest.payload_head) == (
        "over the 16384-byte limit", 20_000, "x" * REJECTED_HEAD_BYTES)
    assert (newest.reason, newest.payload_head) == ("not UTF-8", "\\xff\\xfe{")
    assert newest.rejected_id > oldest.rejected_id
    assert [r.reason for r in server_db.recent_rejections(1)] == ["not UTF-8"]
    assert server_db.counts() == Counts(detections=0, devices=0, rejected=2)


def test_reads_by_device(server_db):
    server_db.store_batch([payload(0), payload(7), payload(3, device_id=OTHER)], [])
    assert server_db.detection_ids() == {payload(n)["detection_id"] for n in (0, 7, 3)}
    assert server_db.detection_ids(OTHER) == {payload(3)["detection_id"]}
    assert server_db.newest_detection_on(OWNER) == T0 + timedelta(seconds=35)
    assert server_db.newest_detection_on("pi-h99") is None


# ---------------------------------------------------------------------------------------------
# Failures


def test_a_batch_that_fails_midway_leaves_nothing_of_it(server_db):
    kept = payload(0)
    server_db.store_batch([kept], [])
    before = stored(server_db, kept["detection_id"])
    # Detections 1 and 2 are inserted and detection 0 updated before the last one breaks a
    # NOT NULL constraint (a repeat of detection 1, so it fails in the batch's update step).
    batch = [payload(1), payload(2), grown(0, windows=2), payload(1, label=None)]
    refused = [Rejected("explorer/pi-h02/detection", "not valid JSON", b"{not json")]
    with pytest.raises(ServerStoreError) as raised:
        server_db.store_batch(batch, refused)
    message = str(raised.value)
    assert message.startswith(f"aggregate database {server_db.label}: could not store a batch of 4 detections")
    assert "label" in message and raised.value.__cause__ is not None
    assert server_db.counts() == Counts(detections=1, devices=1, rejected=0)
    assert stored(server_db, kept["detection_id"]) == before
    assert server_db.store_batch(batch[:3], refused) == ["inserted", "inserted", "updated"]  # and it goes on


def test_a_lock_held_past_the_timeout_fails_the_batch_and_the_store_goes_on(server_target, monkeypatch):
    monkeypatch.setattr("sync_server.db.engine.BUSY_TIMEOUT_MS", 300)
    store = ServerStore.open(server_target)
    try:
        store.store_batch([payload(0)], [])
        if store.dialect == "sqlite":
            holder = sqlite3.connect(server_target, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
        else:
            holder = psycopg.connect(server_target)
            holder.execute("LOCK TABLE detection IN EXCLUSIVE MODE")
        try:
            with pytest.raises(ServerStoreError) as raised:
                store.store_batch([payload(1), payload(0)], [])
        finally:
            holder.rollback()
            holder.close()
        assert any(words in str(raised.value) for words in ("database is locked", "lock timeout")), raised.value
        assert store.store_batch([payload(1), payload(0)], []) == ["inserted", "unchanged"]
        assert store.counts() == Counts(detections=2, devices=1, rejected=0)
    finally:
        store.close()


def test_a_stopped_postgresql_server_fails_each_call_until_it_is_back(postgres_server):
    name = postgres_server.create_database()
    store = ServerStore.open(postgres_server.url(name))
    try:
        assert store.store_batch([payload(0)], []) == ["inserted"]
        postgres_server.stop()
        try:
            with pytest.raises(ServerStoreError) as raised:
                store.store_batch([payload(1), payload(0)], [])
            assert str(raised.value).startswith(f"aggregate database {store.label}: could not store a batch")
            assert "connection" in str(raised.value) and raised.value.__cause__ is not None
            with pytest.raises(ServerStoreError, match="could not count"):
                store.counts()
        finally:
            postgres_server.start()
        # the same store, its pooled connections gone stale, reconnects on its own
        assert store.store_batch([payload(1), payload(0)], []) == ["inserted", "unchanged"]
        assert store.counts() == Counts(detections=2, devices=1, rejected=0)
    finally:
        store.close()
        postgres_server.drop_database(name)


FULL_DISK_WORKER = """
import json, resource, sys
from sync_server.db import ServerStore, ServerStoreError
from tests.sync_server.rows import payload
store = ServerStore.open(sys.argv[1])
committed, error, n = [], None, 1000
while error is None and n < 100_000:
    batch = [payload(k) for k in range(n, n + 50)]
    try:
        store.store_batch(batch, [])
        committed += [p["detection_id"] for p in batch]
        n += 50
    except ServerStoreError as exc:
        error = str(exc)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # room again
retried = store.store_batch(batch, [])
store.close()
print(json.dumps({"committed": committed, "error": error, "failed": [p["detection_id"] for p in batch],
                  "retried": retried}))
"""


def test_a_full_disk_under_sqlite_fails_the_batch_keeps_what_was_committed_and_recovers(tmp_path):
    db = tmp_path / "server" / "aggregate.db"
    with ServerStore.open(db) as store:
        store.store_batch([payload(n) for n in range(20)], [])
        before = store.detection_ids()
    limit = db.stat().st_size + 64_000  # a little room for the write-ahead log, then the disk is "full"

    def limit_file_size() -> None:
        # Writes past the limit then fail with EFBIG, as a full disk fails them with ENOSPC. The
        # hard limit stays unlimited so the worker can lift it: the operator freed space.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    result = subprocess.run([sys.executable, "-c", FULL_DISK_WORKER, str(db)], cwd=REPO, capture_output=True,
                            text=True, timeout=120, preexec_fn=limit_file_size)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["error"] is not None, "the size limit was never reached"
    assert report["error"].startswith(f"aggregate database {db}: could not store a batch of 50 detections")
    assert "the disk refused a write" in report["error"] or "the disk is full" in report["error"]
    assert report["retried"] == ["inserted"] * 50  # nothing of the failed batch had been kept

    check = sqlite3.connect(db)
    try:
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        check.close()
    with ServerStore.open(db) as store:
        assert store.detection_ids() == before | set(report["committed"]) | set(report["failed"])


# ---------------------------------------------------------------------------------------------
# Several worker processes

RACE_IDS = 120
RACE_BATCH = 10
RACE_ROUNDS = 2


def race_worker(argv: list[str]) -> None:
    """One ingest worker of the race below: its own process, its own ServerStore."""
    target, upper_device, order, folder, name = argv
    folder = Path(folder)
    numbers = list(range(RACE_IDS))
    if order == "shuffled":
        random.Random(7).shuffle(numbers)
    (folder / f"{name}.ready").touch()
    wait_for_files(folder / "go")
    store = ServerStore.open(target)  # both open a fresh database at once: the schema race too
    (folder / f"{name}.opened").touch()
    wait_for_files(folder / "a.opened", folder / "b.opened")
    outcomes: dict[int, list[str]] = {}
    for _ in range(RACE_ROUNDS):
        for start in range(0, RACE_IDS, RACE_BATCH):
            chunk = numbers[start:start + RACE_BATCH]
            batch = [payload(n, device_id=OWNER if n < RACE_IDS // 2 else upper_device) for n in chunk]
            for n, outcome in zip(chunk, store.store_batch(batch, [])):
                outcomes.setdefault(n, []).append(outcome)
    store.close()
    print(json.dumps({"outcomes": outcomes, "retries": store.retries}))


def wait_for_files(*paths: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(path.exists() for path in paths):
        if time.monotonic() > deadline:
            raise TimeoutError(f"none of {paths} within {timeout_s} s")
        time.sleep(0.002)


def test_two_worker_processes_upserting_the_same_ids_lose_no_delivery_and_overwrite_no_device(server_target, tmp_path):
    # Each worker sends every detection twice. Worker A, in order, always as pi-h02; worker B,
    # shuffled, as pi-h02 for the lower half and as pi-h03 for the upper half (a claim race).
    workers = {
        name: subprocess.Popen(
            [sys.executable, "-c", "import sys; from tests.sync_server.test_database import race_worker; "
                                   "race_worker(sys.argv[1:])",
             server_target, device, order, str(tmp_path), name],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, device, order in (("a", OWNER, "ordered"), ("b", OTHER, "shuffled"))
    }
    wait_for_files(tmp_path / "a.ready", tmp_path / "b.ready")
    (tmp_path / "go").touch()
    results = {}
    for name, process in workers.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        results[name] = {int(n): outcomes for n, outcomes in json.loads(out)["outcomes"].items()}

    devices = {"a": OWNER, "b": OTHER}
    with ServerStore.open(server_target) as store:
        assert store.counts().detections == RACE_IDS
        foreign = 0
        for n in range(RACE_IDS):
            row = stored(store, payload(n)["detection_id"])
            every = results["a"][n] + results["b"][n]
            assert every.count("inserted") == 1, (n, results["a"][n], results["b"][n])
            if n < RACE_IDS // 2:  # both as pi-h02: four deliveries, none lost
                assert (row["device_id"], row["deliveries"]) == (OWNER, 2 * RACE_ROUNDS)
                assert sorted(every) == ["inserted"] + ["unchanged"] * (2 * RACE_ROUNDS - 1)
                continue
            owner = "a" if "inserted" in results["a"][n] else "b"
            loser = "b" if owner == "a" else "a"
            assert row["device_id"] == devices[owner]
            assert row["deliveries"] == len(results[owner][n])
            assert "foreign" not in results[owner][n] and set(results[loser][n]) == {"foreign"}
            foreign += len(results[loser][n])
        reasons = [r.reason for r in store.recent_rejections(1000)]
    assert len(reasons) == foreign > 0
    assert all(f"'{OWNER}'" in reason and f"'{OTHER}'" in reason for reason in reasons)
    with ServerStore.open(server_target) as store, store.engine.connect() as connection:
        numbers = connection.execute(select(detection.c.seq)).scalars().all()
    assert None not in numbers and len(set(numbers)) == RACE_IDS  # every row numbered, none twice


def test_each_new_detection_is_numbered_in_commit_order_and_a_resend_or_update_keeps_its_number(server_db):
    server_db.store_batch([payload(5), payload(3)])
    server_db.store_batch([payload(1), payload(3), grown(5, 3)])  # a late, older detection; a resend; an update
    numbers = {n: stored(server_db, payload(n)["detection_id"])["seq"] for n in (1, 3, 5)}
    first_batch = sorted([numbers[3], numbers[5]])
    assert first_batch == [1, 2] and numbers[1] == 3  # the older recording, committed later, comes after


# ---------------------------------------------------------------------------------------------
# Opening

def test_context_scores_and_a_withheld_clip_are_kept_and_such_a_clip_is_never_asked_for(server_db):
    """Payload schema 3: BirdNET's context scores and the device's privacy mark reach the row (and
    the researchers' row), and the server's clip request leaves out a detection whose clip the
    device withheld, since none will ever come."""
    from sync_server.db.queries import detection_row as research_row

    private = payload(0, confidence=0.4, context_scores={"Human vocal": 0.86, "Engine": 0.01},
                      clip_withheld="privacy")
    quiet = payload(1, confidence=0.4, context_scores={"Human vocal": 0.001})
    older = payload(2, confidence=0.4, context_scores=None, clip_withheld=None)  # a schema-2 device
    assert server_db.store_batch([private, quiet, older], []) == ["inserted"] * 3
    assert json.loads(stored(server_db, private["detection_id"])["context_scores"]) == {
        "Engine": 0.01, "Human vocal": 0.86}
    row = research_row(server_db, private["detection_id"])
    assert (row["context_scores"], row["clip_withheld"]) == ({"Engine": 0.01, "Human vocal": 0.86}, "privacy")
    assert research_row(server_db, older["detection_id"])["context_scores"] is None
    assert server_db.wanted_clips(OWNER, below=0.5) == [quiet["detection_id"], older["detection_id"]]

"""The upsert's bulk insert (sync_server/db/upsert.py `insert_new`) on SQLite and on a real
PostgreSQL, where it COPYs into a session's staging table: ids already stored are left as they
are and counted out (the race check), a rolled-back batch leaves nothing staged for the next
one on the same connection, a NULL in a NOT NULL column fails the batch with nothing kept and
the store goes on, and verdicts and tours take the same path."""

from __future__ import annotations

from sqlalchemy import func, select

from device.domain import iso_utc
from sync_server.db import Counts, ServerStoreError
from sync_server.db.schema import detection
from sync_server.db.store import DETECTIONS, TOURS
from sync_server.db.upsert import STAGING_PREFIX, insert_new
from tests.sync_server.rows import OWNER, T0, grown, payload, stored, verdict

NOW = "2026-04-20T08:00:00.000Z"


def test_ids_already_stored_are_left_as_they_are_and_counted_out(server_db):
    server_db.store_batch([payload(0), payload(1)])
    before = stored(server_db, payload(1)["detection_id"])
    rows = [DETECTIONS.row(p) for p in (grown(1, windows=4), payload(2), payload(3))]
    with server_db.engine.begin() as connection:
        assert insert_new(connection, DETECTIONS, rows, NOW, number=10) == 2  # 1 was there: a lost race
    assert stored(server_db, payload(1)["detection_id"]) == before  # DO NOTHING: not overwritten
    new = stored(server_db, payload(2)["detection_id"])
    assert (new["first_received_on"], new["last_received_on"], new["deliveries"], new["seq"]) == (NOW, NOW, 1, 11)
    assert stored(server_db, payload(3)["detection_id"])["seq"] == 12  # numbered in the order given
    assert server_db.counts() == Counts(detections=4, devices=1, rejected=0)


def test_a_rolled_back_batch_leaves_nothing_staged_for_the_next_on_the_same_connection(server_db):
    with server_db.engine.connect() as connection:
        transaction = connection.begin()
        assert insert_new(connection, DETECTIONS, [DETECTIONS.row(payload(5))], NOW, number=1) == 1
        transaction.rollback()
        with connection.begin():
            assert insert_new(connection, DETECTIONS, [DETECTIONS.row(payload(6))], NOW, number=1) == 1
        with connection.begin():  # and after a commit too
            assert insert_new(connection, DETECTIONS, [DETECTIONS.row(payload(7))], NOW, number=2) == 1
        if server_db.dialect == "postgresql":  # the staging table itself is empty once committed
            with connection.begin():
                staged = connection.exec_driver_sql(f"SELECT count(*) FROM pg_temp.{STAGING_PREFIX}detection")
                assert staged.scalar() == 0
    assert server_db.detection_ids() == {payload(6)["detection_id"], payload(7)["detection_id"]}


def test_a_null_in_a_new_row_fails_the_batch_in_the_insert_and_the_store_goes_on(server_db):
    server_db.store_batch([payload(0)])
    broken = [payload(1), payload(2, bundle_sha256=None)]  # a payload that skipped its checks
    try:
        server_db.store_batch(broken)
    except ServerStoreError as exc:
        assert str(exc).startswith(f"aggregate database {server_db.label}: could not store a batch of 2 detections")
        assert "bundle_sha256" in str(exc) and exc.__cause__ is not None
    else:
        raise AssertionError("a NULL bundle_sha256 was stored")
    assert server_db.counts() == Counts(detections=1, devices=1, rejected=0)
    assert server_db.store_batch([payload(1), payload(2), payload(0)]) == ["inserted", "inserted", "unchanged"]
    with server_db.engine.connect() as connection:
        assert connection.scalar(select(func.max(detection.c.seq))) == 3


def test_a_large_batch_with_repeats_and_stored_ids_keeps_every_outcome(server_db):
    server_db.store_batch([payload(n) for n in range(0, 1200, 3)])  # 400 stored first
    batch = [payload(n) for n in range(1200)] + [payload(n) for n in range(0, 30)]
    outcomes = server_db.store_batch(batch)
    assert outcomes[:6] == ["unchanged", "inserted", "inserted", "unchanged", "inserted", "inserted"]
    assert outcomes.count("inserted") == 800 and outcomes.count("unchanged") == 430
    assert server_db.counts().detections == 1200
    with server_db.engine.connect() as connection:
        numbers = connection.execute(select(detection.c.seq)).scalars().all()
    assert sorted(numbers) == list(range(1, 1201))


def test_verdicts_and_tours_take_the_same_path(server_db):
    tour_id = "8a0c2f4e-1d3b-4c5a-9e7f-0b1c2d3e4f50"
    tour = {"tour_id": tour_id, "device_id": OWNER, "name": "Morning walk", "guide": None,
            "started_on": iso_utc(T0), "ended_on": None, "site": None, "latitude": None, "longitude": None}
    result = server_db.store_ingest([payload(0)], [verdict(0), verdict(0)], [], [], tours=[tour])
    assert (result.detections, result.feedback, result.tours) == (["inserted"], ["inserted", "unchanged"], ["inserted"])
    assert server_db.verdicts_on(payload(0)["detection_id"])[0]["deliveries"] == 2
    with server_db.engine.begin() as connection:
        assert insert_new(connection, TOURS, [TOURS.row(tour)], NOW) == 0  # stored: counted out
    assert server_db.tours_held()[tour_id]["deliveries"] == 1

"""Migration 4 (places and tour messages) on a database written by release 3: every queued
message, attempt and delivery state is kept through the outbox's rebuild, its foreign key and
indexes are back, and what release 3 logged stays without a place (nothing invents one)."""

from __future__ import annotations

import sqlite3

import pytest

from device.config import DeviceSettings
from device.contracts.tour import parse_tour
from device.domain import Receipt, Refusal, utc_now
from device.store import Store, detections, migrations
from device.store.migrations import MIGRATIONS

OLD_TOUR = "0b7e6f2a-1c3d-4e5f-9a8b-7c6d5e4f3a2b"


def release_3_database(db_path, make_detection, monkeypatch) -> dict:
    """A release-3 log: three closed detections (one confirmed, one refused, one pending with a
    failed and a successful attempt), a verdict, an active tour. Returns what it holds."""
    with monkeypatch.context() as patch:
        patch.setattr(migrations, "MIGRATIONS", MIGRATIONS[:3])
        later = detections.PLACE_COLUMNS + detections.PRIVACY_COLUMNS  # what migrations 4 and 5 added
        release_3 = tuple(c for c in detections._DETECTION_COLUMNS if c not in later)
        patch.setattr(detections, "_DETECTION_COLUMNS", release_3)
        patch.setattr(detections, "_UPSERT", detections.upsert_sql(release_3))
        old = Store.open(db_path)
        old.db.execute("INSERT INTO tour VALUES (?, 'Dawn chorus', 'Ana', '2026-04-20T07:00:00.000Z', NULL)", [OLD_TOUR])
        old.db.conn.commit()
        dets = [make_detection(at_s=10.0 * n, tour_id=OLD_TOUR) for n in range(3)]
        for det in dets:
            old.save_detection(det, final=True)
        verdict = old.add_feedback(dets[0].detection_id, "confirm", "a tinamou")
        messages = old.open_messages()
        old.record_attempt(messages[2].message_id, "mqtt://broker:1883", False, "connection refused")
        old.record_attempt(messages[2].message_id, "mqtt://broker:1883", True)
        old.apply_receipts([Receipt("pi-h02", utc_now(), {"detection": (dets[0].detection_id,)},
                                    (Refusal("detection", dets[1].detection_id, "owned by pi-h03"),))])
        before = {
            "messages": old.db.execute("SELECT * FROM outbox_message ORDER BY rowid").fetchall(),
            "attempts": old.db.execute("SELECT * FROM outbox_attempt ORDER BY rowid").fetchall(),
            "states": old.message_states(m.message_id for m in messages),
            "dets": dets, "verdict": verdict,
        }
        assert old.db.execute("PRAGMA user_version").fetchone()[0] == 3
        old.close()
    return before


def test_every_message_attempt_and_state_survives_the_outbox_rebuild(db_path, make_detection, monkeypatch):
    before = release_3_database(db_path, make_detection, monkeypatch)
    store = Store.open(db_path)  # this release: migration 4 runs
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) >= 4
    assert store.db.execute("SELECT * FROM outbox_message ORDER BY rowid").fetchall() == before["messages"]
    assert store.db.execute("SELECT * FROM outbox_attempt ORDER BY rowid").fetchall() == before["attempts"]
    assert store.message_states(before["states"]) == before["states"]
    assert set(before["states"].values()) == {"confirmed", "refused", "open"}
    assert store.refusals() and store.refusals()[0][:2] == ("detection", before["dets"][1].detection_id)
    assert store.db.execute("PRAGMA foreign_key_check").fetchall() == []
    [fk] = store.db.execute("PRAGMA foreign_key_list(outbox_attempt)").fetchall()
    assert (fk[2], fk[3], fk[4], fk[6]) == ("outbox_message", "message_id", "message_id", "CASCADE")
    indexes = {row[1] for row in store.db.execute("PRAGMA index_list(outbox_message)")}
    assert {"outbox_message_detection_id", "outbox_message_created_on", "outbox_message_record",
            "outbox_message_open", "outbox_message_confirmed_on"} <= indexes
    assert "outbox_attempt_message_id" in {row[1] for row in store.db.execute("PRAGMA index_list(outbox_attempt)")}
    plan = " ".join(str(r) for r in store.db.execute(
        "EXPLAIN QUERY PLAN SELECT count(*) FROM outbox_message WHERE confirmed_on IS NULL AND refused_on IS NULL"))
    assert "outbox_message_open" in plan  # the drains still read only the open rows
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):  # the key is enforced, not only declared
        store.db.execute("INSERT INTO outbox_attempt VALUES ('a', 'no-such-message', '2026-04-20T08:00:00.000Z', "
                         "'b', 'SUCCESS', NULL)")


def test_what_release_3_logged_has_no_place_and_its_active_tour_is_reported_at_its_stop(
        db_path, make_detection, monkeypatch):
    before = release_3_database(db_path, make_detection, monkeypatch)
    store = Store.open(db_path, device=DeviceSettings(id="pi-h02", latitude=6.23, longitude=-74.71))
    logged = store.detection(before["dets"][0].detection_id)
    assert (logged.site, logged.latitude, logged.longitude, logged.coordinate_uncertainty_m) == (None,) * 4
    assert store.active_tour().device_id is None
    stopped = store.stop_tour()
    [message] = [m for m in store.open_messages(100) if m.kind == "tour"]  # 'tour' passes the widened CHECK
    sent = parse_tour(message.payload)
    assert (sent["tour_id"], sent["name"], sent["device_id"], sent["latitude"]) == (OLD_TOUR, "Dawn chorus", "pi-h02", 6.23)
    assert stopped.ended_on is not None and sent["ended_on"] is not None

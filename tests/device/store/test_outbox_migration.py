"""Migration 2 (receipts) on a database written by the first release: nothing queued is lost."""

from __future__ import annotations

import contextlib
import sqlite3

from device.store import Store, migrations
from device.store.migrations import MIGRATIONS


def test_rows_queued_before_receipts_become_pending_detection_messages(db_path, make_detection, monkeypatch):
    det = make_detection()
    with monkeypatch.context() as patch:  # the first release: migration 1 only
        patch.setattr(migrations, "MIGRATIONS", MIGRATIONS[:1])
        old = Store.open(db_path)
        old.db.execute("INSERT INTO tour VALUES ('t', 'old', NULL, '2026-04-20T07:00:00.000Z', NULL)")
        row = {"detection_id": det.detection_id, "device_id": "pi-h02", "tour_id": "t", "label": det.label,
               "started_on": "2026-04-20T07:40:00.000Z", "ended_on": "2026-04-20T07:40:05.000Z",
               "start_s": 0.0, "end_s": 5.0, "peak_start_s": 0.0, "confidence": 0.8, "branch_scores": "{}",
               "bundle_name": "b", "bundle_version": "1", "bundle_sha256": "a" * 64, "source": "x.ogg",
               "window_count": 1, "secondary": 0, "status": "closed", "close_reason": "ended",
               "created_on": "2026-04-20T07:40:00.000Z", "updated_on": "2026-04-20T07:40:05.000Z",
               "closed_on": "2026-04-20T07:40:05.000Z"}
        old.db["detection"].insert(row)
        old.db.execute("INSERT INTO outbox_message VALUES ('m1', ?, 'explorer/pi-h02/detection', '{}', "
                       "'2026-04-20T07:40:05.000Z')", [det.detection_id])
        old.db.execute("INSERT INTO outbox_attempt VALUES ('a1', 'm1', '2026-04-20T07:40:06.000Z', "
                       "'mqtt://b:1883', 'SUCCESS', NULL)")
        old.db.conn.commit()
        assert old.db.execute("PRAGMA user_version").fetchone()[0] == 1
        old.close()

    store = Store.open(db_path)  # this release: migration 2 runs
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) >= 2
    [message] = store.open_messages()
    assert (message.message_id, message.kind, message.record_id) == ("m1", "detection", det.detection_id)
    # Acknowledged long ago by a broker, never receipted: pending, so it is sent again.
    assert [m.message_id for m in store.pending_messages()] == ["m1"]
    assert store.db.execute("SELECT confirmed_on, refused_on, refused_reason FROM outbox_message").fetchall() == [
        (None, None, None)]
    indexes = {row[1] for row in store.db.execute("PRAGMA index_list(outbox_message)")}
    assert {"outbox_message_record", "outbox_message_open", "outbox_message_confirmed_on"} <= indexes
    with contextlib.closing(sqlite3.connect(db_path)) as raw:
        names = [r[0] for r in raw.execute("SELECT name FROM schema_migration ORDER BY version")]
    assert names[:2] == ["create_initial_schema", "add_outbox_receipts"]

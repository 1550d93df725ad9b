"""Verdicts and device statuses in the aggregate database: upserted like detections, kept
against their detection, refused when another device owns the id; the newest status per
device wins, a last will outranking its own connection's online statuses."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sync_server.db import ServerStoreError
from tests.sync_server.rows import OTHER, OWNER, T0, payload, status_at, verdict


def test_verdicts_are_upserted_like_detections_and_kept_against_their_detection(server_db):
    first = verdict(0)
    result = server_db.store_ingest([payload(0)], [first, verdict(1)], [], [])
    assert result.detections == ["inserted"] and result.feedback == ["inserted", "inserted"]
    again = server_db.store_ingest([], [first], [], [])  # a resend: counted, never duplicated
    assert again.feedback == ["unchanged"] and again.detections == []
    rows = server_db.verdicts_on(payload(0)["detection_id"])
    assert [(r["feedback_id"], r["verdict"], r["deliveries"]) for r in rows] == [
        (first["feedback_id"], "confirm", 2), (verdict(1)["feedback_id"], "confirm", 1)]
    assert rows[1]["note"] == "heard it too"
    # A verdict may arrive before its detection (two outbox messages, no order between them).
    early = verdict(2, detection_n=5, verdict="reject")
    assert server_db.store_ingest([], [early], [], []).feedback == ["inserted"]
    assert server_db.feedback_ids(OWNER) == {first["feedback_id"], verdict(1)["feedback_id"], early["feedback_id"]}


def test_a_verdict_id_claimed_by_another_device_is_refused_naming_both(server_db):
    server_db.store_ingest([], [verdict(0)], [], [])
    claim = verdict(0, device_id=OTHER)
    assert server_db.store_ingest([], [claim], [], []).feedback == ["foreign"]
    (refusal,) = server_db.recent_rejections(1)
    assert refusal.reason == f"feedback {claim['feedback_id']} belongs to device {OWNER!r}, not {OTHER!r}"
    assert refusal.topic == f"explorer/{OTHER}/feedback"
    assert server_db.feedback_ids(OTHER) == set()


def test_a_last_will_outranks_its_connections_online_statuses_and_a_new_connection_outranks_it(server_db):
    from dataclasses import replace

    connected = T0 + timedelta(minutes=1)
    online = replace(status_at(OWNER, 30), connected_on=connected)  # published half an hour into the connection
    will = replace(status_at(OWNER, 1, online=False), connected_on=connected)  # fixed at connect time
    server_db.store_ingest([], [], [online], [])
    server_db.store_ingest([], [], [will], [])  # the broker publishes it when the device vanishes
    assert server_db.statuses()[OWNER][0] == will
    server_db.store_ingest([], [], [replace(status_at(OWNER, 20), connected_on=connected)], [])  # a late duplicate
    assert server_db.statuses()[OWNER][0] == will
    again = replace(status_at(OWNER, 40), connected_on=T0 + timedelta(minutes=40))  # back in coverage
    server_db.store_ingest([], [], [again], [])
    assert server_db.statuses()[OWNER][0] == again


def test_the_newest_status_per_device_wins_whatever_order_they_arrive_in(server_db):
    server_db.store_ingest([], [], [status_at(OWNER, 10), status_at(OTHER, 3)], [])
    server_db.store_ingest([], [], [status_at(OWNER, 5, online=False)], [])  # older: a redelivered retained one
    statuses = server_db.statuses()
    assert statuses[OWNER][0] == status_at(OWNER, 10) and statuses[OTHER][0] == status_at(OTHER, 3)
    server_db.store_ingest([], [], [status_at(OWNER, 20, online=False)], [])
    assert server_db.statuses()[OWNER][0] == status_at(OWNER, 20, online=False)


def test_a_failing_batch_keeps_none_of_its_verdicts_or_statuses(server_db):
    bad = dict(payload(1), label=None)  # the detection column is NOT NULL: the insert fails mid-batch
    with pytest.raises(ServerStoreError):
        server_db.store_ingest([payload(0), bad], [verdict(0)], [status_at(OWNER, 1)], [])
    assert server_db.feedback_ids() == set() and server_db.statuses() == {} and server_db.detection_ids() == set()

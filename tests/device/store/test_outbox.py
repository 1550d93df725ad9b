"""The outbox: pending until a SUCCESS attempt exists, per destination, never fire-and-forget."""

from __future__ import annotations

import pytest

from device.store import NotFoundError


@pytest.fixture
def queued(store, make_detection):
    """Three closed detections, so three queued messages, oldest first."""
    dets = [make_detection(label, at_s=i * 10) for i, label in enumerate(("littin1", "21211", "65448"))]
    return [store.save_detection(det, final=True) for det in dets]


def test_messages_wait_oldest_first(store, queued):
    assert [m.message_id for m in store.pending_messages()] == queued
    assert [m.message_id for m in store.pending_messages(limit=2)] == queued[:2]
    assert store.pending_count() == 3


def test_a_failed_attempt_keeps_a_message_pending_and_is_counted(store, queued):
    store.record_attempt(queued[0], "broker.local", ok=False, detail="connection refused")
    store.record_attempt(queued[0], "broker.local", ok=False, detail="timeout")
    pending = store.pending_messages()
    assert [m.message_id for m in pending] == queued
    assert pending[0].attempt_count == 2 and pending[1].attempt_count == 0


def test_a_success_removes_it_from_pending(store, queued):
    store.record_attempt(queued[1], "broker.local", ok=False)
    store.record_attempt(queued[1], "broker.local", ok=True)
    assert [m.message_id for m in store.pending_messages()] == [queued[0], queued[2]]
    assert store.pending_count() == 2
    rows = list(store.db.query("SELECT result, destination FROM outbox_attempt WHERE message_id = ? ORDER BY rowid", [queued[1]]))
    assert [r["result"] for r in rows] == ["FAILURE", "SUCCESS"]


def test_pending_is_per_destination_when_one_is_named(store, queued):
    store.record_attempt(queued[0], "broker.local", ok=True)
    assert [m.message_id for m in store.pending_messages(destination="broker.local")] == queued[1:]
    assert [m.message_id for m in store.pending_messages(destination="backup.example")] == queued
    assert store.pending_count(destination="backup.example") == 3


def test_an_attempt_for_an_unknown_message_is_a_clear_error(store):
    with pytest.raises(NotFoundError, match="no outbox message with id 'ghost'"):
        store.record_attempt("ghost", "broker.local", ok=True)


def test_bad_arguments_are_refused(store, queued):
    with pytest.raises(ValueError, match="destination"):
        store.record_attempt(queued[0], " ", ok=True)
    with pytest.raises(ValueError, match="limit"):
        store.pending_messages(limit=0)


def test_a_long_failure_detail_is_capped(store, queued):
    store.record_attempt(queued[0], "broker.local", ok=False, detail="x" * 100_000)
    detail = store.db.execute("SELECT detail FROM outbox_attempt").fetchone()[0]
    assert 0 < len(detail) <= 2_000

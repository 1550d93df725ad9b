"""`Store.last_delivery_on`: what the status line shows as "last" sync, read through the store."""

from __future__ import annotations


def test_the_last_delivery_is_the_newest_success_to_any_destination(store, make_detection):
    assert store.last_delivery_on() is None
    queued = [store.save_detection(make_detection(at_s=i * 10.0), final=True) for i in range(2)]
    store.record_attempt(queued[0], "broker.local", ok=False, detail="timeout")
    assert store.last_delivery_on() is None  # a failed attempt delivered nothing
    store.record_attempt(queued[0], "broker.local", ok=True)
    first = store.last_delivery_on()
    store.record_attempt(queued[1], "server.lab", ok=True)
    latest = store.last_delivery_on()
    assert first is not None and latest >= first and latest.tzinfo is not None
    (stamp,) = store.db.execute("SELECT max(attempted_on) FROM outbox_attempt WHERE result = 'SUCCESS'").fetchone()
    assert latest.strftime("%Y-%m-%dT%H:%M:%S") == stamp[:19]

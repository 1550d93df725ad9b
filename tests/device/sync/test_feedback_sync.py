"""The guide's verdicts reach the server like detections do: drained, then confirmed by receipts."""

from __future__ import annotations

from device.contracts.feedback import parse_feedback
from device.sync.worker import SyncWorker
from tests.device.sync.conftest import DEVICE, outbox_states, queue_detections, settings_for
from tests.helpers import wait_until
from tests.mqtt import Subscriber


def test_verdicts_drain_on_their_topic_and_are_receipted_as_feedback(broker, ingest, store):
    detections = queue_detections(store, 2)
    verdicts = [store.add_feedback(detections[0], "confirm"), store.add_feedback(detections[1], "reject", "a frog?")]
    watcher = Subscriber(broker, f"explorer/{DEVICE}/feedback")
    worker = SyncWorker(store.path, settings_for(broker, interval_s=3600.0), DEVICE).start()
    try:
        assert wait_until(lambda: outbox_states(store)["confirmed"] == 4, 30)
        received = watcher.wait_for(2)
    finally:
        worker.stop()
        watcher.close()
    assert sorted(ingest.taken("feedback")) == sorted(v.feedback_id for v in verdicts)
    assert sorted(ingest.taken("detection")) == sorted(detections)
    payloads = sorted((parse_feedback(body) for _, body in received), key=lambda p: p["detection_id"] == detections[1])
    assert [(p["detection_id"], p["verdict"], p["note"]) for p in payloads] == [
        (detections[0], "confirm", None), (detections[1], "reject", "a frog?")]
    rows = store.db.execute("SELECT kind, count(*) FROM outbox_message WHERE confirmed_on IS NOT NULL GROUP BY kind")
    assert dict(rows.fetchall()) == {"detection": 2, "feedback": 2}


def test_a_verdict_given_while_syncing_is_sent_soon_after(broker, ingest, store):
    [detection] = queue_detections(store, 1)
    worker = SyncWorker(store.path, settings_for(broker, interval_s=1.0), DEVICE).start()
    try:
        assert wait_until(lambda: outbox_states(store)["confirmed"] == 1, 30)
        verdict = store.add_feedback(detection, "confirm")
        worker.wake()
        assert wait_until(lambda: outbox_states(store)["confirmed"] == 2, 30)
    finally:
        worker.stop()
    assert ingest.taken("feedback") == [verdict.feedback_id]

"""A guide's verdict queues its outbox message in the verdict's own transaction."""

from __future__ import annotations

import pytest

from device.contracts.feedback import parse_feedback


def test_a_verdict_queues_its_feedback_message(store, make_detection):
    det = make_detection(device_id="pi-h07")
    store.save_detection(det, final=True)
    verdict = store.add_feedback(det.detection_id, "reject", "a person\nwhistling")
    [message] = [m for m in store.open_messages() if m.kind == "feedback"]
    assert (message.topic, message.record_id, message.detection_id) == (
        "explorer/pi-h07/feedback", verdict.feedback_id, det.detection_id)
    payload = parse_feedback(message.payload)
    assert payload == {"schema": 1, "feedback_id": verdict.feedback_id, "detection_id": det.detection_id,
                       "device_id": "pi-h07", "verdict": "reject", "note": "a person whistling",
                       "given_on": payload["given_on"]}
    assert store.pending_count() == 2  # the detection's message and the verdict's


def test_a_verdict_that_cannot_be_queued_is_not_stored_either(store, make_detection):
    det = make_detection()
    store.save_detection(det, final=True)
    # A row no contract accepts (written around the store): the payload fails, so must the verdict.
    store.db.execute("UPDATE detection SET device_id = 'not a device id' WHERE detection_id = ?", [det.detection_id])
    store.db.conn.commit()
    with pytest.raises(ValueError, match="not a device id"):
        store.add_feedback(det.detection_id, "confirm")
    assert store.feedback_for(det.detection_id) == []
    assert [m.kind for m in store.open_messages()] == ["detection"]


def test_an_unknown_verdict_queues_nothing(store, make_detection):
    det = make_detection()
    store.save_detection(det, final=True)
    with pytest.raises(ValueError, match="'maybe' is not one of"):
        store.add_feedback(det.detection_id, "maybe")
    assert [m.kind for m in store.open_messages()] == ["detection"]

"""Feedback: confirm or reject a detection; unknown ids and verdicts are clear errors."""

from __future__ import annotations

import pytest

from device.store import NotFoundError


def test_verdicts_are_appended_and_the_last_one_counts(store, make_detection):
    det = make_detection()
    store.save_detection(det, final=True)
    store.add_feedback(det.detection_id, "reject", "a person whistling")
    latest = store.add_feedback(det.detection_id, "confirm")
    history = store.feedback_for(det.detection_id)
    assert [(f.verdict, f.note) for f in history] == [("reject", "a person whistling"), ("confirm", None)]
    assert history[-1] == latest
    assert store.detection_records()[0].verdict == "confirm"


def test_an_unknown_detection_is_a_clear_error(store):
    with pytest.raises(NotFoundError, match="no detection with id 'ghost'"):
        store.add_feedback("ghost", "confirm")


def test_an_unknown_verdict_is_refused(store, make_detection):
    det = make_detection()
    store.save_detection(det)
    with pytest.raises(ValueError, match="'maybe' is not one of"):
        store.add_feedback(det.detection_id, "maybe")
    assert store.feedback_for(det.detection_id) == []

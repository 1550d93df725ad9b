"""Detection rows: the explicit mapping, the open -> closed lifecycle, recovery and queries."""

from __future__ import annotations

import json
import math
from datetime import timedelta

import pytest

from device.contracts.detection import parse_payload
from device.store import NotFoundError, StoreError, detection_to_row, row_to_detection


def _same(a, b):
    """Detections equal, treating NaN branch scores as equal."""
    left = {k: (None if math.isnan(v) else v) for k, v in a.branch_scores.items()}
    right = {k: (None if math.isnan(v) else v) for k, v in b.branch_scores.items()}
    return left == right and {**vars(a), "branch_scores": 0} == {**vars(b), "branch_scores": 0}


def test_row_mapping_round_trips_and_writes_nan_scores_as_null(make_detection):
    det = make_detection(window_count=3, secondary=True, tour_id=None, peak_start_s=2.5)
    row = detection_to_row(det)
    assert json.loads(row["branch_scores"]) == {"birdnet": None, "perch": 0.81}
    assert row["started_on"] == "2026-04-20T07:40:00.000Z" and row["ended_on"] == "2026-04-20T07:40:05.000Z"
    assert row["status"] == "open" and row["secondary"] == 1
    back = row_to_detection(row)
    assert math.isnan(back.branch_scores["birdnet"])
    assert _same(back, det)


def test_a_stored_detection_reads_back_equal(store, make_detection):
    det = make_detection()
    store.save_detection(det)
    assert _same(store.detection(det.detection_id), det)
    assert store.detection_status(det.detection_id) == "open"


def test_open_updates_then_close_queues_exactly_one_message(store, make_detection):
    tour = store.start_tour()
    det = make_detection(tour_id=tour.tour_id)
    assert store.save_detection(det) is None  # opened: on disk at once, nothing queued yet
    assert store.pending_messages() == []
    for _ in range(3):  # each merged window updates the same row
        det.ended_on += timedelta(seconds=3)
        det.end_s += 3
        det.window_count += 1
        store.save_detection(det)
    assert store.db.execute("SELECT count(*) FROM detection").fetchone()[0] == 1
    assert store.detection(det.detection_id).window_count == 4
    message_id = store.save_detection(det, final=True)
    assert store.detection_status(det.detection_id) == "closed"
    [message] = store.pending_messages()
    assert message.message_id == message_id and message.detection_id == det.detection_id
    assert message.topic == "explorer/pi-h02/detection"
    payload = parse_payload(message.payload.encode())
    assert payload["window_count"] == 4 and payload["end_s"] == det.end_s and payload["tour_id"] == tour.tour_id
    row = next(store.db.query("SELECT * FROM detection"))
    assert row["close_reason"] == "ended" and row["closed_on"] >= row["created_on"]


def test_the_payload_names_the_species_from_the_recorded_bundle(store, make_detection):
    store.record_bundle(
        "elsilencio-default", "1.0.0", "a" * 64,
        [{"primary_label": "littin1", "scientific_name": "Crypturellus soui", "common_name": "Little Tinamou", "class_name": "Aves"}],
    )  # fmt: skip
    store.save_detection(make_detection(), final=True)
    payload = parse_payload(store.pending_messages()[0].payload)
    assert (payload["scientific_name"], payload["common_name"], payload["class_name"]) == (
        "Crypturellus soui", "Little Tinamou", "Aves",
    )  # fmt: skip


def test_a_closed_detection_cannot_be_reopened(store, make_detection):
    det = make_detection()
    store.save_detection(det, final=True)
    with pytest.raises(StoreError, match="already closed"):
        store.save_detection(det)
    assert store.detection_status(det.detection_id) == "closed"


def test_closing_again_queues_a_newer_payload(store, make_detection):
    det = make_detection()
    store.save_detection(det, final=True)
    det.confidence = 0.95
    store.save_detection(det, final=True)
    payloads = [parse_payload(m.payload) for m in store.pending_messages()]
    assert [p["confidence"] for p in payloads] == [0.81, 0.95]


def test_an_unknown_tour_is_refused_and_nothing_is_stored(store, make_detection):
    det = make_detection(tour_id="00000000-0000-4000-8000-000000000000")
    with pytest.raises(NotFoundError, match="no tour with id"):
        store.save_detection(det, final=True)
    assert store.detections() == [] and store.pending_messages() == []


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"confidence": float("nan")}, "confidence is nan"),
        ({"confidence": 1.5}, "outside"),
        ({"window_count": 0}, "window_count"),
        ({"device_id": "pi h02/../x"}, "device id"),
        ({"bundle_sha256": "not-a-sha"}, "bundle_sha256"),
    ],
)
def test_a_detection_the_row_or_payload_cannot_hold_fails_when_first_heard(store, make_detection, fields, problem):
    with pytest.raises(ValueError, match=problem):
        store.save_detection(make_detection(**fields))
    assert store.detections() == []


def test_recovery_closes_what_a_crash_left_open_and_queues_their_messages(store, make_detection):
    left_open = [make_detection("littin1"), make_detection("21211", at_s=30)]
    for det in left_open:
        store.save_detection(det)
    done = make_detection("65448", at_s=60)
    store.save_detection(done, final=True)
    assert store.recover_open_detections() == 2
    rows = {r["detection_id"]: r for r in store.db.query("SELECT * FROM detection")}
    assert all(r["status"] == "closed" for r in rows.values())
    assert [rows[d.detection_id]["close_reason"] for d in left_open] == ["recovered", "recovered"]
    assert rows[done.detection_id]["close_reason"] == "ended"
    queued = [m.detection_id for m in store.pending_messages()]
    assert sorted(queued) == sorted([done.detection_id] + [d.detection_id for d in left_open])
    assert store.recover_open_detections() == 0


def test_detections_filter_by_tour_and_time(store, make_detection):
    tour = store.start_tour()
    early = make_detection(at_s=0, tour_id=tour.tour_id)
    late = make_detection(at_s=3600, tour_id=tour.tour_id)
    elsewhere = make_detection(at_s=1800)
    for det in (late, elsewhere, early):
        store.save_detection(det, final=True)
    assert [d.detection_id for d in store.detections()] == [early.detection_id, elsewhere.detection_id, late.detection_id]
    assert [d.detection_id for d in store.detections(tour_id=tour.tour_id)] == [early.detection_id, late.detection_id]
    since = early.started_on + timedelta(minutes=10)
    assert [d.detection_id for d in store.detections(since=since)] == [elsewhere.detection_id, late.detection_id]
    assert [d.detection_id for d in store.detections(tour_id=tour.tour_id, since=since)] == [late.detection_id]


def test_records_carry_status_verdict_clip_and_species(store, make_detection, tmp_path):
    store.record_bundle(
        "elsilencio-default", "1.0.0", "a" * 64,
        [{"primary_label": "littin1", "scientific_name": "Crypturellus soui", "common_name": "Little Tinamou", "class_name": "Aves"}],
    )  # fmt: skip
    det = make_detection()
    store.save_detection(det, final=True)
    store.add_feedback(det.detection_id, "confirm")
    clip = tmp_path / "clip.flac"
    clip.write_bytes(b"x" * 10)
    store.add_clip(det.detection_id, clip, 5.0, 32_000)
    [record] = store.detection_records()
    assert (record.status, record.close_reason, record.verdict) == ("closed", "ended", "confirm")
    assert record.clip_path == str(clip) and record.clip_sample_rate_hz == 32_000
    assert record.species.common_name == "Little Tinamou"


def test_an_unknown_detection_id_is_a_clear_error(store):
    with pytest.raises(NotFoundError, match="no detection with id 'nope'"):
        store.detection("nope")

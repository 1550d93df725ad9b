"""The researchers' read path (sync_server/db/queries.py): each filter, the row, the pagination
key, on both engines. Detections are built by the device's own contract and stored by the
ingest's own store call, as the ingest stores them."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest

from sync_server.clips import ClipRecord
from sync_server.db.queries import DetectionFilter, detection_row, detection_rows, iter_detection_rows
from tests.sync_server.rows import OTHER, OWNER, T0, payload


def verdict(n: int, detection_id: str, value: str, minute: int, device_id: str = OWNER) -> dict:
    return {"feedback_id": str(uuid.UUID(int=10_000 + n, version=4)), "detection_id": detection_id,
            "device_id": device_id, "verdict": value, "note": None,
            "given_on": f"2026-04-20T08:{minute:02d}:00.000Z"}


@pytest.fixture
def morning(server_db):
    """Six detections: two devices, two bundles versions, a frog and a bird, verdicts and a clip."""
    rows = [
        payload(0, label="21211", scientific_name="Allobates femoralis", class_name="Amphibia", confidence=0.91),
        payload(1, label="littin1", scientific_name="Crypturellus soui", class_name="Aves", confidence=0.55),
        payload(2, label="21211", scientific_name="Allobates femoralis", class_name="Amphibia", confidence=0.40,
                bundle_version="1.1.0"),
        payload(3, OTHER, label="littin1", scientific_name="Crypturellus soui", class_name="Aves", confidence=0.75,
                tour_id="7f0d2b8e-34c1-4f44-9a55-9b5d3c1e2a10", site="Quebrada H02", latitude=4.2, longitude=-74.1,
                coordinate_uncertainty_m=100.0),
        payload(4, label="65448", scientific_name="Pristimantis achatinus", class_name="Amphibia", confidence=0.66),
        payload(5, OTHER, label="21211", scientific_name="Allobates femoralis", class_name="Amphibia",
                confidence=0.99),
    ]
    ids = [row["detection_id"] for row in rows]
    verdicts = [verdict(0, ids[0], "reject", 1), verdict(1, ids[0], "confirm", 5),  # the later one counts
                verdict(2, ids[1], "reject", 2), verdict(3, ids[3], "confirm", 3, OTHER)]
    clip = ClipRecord(str(uuid.uuid4()), OWNER, ids[0], "/srv/clips/a.flac", "b" * 64, 123_456, 32_000, 5.0, 0.0)
    server_db.store_ingest(rows, verdicts, (), (), [clip])
    return server_db, ids, clip


def ids_of(store, **fields) -> list[str]:
    return [row["detection_id"] for row in detection_rows(store, DetectionFilter(**fields))]


def test_each_filter_selects_what_it_names(morning):
    store, ids, _ = morning
    assert ids_of(store) == ids  # seq order: the order they were committed
    assert ids_of(store, species=("21211",)) == [ids[0], ids[2], ids[5]]
    assert ids_of(store, species=("crypturellus SOUI", "65448")) == [ids[1], ids[3], ids[4]]
    assert ids_of(store, class_name="Aves") == [ids[1], ids[3]]
    assert ids_of(store, device_id=OTHER) == [ids[3], ids[5]]
    assert ids_of(store, tour_id="7f0d2b8e-34c1-4f44-9a55-9b5d3c1e2a10") == [ids[3]]
    assert ids_of(store, site="Quebrada H02") == [ids[3]]
    assert ids_of(store, min_confidence=0.75) == [ids[0], ids[3], ids[5]]
    assert ids_of(store, bundle_version="1.1.0") == [ids[2]]
    assert ids_of(store, bundle_name="another-bundle") == []
    assert ids_of(store, status="confirmed") == [ids[0], ids[3]]
    assert ids_of(store, status="rejected") == [ids[1]]
    assert ids_of(store, status="unreviewed") == [ids[2], ids[4], ids[5]]
    assert ids_of(store, start=T0 + timedelta(seconds=10), end=T0 + timedelta(seconds=20)) == [ids[2], ids[3]]
    assert ids_of(store, class_name="Amphibia", device_id=OWNER, min_confidence=0.5) == [ids[0], ids[4]]


def test_a_row_carries_its_verdict_clip_place_and_scores(morning):
    store, ids, clip = morning
    row = detection_row(store, ids[0])
    assert (row["verdict"], row["verification_status"], row["verdict_on"]) == (
        "confirm", "confirmed", "2026-04-20T08:05:00.000Z")
    assert row["clip"] == {"clip_id": clip.clip_id, "url": f"/api/v1/clips/{clip.clip_id}", "sha256": "b" * 64,
                           "size_bytes": 123_456, "sample_rate_hz": 32_000, "duration_s": 5.0, "start_s": 0.0,
                           "path": "/srv/clips/a.flac"}
    assert row["branch_scores"] == {"birdnet": 0.9, "frog_head": None}
    assert (row["scientific_name"], row["class_name"], row["confidence"], row["secondary"]) == (
        "Allobates femoralis", "Amphibia", 0.91, False)
    assert row["site"] is None and row["tour_name"] is None  # schema 1 payload: no place
    placed = detection_row(store, ids[3])
    assert (placed["site"], placed["latitude"], placed["longitude"], placed["coordinate_uncertainty_m"]) == (
        "Quebrada H02", 4.2, -74.1, 100.0)
    assert placed["clip"] is None and placed["verification_status"] == "confirmed"
    assert detection_row(store, str(uuid.uuid4())) is None


@pytest.mark.parametrize("fields, message", [
    ({"status": "maybe"}, "status: 'maybe' is not one of unreviewed, confirmed, rejected"),
    ({"min_confidence": 1.5}, "min_confidence: 1.5 is not between 0 and 1"),
    ({"start": T0, "end": T0}, "end: 2026-04-20T07:40:00.000Z is not after start"),
])
def test_a_filter_that_cannot_match_is_refused_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        DetectionFilter(**fields)


def test_paging_while_the_ingest_stores_old_and_new_detections_gives_every_row_once(server_db):
    # 300 stored; while a client pages 7 at a time, another thread stores 300 more whose
    # recording times lie BEFORE and among the first ones (a device back from a week offline).
    server_db.store_batch([payload(n) for n in range(1000, 1300)])
    before = {row["detection_id"] for row in detection_rows(server_db)}
    done = threading.Event()

    def ingest():
        for start in range(0, 300, 10):
            server_db.store_batch([payload(n) for n in range(start, start + 10)])
        done.set()

    writer = threading.Thread(target=ingest)
    writer.start()
    seen: list[str] = []
    after = None
    while True:
        page = detection_rows(server_db, DetectionFilter(), after, 7)
        seen.extend(row["detection_id"] for row in page)
        if not page:
            if done.is_set():
                break
            continue
        after = page[-1]["seq"]
    writer.join()
    assert len(seen) == len(set(seen)) == 600  # none twice, none lost: the late ones came after
    assert before <= set(seen)


def test_an_export_reads_in_batches_and_misses_nothing(morning):
    store, ids, _ = morning
    assert [row["detection_id"] for row in iter_detection_rows(store, DetectionFilter(), batch=4)] == ids
    assert [row["detection_id"] for row in iter_detection_rows(store, DetectionFilter(), batch=6)] == ids
    assert [r["detection_id"] for r in iter_detection_rows(store, DetectionFilter(class_name="Aves"), batch=1)] == [
        ids[1], ids[3]]

"""Context scores and withheld clips in the device's log (migration 5): stored with the detection,
sent in its payload, and a withheld clip can never be written, recorded or uploaded afterwards.
Real FLAC clips of a real recording."""

from __future__ import annotations

import sqlite3

import pytest
import soundfile as sf

from device.contracts.clip import ClipRequest
from device.contracts.detection import parse_payload
from device.domain import utc_now
from device.store import Store, detections, migrations
from device.store.clips import ClipWithheldError
from device.store.migrations import MIGRATIONS

FROG = "audio/birdclef_train_audio/3.ogg"  # Allobates femoralis, 38 s, 32 kHz
CONTEXT = {"Human vocal": 0.73, "Engine": 0.002, "Dog": 0.0}


@pytest.fixture(scope="module")
def frog(shared_data):
    samples, rate = sf.read(shared_data / FROG, dtype="float32", frames=32_000)
    return samples, rate


def test_context_scores_and_the_withheld_mark_are_stored_and_sent(store, make_detection):
    det = make_detection(context_scores=CONTEXT, clip_withheld="privacy")
    store.save_detection(det, final=True)
    logged = store.detection(det.detection_id)
    assert (logged.context_scores, logged.clip_withheld) == (CONTEXT, "privacy")
    [message] = store.pending_messages()
    payload = parse_payload(message.payload)
    assert (payload["context_scores"], payload["clip_withheld"]) == (CONTEXT, "privacy")


def test_a_detection_without_them_stores_an_empty_object_and_null(store, make_detection):
    det = make_detection()
    store.save_detection(det, final=True)
    row = store.db.execute("SELECT context_scores, clip_withheld FROM detection").fetchone()
    assert row == ("{}", None)
    assert parse_payload(store.pending_messages()[0].payload)["context_scores"] == {}


def test_a_withheld_clip_is_never_written_nor_recorded(store, make_detection, frog, tmp_path):
    samples, rate = frog
    det = make_detection(clip_withheld="privacy")
    store.save_detection(det, final=True)
    with pytest.raises(ClipWithheldError, match="withheld"):
        store.save_clip(tmp_path / "clips", det, samples, rate)
    # A stale Detection that forgot the mark changes nothing: the row decides.
    with pytest.raises(ClipWithheldError):
        store.save_clip(tmp_path / "clips", make_detection(detection_id=det.detection_id), samples, rate)
    outside = tmp_path / "outside.flac"
    sf.write(outside, samples, rate)
    with pytest.raises(ClipWithheldError):
        store.add_clip(det.detection_id, outside, 1.0, rate)
    assert not (tmp_path / "clips").exists() and store.list_clips(include_deleted=True) == []


def test_once_withheld_a_later_save_cannot_clear_the_mark(store, make_detection, frog, tmp_path):
    det = make_detection(clip_withheld="privacy")
    store.save_detection(det)  # open, withheld from its first window
    store.save_detection(make_detection(detection_id=det.detection_id), final=True)  # a save without it
    assert store.detection(det.detection_id).clip_withheld == "privacy"
    with pytest.raises(ClipWithheldError):
        store.save_clip(tmp_path / "clips", det, *frog)


def test_the_uploader_never_wants_a_withheld_clip(store, make_detection, frog, tmp_path, db_path):
    kept, withheld = make_detection(at_s=0.0), make_detection(at_s=60.0, clip_withheld="privacy")
    for det in (kept, withheld):
        store.save_detection(det, final=True)
        store.add_feedback(det.detection_id, "confirm")
    store.save_clip(tmp_path / "clips", kept, *frog)
    # Even a clip file put in place behind the store's back, with its row, is never sent.
    raw = sqlite3.connect(db_path)
    raw.execute("INSERT INTO clip VALUES ('c-1', ?, ?, 32000, 1.0, 60.0, 10, '2026-04-20T07:41:00.000Z', NULL)",
                [withheld.detection_id, str(tmp_path / "smuggled.flac")])
    raw.commit()
    raw.close()
    store.apply_clip_messages([], [ClipRequest("pi-h02", utc_now(), (kept.detection_id, withheld.detection_id))],
                              utc_now())
    assert [c.detection_id for c in store.clip_upload_candidates(10)] == [kept.detection_id]
    assert store.clip_upload_counts(utc_now()).to_send == 1


def test_migration_5_leaves_earlier_detections_without_context(db_path, make_detection, monkeypatch):
    det = make_detection()
    with monkeypatch.context() as patch:  # release 4: no context, no withheld clips
        patch.setattr(migrations, "MIGRATIONS", MIGRATIONS[:4])
        release_4 = tuple(c for c in detections._DETECTION_COLUMNS if c not in detections.PRIVACY_COLUMNS)
        patch.setattr(detections, "_DETECTION_COLUMNS", release_4)
        patch.setattr(detections, "_UPSERT", detections.upsert_sql(release_4))
        old = Store.open(db_path)
        old.save_detection(det)  # left open by a power cut
        old.close()
    store = Store.open(db_path)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) >= 5
    assert store.db.execute("SELECT context_scores, clip_withheld FROM detection").fetchone() == (None, None)
    logged = store.detection(det.detection_id)
    assert (logged.context_scores, logged.clip_withheld) == ({}, None)
    assert store.recover_open_detections() == 1  # closed from the row alone, sent as schema 3
    payload = parse_payload(store.open_messages()[0].payload)
    assert (payload["schema"], payload["context_scores"], payload["clip_withheld"]) == (3, {}, None)


def test_a_value_the_row_cannot_hold_is_refused(store, make_detection):
    with pytest.raises(ValueError, match="clip_withheld 'noise'"):
        store.save_detection(make_detection(clip_withheld="noise"))
    with pytest.raises(ValueError, match="context score 'Engine'"):
        store.save_detection(make_detection(context_scores={"Engine": float("nan")}))
    assert store.detections() == []

"""Clip upload state in the store (device/store/uploads.py, migration 3): which clips are wanted
and in what order, how each server ack is read against the one chunk in flight, the stored clip
request, and the daily byte budget; on real FLAC clips of a real recording."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import soundfile as sf

from device.contracts.clip import ClipAck, ClipRequest
from device.store import Store, clips, detections, migrations
from device.store.migrations import MIGRATIONS

FROG = "audio/birdclef_train_audio/3.ogg"  # Allobates femoralis, 38 s, 32 kHz
NOW = datetime(2026, 4, 20, 9, 0, tzinfo=timezone.utc)
DEVICE = "pi-h02"


@pytest.fixture(scope="module")
def frog(shared_data):
    return sf.read(shared_data / FROG, dtype="float32")


def clip_of(store: Store, det, frog, folder: Path, at_s: float = 0.0, seconds: float = 1.0):
    """Save the detection and a real clip of it (the store's own FLAC writer); its Clip row."""
    samples, rate = frog
    store.save_detection(det, final=True)
    store.save_clip(folder, det, samples[int(at_s * rate):int((at_s + seconds) * rate)], rate)
    (clip,) = store.list_clips(det.detection_id)
    return clip


def begin(store: Store, clip) -> tuple[str, int]:
    data = Path(clip.path).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    store.begin_clip_upload(clip.clip_id, sha, len(data), NOW)
    return sha, len(data)


def ack(clip, received: int, state: str = "partial", reason: str | None = None) -> ClipAck:
    return ClipAck(DEVICE, clip.clip_id, received, state, reason)


def row(store: Store, clip) -> tuple:
    up = store.clip_upload(clip.clip_id)
    return up.acked_bytes, up.sent_bytes, up.state, up.refusals


def test_migration_3_on_a_release_2_database_keeps_every_clip_and_starts_no_upload(
        db_path, make_detection, frog, tmp_path, monkeypatch):
    det = make_detection()
    with monkeypatch.context() as patch:  # the previous release: migrations 1 and 2
        patch.setattr(migrations, "MIGRATIONS", MIGRATIONS[:2])
        later = detections.PLACE_COLUMNS + detections.PRIVACY_COLUMNS  # what migrations 4 and 5 added
        release_2 = tuple(c for c in detections._DETECTION_COLUMNS if c not in later)
        patch.setattr(detections, "_DETECTION_COLUMNS", release_2)  # its detection table: no places yet
        patch.setattr(detections, "_UPSERT", detections.upsert_sql(release_2))
        patch.setattr(clips, "withheld_reason", lambda db, detection_id: None)  # it withheld no clip
        old = Store.open(db_path)
        clip = clip_of(old, det, frog, tmp_path / "clips")
        old.add_feedback(det.detection_id, "confirm")
        assert old.db.execute("PRAGMA user_version").fetchone()[0] == 2
        old.close()

    store = Store.open(db_path)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) >= 3
    assert store.list_clips() == [clip]
    assert store.db.execute("SELECT count(*) FROM clip_upload").fetchone()[0] == 0
    [candidate] = store.clip_upload_candidates(10)
    assert (candidate.clip_id, candidate.judged, candidate.started, candidate.in_flight) == (
        clip.clip_id, True, False, False)
    assert candidate.clip_size_bytes == Path(clip.path).stat().st_size


def test_judged_clips_come_first_then_requested_ones_each_oldest_first_and_no_other(
        store, make_detection, frog, tmp_path):
    dets = [make_detection(at_s=60.0 * n) for n in range(4)]
    clips = [clip_of(store, det, frog, tmp_path / "clips", at_s=5.0 * n) for n, det in enumerate(dets)]
    requested, confirmed, rejected, unjudged = clips
    store.add_feedback(rejected.detection_id, "reject")
    store.add_feedback(confirmed.detection_id, "confirm")
    store.add_feedback(confirmed.detection_id, "reject")  # a guide changed their mind: one clip still
    unknown = "0b7c6f4e-3d2a-4c1b-9e8f-7a6b5c4d3e2f"  # a detection this device does not hold
    outcome = store.apply_clip_messages([], [ClipRequest(DEVICE, NOW, (requested.detection_id, unknown))], NOW)
    assert outcome.requested == 1 and store.requested_clip_ids() == {requested.detection_id}

    order = [(c.clip_id, c.judged) for c in store.clip_upload_candidates(10)]
    assert order == [(confirmed.clip_id, True), (rejected.clip_id, True), (requested.clip_id, False)]
    assert unjudged.clip_id not in {clip_id for clip_id, _ in order}
    assert [c.clip_id for c in store.clip_upload_candidates(2)] == [confirmed.clip_id, rejected.clip_id]


def test_a_newer_request_replaces_the_stored_one_whole_and_an_older_one_changes_nothing(
        store, make_detection, frog, tmp_path):
    a, b = (clip_of(store, make_detection(at_s=60.0 * n), frog, tmp_path / "clips") for n in range(2))
    store.apply_clip_messages([], [ClipRequest(DEVICE, NOW, (a.detection_id, b.detection_id))], NOW)
    later = ClipRequest(DEVICE, NOW + timedelta(minutes=5), (b.detection_id,))
    earlier = ClipRequest(DEVICE, NOW - timedelta(minutes=5), (a.detection_id,))
    assert store.apply_clip_messages([], [later, earlier], NOW).requested == 1  # the newest of a batch
    assert store.requested_clip_ids() == {b.detection_id}
    assert store.apply_clip_messages([], [earlier], NOW).requested == 1  # delivered late: ignored
    assert store.requested_clip_ids() == {b.detection_id}
    store.apply_clip_messages([], [ClipRequest(DEVICE, NOW + timedelta(minutes=9), ())], NOW)
    assert store.requested_clip_ids() == set() and store.clip_upload_candidates(10) == []


def test_each_ack_is_read_against_the_one_chunk_in_flight(store, make_detection, frog, tmp_path):
    clip = clip_of(store, make_detection(), frog, tmp_path / "clips")
    store.add_feedback(clip.detection_id, "confirm")
    _, size = begin(store, clip)
    budget = 10 * size
    assert store.reserve_clip_chunk(clip.clip_id, (0, 0), 4000, 4400, budget, NOW) == "ok"
    assert store.clip_upload_candidates(1)[0].in_flight

    stale = store.apply_clip_messages([ack(clip, 0)], [], NOW)  # the server appends at 0: 0 answers nothing
    assert (stale.stale, row(store, clip)) == (1, (0, 4000, "sending", 0))
    assert store.apply_clip_messages([ack(clip, 4000)], [], NOW).moved == 1
    assert row(store, clip) == (4000, 4000, "sending", 0)
    assert store.apply_clip_messages([ack(clip, 4000)], [], NOW).stale == 1  # delivered again: nothing new
    assert store.apply_clip_messages([ack(clip, 1000)], [], NOW).stale == 1  # nothing in flight, older news

    assert store.reserve_clip_chunk(clip.clip_id, (4000, 4000), 8000, 4400, budget, NOW) == "ok"
    store.apply_clip_messages([ack(clip, 2000)], [], NOW)  # the server lost some: go on from its word
    assert row(store, clip) == (2000, 2000, "sending", 0)
    assert store.reserve_clip_chunk(clip.clip_id, (4000, 4000), 8000, 4400, budget, NOW) == "moved"
    assert store.reserve_clip_chunk(clip.clip_id, (2000, 2000), 6000, 4400, budget, NOW) == "ok"
    refused = store.apply_clip_messages([ack(clip, 0, "refused", "sha256 mismatch")], [], NOW)
    assert refused.stale == 1 and row(store, clip) == (2000, 6000, "sending", 0)  # only a last chunk is refused

    done = store.apply_clip_messages([ack(clip, size, "complete"), ack(clip, 10, "partial")], [], NOW)
    assert (done.completed, done.stale) == (1, 1) and row(store, clip) == (size, size, "complete", 0)
    assert store.clip_upload_candidates(10) == []
    assert store.apply_clip_messages([ClipAck(DEVICE, "3e4f5a6b-7c8d-4e9f-8a0b-1c2d3e4f5a6b", 5, "partial")],
                                     [], NOW).unknown == 1


def test_a_refused_clip_starts_again_from_byte_0_once_then_is_given_up(store, make_detection, frog, tmp_path):
    clip = clip_of(store, make_detection(), frog, tmp_path / "clips")
    store.add_feedback(clip.detection_id, "reject")
    _, size = begin(store, clip)
    for attempt in (1, 2):
        assert store.reserve_clip_chunk(clip.clip_id, (0, 0), size, size + 400, 10 * size, NOW) == "ok"
        outcome = store.apply_clip_messages([ack(clip, 0, "refused", "sha256 mismatch: start again")], [], NOW)
        assert outcome.refused == 1 and outcome.given_up == (attempt == 2)
    assert row(store, clip) == (0, 0, "refused", 2)
    assert store.clip_upload(clip.clip_id).reason == "sha256 mismatch: start again"
    assert store.clip_upload_candidates(10) == []
    assert store.clip_upload_counts(NOW).refused == 1


def test_the_daily_budget_is_checked_and_counted_where_the_chunk_is_marked_in_flight(
        store, make_detection, frog, tmp_path):
    clip = clip_of(store, make_detection(), frog, tmp_path / "clips")
    store.add_feedback(clip.detection_id, "confirm")
    begin(store, clip)
    assert store.reserve_clip_chunk(clip.clip_id, (0, 0), 1000, 600, 1000, NOW) == "ok"
    store.unsend_clip_chunk(clip.clip_id, 1000, NOW)  # no PUBACK: nothing in flight, the bytes stay counted
    assert row(store, clip)[:2] == (0, 0) and store.clip_bytes_sent_on("2026-04-20") == 600
    assert store.reserve_clip_chunk(clip.clip_id, (0, 0), 1000, 401, 1000, NOW) == "budget"
    assert row(store, clip)[:2] == (0, 0) and store.clip_bytes_sent_on("2026-04-20") == 600
    assert store.reserve_clip_chunk(clip.clip_id, (0, 0), 1000, 400, 1000, NOW) == "ok"  # exactly the budget
    tomorrow = NOW + timedelta(hours=15)  # past midnight UTC
    store.unsend_clip_chunk(clip.clip_id, 1000, NOW)
    assert store.reserve_clip_chunk(clip.clip_id, (0, 0), 1000, 700, 1000, tomorrow) == "ok"
    assert store.db.execute("SELECT utc_day, sent_bytes, chunks FROM clip_upload_day ORDER BY utc_day").fetchall() == [
        ("2026-04-20", 1000, 2), ("2026-04-21", 700, 1)]


def test_a_clip_retention_deleted_is_gone_and_the_status_counts_add_up(store, make_detection, frog, tmp_path):
    dets = [make_detection(at_s=60.0 * n) for n in range(3)]
    old, started, fresh = (clip_of(store, det, frog, tmp_path / "clips", at_s=5.0 * n) for n, det in enumerate(dets))
    for clip in (old, started, fresh):
        store.add_feedback(clip.detection_id, "confirm")
    _, size = begin(store, started)
    store.reserve_clip_chunk(started.clip_id, (0, 0), 3000, 3400, 10**6, NOW)
    store.apply_clip_messages([ack(started, 3000)], [], NOW)
    kept = started.size_bytes + fresh.size_bytes
    result = store.enforce_clip_budget(kept, keep_per_species=0)  # retention takes the oldest
    assert result.deleted == (old.path,)
    candidate = store.clip_upload_candidates(10)[0]
    assert candidate.clip_id == old.clip_id and candidate.deleted  # listed, so it can be marked gone
    store.mark_clip_gone(old.clip_id, old.size_bytes, "retention deleted its file", NOW)
    assert [c.clip_id for c in store.clip_upload_candidates(10)] == [started.clip_id, fresh.clip_id]
    counts = store.clip_upload_counts(NOW)
    assert (counts.to_send, counts.to_send_bytes) == (2, size - 3000 + fresh.size_bytes)
    assert (counts.complete, counts.refused, counts.gone, counts.sent_today_bytes) == (0, 0, 1, 3400)
    assert store.clip_upload(old.clip_id).sha256 is None

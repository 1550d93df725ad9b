"""Watch-folder bookkeeping: a restart neither reprocesses nor skips a file."""

from __future__ import annotations

import math
import shutil

import pytest

from device.store import Store


def test_a_file_is_new_then_processing_then_done_across_restarts(db_path, tmp_path, shared_data):
    audio = tmp_path / "in" / "Cryp.soui.wav"
    audio.parent.mkdir()
    shutil.copy(shared_data / "audio" / "birds" / "Cryp.soui.wav", audio)
    stat = audio.stat()
    with Store.open(db_path) as store:
        assert store.watched_file_status(audio, stat.st_size, stat.st_mtime) is None
        store.mark_watched_file(audio, stat.st_size, stat.st_mtime, "processing")
        assert not store.watched_file_done(audio, stat.st_size, stat.st_mtime)
    with Store.open(db_path) as store:  # a crash mid-file: it is offered again
        assert store.watched_file_status(audio, stat.st_size, stat.st_mtime) == "processing"
        store.mark_watched_file(audio, stat.st_size, stat.st_mtime, "done", result=tmp_path / "out" / "Cryp.soui.csv")
    with Store.open(db_path) as store:
        assert store.watched_file_status(audio, stat.st_size, stat.st_mtime) == "done"
        assert store.watched_file_done(audio, stat.st_size, stat.st_mtime)
        record = store.watched_file(audio)
        assert record.result_csv_path == str(tmp_path / "out" / "Cryp.soui.csv") and record.processed_on is not None


def test_a_changed_file_counts_as_new(store, tmp_path):
    path = tmp_path / "a.wav"
    store.mark_watched_file(path, 1000, 1700000000.25, "done", result=tmp_path / "a.csv")
    assert store.watched_file_status(path, 1000, 1700000000.25) == "done"
    assert store.watched_file_status(path, 2000, 1700000000.25) is None  # appended to
    assert store.watched_file_status(path, 1000, 1700000099.0) is None  # replaced


def test_a_failed_file_is_not_retried_until_it_changes_and_keeps_its_reason(store, tmp_path):
    path = tmp_path / "broken.wav"
    store.mark_watched_file(path, 10, 1.0, "failed", result="not an audio file")
    assert store.watched_file_done(path, 10, 1.0)
    record = store.watched_file(path)
    assert record.detail == "not an audio file" and record.result_csv_path is None
    assert not store.watched_file_done(path, 11, 2.0)


def test_relative_and_absolute_paths_are_the_same_file(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store.mark_watched_file("rec.wav", 5, 1.0, "done")
    assert store.watched_file_status(tmp_path / "rec.wav", 5, 1.0) == "done"


def test_an_unknown_status_is_refused(store, tmp_path):
    with pytest.raises(ValueError, match="'queued' is not one of"):
        store.mark_watched_file(tmp_path / "x.wav", 1, 1.0, "queued")


def test_a_files_detections_messages_and_done_mark_commit_together_or_not_at_all(store, tmp_path, make_detection):
    path, csv_path = tmp_path / "in" / "chorus.wav", tmp_path / "out" / "chorus.csv"
    store.mark_watched_file(path, 1000, 1.0, "processing")
    good = [make_detection(at_s=0.0), make_detection("21211", at_s=10.0)]
    bad = make_detection(at_s=20.0, confidence=math.nan)
    with pytest.raises(ValueError, match="confidence is nan"):  # the third fails: none of it is kept
        store.save_watched_file_results(path, 1000, 1.0, [*good, bad], csv_path)
    assert store.db.execute("SELECT count(*) FROM detection").fetchone() == (0,)
    assert store.db.execute("SELECT count(*) FROM outbox_message").fetchone() == (0,)
    assert store.watched_file_status(path, 1000, 1.0) == "processing"  # analysed again at the next start

    message_ids = store.save_watched_file_results(path, 1000, 1.0, good, csv_path)
    assert len(message_ids) == 2
    rows = dict(store.db.execute("SELECT detection_id, status FROM detection").fetchall())
    assert rows == {d.detection_id: "closed" for d in good}
    assert {m.detection_id for m in store.pending_messages()} == set(rows)
    record = store.watched_file(path)
    assert record.status == "done" and record.result_csv_path == str(csv_path)

"""The guides' verdicts as a labelled list, read by the trainer's own reader: confirmed clips are
positives of their label, rejected ones negatives, each clip the FLAC the device sent, and the
list has the shared recordings.csv's columns."""

from __future__ import annotations

import csv
import hashlib
import zipfile

import pytest
import soundfile as sf

from sync_server.db.queries import DetectionFilter, detection_rows
from sync_server.export.formats import export
from sync_server.export.labelled import LIST_FILE, write_labelled
from trainer.labelled import read_labelled_list


def test_the_trainer_reads_the_judged_clips_with_their_labels(filled, tmp_path):
    out = tmp_path / "labelled"
    summary = export(filled.server, "labelled", DetectionFilter(), out)
    clips = read_labelled_list(out / LIST_FILE)
    judged = {filled.ids[k]: k for k in ("frog_confirmed", "frog_rejected", "tinamou")}
    assert summary.rows == len(clips) == 3
    assert summary.left_out == {"without a verdict": len(filled.ids) - 3, "without a clip on the server": 0,
                                "clip file missing": 0}
    with open(out / LIST_FILE, newline="", encoding="utf-8") as handle:
        listed = list(csv.DictReader(handle))
    stored = {row["detection_id"]: row for row in detection_rows(filled.server)}
    for clip, row in zip(clips, listed):
        key = judged[row["detection_id"]]
        held = stored[row["detection_id"]]["clip"]
        assert clip.label == {"frog_confirmed": "21211", "frog_rejected": None, "tinamou": "littin1"}[key]
        assert clip.path == out / row["path"] and clip.path.is_file()
        assert hashlib.sha256(clip.path.read_bytes()).hexdigest() == held["sha256"]  # the clip the device sent
        assert sf.info(str(clip.path)).samplerate == held["sample_rate_hz"]
        assert clip.group_id == f"{filled.planned(key).device_id}:{filled.planned(key).source}"
        assert 0 <= clip.start_s < clip.end_s <= sf.info(str(clip.path)).duration + 1e-6
    rejected = next(r for r in listed if r["detection_id"] == filled.ids["frog_rejected"])
    assert (rejected["verdict"], rejected["rejected_label"], rejected["in_label_space"]) == ("reject", "21211", "no")
    assert rejected["label_note"] == "guide rejected 21211"


def test_the_list_has_the_shared_recordings_columns_in_their_order(filled, shared_data, tmp_path):
    export(filled.server, "labelled", DetectionFilter(status="confirmed"), tmp_path / "confirmed")
    with open(shared_data / "recordings.csv", newline="", encoding="utf-8") as handle:
        shared_columns = next(csv.reader(handle))
    with open(tmp_path / "confirmed" / LIST_FILE, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames[:len(shared_columns)] == shared_columns and "label" in reader.fieldnames
    assert {r["primary_label"] for r in rows} == {"21211", "littin1"}
    assert {r["scientific_name"] for r in rows} == {"Allobates femoralis", "Crypturellus soui"}
    assert all(r["in_label_space"] == "yes" and r["license"] == "CC BY-NC-SA 4.0" for r in rows)


def test_as_a_zip_it_unpacks_to_the_same_list_and_a_used_folder_is_refused(filled, tmp_path):
    summary = export(filled.server, "labelled", DetectionFilter(), tmp_path / "labelled.zip")
    with zipfile.ZipFile(tmp_path / "labelled.zip") as archive:
        archive.extractall(tmp_path / "unpacked")
        assert sum(n.startswith("clips/") for n in archive.namelist()) == summary.rows
    assert len(read_labelled_list(tmp_path / "unpacked" / LIST_FILE)) == summary.rows
    with pytest.raises(FileExistsError, match="not empty"):
        write_labelled([], tmp_path / "unpacked")


def test_explorer_train_caches_the_judged_clips_for_training(filled, tmp_path):
    """The loop from the trail back to training: the server's export goes straight into the
    trainer's decode-once cache, each clip as its own example with its verdict's label."""
    import subprocess
    import sys

    from tests.helpers import REPO
    from trainer.audio_cache import AudioCache
    from trainer.labelled import read_examples

    out = tmp_path / "labelled"
    export(filled.server, "labelled", DetectionFilter(), out)
    done = subprocess.run([sys.executable, "-m", "trainer.cli", "cache", "--list", str(out / LIST_FILE),
                           "--out", str(tmp_path / "cache")], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "3 clips, 3 decoded, 0 already cached, 0 skipped" in done.stdout
    examples = read_examples(out / LIST_FILE)
    assert sorted(e.primary or "" for e in examples) == ["", "21211", "littin1"]  # the rejection: a negative
    cache = AudioCache(tmp_path / "cache")
    for example in examples:
        assert len(cache.samples(example.clip_id)) == round(sf.info(str(example.path)).duration * 32_000)

"""The tour board and the spectrogram strip, without Textual: folding, marks, memory bounds."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np

from device.domain import Detection
from device.tui.board import CALLING_NOW_S, NEW_FOR_S, RECENT_DETECTIONS, TourBoard, kind_of
from device.tui.melstrip import MelStrip, bands_first

T0 = datetime(2024, 3, 12, 6, 30, tzinfo=timezone.utc)
NAMES = {"littin1": ("Little Tinamou", "Crypturellus soui", "Aves"), "21211": ("Spotted-thighed Poison Frog", "Allobates femoralis", "Amphibia")}


def detection(label: str, start_s: float, confidence: float = 0.9, tour: str = "t1") -> Detection:
    return Detection(label=label, started_on=T0 + timedelta(seconds=start_s), ended_on=T0 + timedelta(seconds=start_s + 5),
                     confidence=confidence, branch_scores={"tiny": confidence}, bundle_name="demo", bundle_version="1",
                     bundle_sha256="0" * 64, device_id="d", tour_id=tour, start_s=start_s, end_s=start_s + 5)


def test_species_fold_newest_first_and_ignore_other_tours():
    board = TourBoard(NAMES.get, "t1")
    frog = detection("21211", 0)
    board.apply(frog, "open")
    board.apply(replace(frog, ended_on=T0 + timedelta(seconds=30), confidence=0.95), "close")
    board.apply(detection("littin1", 10), "close")
    assert not board.apply(detection("littin1", 50, tour="t2"), "close")
    rows = board.rows()
    assert [r.label for r in rows] == ["21211", "littin1"]  # the frog was heard last (until 30 s)
    assert rows[0].heard == 1 and rows[0].best_confidence == 0.95 and rows[0].latest.status == "closed"
    assert (rows[0].kind.label, rows[1].kind.label) == ("frog", "bird")
    assert kind_of("Insecta").symbol != kind_of("Mammalia").symbol


def test_new_and_calling_marks_follow_the_audio_clock():
    board = TourBoard(NAMES.get, "t1")
    board.apply(detection("littin1", 0), "close")
    board.hear_audio(T0 + timedelta(seconds=5 + CALLING_NOW_S - 1))
    row = board.row("littin1")
    now = board.now(lambda: T0 + timedelta(days=1))  # the audio clock wins over the wall clock
    assert row.calling_now(now) and row.is_new(now)
    board.hear_audio(T0 + timedelta(seconds=NEW_FOR_S + 1))
    now = board.now(lambda: T0)
    assert not row.calling_now(now) and not row.is_new(now)


def test_rejects_leave_the_count_and_old_detections_fold_into_a_tally():
    board = TourBoard(NAMES.get, "t1")
    for i in range(RECENT_DETECTIONS + 20):
        board.apply(detection("21211", i * 10.0, confidence=0.5 + i / 1000), "close")
    row = board.row("21211")
    assert len(row.detections) == RECENT_DETECTIONS  # memory stays flat
    assert row.heard == RECENT_DETECTIONS + 20 and row.first_heard_on == T0
    assert board.set_verdict(row.latest.detection_id, "reject")
    assert row.heard == RECENT_DETECTIONS + 19 and row.rejected == 1


def test_the_strip_shows_only_new_audio_of_overlapping_windows_and_stays_bounded():
    strip = MelStrip(rows=8, column_s=0.25, max_columns=50)
    mel = np.random.default_rng(0).normal(-40, 10, size=(64, 501)).astype(np.float32)
    assert bands_first(mel.T).shape == (64, 501)
    assert strip.push(mel, "a.wav", 0.0, 5.0) == 20  # a whole first window
    assert strip.push(mel, "a.wav", 2.5, 5.0) == 10  # only the 2.5 s not shown yet
    for i in range(2, 20):
        strip.push(mel, "a.wav", i * 2.5, 5.0)
    assert len(strip.columns) == 50
    image = strip.image(30, 4)
    assert image.shape == (4, 30) and 0.0 <= image.min() and image.max() == 1.0

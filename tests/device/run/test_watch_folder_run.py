"""The watch folder: each new recording analysed once, never early, across restarts."""

from __future__ import annotations

import csv
import math
import shutil
import signal
import subprocess
import threading
import time

import soundfile as sf

from tests.helpers import REPO, explorer_command, query, run_explorer

FROG = "audio/birdclef_train_audio/3.ogg"
SOUNDSCAPE = "audio/elsilencio_soundscape/H02_20230420_074000.ogg"


def rows_of(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))[1:]


def test_each_file_is_analysed_once_and_a_restart_neither_repeats_nor_skips(device_home, shared_data, tmp_path):
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    shutil.copy(shared_data / FROG, inbox / "frog.ogg")
    shutil.copy(shared_data / SOUNDSCAPE, inbox / "H02_20230420_074000.ogg")
    args = ("run", "--source", str(inbox), "--out", str(outbox), "--once")
    first = run_explorer(*args, home=device_home)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in outbox.iterdir()) == ["H02_20230420_074000.csv", "frog.csv"]
    assert len(rows_of(outbox / "H02_20230420_074000.csv")) == 12
    detections = query(device_home.database, "SELECT count(*) FROM detection")[0][0]
    assert "21211" in {r[0] for r in query(device_home.database, "SELECT label FROM detection")}
    stamps = {p.name: p.stat().st_mtime_ns for p in outbox.iterdir()}

    second = run_explorer(*args, home=device_home)  # a restart: nothing new, nothing repeated
    assert second.returncode == 0, second.stderr
    assert {p.name: p.stat().st_mtime_ns for p in outbox.iterdir()} == stamps
    assert query(device_home.database, "SELECT count(*) FROM detection")[0][0] == detections

    shutil.copy(shared_data / "audio/birdclef_train_audio/4.ogg", inbox / "late.ogg")  # arrives while "down"
    third = run_explorer(*args, home=device_home)
    assert third.returncode == 0, third.stderr
    assert (outbox / "late.csv").exists()
    assert {p.name: p.stat().st_mtime_ns for p in outbox.iterdir() if p.name != "late.csv"} == stamps
    done = query(device_home.database, "SELECT status FROM watched_file")
    assert [s for (s,) in done] == ["done"] * 3


def test_a_file_still_being_written_is_not_read_early(device_home, shared_data, tmp_path):
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    audio, rate = sf.read(shared_data / SOUNDSCAPE, dtype="float32")
    child = subprocess.Popen(explorer_command("run", "--source", str(inbox), "--out", str(outbox)),
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def slow_recorder():  # a recorder writing a WAV in pieces over ~4 s, as a field recorder would
        with sf.SoundFile(inbox / "slow.wav", "w", samplerate=rate, channels=1, subtype="PCM_16") as out:
            for start in range(0, len(audio), rate * 6):
                out.write(audio[start : start + rate * 6])
                out.flush()
                time.sleep(0.4)

    writer = threading.Thread(target=slow_recorder)
    writer.start()
    writer.join()
    deadline = time.monotonic() + 60
    while not (outbox / "slow.csv").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    child.communicate(timeout=30)
    assert (outbox / "slow.csv").exists()
    assert len(rows_of(outbox / "slow.csv")) == math.ceil(len(audio) / rate / 5)  # all 60 s, not a prefix
    assert query(device_home.database, "SELECT status FROM watched_file") == [("done",)]


def test_a_corrupt_file_is_recorded_as_failed_and_the_rest_go_on(device_home, shared_data, tmp_path):
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    (inbox / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    shutil.copy(shared_data / FROG, inbox / "frog.ogg")
    result = run_explorer("run", "--source", str(inbox), "--out", str(outbox), "--once", home=device_home)
    assert result.returncode == 0, result.stderr
    assert "broken.wav" in result.stderr
    assert (outbox / "frog.csv").exists() and not (outbox / "broken.csv").exists()
    statuses = dict(query(device_home.database, "SELECT path, status FROM watched_file"))
    assert sorted(statuses.values()) == ["done", "failed"]

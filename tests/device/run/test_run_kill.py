"""A power cut mid-run (kill -9): the database opens cleanly with every committed detection."""

from __future__ import annotations

import csv
import signal
import subprocess
import time

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from tests.helpers import REPO, explorer_command, query, run_explorer


def frog_chorus(shared_data, path, repeats: int) -> None:
    """The in-space frog calls back to back at 32 kHz, `repeats` times: many short events."""
    with open(shared_data / "recordings.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["in_label_space"] == "yes" and "colombian_frogs" in r["path"]]
    calls = []
    for row in rows:
        audio, rate = sf.read(shared_data / row["path"], dtype="float32")
        calls.append(resample_poly(audio, 32000, rate).astype(np.float32))
        calls.append(np.zeros(32000 * 5, dtype=np.float32))  # 5 s of silence closes each event
    sf.write(path, np.concatenate(calls * repeats), 32000, subtype="PCM_16")


def test_kill_9_mid_run_loses_no_committed_detection(device_home, shared_data, tmp_path):
    chorus = tmp_path / "chorus.wav"
    frog_chorus(shared_data, chorus, repeats=12)
    child = subprocess.Popen(
        explorer_command("run", "--source", str(chorus), "--headless"),
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    seen: list[tuple] = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if device_home.database.exists():
                try:
                    seen = query(device_home.database, "SELECT detection_id, status FROM detection")
                except Exception:  # the schema may not be there yet
                    seen = []
                if sum(1 for _, status in seen if status == "closed") >= 8:
                    break
            time.sleep(0.02)
        assert child.poll() is None, "the run ended before it could be killed: make the recording longer"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    assert query(device_home.database, "PRAGMA integrity_check") == [("ok",)]
    after = dict(query(device_home.database, "SELECT detection_id, status FROM detection"))
    assert {d for d, _ in seen} <= set(after)
    closed = {d for d, s in after.items() if s == "closed"}
    outbox = {d for (d,) in query(device_home.database, "SELECT detection_id FROM outbox_message WHERE kind = 'detection'")}
    assert outbox == closed

    # the next start closes what the cut left open, with its outbox message, and goes on
    result = run_explorer("run", "--source", str(shared_data / "audio/birdclef_train_audio/3.ogg"), "--headless",
                          home=device_home)
    assert result.returncode == 0, result.stderr
    statuses = dict(query(device_home.database, "SELECT detection_id, status FROM detection"))
    assert set(after) <= set(statuses) and set(statuses.values()) == {"closed"}
    outbox = {d for (d,) in query(device_home.database, "SELECT detection_id FROM outbox_message WHERE kind = 'detection'")}
    assert outbox == set(statuses)

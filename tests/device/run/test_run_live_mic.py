"""The real live path: a recording played into a PulseAudio virtual microphone, captured by
`explorer run` through sounddevice/PortAudio, identified, and logged in SQLite."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time

from tests.helpers import REPO, explorer_command, query
from tests.pulse import ensure_virtual_mic, exclusive_virtual_mic, feed_recording

FROG = "audio/birdclef_train_audio/3.ogg"  # Allobates femoralis (21211)


def wait_for(predicate, timeout_s: float, every_s: float = 0.25):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    return None


def test_a_frog_played_into_the_microphone_is_heard_and_logged(device_home, shared_data):
    mic = ensure_virtual_mic()
    assert "pulse" in mic.portaudio_inputs
    with exclusive_virtual_mic():
        child = subprocess.Popen(
            explorer_command("run", "--source", "pulse", "--headless"),
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, PULSE_SERVER=mic.server),
        )
        feeder = None
        heard_in_time = None
        try:
            # the stream must be open before audio is fed, or PulseAudio discards it
            def tour_started():
                try:
                    return device_home.database.exists() and query(device_home.database, "SELECT 1 FROM tour")
                except sqlite3.OperationalError:  # the database is there, its schema not yet
                    return None

            assert wait_for(tour_started, 30)
            time.sleep(1.0)
            feeder = feed_recording(shared_data / FROG, mic.fifo, realtime=True, rate_hz=mic.rate_hz)

            def heard():
                return query(device_home.database, "SELECT detection_id FROM detection WHERE label = '21211'")

            heard_in_time = wait_for(heard, 45)
        finally:
            if feeder is not None:
                feeder.stop()
            child.send_signal(signal.SIGINT)
            out, err = child.communicate(timeout=60)
    assert heard_in_time, f"the frog was not heard through the microphone:\n{out[-3000:]}\n{err[-3000:]}"
    assert child.returncode == 0, err
    assert "Allobates femoralis" in out and "Species Spotting Rate" in out
    rows = query(device_home.database, "SELECT status, source, branch_scores FROM detection WHERE label = '21211'")
    assert rows and all(status == "closed" for status, _, _ in rows)  # Ctrl-C flushed the open event
    assert all(source.startswith("mic:") or "pulse" in source for _, source, _ in rows)
    assert all(json.loads(scores) for _, _, scores in rows)
    assert query(device_home.database, "SELECT count(*) FROM outbox_message")[0][0] >= len(rows)

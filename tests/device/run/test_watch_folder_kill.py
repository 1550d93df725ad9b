"""A power cut in the middle of a watch-folder file (kill -9) never stores its detections twice.

A file's detections, their outbox messages and its 'done' mark are one transaction, after the
file was marked 'processing'; so a kill mid-file leaves nothing of it, and the restart analyses
it once more from scratch. The run is killed on an event, never after a sleep: as soon as the
log shows the long file being processed (or, as the defect did, holding some of its detections
before it was done).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from device.config import Settings
from device.engine.loader import load_engine
from device.store import Store
from device.watch_runner import process_file
from tests.device.run.test_run_kill import frog_chorus
from tests.helpers import REPO, explorer_command, query, run_explorer, wait_until

FROG = "audio/birdclef_train_audio/3.ogg"


def detections_in(paths, home, scratch) -> dict[str, int]:
    """How many detections one uninterrupted watch-folder pass makes of each file (into a scratch log)."""
    engine = load_engine(home, None)
    with Store.open(scratch / "reference.db") as store:
        return {str(path): process_file(store, Settings(), engine, path, scratch)[1] for path in paths}


def state_of(database, path) -> tuple[str | None, int]:
    """(watched_file status, detections stored) of `path`, as an outside reader sees them."""
    try:
        status = query(database, "SELECT status FROM watched_file WHERE path = ?", [str(path)])
        stored = query(database, "SELECT count(*) FROM detection WHERE source = ?", [str(path)])[0][0]
    except Exception:  # the schema may not be there yet
        return None, 0
    return (status[0][0] if status else None), stored


def test_kill_9_mid_file_then_restart_stores_each_detection_once(device_home, shared_data, tmp_path):
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    short, long = inbox / "frog.ogg", inbox / "chorus.wav"
    shutil.copy(shared_data / FROG, short)
    frog_chorus(shared_data, long, repeats=12)  # ~34 min of real frog calls: seconds to analyse
    os.utime(short, (time.time() - 60, time.time() - 60))  # oldest first: the short file is done before
    (tmp_path / "reference").mkdir()
    expected = detections_in([short, long], device_home, tmp_path / "reference")
    assert all(expected.values()), expected

    child = subprocess.Popen(explorer_command("run", "--source", str(inbox), "--out", str(outbox)),
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = [(None, 0)]

    def mid_file_or_ended() -> bool:
        if child.poll() is not None:
            return True
        seen.append(state_of(device_home.database, long))
        status, stored = seen[-1]
        return status == "processing" or (stored > 0 and status != "done")

    try:
        wait_until(mid_file_or_ended, timeout_s=120, every_s=0.01)
        assert child.poll() is None, "the run ended before it could be killed"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert seen[-1][0] != "done", f"the long file was finished before the kill: {seen[-1]}"
    assert state_of(device_home.database, short) == ("done", expected[str(short)])

    restart = run_explorer("run", "--source", str(inbox), "--out", str(outbox), "--once", home=device_home)
    assert restart.returncode == 0, restart.stderr
    assert "frog.ogg:" not in restart.stderr  # the finished file is not analysed again
    assert sorted(query(device_home.database, "SELECT status FROM watched_file")) == [("done",), ("done",)]
    stored = dict(query(device_home.database, "SELECT source, count(*) FROM detection GROUP BY source"))
    assert stored == expected
    twice = query(device_home.database, "SELECT source, label, start_s FROM detection GROUP BY 1, 2, 3 HAVING count(*) > 1")
    assert twice == []
    messages = query(device_home.database, "SELECT detection_id, count(*) FROM outbox_message GROUP BY detection_id")
    assert {count for _, count in messages} == {1}
    assert {d for d, _ in messages} == {d for (d,) in query(device_home.database, "SELECT detection_id FROM detection")}
    assert sorted(p.name for p in outbox.iterdir()) == ["chorus.csv", "frog.csv"]  # no .part left behind

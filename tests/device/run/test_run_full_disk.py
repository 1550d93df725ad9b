"""A full card mid-run: clear errors, the run goes on, nothing already stored is lost."""

from __future__ import annotations

import resource
import signal
import subprocess

from device.analysis import file_windows
from tests.device.run.test_run_kill import frog_chorus
from tests.helpers import REPO, explorer_command, query, run_explorer

FROG = "audio/birdclef_train_audio/3.ogg"


def limit_file_size(max_bytes: int):
    def apply() -> None:
        # The kernel then refuses writes past max_bytes with EFBIG, as a full card refuses them with ENOSPC.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return apply


def test_a_run_that_hits_the_size_limit_keeps_going_and_loses_nothing(device_home, shared_data, tmp_path):
    assert run_explorer("run", "--source", str(shared_data / FROG), "--headless", home=device_home).returncode == 0
    before = dict(query(device_home.database, "SELECT detection_id, label FROM detection"))
    clips_before = query(device_home.database, "SELECT path FROM clip WHERE deleted_on IS NULL")
    assert before and clips_before

    chorus = tmp_path / "chorus.wav"
    frog_chorus(shared_data, chorus, repeats=2)
    files = [device_home.database, device_home.database.with_name("explorer.db-wal"), device_home.logs / "explorer.log"]
    limit = max(p.stat().st_size for p in files if p.exists()) + 48_000
    result = subprocess.run(
        explorer_command("run", "--source", str(chorus), "--headless"),
        cwd=REPO, capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size(limit),
    )
    # the run analyses the whole recording, then says what it could not store, and why
    windows = sum(1 for _ in file_windows(chorus, 5.0, 2.5))
    assert f"{windows} windows" in result.stdout
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "could not be stored (disk full or failing?" in result.stderr
    assert "the disk refused a write" in result.stderr

    assert query(device_home.database, "PRAGMA integrity_check") == [("ok",)]
    after = dict(query(device_home.database, "SELECT detection_id, label FROM detection"))
    assert before.items() <= after.items()
    for (path,) in clips_before:
        assert (device_home.clips / path).exists() or __import__("pathlib").Path(path).exists()
    # no half-written clip is left behind
    assert not [p for p in device_home.clips.rglob("*") if p.is_file() and not p.name.endswith(".flac")]

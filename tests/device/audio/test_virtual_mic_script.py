"""`.ci/pulse-mic.sh`, the virtual microphone CI starts: it must survive what a killed daemon
leaves behind (CI once failed on a FIFO a previous PulseAudio had left in /tmp)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.pulse import SCRIPT, exclusive_virtual_mic, pipe_source_module, unload_pipe_source


def run_script(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHON=sys.executable, **env),
        timeout=60,
    )


def test_a_stale_fifo_left_by_a_dead_daemon_is_replaced(tmp_path, virtual_mic):
    fifo = tmp_path / "stale.fifo"
    os.mkfifo(fifo)  # what a killed PulseAudio leaves: a FIFO nobody reads
    source = "explorer_stale_fifo_test"
    with exclusive_virtual_mic():
        try:
            done = run_script(EXPLORER_VIRTUAL_MIC_FIFO=str(fifo), EXPLORER_VIRTUAL_MIC_SOURCE=source)
            assert done.returncode == 0, done.stderr
            assert f"SOURCE={source}" in done.stdout
            assert pipe_source_module(source) is not None
        finally:
            if pipe_source_module(source) is not None:
                unload_pipe_source(source)
            restored = run_script()  # the shared source becomes the default again
            assert restored.returncode == 0, restored.stderr


def test_a_path_that_is_not_a_fifo_is_refused_by_name(tmp_path, virtual_mic):
    squatter = tmp_path / "not-a.fifo"
    squatter.write_text("someone's file")
    with exclusive_virtual_mic():
        done = run_script(EXPLORER_VIRTUAL_MIC_FIFO=str(squatter), EXPLORER_VIRTUAL_MIC_SOURCE="explorer_squat_test")
    assert done.returncode == 1
    assert str(squatter) in done.stderr and "not a FIFO" in done.stderr
    assert squatter.read_text() == "someone's file"  # nothing of theirs was removed

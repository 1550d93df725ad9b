"""`explorer run` in a real (pseudo-)terminal opens the guide's screen; q, y quits cleanly."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time

from tests.helpers import REPO, query

FROG = "audio/birdclef_train_audio/3.ogg"  # Allobates femoralis, 38 s


def read_until(fd: int, needle: bytes, timeout_s: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and needle not in seen:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
    return seen


def test_a_terminal_gets_the_screen_and_quitting_flushes_and_summarises(device_home, shared_data):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    env = dict(os.environ, TERM="xterm-256color", EXPLORER_HOME=str(device_home.root))
    child = subprocess.Popen(
        [sys.executable, "-m", "device.cli.main", "run", "--source", str(shared_data / FROG), "--realtime"],
        stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=env, close_fds=True,
    )
    os.close(slave)
    try:
        screen = read_until(master, b"Spotted-thighed", 60)  # the frog on the board, drawn in the terminal
        assert b"Spotted-thighed" in screen, screen[-2000:]
        assert b"\x1b[?1049h" in screen  # the alternate screen: a full-screen app, not log lines
        os.write(master, b"q")
        read_until(master, b"Quit", 10)
        os.write(master, b"y")
        rest = read_until(master, b"Species Spotting Rate", 60)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
        os.close(master)
    assert child.returncode == 0
    assert b"Species Spotting Rate" in rest
    assert query(device_home.database, "SELECT status FROM detection WHERE label = '21211'") == [("closed",)]
    assert query(device_home.database, "SELECT count(*) FROM tour WHERE ended_on IS NULL") == [(0,)]

"""Helpers for tests that drive the real command line."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_explorer(*args: str, home=None, timeout: float = 300, **kwargs):
    """Run the real `explorer` entry point in a subprocess (as a user would)."""
    env = dict(os.environ)
    if home is not None:
        env["EXPLORER_HOME"] = str(home.root if hasattr(home, "root") else home)
    return subprocess.run(
        [sys.executable, "-m", "device.cli.main", *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO, **kwargs,
    )


def explorer_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "device.cli.main", *args]


def query(database: Path, sql: str, params=()) -> list[tuple]:
    """Read the device database the way an outside reader would (its own connection)."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


def wait_until(condition, timeout_s: float = 15.0, every_s: float = 0.05) -> bool:
    """Poll `condition` until it holds or `timeout_s` passes; return its last value."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every_s)
    return bool(condition())

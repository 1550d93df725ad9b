"""Helpers for the guide's screen tests: pilot driving, snapshots, a frozen status line.

Snapshots: `assert_snapshot(app, name, tmp_path)` compares the app's SVG screenshot with
tests/device/tui/snapshots/NAME.svg. To accept a new look, read this run's screen (the
failure names the file) first, then, with the Textual version in snapshots/TEXTUAL_VERSION
(the one the files were made with), run `EXPLORER_UPDATE_SNAPSHOTS=1 pytest tests/device/tui`.
Snapshots are stable because the data is (a real recording with a fixed start time), the
clock is pinned (`fixed_clock`) and the status line's run-to-run numbers are frozen.
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

SNAPSHOTS = Path(__file__).parent / "snapshots"
TRAIL_START = datetime(2024, 3, 12, 6, 30, tzinfo=timezone.utc)
TOUR_START = TRAIL_START - timedelta(minutes=1)
TOUR_END = TRAIL_START + timedelta(minutes=11, seconds=30)


def drive(app, scenario, size=(80, 24)):
    """Run `scenario(pilot)` against `app` under Textual's pilot, at a terminal size."""

    async def main():
        async with app.run_test(size=size) as pilot:
            await scenario(pilot)

    asyncio.run(main())


async def settle(pilot, app, polls: int = 3) -> None:
    """Let the app poll its feed a few times (and the screens redraw)."""
    for _ in range(polls):
        await pilot.pause(app.poll_s + 0.05)
    await pilot.pause()


def textual_version() -> str:
    from importlib.metadata import version

    return version("textual")


def assert_snapshot(app, name: str, tmp_path: Path) -> None:
    """The app's screen equals snapshots/NAME.svg (see the module docstring to update)."""
    actual = app.export_screenshot(title=name)
    expected_path = SNAPSHOTS / f"{name}.svg"
    made_with = (SNAPSHOTS / "TEXTUAL_VERSION").read_text().strip() if (SNAPSHOTS / "TEXTUAL_VERSION").exists() else None
    if os.environ.get("EXPLORER_UPDATE_SNAPSHOTS") == "1":
        if made_with not in (None, textual_version()):
            pytest.fail(f"snapshots were made with textual {made_with}, this is {textual_version()}: update them "
                        "with that version, or regenerate all of them and bump snapshots/TEXTUAL_VERSION on purpose")
        SNAPSHOTS.mkdir(exist_ok=True)
        expected_path.write_text(actual, encoding="utf-8")
        (SNAPSHOTS / "TEXTUAL_VERSION").write_text(textual_version() + "\n")
        return
    if not expected_path.exists():
        pytest.fail(f"no snapshot {expected_path}: make it with EXPLORER_UPDATE_SNAPSHOTS=1 and read it first")
    if actual != expected_path.read_text(encoding="utf-8"):
        (tmp_path / f"{name}.svg").write_text(actual, encoding="utf-8")
        hint = "" if made_with == textual_version() else f" (snapshots made with textual {made_with}, this is {textual_version()})"
        pytest.fail(f"screen {name!r} differs from {expected_path}{hint}; this run's screen: {tmp_path / (name + '.svg')}")


class FrozenStatus:
    """A fixed status line for snapshots: RTF and free disk vary run to run; the clock is pinned too."""

    def __init__(self, collector, **overrides):
        from device.tui.status import DeviceStatus

        self.collector = collector
        self.fixed = DeviceStatus(
            source=str(collector.source.name), source_state="ended", live=False, bundle=overrides.pop("bundle"),
            rtf=0.007, windows_inferred=29, windows_dropped=0, detections=10, pending_sync=10,
            last_sync_on=None, clip_disk_free_bytes=48_300_000_000, battery_percent=None, finished=True, **overrides,
        )

    def collect(self):
        self.collector.collect()  # still exercised, its numbers not shown
        return self.fixed

    def mic_status(self):
        return None


def pin_tour(database: Path, tour_id: str, started_on: datetime, ended_on: datetime | None) -> None:
    """Give the tour fixed times (snapshots show them); the tour otherwise starts at wall-clock now."""
    import sqlite3

    from device.domain import iso_utc

    connection = sqlite3.connect(database)
    try:
        connection.execute(
            "UPDATE tour SET started_on = ?, ended_on = ? WHERE tour_id = ?",
            [iso_utc(started_on), iso_utc(ended_on) if ended_on else None, tour_id],
        )
        connection.commit()
    finally:
        connection.close()


def fixed_clock(moment: datetime):
    return lambda: moment


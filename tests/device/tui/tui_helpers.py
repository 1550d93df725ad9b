"""Helpers for the guide's screen tests: pilot driving, snapshots, the status line's pinned inputs.

Snapshots: `assert_snapshot(app, name, tmp_path)` compares the app's SVG screenshot with
tests/device/tui/snapshots/NAME.svg. To accept a new look, read this run's screen (the
failure names the file) first, then, with the Textual version in snapshots/TEXTUAL_VERSION
(the one the files were made with, and the one pyproject.toml pins), run
`EXPLORER_UPDATE_SNAPSHOTS=1 pytest tests/device/tui`.
Snapshots are stable because the data is (a real recording with a fixed start time), the
clock is pinned (`fixed_clock`), and the real status collector reads pinned values for the
only facts that change from run to run (`pin_run_to_run_inputs`).
"""

from __future__ import annotations

import asyncio
import dataclasses
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


PINNED_RTF = 0.007
"""Inference time over audio time: it follows the machine and its load, so a snapshot shows this."""
PINNED_CLIP_DISK_FREE_BYTES = 48_300_000_000
"""Free space under the clips folder: whatever else is on the disk decides it."""
PINNED_BATTERY_PERCENT = None
"""No battery (a Pi without a UPS HAT); a laptop running the tests would otherwise show its own."""


class PinnedRtf:
    """The pipeline as the status collector reads it: its own status, with only the RTF pinned."""

    def __init__(self, pipeline, rtf: float):
        self.pipeline = pipeline
        self.rtf = rtf

    def status(self):
        return dataclasses.replace(self.pipeline.status(), rtf=self.rtf)


def pin_run_to_run_inputs(collector, monkeypatch) -> None:
    """Make the real `StatusCollector` read fixed values for the facts that change from run to run.

    The collector still builds every status line itself, from the real pipeline (windows,
    detections, drops, source state), the real Store (sync backlog, last sync) and the real
    sync worker; pinned are only its inputs that no test can hold still: the pipeline's RTF,
    and the disk and battery readers it calls (`shutil.disk_usage`, `battery_percent`). Its own
    clock only decides when the slow reads are repeated, which pinned values make invisible;
    the screen's clock is pinned by `fixed_clock`.
    """
    from types import SimpleNamespace

    from device.tui import status

    collector.pipeline = PinnedRtf(collector.pipeline, PINNED_RTF)
    usage = SimpleNamespace(total=64_000_000_000, used=64_000_000_000 - PINNED_CLIP_DISK_FREE_BYTES,
                            free=PINNED_CLIP_DISK_FREE_BYTES)
    monkeypatch.setattr(status, "shutil", SimpleNamespace(disk_usage=lambda path: usage))
    monkeypatch.setattr(status, "battery_percent", lambda: PINNED_BATTERY_PERCENT)


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


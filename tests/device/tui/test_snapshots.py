"""How the guide's screens look: named SVG snapshots of main, detail and summary.

Stable by construction: the recording is real and its start time fixed by its name, the
tour's times are pinned, the clock is fixed, and the real status line is built by the real
collector from pinned inputs for its only run-to-run numbers (RTF, free disk, battery). See
tui_helpers.py for updating a snapshot.
"""

from __future__ import annotations

import pytest

from device.audio.queue import DropOldestQueue

from device.tui.screens.species import SpeciesScreen
from device.tui.screens.summary import SummaryScreen
from tests.device.tui.tui_helpers import (
    TOUR_END, TOUR_START, assert_snapshot, drive, fixed_clock, pin_run_to_run_inputs, pin_tour, settle,
)


@pytest.fixture
def trail_app(runtime_factory, trail_recording, device_home, monkeypatch):
    """The app after the whole trail was heard, with pinned times and the status line's run-to-run inputs."""
    # The whole trail is heard before the screen draws: a channel that holds every event keeps the
    # picture independent of how the inference and writer threads interleaved.
    runtime = runtime_factory(trail_recording, ui_queue=DropOldestQueue(4096, "ui"))
    assert runtime.pipeline.wait(60)
    pin_tour(device_home.database, runtime.tour.tour_id, TOUR_START, None)
    runtime.tour = runtime.store.tour(runtime.tour.tour_id)
    pin_run_to_run_inputs(runtime.collector, monkeypatch)
    assert runtime.feed.collector is runtime.collector
    from datetime import timezone

    return runtime, runtime.app(clock=fixed_clock(TOUR_END), tz=timezone.utc)


def test_main_screen_80x24(trail_app, tmp_path):
    runtime, app = trail_app

    async def scenario(pilot):
        await settle(pilot, app)
        assert_snapshot(app, "main_80x24", tmp_path)

    drive(app, scenario, size=(80, 24))


def test_main_screen_full_size_in_sunlight(trail_app, tmp_path):
    runtime, app = trail_app

    async def scenario(pilot):
        await settle(pilot, app)
        await pilot.press("b")  # the high-contrast theme
        await pilot.pause()
        assert app.theme == "explorer-sunlight"
        assert_snapshot(app, "main_sunlight_132x43", tmp_path)

    drive(app, scenario, size=(132, 43))


def test_species_detail_screen(trail_app, tmp_path):
    runtime, app = trail_app

    async def scenario(pilot):
        await settle(pilot, app)
        await pilot.press("down", "enter")
        await pilot.pause()
        assert isinstance(app.screen, SpeciesScreen)
        assert_snapshot(app, "species_80x24", tmp_path)

    drive(app, scenario, size=(80, 24))


def test_tour_summary_screen(trail_app, device_home, tmp_path):
    runtime, app = trail_app
    pin_tour(device_home.database, runtime.tour.tour_id, TOUR_START, TOUR_END)

    async def scenario(pilot):
        await settle(pilot, app)
        await pilot.press("s")
        await pilot.pause()
        assert isinstance(app.screen, SummaryScreen)
        assert_snapshot(app, "summary_80x24", tmp_path)

    drive(app, scenario, size=(80, 24))

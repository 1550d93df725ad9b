"""A slow or frozen screen never stalls capture or inference.

The screen reads the pipeline through one channel (`Pipeline.ui_events`), which drops its
own oldest events when the screen falls behind. These tests freeze the UI's event loop
outright (the test's synchronous code runs on it, so nothing on screen moves) with a
channel shrunk to 2 events, and show that meanwhile every window is analysed and every
detection stored, that the only cost is counted UI events, and that the screen catches up
from the log once it runs again.
"""

from __future__ import annotations

import time

import soundfile as sf

from device.audio.queue import DropOldestQueue
from device.config import AudioSettings, Settings
from tests.device.tui.conftest import FROG, TRAIL_PARTS
from tests.device.tui.tui_helpers import drive, settle
from tests.helpers import query

LIVE_SECONDS = 15.0
"""The paced (live) run: long enough for six windows and the frog's first detection."""


def test_a_frozen_screen_while_a_recording_is_analysed_costs_no_window(runtime_factory, trail_recording, device_home):
    runtime = runtime_factory(trail_recording, ui_queue=DropOldestQueue(2, "ui"))
    app = runtime.app()
    seen = {}

    async def scenario(pilot):
        await pilot.pause()
        # Frozen: this blocks the UI's event loop until the pipeline has finished. If the
        # pipeline waited on the screen in any way, it could never finish here.
        seen["finished"] = runtime.pipeline.wait(timeout=60)
        seen["status"] = runtime.pipeline.status()
        seen["stored"] = query(device_home.database, "SELECT count(*) FROM detection WHERE status = 'closed'")[0][0]
        await settle(pilot, app)  # thawed: the screen catches up from the log
        seen["on_screen"] = {row.label for row in app.board.rows()}

    drive(app, scenario)
    status = seen["status"]
    assert seen["finished"], "the pipeline did not finish while the screen was frozen"
    assert status.windows_dropped == 0
    assert status.windows_inferred == status.windows_captured == 29  # 72.4 s at a 2.5 s hop
    assert status.ui_events_dropped > 0, "the frozen screen's channel should have overflowed"
    assert seen["stored"] == status.detections_closed == 10
    assert seen["on_screen"] >= {label for _, label in TRAIL_PARTS}


def test_a_frozen_screen_during_live_capture_costs_no_window(runtime_factory, shared_data, device_home, tmp_path):
    # The frog paced at real time, as a microphone delivers it; a queue of two windows
    # before inference, so a pipeline held up by the screen would drop from the third on.
    audio, rate = sf.read(shared_data / FROG, dtype="float32", frames=int(LIVE_SECONDS * 32000))
    recording = tmp_path / "frog_20240312_063000.wav"
    sf.write(recording, audio, rate)
    settings = Settings(audio=AudioSettings(queue_windows=2))
    runtime = runtime_factory(recording, live=True, realtime=True, settings=settings, ui_queue=DropOldestQueue(2, "ui"))
    app = runtime.app()
    seen = {}

    async def scenario(pilot):
        await pilot.pause()
        polls = app.poll_count
        time.sleep(LIVE_SECONDS + 1.0)  # the UI thread is frozen for the whole recording
        seen["polls_while_frozen"] = app.poll_count - polls
        seen["finished"] = runtime.pipeline.wait(timeout=10)
        seen["status"] = runtime.pipeline.status()
        seen["stored"] = query(device_home.database, "SELECT label, status FROM detection")
        await settle(pilot, app)
        seen["on_screen"] = {row.label for row in app.board.rows()}

    drive(app, scenario)
    status = seen["status"]
    assert seen["polls_while_frozen"] == 0, "the screen was not frozen"
    assert seen["finished"]
    assert status.windows_dropped == 0
    assert status.windows_inferred == status.windows_captured == 5  # starts 0, 2.5 ... 10 s of 15 s
    assert status.ui_events_dropped > 0
    assert ("21211", "closed") in seen["stored"], "the frog was not stored while the screen was frozen"
    assert "21211" in seen["on_screen"]

"""The status bar tells the guide when sync cannot deliver, in words they can act on."""

from __future__ import annotations

from device.config import Settings, SyncSettings
from device.tui.widgets.status_bar import StatusBar
from tests.device.tui.tui_helpers import drive, settle
from tests.helpers import wait_until
from tests.mqtt import free_port


def test_an_unreachable_broker_shows_as_a_sync_warning_with_the_backlog(runtime_factory, trail_recording):
    port = free_port()  # nobody listens: the trail has no network
    settings = Settings(sync=SyncSettings(enabled=True, host="127.0.0.1", port=port, interval_s=1.0))
    runtime = runtime_factory(trail_recording, settings=settings)
    app = runtime.app()
    shown = {}

    async def scenario(pilot):
        assert runtime.pipeline.wait(60), "the recording was not analysed within 60 s"
        assert wait_until(lambda: runtime.session.sync.state.last_error is not None, 10)
        await settle(pilot, app, polls=25)  # the pending count is a slow read (every few seconds or per detection)
        shown["bar"] = str(app.screen.query_one(StatusBar).render())
        shown["status"] = app.status

    drive(app, scenario, size=(120, 30))
    status = shown["status"]
    assert f"127.0.0.1:{port}: cannot connect" in status.sync_error
    assert status.pending_sync and status.pending_sync > 0
    assert f"⚠ sync {status.pending_sync} pending, last never: no connection" in shown["bar"]

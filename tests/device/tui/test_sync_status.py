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


def test_the_bar_counts_what_the_server_has_not_confirmed_until_its_receipts_come(runtime_factory, trail_recording,
                                                                                 tmp_path):
    import time

    from tests.mqtt import Broker, FakeIngest

    broker = Broker(tmp_path / "broker").start()
    settings = Settings(sync=SyncSettings(enabled=True, host=broker.host, port=broker.port, interval_s=1.0,
                                          receipt_timeout_s=1.0))
    runtime = runtime_factory(trail_recording, settings=settings)
    app = runtime.app()
    shown = {}

    async def scenario(pilot):
        async def bar_when(condition, timeout_s: float = 60.0) -> str:
            """The bar's words once the status it shows meets `condition` (the bar's own copy,
            which follows the app's by a poll)."""
            bar = app.screen.query_one(StatusBar)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and not condition(bar.status):
                await pilot.pause(0.2)
            return str(bar.render())

        assert runtime.pipeline.wait(60), "the recording was not analysed within 60 s"
        worker = runtime.session.sync
        # The broker acknowledges, no server answers: acknowledged is not delivered.
        assert wait_until(lambda: worker.state.sent > 0 and worker.state.last_error is None, 30)
        shown["unconfirmed"] = await bar_when(lambda s: s.pending_sync and s.pending_sync > 0)
        shown["unconfirmed_status"] = app.screen.query_one(StatusBar).status
        ingest = FakeIngest(broker)  # the server comes up; after the 1 s timeout the worker sends again
        try:
            shown["confirmed"] = await bar_when(lambda s: s.pending_sync == 0 and s.last_sync_on is not None)
        finally:
            ingest.close()
        shown["confirmed_status"] = app.screen.query_one(StatusBar).status

    try:
        drive(app, scenario, size=(120, 30))
    finally:
        broker.stop()
    unconfirmed = shown["unconfirmed_status"]
    assert unconfirmed.sync_error is None and unconfirmed.pending_sync > 0
    assert f"sync {unconfirmed.pending_sync} pending, last never" in shown["unconfirmed"]
    assert "⚠ sync" not in shown["unconfirmed"]
    confirmed = shown["confirmed_status"]
    assert confirmed.pending_sync == 0 and confirmed.last_sync_on is not None
    assert "sync 0 pending, last " in shown["confirmed"] and "last never" not in shown["confirmed"]

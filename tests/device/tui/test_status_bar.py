"""The status bar repaints when its words change, and grows or shrinks with its line count."""

from __future__ import annotations

import asyncio
import dataclasses

from textual.app import App, ComposeResult

from device.tui.status import DeviceStatus
from device.tui.widgets.status_bar import StatusBar

QUIET = DeviceStatus(source="pulse", source_state="capturing", bundle="elsilencio-default 1.0.0",
                     rtf=0.0071, windows_inferred=10, pending_sync=0, clip_disk_free_bytes=8_000_000_000)


class CountingBar(StatusBar):
    def __init__(self):
        super().__init__()
        self.repaints = 0

    def refresh(self, *args, **kwargs):
        self.repaints += 1
        return super().refresh(*args, **kwargs)


class CountingApp(App):
    def compose(self) -> ComposeResult:
        yield CountingBar()


def test_a_long_error_wraps_the_bar_onto_more_lines_and_goes_away_again():
    async def main():
        app = CountingApp()
        async with app.run_test(size=(80, 24)) as pilot:
            bar = app.query_one(CountingBar)
            bar.show(QUIET, None)
            await pilot.pause()
            quiet_height = bar.size.height
            error = "the disk refused a write: clips could not be saved; free some space and restart"
            bar.show(dataclasses.replace(QUIET, error=error), None)
            await pilot.pause()
            wrapped_height = bar.size.height
            shown = str(bar.render())
            bar.show(QUIET, None)
            await pilot.pause()
            return quiet_height, wrapped_height, shown, bar.size.height

    quiet, wrapped, shown, back = asyncio.run(main())
    assert wrapped > quiet  # laid out again: the error is not cut off
    assert "⚠ error: the disk refused a write" in shown
    assert back == quiet


def test_facts_that_round_to_the_same_words_cost_no_repaint():
    async def main():
        app = CountingApp()
        async with app.run_test(size=(80, 24)) as pilot:
            bar = app.query_one(CountingBar)
            bar.show(QUIET, None)
            await pilot.pause()
            before = bar.repaints
            for n in range(20):  # every window moves these; the bar shows none of them, or rounds them
                bar.show(dataclasses.replace(QUIET, rtf=0.0071 + n * 1e-5, windows_inferred=11 + n, detections=n), None)
            unchanged = bar.repaints - before
            bar.show(dataclasses.replace(QUIET, windows_dropped=3), None)
            await pilot.pause()
            return unchanged, bar.repaints - before, str(bar.render())

    unchanged, after_drop, shown = asyncio.run(main())
    assert unchanged == 0
    assert after_drop >= 1 and "dropped 3" in shown


def test_windows_the_bundle_could_not_score_show_only_when_there_are_any(device_home, shared_data, tmp_path):
    """A real run with an optional branch that fails on every window: the guide sees it counted."""
    from device.audio.files import FileSource
    from device.bundle.verify import verify_bundle
    from device.config import Settings
    from device.engine.engine import Engine
    from device.pipeline import Pipeline
    from device.store import Store
    from device.tui.status import StatusCollector
    from device.tui.widgets.status_bar import status_items
    from tests.device.engine.bundle_variants import home_variant

    assert not any("not scored" in text for text, _ in status_items(QUIET, None))  # the quiet line does not grow
    bundle = home_variant(device_home, tmp_path / "failing", "9.0.2", optional_branch="fail")
    engine = Engine(verify_bundle(bundle, device_home.trusted_keys), threads=1)
    source = FileSource(shared_data / "audio/birdclef_train_audio/3.ogg")  # 38.3 s
    pipeline = Pipeline(engine, source, Settings(), device_home.database, device_home.clips, live=False).start()
    try:
        assert pipeline.wait(60), "the recording was not analysed within 60 s"
    finally:
        source.close()
    with Store.open(device_home.database) as store:
        status = StatusCollector(pipeline, source, store, device_home.clips, live=False).collect()
    assert status.windows_inferred == 15  # 5 s windows every 2.5 s
    assert status.windows_unscored == 15 and status.branch_failures == 15
    assert ("⚠ 15 windows not scored (15 branch failures)", "warning") in status_items(status, None)
    assert status.detections > 0  # the required branch still hears the frog

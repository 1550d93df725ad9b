"""The guide's key flows through the real app, checked in the log afterwards.

A real bundle (the demo) analyses a real recording (a 72 s trail of six real calls); the
pilot presses keys as a guide would; every assertion that matters reads the database.
"""

from __future__ import annotations

from device.tui.screens.help import HelpScreen
from device.tui.screens.species import SpeciesScreen
from device.tui.screens.summary import SummaryScreen
from device.tui.widgets.review_table import DetectionTable, SpeciesTable
from tests.device.tui.conftest import FROG, TRAIL_PARTS
from tests.device.tui.tui_helpers import drive, settle
from tests.helpers import query


def test_confirm_reject_stop_tour_summary_new_tour_and_quit_land_in_the_log(runtime_factory, trail_recording, device_home):
    runtime = runtime_factory(trail_recording)
    first_tour = runtime.tour.tour_id
    app = runtime.app()
    seen = {}

    async def scenario(pilot):
        assert runtime.pipeline.wait(60), "the recording was not analysed within 60 s"
        await settle(pilot, app)
        table = app.screen.query_one(SpeciesTable)
        rows = app.board.rows()
        assert {row.label for row in rows} >= {label for _, label in TRAIL_PARTS}
        assert table.row_count == len(rows)
        assert table.current_key == rows[0].label  # newest first, cursor on top
        seen["confirmed"] = rows[0].latest.detection_id
        seen["rejected_label"] = rows[1].label
        seen["rejected"] = rows[1].latest.detection_id
        await pilot.press("c")  # confirm the top species' latest detection
        await pilot.press("down", "r")  # reject the next one's
        await pilot.pause()
        assert app.board.detection(seen["confirmed"]).verdict == "confirm"
        assert app.board.detection(seen["rejected"]).verdict == "reject"

        await pilot.press("enter")  # that species' detail screen
        assert isinstance(app.screen, SpeciesScreen) and app.screen.label == seen["rejected_label"]
        detections = app.screen.query_one(DetectionTable)
        assert detections.row_count == len(app.board.row(seen["rejected_label"]).detections)
        await pilot.press("c")  # change of mind: confirm it after all (the latest verdict counts)
        await pilot.press("escape")
        assert not isinstance(app.screen, SpeciesScreen)

        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")

        await pilot.press("t")  # stop the tour: asked first
        await pilot.press("y")
        await pilot.pause()
        assert isinstance(app.screen, SummaryScreen)
        seen["summary"] = app.screen.result
        await pilot.press("escape")
        assert app.tour is None

        await pilot.press("t")  # a new tour, started here
        await pilot.pause()
        seen["second_tour"] = app.tour.tour_id
        await pilot.press("q")
        await pilot.press("y")
        for _ in range(100):
            if not app.is_running:
                break
            await pilot.pause(0.05)

    drive(app, scenario)
    assert app.quitting
    runtime.close()
    db = device_home.database

    feedback = query(db, "SELECT detection_id, verdict FROM feedback ORDER BY created_on, rowid")
    assert feedback == [(seen["confirmed"], "confirm"), (seen["rejected"], "reject"), (seen["rejected"], "confirm")]
    tours = dict(query(db, "SELECT tour_id, ended_on FROM tour"))
    assert set(tours) == {first_tour, seen["second_tour"]}
    assert all(ended is not None for ended in tours.values()), "quitting left a tour this screen started open"
    assert query(db, "SELECT count(*) FROM detection WHERE status != 'closed'")[0][0] == 0
    assert query(db, "SELECT count(*) FROM detection WHERE tour_id = ?", [first_tour])[0][0] == runtime.pipeline.status().detections_closed
    # the summary the screen showed is the log's, taken after the reject was overturned
    summary = seen["summary"]
    assert summary.rejected_count == 0  # the reject was overturned before the tour stopped
    assert summary.unique_species == len({r[0] for r in query(db, "SELECT label FROM detection WHERE tour_id = ?", [first_tour])})
    assert runtime.store.closed


def test_a_rejected_detection_leaves_the_summary(runtime_factory, trail_recording, device_home):
    runtime = runtime_factory(trail_recording)
    app = runtime.app()
    seen = {}

    async def scenario(pilot):
        assert runtime.pipeline.wait(60)
        await settle(pilot, app)
        single = [row for row in app.board.rows() if row.heard == 1]
        target = single[0]
        table = app.screen.query_one(SpeciesTable)
        table.move_cursor(row=table.get_row_index(target.label))
        await pilot.press("r")
        await pilot.press("s")
        assert isinstance(app.screen, SummaryScreen)
        seen["label"] = target.label
        seen["summary"] = app.screen.result

    drive(app, scenario)
    summary = seen["summary"]
    assert summary.rejected_count == 1
    assert seen["label"] not in {t.label for t in summary.species}
    assert query(device_home.database, "SELECT verdict FROM feedback") == [("reject",)]


def test_quit_while_a_frog_is_calling_flushes_the_open_detection_and_closes_the_log(runtime_factory, shared_data, device_home):
    # Paced like a microphone: the frog is still calling when the guide quits.
    runtime = runtime_factory(shared_data / FROG, live=True, realtime=True)
    app = runtime.app()

    async def scenario(pilot):
        for _ in range(200):  # until the frog's detection is open on screen (~7.5 s of audio)
            await pilot.pause(0.1)
            row = app.board.row("21211")
            if row is not None and row.latest.status == "open":
                break
        else:
            raise AssertionError("the frog was never heard")
        assert query(device_home.database, "SELECT status FROM detection WHERE label = '21211'") == [("open",)]
        await pilot.press("q", "y")
        for _ in range(200):
            if not app.is_running:
                break
            await pilot.pause(0.05)

    drive(app, scenario)
    assert runtime.pipeline.wait(0), "the pipeline was still running after the screen quit"
    status = runtime.close()
    assert status.windows_dropped == 0 and status.finished
    assert query(device_home.database, "SELECT status FROM detection WHERE label = '21211'") == [("closed",)]
    assert query(device_home.database, "SELECT count(*) FROM outbox_message WHERE kind = 'detection'")[0][0] == 1
    assert query(device_home.database, "SELECT count(*) FROM outbox_message WHERE kind = 'tour'")[0][0] == 2  # start, end
    assert query(device_home.database, "SELECT ended_on IS NOT NULL FROM tour") == [(1,)]
    assert runtime.store.closed

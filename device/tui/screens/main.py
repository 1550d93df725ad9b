"""The main screen: the tour's species, the live spectrogram and level, and the status line."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static

from device.store import StoreError
from device.store.summary import format_duration
from device.tui.messages import FeedTick
from device.tui.screens.dialogs import YesNoDialog
from device.tui.screens.review import play_detection, record_verdict
from device.tui.widgets.level_meter import InputLevel
from device.tui.widgets.review_table import ReviewTable, SpeciesTable
from device.tui.widgets.spectrogram import Spectrogram
from device.tui.widgets.status_bar import StatusBar

STYLES = Path(__file__).parent.parent / "styles"
TALL_LINES = 40
"""From this many lines the spectrogram gets 10 rows instead of 6 (see main.tcss)."""


class TourLine(Static):
    """'Tour «Morning walk» · 12 min on trail · 4 species' (or how to start one)."""


class MainScreen(Screen):
    CSS_PATH = STYLES / "main.tcss"
    BINDINGS = [
        Binding("t", "toggle_tour", "Tour"),
        Binding("s", "summary", "Summary"),
    ]

    def compose(self) -> ComposeResult:
        yield TourLine(id="tour")
        yield Spectrogram(self.app.melstrip_image, id="spectrogram")
        yield InputLevel(id="level")
        yield SpeciesTable(id="species")
        yield StatusBar(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(SpeciesTable).focus()
        self.redraw(full=True)

    def on_resize(self) -> None:
        self.set_class(self.size.height >= TALL_LINES, "-tall")

    def on_screen_resume(self) -> None:
        self.redraw(full=True)

    def on_feed_tick(self, message: FeedTick) -> None:
        self.redraw(full=message.board_changed, spectrogram=message.spectrogram_changed)

    def redraw(self, full: bool = True, spectrogram: bool = True) -> None:
        app = self.app
        now = app.board.now(app.clock)
        words = self.tour_words()
        tour_line = self.query_one(TourLine)
        if words != getattr(tour_line, "shown", None):  # unchanged text: no repaint
            tour_line.shown = words
            tour_line.update(words)
        if spectrogram:
            self.query_one(Spectrogram).redraw()
        self.query_one(InputLevel).show(app.level, "" if app.status.live else "(recording)")
        self.query_one(StatusBar).show(app.status, app.tz)
        table = self.query_one(SpeciesTable)
        if full or table.row_count == 0 or app.marks_due():
            table.show(app.board.rows(), now, app.tz)

    def tour_words(self) -> Text:
        app = self.app
        tour = app.tour
        text = Text()
        if tour is None:
            text.append("No tour", style="bold")
            text.append(" · listening, logged without a tour" + (" · press t to start one" if app.can_control else ""))
            return text
        text.append(f"Tour «{tour.name}»", style="bold")
        on_trail = format_duration(tour.duration_s(app.clock()))
        count = app.board.species_count
        text.append(f" · {on_trail} on trail · {count} species")
        return text

    # -- the table's requests -----------------------------------------------------------
    def on_review_table_verdict(self, event: ReviewTable.Verdict) -> None:
        row = self.app.board.row(event.key)
        if row is None or row.latest is None:
            return
        record_verdict(self, row.latest.detection_id, event.verdict)

    def on_review_table_play(self, event: ReviewTable.Play) -> None:
        row = self.app.board.row(event.key)
        if row is not None and row.latest is not None:
            play_detection(self, row.latest.detection_id)

    def on_review_table_open(self, event: ReviewTable.Open) -> None:
        from device.tui.screens.species import SpeciesScreen

        self.app.push_screen(SpeciesScreen(event.key))

    # -- tours --------------------------------------------------------------------------
    def action_toggle_tour(self) -> None:
        app = self.app
        if not app.can_control:
            app.notify("Tours are started and stopped on the device.", severity="warning")
            return
        tour = app.tour
        if tour is None:
            self.start_tour()
            return

        def answered(stop: bool | None) -> None:
            if stop:
                self.stop_tour()

        app.push_screen(YesNoDialog(f"Stop tour «{tour.name}»? Its summary follows.", "Stop", "Keep going"), answered)

    def start_tour(self) -> None:
        app = self.app
        try:
            tour = app.store.start_tour()
        except (StoreError, ValueError) as exc:
            app.notify(f"No tour started: {exc}", severity="error")
            return
        app.use_tour(tour, started_here=True)
        app.notify(f"Tour «{tour.name}» started")

    def stop_tour(self) -> None:
        from device.tui.screens.summary import SummaryScreen

        app = self.app
        tour = app.tour
        try:
            stopped = app.store.stop_tour(tour.tour_id)
        except StoreError as exc:
            app.notify(f"The tour is still open: {exc}", severity="error")
            return
        app.use_tour(None)
        app.push_screen(SummaryScreen(stopped.tour_id))

    def action_summary(self) -> None:
        from device.tui.screens.summary import SummaryScreen

        tour_id = self.app.tour.tour_id if self.app.tour else self.app.last_tour_id()
        if tour_id is None:
            self.app.notify("No tour yet: press t to start one.")
            return
        self.app.push_screen(SummaryScreen(tour_id))

"""The tour summary: species count and list, Species Spotting Rate, time on trail."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from device.naming import taxon_name
from device.store import StoreError
from device.store.summary import TourSummary, format_duration
from device.tui.board import kind_of
from device.tui.messages import FeedTick
from device.tui.widgets.status_bar import format_clock

STYLES = Path(__file__).parent.parent / "styles"


def summary_words(result: TourSummary, tz) -> Text:
    stats = result.tours[0]
    tour = stats.tour
    text = Text(f"Tour «{tour.name}»", style="bold")
    text.append(" (active)" if tour.active else " (ended)")
    text.append(f"\nTime on trail: {format_duration(stats.duration_s)}")
    text.append(f"   Started {format_clock(tour.started_on, tz)}")
    if tour.ended_on:
        text.append(f", ended {format_clock(tour.ended_on, tz)}")
    text.append("\nSpecies: ")
    text.append(str(result.unique_species), style="bold")
    text.append("   Species Spotting Rate: ")
    text.append(f"{result.species_spotting_rate:.1f}", style="bold")
    text.append(" species per tour")
    rejected = f" ({result.rejected_count} rejected by a guide, not counted)" if result.rejected_count else ""
    text.append(f"\nDetections: {result.detection_count}{rejected}")
    return text


class SummaryScreen(Screen):
    CSS_PATH = STYLES / "summary.tcss"
    BINDINGS = [Binding("escape,s", "app.pop_screen", "Back")]

    def __init__(self, tour_id: str):
        super().__init__()
        self.tour_id = tour_id
        self.result: TourSummary | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="overview")
        yield DataTable(id="species-list", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for label, key in (("Class", "class"), ("Species", "species"), ("Heard", "heard"),
                           ("First", "first"), ("Last", "last")):
            table.add_column(label, key=key)
        table.focus()
        self.redraw()

    def on_feed_tick(self, message: FeedTick) -> None:
        if message.board_changed and self.result is not None and self.result.tours[0].tour.active:
            self.redraw()

    def redraw(self) -> None:
        app = self.app
        try:
            self.result = result = app.store.tour_summary([self.tour_id])
        except StoreError as exc:
            self.query_one("#overview", Static).update(f"No summary: {exc}")
            return
        self.query_one("#overview", Static).update(summary_words(result, app.tz))
        table = self.query_one(DataTable)
        table.clear()
        if not result.species:
            table.add_row("", Text("Nothing heard yet.", style="italic"), "", "", "")
        for tally in result.species:
            kind = kind_of(tally.class_name)
            named = taxon_name(tally.scientific_name, tally.common_name, tally.class_name, tally.label)
            name = Text(named.heading, style="bold")
            if named.subline:
                name.append(f"  {named.subline}", style="italic" if named.italic else "")
            table.add_row(f"{kind.symbol} {kind.label}", name, f"{tally.detection_count}×",
                          format_clock(tally.first_heard_on, app.tz), format_clock(tally.last_heard_on, app.tz),
                          key=tally.label)

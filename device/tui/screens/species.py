"""A species' detail: names, class, recent detections (reviewable) and confidence history."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Sparkline, Static

from device.tui.messages import FeedTick
from device.tui.screens.review import play_detection, record_verdict
from device.tui.widgets.review_table import DetectionTable, ReviewTable
from device.tui.widgets.status_bar import format_clock

STYLES = Path(__file__).parent.parent / "styles"


def few_training_mark(row) -> Text | str:
    """ "⚠ few training recordings (1)" when the bundle's manifest says the label was taught by
    fewer than `device.bundle.labels.FEW_TRAINING_RECORDINGS` recordings, so a guide weighs the
    detection accordingly; '' otherwise (enough recordings, or the manifest does not say)."""
    count = row.few_training
    if count is None:
        return ""
    return Text(f"⚠ few training recordings ({count})", style="bold")


class SpeciesScreen(Screen):
    CSS_PATH = STYLES / "species.tcss"
    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, label: str):
        super().__init__()
        self.label = label

    def compose(self) -> ComposeResult:
        with Vertical(id="names"):
            yield Static(id="common")
            yield Static(id="facts")
            yield Static(id="training")
        with Horizontal(id="history"):
            yield Static("Confidence\nhistory", id="history-label")
            yield Sparkline([], id="sparkline")
            yield Static(id="history-range")
        yield DetectionTable(id="detections")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DetectionTable).focus()
        self.redraw()

    def on_feed_tick(self, message: FeedTick) -> None:
        if message.board_changed:
            self.redraw()

    def redraw(self) -> None:
        app = self.app
        row = app.board.row(self.label)
        training = self.query_one("#training", Static)
        if row is None:
            self.query_one("#common", Static).update(Text(self.label, style="bold"))
            self.query_one("#facts", Static).update("Not heard on this tour.")
            training.display = False
            return
        kind = row.kind
        name = row.name
        names = Text(name.heading, style="bold")
        if name.subline:
            names.append(f"  {name.subline}", style="italic" if name.italic else "")
        names.append(f"  {kind.symbol} {kind.label}")
        self.query_one("#common", Static).update(names)
        mark = few_training_mark(row)
        training.display = bool(mark)  # no line at all for a well-supported label
        training.update(mark)
        rejected = f" ({row.rejected} rejected)" if row.rejected else ""
        facts = (
            f"{row.class_name or 'class unknown'}, label {row.label} · heard {row.heard}×{rejected} · first {format_clock(row.first_heard_on, app.tz, True)}"
            f" · last {format_clock(row.last_heard_on, app.tz, True)} · best {row.best_confidence:.2f}"
        )
        self.query_one("#facts", Static).update(facts)
        history = row.confidence_history()
        self.query_one(Sparkline).data = history
        if history:
            self.query_one("#history-range", Static).update(
                f"low {min(history):.2f}\nhigh {max(history):.2f}\n{len(history)} recent"
            )
        self.query_one(DetectionTable).show(row.detections, app.tz)

    def on_review_table_verdict(self, event: ReviewTable.Verdict) -> None:
        record_verdict(self, event.key, event.verdict)

    def on_review_table_play(self, event: ReviewTable.Play) -> None:
        play_detection(self, event.key)

    def on_review_table_open(self, event: ReviewTable.Open) -> None:
        play_detection(self, event.key)

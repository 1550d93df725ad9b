"""The help overlay: every key, in words."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from device.tui.board import KINDS, OTHER_KIND

STYLES = Path(__file__).parent.parent / "styles"

KEYS = (
    ("t", "start a tour, or stop it (then its summary)"),
    ("↑ ↓", "move through species or detections"),
    ("enter", "a species: names, detections, confidence"),
    ("c / r", "confirm / reject (kept for retraining)"),
    ("p", "play the clip (when a speaker is connected)"),
    ("s", "tour summary, Species Spotting Rate"),
    ("b", "bright high-contrast theme, for sunlight"),
    ("esc", "back"),
    ("q", "quit: heard calls are stored, log closed"),
)
MARKS = (
    ("★ NEW", "first heard this tour, < 2 minutes ago"),
    ("♪ now", "heard in the last minute, or calling"),
    ("✓ yes / ✗ no", "a guide confirmed / rejected it"),
    ("⚠", "clipping, dropped audio, low disk/battery; few training recordings (weigh it)"),
    ("family …", "a group heard, not one species: \"a cicada\", family Cicadidae"),
)

def help_table() -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    table.add_row(Text("Keys", style="bold underline"), "")
    for key, words in KEYS:
        table.add_row(key, words)
    table.add_row(Text("Marks", style="bold underline"), "")
    for mark, words in MARKS:
        table.add_row(mark, words)
    kinds = "  ".join(f"{k.symbol} {k.label}" for k in (*KINDS.values(), OTHER_KIND))
    table.add_row(Text("Classes", style="bold underline"), kinds)
    return table


class HelpScreen(ModalScreen[None]):
    CSS_PATH = STYLES / "help.tcss"
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog"):
            yield Static(help_table())

    def action_close(self) -> None:
        self.dismiss(None)

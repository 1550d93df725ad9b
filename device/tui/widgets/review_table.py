"""Tables a guide reviews from: the tour's species, and one species' detections.

A `ReviewTable` owns the review keys and says what was asked through its messages; the
screen that holds it decides what that means (which detection, which Store) and acts.
Row keys are species labels in `SpeciesTable` and detection ids in `DetectionTable`.
"""

from __future__ import annotations

from datetime import datetime, tzinfo

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from device.tui.board import HeardDetection, SpeciesRow
from device.tui.widgets.status_bar import format_clock

BAR_CELLS = 6
VERDICT_WORDS = {"confirm": "✓ yes", "reject": "✗ no", None: ""}


def confidence_bar(confidence: float, cells: int = BAR_CELLS) -> str:
    """'█████▎ 0.89': length and number both say it, for any theme."""
    eighths = round(max(0.0, min(1.0, confidence)) * cells * 8)
    full, part = divmod(eighths, 8)
    bar = "█" * full + (" ▏▎▍▌▋▊▉"[part] if part and full < cells else "")
    return f"{bar.ljust(cells)} {confidence:.2f}"


class ReviewTable(DataTable):
    """A row-cursor table with the review keys: confirm, reject, play, open."""

    BINDINGS = [
        Binding("c", "verdict('confirm')", "Confirm"),
        Binding("r", "verdict('reject')", "Reject"),
        Binding("p", "play", "Play"),
    ]

    class Verdict(Message):
        """The guide confirmed or rejected the row under the cursor."""

        def __init__(self, key: str, verdict: str) -> None:
            super().__init__()
            self.key = key
            self.verdict = verdict

    class Play(Message):
        def __init__(self, key: str) -> None:
            super().__init__()
            self.key = key

    class Open(Message):
        def __init__(self, key: str) -> None:
            super().__init__()
            self.key = key

    def __init__(self, **kwargs):
        super().__init__(cursor_type="row", cell_padding=0, **kwargs)

    @property
    def current_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:  # the cursor sits past a row that was just removed
            return None

    def action_verdict(self, verdict: str) -> None:
        if self.current_key is not None:
            self.post_message(self.Verdict(self.current_key, verdict))

    def action_play(self) -> None:
        if self.current_key is not None:
            self.post_message(self.Play(self.current_key))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.post_message(self.Open(event.row_key.value))

    def replace_rows(self, rows: list[tuple[str, tuple, int]]) -> None:
        """Swap in new rows (key, cells, height), keeping the cursor on the same key.

        A cursor on the top row stays on the top row: it follows the newest species until
        the guide moves it.
        """
        shown = [(key, tuple(cell_identity(cell) for cell in cells), height) for key, cells, height in rows]
        if shown == getattr(self, "_shown_rows", None) and self.row_count == len(rows):
            return  # the same words and styles: rebuilding would repaint the whole table for nothing
        self._shown_rows = shown
        keep = self.current_key if self.cursor_row > 0 else None
        with self.app.batch_update():
            self.clear()
            for key, cells, height in rows:
                self.add_row(*cells, key=key, height=height)
            if keep is not None:
                try:
                    self.move_cursor(row=self.get_row_index(keep), animate=False)
                except Exception:
                    pass


def cell_identity(cell) -> object:
    """What a cell shows, comparable: rich's Text equality ignores the base style."""
    if isinstance(cell, Text):
        return (cell.plain, str(cell.style), tuple(cell.spans))
    return cell


class SpeciesTable(ReviewTable):
    """The main list: one two-line row per species, newest first."""

    BINDINGS = [Binding("enter", "select_cursor", "Open", show=True)]

    NAME_MIN = 18
    NAME_MAX = 44
    """Wider than the longest common name in our bundles; the rest of a wide screen stays calm."""
    CLASS_WIDTH = 9
    """"✱ insect" and "● mammal" take 8 cells and the table pads none: the ninth keeps them off
    the name ("✱ insecta cicada" read as one word)."""
    FIXED = 6 + CLASS_WIDTH + 12 + 6 + 12 + 6 + 2
    """Every column but the species' name (see `species_cells`), and the scrollbar."""

    def on_mount(self) -> None:
        self._build_columns()

    def _name_width_for(self, width: int) -> int:
        return min(self.NAME_MAX, max(self.NAME_MIN, width - self.FIXED))

    def _build_columns(self) -> None:
        name = self._name_width_for(self.size.width)
        self.clear(columns=True)
        for label, width, key in (("", 6, "marks"), ("Class", self.CLASS_WIDTH, "class"), ("Species", name, "species"),
                                  ("Confidence", 12, "confidence"), ("Heard", 6, "heard"),
                                  ("First–Last", 12, "times"), ("Review", 6, "review")):
            self.add_column(label, width=width, key=key)
        self._name_width = name

    def on_resize(self) -> None:
        if self._name_width_for(self.size.width) != getattr(self, "_name_width", None):
            rows = getattr(self, "_last_rows", None)
            self._build_columns()
            if rows is not None:
                self.show(*rows)

    def show(self, rows: list[SpeciesRow], now: datetime, tz: tzinfo | None) -> None:
        self._last_rows = (rows, now, tz)
        self.replace_rows([(row.label, species_cells(row, now, tz, self._name_width), 2) for row in rows])


def species_cells(row: SpeciesRow, now: datetime, tz: tzinfo | None, name_width: int) -> tuple:
    new, calling = row.is_new(now), row.calling_now(now)
    marks = Text()
    marks.append("★ NEW" if new else "", style="bold reverse" if new else "")
    marks.append("\n" + ("♪ now" if calling else ""), style="bold" if calling else "")
    kind = row.kind
    name = name_lines(row, name_width - 1)
    if new:
        name.stylize("underline", 0, len(row.name.heading[: name_width - 1]))
    latest = row.latest
    verdict = latest.verdict if latest else None
    heard = f"{row.heard}×" + (f"\n{row.rejected} ✗" if row.rejected else "")
    times = f"{format_clock(row.first_heard_on, tz)}–{format_clock(row.last_heard_on, tz)}"
    return (marks, f"{kind.symbol} {kind.label}", name, confidence_bar(row.best_confidence), heard, times,
            VERDICT_WORDS.get(verdict, ""))


def name_lines(row: SpeciesRow, width: int) -> Text:
    """The label's two lines: "Little Tinamou" over *Crypturellus soui*, "a cicada" over
    "family Cicadidae" (upright: a family is never set like a binomial)."""
    name = row.name
    text = Text(name.heading[:width], style="bold")
    text.append("\n" + name.subline[:width], style="italic" if name.italic else "")
    return text


class DetectionTable(ReviewTable):
    """One species' recent detections, newest first (the detail screen)."""

    def on_mount(self) -> None:
        for label, width, key in (("Heard at", 10, "at"), ("Length", 8, "length"), ("Confidence", 12, "confidence"),
                                  ("Windows", 8, "windows"), ("State", 8, "state"), ("Review", 6, "review")):
            self.add_column(label, width=width, key=key)

    def show(self, detections: list[HeardDetection], tz: tzinfo | None) -> None:
        rows = []
        for heard in reversed(detections):
            det = heard.detection
            length = (det.ended_on - det.started_on).total_seconds()
            state = "open" if heard.status == "open" else ("also" if det.secondary else "closed")
            rows.append((heard.detection_id, (format_clock(det.started_on, tz, seconds=True), f"{length:.1f} s",
                                              confidence_bar(det.confidence), str(det.window_count), state,
                                              VERDICT_WORDS.get(heard.verdict, "")), 1))
        self.replace_rows(rows)

"""The input level meter, with a clipping warning spelled out (not just a red bar)."""

from __future__ import annotations

import math

from rich.text import Text
from textual.widget import Widget

from device.tui.status import Level

FLOOR_DBFS = -60.0
"""The meter's left end: quieter than a still night forest through a typical USB mic."""
HOT_DBFS = -6.0
"""Marked on the meter: louder than this risks clipping on the next loud call."""


def meter_bar(dbfs: float, width: int) -> str:
    """A bar of `width` cells filled in eighths from FLOOR_DBFS to 0 dBFS."""
    fraction = min(1.0, max(0.0, (dbfs - FLOOR_DBFS) / -FLOOR_DBFS))
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    bar = "█" * full + (" ▏▎▍▌▋▊▉"[part] if part and full < width else "")
    return bar.ljust(width, "·")


class InputLevel(Widget):
    """One line: 'IN -23 dBFS [bar] peak -3 dBFS', and '⚠ CLIPPING' when the input clips."""

    DEFAULT_CSS = """
    InputLevel { height: 1; }
    """
    COMPONENT_CLASSES = {"input-level--bar", "input-level--clipping"}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.level: Level | None = None
        self.note = ""

    def show(self, level: Level | None, note: str = "") -> None:
        if (level, note) == (self.level, self.note):
            return  # an idle screen redraws nothing: the battery pays for every frame
        self.level, self.note = level, note
        self.refresh()

    def render(self) -> Text:
        level = self.level
        text = Text("IN ", style="bold")
        if level is None:
            return text.append("no audio yet " + self.note)
        clip_words = " ⚠ CLIPPING: lower the gain" if level.clipping else ""
        head = f"{level.dbfs:6.1f} dBFS "
        peak_dbfs = -120.0 if level.peak <= 0 else 20 * math.log10(level.peak)
        tail = f" peak {peak_dbfs:5.1f}" + (f" {self.note}" if self.note else "")
        width = max(8, self.size.width - len(text) - len(head) - len(tail) - len(clip_words) - 2)
        text.append(head)
        text.append("▕" + meter_bar(level.dbfs, width) + "▏", style=self.get_component_rich_style("input-level--bar"))
        text.append(tail)
        if clip_words:
            text.append(clip_words, style=self.get_component_rich_style("input-level--clipping"))
        return text

"""The live spectrogram strip: the mel the model sees, scrolling right to left.

Each cell is one column of `MelStrip` time by a few mel bands, drawn with a shade glyph
( ░▒▓█) whose density carries the loudness, so the strip reads in a monochrome or
high-contrast theme too; the colour (component classes, set by the theme) only helps.
Low frequencies sit at the bottom, as on every field guide's sonogram.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from rich.segment import Segment
from textual.strip import Strip
from textual.widget import Widget

SHADES = " ░▒▓█"
"""Glyph per loudness step: five steps are what a terminal cell can show by density alone."""

ImageSource = Callable[[int, int], np.ndarray]
"""(width, rows) -> [rows, width] shades in [0, 1], row 0 the lowest frequency."""


class Spectrogram(Widget):
    """Renders whatever image its source gives for the widget's current size."""

    COMPONENT_CLASSES = {f"spectrogram--level-{i}" for i in range(len(SHADES))}
    DEFAULT_CSS = """
    Spectrogram { height: 6; }
    """

    def __init__(self, source: ImageSource | None = None, **kwargs):
        super().__init__(**kwargs)
        self.source = source
        self._image: np.ndarray | None = None

    def redraw(self) -> None:
        """Fetch a fresh image from the source (call when new columns arrived)."""
        self._image = None
        self.refresh()

    def _levels(self) -> np.ndarray:
        width, rows = self.size.width, self.size.height
        if self._image is None or self._image.shape != (rows, width):
            image = self.source(width, rows) if self.source else np.zeros((rows, width), np.float32)
            steps = len(SHADES) - 1
            self._image = np.clip(np.ceil(image * steps - 0.25), 0, steps).astype(np.int8)
        return self._image

    def render_line(self, y: int) -> Strip:
        levels = self._levels()
        row = levels.shape[0] - 1 - y  # the top line is the highest frequency
        if row < 0 or row >= levels.shape[0]:
            return Strip.blank(self.size.width)
        styles = [self.get_component_rich_style(f"spectrogram--level-{i}") for i in range(len(SHADES))]
        segments = []
        run_level, run_len = None, 0
        for level in levels[row].tolist():
            if level == run_level:
                run_len += 1
                continue
            if run_len:
                segments.append(Segment(SHADES[run_level] * run_len, styles[run_level]))
            run_level, run_len = level, 1
        if run_len:
            segments.append(Segment(SHADES[run_level] * run_len, styles[run_level]))
        return Strip(segments, self.size.width)

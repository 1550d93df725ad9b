"""Messages the app posts to the screen on top after each poll of the feed."""

from __future__ import annotations

from textual.message import Message


class FeedTick(Message):
    """New data arrived (or time moved on): redraw what changed."""

    def __init__(self, board_changed: bool, spectrogram_changed: bool) -> None:
        super().__init__()
        self.board_changed = board_changed
        self.spectrogram_changed = spectrogram_changed

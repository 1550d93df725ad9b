"""The live spectrogram strip's data: the mel each window fed the model, as scrolling columns.

Each prediction carries the log-mel its first mel-producing branch saw. Windows overlap
(a 5 s window every 2.5 s), so only the frames of audio not shown yet are appended: the
part of the window after the previous window's end. The frames are pooled into columns of
`COLUMN_S` seconds and the bands into `ROWS` rows (max-pooling, so a short call survives),
and a bounded ring keeps the newest columns: memory is flat however long the walk.

Orientation: the demo bundle's engine hands the mel as [bands, frames] (64 x 501 for
5 s), while `Prediction.mel`'s docstring says [frames, bands]; mel bands (32-128) are
always fewer than a 5 s window's frames (hundreds), so the shorter axis is taken as bands.
"""

from __future__ import annotations

from collections import deque

import numpy as np

COLUMN_S = 0.25
"""Seconds of audio per screen column: an 80-column terminal shows the last ~20 s."""
ROWS = 16
"""Frequency rows kept; the widget pools them further to its height (6 on 80x24)."""
MAX_COLUMNS = 400
"""Columns kept (100 s): wider than any terminal, small enough to hold forever (25 KB)."""
DYNAMIC_RANGE_DB = 50.0
"""Shades span this far below the loudest bin on screen: quiet forest hiss stays dark,
a frog 20 dB over it stands out; the model's own top_db is 80."""


def bands_first(mel: np.ndarray) -> np.ndarray:
    """The mel as [bands, frames] whichever way the engine laid it out (see the module doc)."""
    mel = np.asarray(mel, dtype=np.float32)
    if mel.ndim != 2:
        raise ValueError(f"a mel spectrogram has 2 axes (bands, frames), got shape {mel.shape}")
    return mel if mel.shape[0] <= mel.shape[1] else mel.T


def pool_rows(values: np.ndarray, rows: int) -> np.ndarray:
    """Max-pool axis 0 of `values` into `rows` groups (fewer in, same out: repeated)."""
    n = values.shape[0]
    edges = np.linspace(0, n, rows + 1)
    out = np.empty((rows,) + values.shape[1:], dtype=np.float32)
    for i in range(rows):
        lo = int(edges[i])
        hi = max(lo + 1, int(np.ceil(edges[i + 1])))
        out[i] = values[lo:min(hi, n)].max(axis=0)
    return out


class MelStrip:
    """The newest columns of the spectrogram, low frequencies in row 0."""

    def __init__(self, rows: int = ROWS, column_s: float = COLUMN_S, max_columns: int = MAX_COLUMNS):
        self.rows = rows
        self.column_s = column_s
        self.columns: deque[np.ndarray] = deque(maxlen=max_columns)
        self._source: str | None = None
        self._shown_until_s = 0.0
        self._carry: np.ndarray | None = None  # frames not yet making a whole column
        self.version = 0

    def push(self, mel: np.ndarray, source: str, start_s: float, duration_s: float) -> int:
        """Append the new part of one window's mel; return how many columns were added.

        Args:
            mel: The window's log-mel in dB.
            source: Where the window came from (a new source restarts the timeline).
            start_s: The window's offset within its source.
            duration_s: The audio the window covers (its real samples).
        """
        mel = bands_first(mel)
        frames = mel.shape[1]
        if frames == 0 or duration_s <= 0:
            return 0
        end_s = start_s + duration_s
        if source != self._source or start_s >= self._shown_until_s:
            new_s = duration_s  # a new source, or no overlap (hop = window, or dropped windows)
            self._carry = None
            self._shown_until_s = end_s
        else:
            new_s = max(0.0, end_s - self._shown_until_s)
            self._shown_until_s = max(self._shown_until_s, end_s)
        self._source = source
        new_frames = min(frames, int(round(frames * new_s / duration_s)))
        if new_frames == 0:
            return 0
        fresh = pool_rows(mel[:, frames - new_frames :], self.rows)
        if self._carry is not None:
            fresh = np.concatenate([self._carry, fresh], axis=1)
        per_column = max(1, int(round(frames / duration_s * self.column_s)))
        whole = fresh.shape[1] // per_column
        for i in range(whole):
            self.columns.append(fresh[:, i * per_column : (i + 1) * per_column].max(axis=1))
        rest = fresh[:, whole * per_column :]
        self._carry = rest if rest.shape[1] else None
        if whole:
            self.version += 1
        return whole

    def image(self, width: int, rows: int) -> np.ndarray:
        """The newest `width` columns as [rows, width] shades in [0, 1] (0 where nothing is heard yet).

        Row 0 is the lowest frequency. Shades are relative to the loudest bin on screen,
        over `DYNAMIC_RANGE_DB`, so the strip reads the same on a quiet and a loud site.
        """
        out = np.zeros((rows, max(0, width)), dtype=np.float32)
        if width <= 0 or rows <= 0 or not self.columns:
            return out
        shown = list(self.columns)[-width:]
        block = pool_rows(np.stack(shown, axis=1), rows)
        top = float(block.max())
        shades = np.clip((block - (top - DYNAMIC_RANGE_DB)) / DYNAMIC_RANGE_DB, 0.0, 1.0)
        out[:, width - len(shown) :] = shades
        return out

    def to_bytes(self, width: int, rows: int) -> bytes:
        """The image quantised to one byte per cell, row-major (for the phone view's state file)."""
        return (self.image(width, rows) * 255).round().astype(np.uint8).tobytes()

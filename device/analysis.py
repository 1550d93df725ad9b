"""Whole-file analysis in the BirdCLEF submission format (a contract, see `write_submission`).

One row per non-overlapping 5 s window: `row_id` = `<file stem>_<end second>` (5, 10, ...),
then one column per bundle label in manifest order, holding probabilities in [0, 1]. The last
partial window is zero-padded and gets its own row.

A cell the bundle could not score is left EMPTY, never written as 0. When a branch gives NaN
or infinity on a window, or an optional branch fails on it, the engine leaves that branch out
and the labels it alone scored (every label it scores, for a required branch) come out NaN
(`Prediction.unscored_branches` names the branches). A 0.000000 would read as "confidently
absent" and would be scored as such; an empty cell reads as a missing value (pandas and most
CSV readers load it as NaN), so the damage is visible and cannot pass for an answer.
`explorer analyze` counts such windows and names their row ids.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from device.audio.files import FileSource
from device.audio.windows import cut_windows
from device.domain import Prediction, Window
from device.engine.engine import Engine

SUBMISSION_WINDOW_S = 5
"""BirdCLEF scores 5 s rows; the row id's number is the row's end second."""


def file_windows(
    path: Path, window_s: float = SUBMISSION_WINDOW_S, hop_s: float | None = None, min_rate_hz: int = 0
) -> Iterator[Window]:
    """Windows of a file, streamed (bounded memory), the last one zero-padded.

    Raises:
        AudioError: the file cannot be read, or its rate is below `min_rate_hz`.
    """
    source = FileSource(Path(path))
    try:
        yield from cut_windows(source.blocks(), window_s, hop_s or window_s, source.name, min_rate_hz)
    finally:
        source.close()


def analyze_file(engine: Engine, path: Path) -> Iterator[Prediction]:
    """The engine's prediction for each submission window of `path`.

    Raises:
        AudioError: the file cannot be read, or it was recorded below the lowest rate the
            bundle's branches can use (`Engine.min_sample_rate_hz`).
    """
    for window in file_windows(path, min_rate_hz=engine.min_sample_rate_hz):
        yield engine.predict(window)


def row_id(path: Path, window_index: int) -> str:
    return f"{Path(path).stem}_{(window_index + 1) * SUBMISSION_WINDOW_S}"


def _cell(score: float) -> str:
    score = float(score)
    if not math.isfinite(score):
        return ""  # not scored: a missing value, never a confident 0 (see the module docstring)
    return f"{min(1.0, max(0.0, score)):.6f}"


def write_submission(out_path: Path, labels: tuple[str, ...], rows: list[tuple[str, np.ndarray]]) -> Path:
    """Write the submission CSV atomically (a crash never leaves half a file under `out_path`).

    Scores are clipped to [0, 1]; a NaN or infinite score is written as an empty cell.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.part")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row_id", *labels])
        for rid, scores in rows:
            writer.writerow([rid, *(_cell(s) for s in scores)])
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, out_path)
    return out_path

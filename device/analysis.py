"""Whole-file analysis in the BirdCLEF submission format (a contract, see `write_submission`).

One row per non-overlapping 5 s window: `row_id` = `<file stem>_<end second>` (5, 10, ...),
then one column per bundle label in manifest order, holding probabilities in [0, 1]. The last
partial window is zero-padded and gets its own row.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from device.audio.files import FileSource
from device.audio.windows import Windower
from device.domain import Prediction, Window
from device.engine.engine import Engine

SUBMISSION_WINDOW_S = 5
"""BirdCLEF scores 5 s rows; the row id's number is the row's end second."""


def file_windows(path: Path, window_s: float = SUBMISSION_WINDOW_S, hop_s: float | None = None) -> Iterator[Window]:
    """Windows of a file, streamed (bounded memory), the last one zero-padded."""
    source = FileSource(Path(path))
    windower = None
    index = 0
    try:
        for block in source.blocks():
            if windower is None:
                rate = block.sample_rate_hz
                windower = Windower(rate, round(window_s * rate), round((hop_s or window_s) * rate))
            for cut in windower.push(block):
                yield _window(cut, source.name, index)
                index += 1
        if windower is not None:
            for cut in windower.flush():
                yield _window(cut, source.name, index)
                index += 1
    finally:
        source.close()


def _window(cut, source: str, index: int) -> Window:
    return Window(
        samples=cut.samples,
        sample_rate_hz=cut.sample_rate_hz,
        start_s=cut.start_sample / cut.sample_rate_hz,
        started_on=cut.started_on,
        source=source,
        valid_samples=cut.valid_samples,
        index=index,
    )


def analyze_file(engine: Engine, path: Path) -> Iterator[Prediction]:
    for window in file_windows(path):
        yield engine.predict(window)


def row_id(path: Path, window_index: int) -> str:
    return f"{Path(path).stem}_{(window_index + 1) * SUBMISSION_WINDOW_S}"


def write_submission(out_path: Path, labels: tuple[str, ...], rows: list[tuple[str, np.ndarray]]) -> Path:
    """Write the submission CSV atomically (a crash never leaves half a file under `out_path`)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.part")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row_id", *labels])
        for rid, scores in rows:
            writer.writerow([rid, *(f"{min(1.0, max(0.0, float(s))):.6f}" for s in scores)])
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, out_path)
    return out_path

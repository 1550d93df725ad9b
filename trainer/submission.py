"""Reading a BirdCLEF submission CSV and its truth for `explorer-train evaluate`.

Predictions: the submission format `explorer analyze` writes (device/analysis.py): `row_id`,
then one column per label holding a probability. An EMPTY cell is a window the bundle could not
score (never a confident 0): evaluating it would be inventing a number, so it is refused,
naming the row and label.

Truth, in either of two forms:
- the competition's solution format: `row_id` plus one 0/1 column per label;
- a labels list: `row_id`, `primary_label` and optionally `secondary_labels` (space separated, or
  the Python-literal list train.csv uses, e.g. `['grekis', 'yercac1']`); a row with an empty
  primary label is a row where nothing in the label space calls.

Rows are matched by `row_id`; a row in one file and not the other is refused, named. A label
with a positive row that the predictions have no column for is refused too (a submission that
leaves a class out cannot be scored for it), unless `absent_as_zero`: then it is scored as 0 on
every row (AUC 0.5 for that class, the honest price of not predicting it).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class SubmissionError(ValueError):
    """A predictions or truth file that cannot be scored, with the reason and where."""


@dataclass(frozen=True)
class Scored:
    """Predictions and truth aligned on the same rows and labels."""

    row_ids: list[str]
    labels: list[str]
    scores: np.ndarray
    targets: np.ndarray
    primary: list[str | None]
    """Each row's primary label (None when the truth has none, or is in the solution format)."""


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            rows = list(reader)
    except FileNotFoundError:
        raise SubmissionError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SubmissionError(f"{path}: cannot be read as CSV: {exc}") from None
    if not header or header[0] != "row_id":
        raise SubmissionError(f"{path}: the first column must be row_id (found {header[:1] if header else 'no header'})")
    for n, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise SubmissionError(f"{path}, line {n}: {len(row)} cells, the header has {len(header)}")
    ids = [row[0] for row in rows]
    seen: set[str] = set()
    twice = [i for i in ids if i in seen or seen.add(i)]
    if twice:
        raise SubmissionError(f"{path}: row_id {twice[0]!r} appears more than once")
    return header, rows


def read_predictions(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(row ids, labels, scores [rows, labels]) of a submission CSV."""
    header, rows = _rows(Path(path))
    labels = header[1:]
    scores = np.zeros((len(rows), len(labels)))
    for i, row in enumerate(rows):
        for j, cell in enumerate(row[1:]):
            if cell.strip() == "":
                raise SubmissionError(f"{path}: row {row[0]!r} has no score for {labels[j]!r} (an unscored window)")
            try:
                value = float(cell)
            except ValueError:
                raise SubmissionError(f"{path}: row {row[0]!r}, {labels[j]!r}: {cell!r} is not a number") from None
            if not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise SubmissionError(f"{path}: row {row[0]!r}, {labels[j]!r}: {cell!r} is not a probability in [0, 1]")
            scores[i, j] = value
    return [row[0] for row in rows], labels, scores


def _label_list(cell: str, where: str) -> list[str]:
    """Labels in a truth cell: space separated, or train.csv's Python-literal list."""
    from trainer.birdclef import parse_secondary

    cell = cell.strip()
    if not cell.startswith("["):
        return cell.split()
    try:
        return list(parse_secondary(cell))
    except ValueError as exc:
        raise SubmissionError(f"{where}: {exc}") from None


def read_truth(path: Path) -> tuple[list[str], dict[str, set[str]], dict[str, str | None]]:
    """(row ids, per row the labels present, per row the primary label or None)."""
    path = Path(path)
    header, rows = _rows(path)
    present: dict[str, set[str]] = {}
    primary: dict[str, str | None] = {}
    if "primary_label" in header:
        p, s = header.index("primary_label"), header.index("secondary_labels") if "secondary_labels" in header else None
        for row in rows:
            label = row[p].strip() or None
            present[row[0]] = ({label} if label else set()) | (
                set(_label_list(row[s], f"{path}, row {row[0]!r}")) if s is not None else set())
            primary[row[0]] = label
        return [row[0] for row in rows], present, primary
    for row in rows:
        labels = set()
        for label, cell in zip(header[1:], row[1:]):
            if cell.strip() not in ("0", "1", "0.0", "1.0"):
                raise SubmissionError(f"{path}: row {row[0]!r}, {label!r}: {cell!r} is not 0 or 1")
            if float(cell) == 1.0:
                labels.add(label)
        present[row[0]] = labels
        primary[row[0]] = None
    return [row[0] for row in rows], present, primary


def align(predictions: Path, truth: Path, absent_as_zero: bool = False) -> Scored:
    """Predictions and truth on the same rows (the truth's order) and labels (the predictions')."""
    pred_ids, labels, scores = read_predictions(predictions)
    truth_ids, present, primary = read_truth(truth)
    only_pred = sorted(set(pred_ids) - set(truth_ids))
    only_truth = sorted(set(truth_ids) - set(pred_ids))
    if only_pred or only_truth:
        raise SubmissionError(
            f"the files score different rows: {len(only_pred)} only in {Path(predictions).name} "
            f"(e.g. {only_pred[:3]}), {len(only_truth)} only in {Path(truth).name} (e.g. {only_truth[:3]})")
    absent = sorted(set().union(*present.values()) - set(labels))
    if absent and not absent_as_zero:
        raise SubmissionError(f"labels {absent[:5]} are positive in {Path(truth).name} but {Path(predictions).name} "
                              f"has no column for them ({len(absent)} in all; --absent-as-zero scores them 0)")
    order = {rid: i for i, rid in enumerate(pred_ids)}
    all_labels = labels + absent
    scores = np.concatenate([scores[[order[rid] for rid in truth_ids]], np.zeros((len(truth_ids), len(absent)))], axis=1)
    index = {label: j for j, label in enumerate(all_labels)}
    targets = np.zeros_like(scores)
    for i, rid in enumerate(truth_ids):
        for label in present[rid]:
            targets[i, index[label]] = 1.0
    return Scored(truth_ids, all_labels, scores, targets, [primary[rid] for rid in truth_ids])

"""The guides' verdicts as a labelled list of their clips: the loop from the trail back to training.

The output is a folder the trainer reads as it is (`trainer.labelled.read_labelled_list`):

    labelled.csv     one row per judged clip
    clips/<clip_id>.flac

`labelled.csv` has the columns of the shared data's `recordings.csv` (path, primary_label,
label_note, scientific_name, class_name, in_label_space, duration_s, sample_rate, source_repo,
source_path, commit, license, label_provenance), so the same tools read both, then `label`
(the column the trainer's reader takes), `start_s`/`end_s`, `group`, and what the verdict was.

What a verdict says about a clip:

- confirmed: the clip holds the detected label: `label` = `primary_label` = it, in_label_space yes;
- rejected: the clip does not hold the detected label: `label` is empty (the trainer's negative)
  and `label_note` names the label the guide rejected (`rejected_label` as well). A rejection
  does not say what the sound was; a trainer that must not learn "silence" for an in-space
  species heard by mistake can leave these out with the `verdict` column, or export only
  `status=confirmed`.

Detections without a verdict are not labels and are left out; so are judged detections whose
clip the server does not hold (no audio to train on). Both are counted in the result.

`start_s`/`end_s` are where the detection lies within the clip (the clip is cut around the
detection's peak window, so usually the whole clip or most of it); `group` is the device and
source the clip came from, so the trainer holds out clips of one recording together.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sync_server.export.eml import LICENCE_NAME

RECORDINGS_COLUMNS = (
    "path", "primary_label", "label_note", "scientific_name", "class_name", "in_label_space", "duration_s",
    "sample_rate", "source_repo", "source_path", "commit", "license", "label_provenance",
)
"""The columns of ../shared/data/recordings.csv, in its order."""
COLUMNS = RECORDINGS_COLUMNS + (
    "label", "start_s", "end_s", "group", "verdict", "verdict_on", "rejected_label", "detection_id", "clip_id",
    "clip_sha256", "confidence", "bundle_name", "bundle_version",
)
LIST_FILE = "labelled.csv"
CLIPS_FOLDER = "clips"


@dataclass
class LabelledResult:
    """What the list holds and what was left out of it."""

    confirmed: int = 0
    rejected: int = 0
    unreviewed_left_out: int = 0
    without_clip_left_out: int = 0
    missing_clip_files: list[str] = field(default_factory=list)
    """Clips the database names whose file the server no longer has (left out, listed)."""

    @property
    def rows(self) -> int:
        return self.confirmed + self.rejected


def _seconds(value: float) -> str:
    return f"{value:.3f}"


def list_row(row: dict[str, Any], path: str, licence: str) -> dict[str, str]:
    """The labelled-list row for a judged detection whose clip is at `path` (relative)."""
    held = row["clip"]
    confirmed = row["verdict"] == "confirm"
    label = row["label"] if confirmed else ""
    start = max(0.0, row["start_s"] - held["start_s"])
    end = min(held["duration_s"], row["end_s"] - held["start_s"])
    inside = end > start  # else the detection lies outside the clip (it is then the whole clip)
    model = f"{row['bundle_name']} {row['bundle_version']}"
    return {
        "path": path, "primary_label": label,
        "label_note": "" if confirmed else f"guide rejected {row['label']}",
        "scientific_name": (row["scientific_name"] or "") if confirmed else "",
        "class_name": (row["class_name"] or "") if confirmed else "",
        "in_label_space": "yes" if confirmed else "no",
        "duration_s": f"{held['duration_s']:.2f}", "sample_rate": str(held["sample_rate_hz"]),
        "source_repo": f"device {row['device_id']}", "source_path": f"{row['source']}@{held['start_s']:.3f}s",
        "commit": "", "license": licence,
        "label_provenance": (f"guide verdict '{row['verdict']}' on {row['verdict_on']} of a {model} detection of "
                             f"{row['label']} (confidence {row['confidence']:.3f})"),
        "label": label, "start_s": _seconds(start) if inside else "", "end_s": _seconds(end) if inside else "",
        "group": f"{row['device_id']}:{row['source']}", "verdict": row["verdict"], "verdict_on": row["verdict_on"],
        "rejected_label": "" if confirmed else row["label"], "detection_id": row["detection_id"],
        "clip_id": held["clip_id"], "clip_sha256": held["sha256"], "confidence": repr(float(row["confidence"])),
        "bundle_name": row["bundle_name"], "bundle_version": row["bundle_version"],
    }


def write_labelled(rows: Iterable[dict[str, Any]], out_dir: Path, licence: str = LICENCE_NAME) -> LabelledResult:
    """Write `labelled.csv` and copy the judged clips beside it, into `out_dir`.

    Args:
        rows: detection rows (`iter_detection_rows`); unjudged ones are skipped.
        out_dir: a folder that does not exist yet or is empty (an export never mixes with
            another one's clips).
        licence: the recordings' licence, written in each row's `license`.

    Raises:
        FileExistsError: `out_dir` holds files already.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: not empty; a labelled list is written into a new or empty folder")
    (out_dir / CLIPS_FOLDER).mkdir(parents=True, exist_ok=True)
    result = LabelledResult()
    with open(out_dir / LIST_FILE, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            if row["verdict"] is None:
                result.unreviewed_left_out += 1
                continue
            held = row["clip"]
            if held is None:
                result.without_clip_left_out += 1
                continue
            source = Path(held["path"])
            if not source.is_file():
                result.missing_clip_files.append(held["clip_id"])
                continue
            relative = f"{CLIPS_FOLDER}/{held['clip_id']}.flac"
            shutil.copyfile(source, out_dir / relative)
            writer.writerow(list_row(row, relative, licence))
            if row["verdict"] == "confirm":
                result.confirmed += 1
            else:
                result.rejected += 1
    return result

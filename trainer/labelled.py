"""Labelled lists: what the head trains on, and how it is held out.

The input is a generic labelled list - path, label, optional start/end - so the same routine
trains on the shared recordings today and on the guides' confirmed clips later. A clip with
no label is a negative (audio outside the label space); a clip flagged as background may
also be mixed under calls.

Validation is by group: every clip belongs to a group that is held out as a whole. A
recording is its own group, so a species with several recordings is validated
leave-one-recording-out; a species with one recording has it split in time into disjoint
parts (`split_single_recordings`), and long negatives are cut into chunks, so that every
fold holds out audio that trained nothing in that fold.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import soundfile as sf

NEGATIVE_CHUNK_S = 30.0
"""Long negatives are held out in chunks of this length (the 382 s BirdCLEF recording would
otherwise land in one fold whole)."""
SINGLE_RECORDING_PARTS = 2
"""A species with one recording is split at its midpoint: two time-disjoint halves."""


@dataclass(frozen=True)
class LabelledClip:
    """A stretch of one recording, with its label (None: outside the label space)."""

    path: Path
    label: str | None
    start_s: float = 0.0
    end_s: float | None = None
    """None: to the end of the recording."""
    group: str = ""
    """Clips of one group are held out together; '' means the recording (its path)."""
    background: bool = False
    """Unlabelled ambience that may be mixed under calls (it is a negative as well)."""
    license: str = ""

    @property
    def group_id(self) -> str:
        return self.group or str(self.path)

    @property
    def key(self) -> str:
        """Identity of the audio this clip covers (for cache keys and reports)."""
        end = "end" if self.end_s is None else f"{self.end_s:.3f}"
        return f"{self.path}#{self.start_s:.3f}-{end}"


def read_labelled_list(csv_path: Path, root: Path | None = None) -> list[LabelledClip]:
    """Clips from a CSV with columns path, label and optionally start_s, end_s, group, background.

    Paths are relative to `root` (default: the CSV's folder). An empty label is a negative.

    Raises:
        ValueError: a required column is missing, or a row's times are not numbers (named by line).
    """
    csv_path = Path(csv_path)
    root = Path(root) if root is not None else csv_path.parent
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "label"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{csv_path}: missing columns {sorted(missing)} (need path, label)")
        clips = []
        for line, row in enumerate(reader, start=2):
            try:
                start = float(row.get("start_s") or 0.0)
                end = float(row["end_s"]) if row.get("end_s") else None
            except ValueError:
                raise ValueError(f"{csv_path}:{line}: start_s/end_s must be seconds") from None
            if end is not None and end <= start:
                raise ValueError(f"{csv_path}:{line}: end_s {end} is not after start_s {start}")
            clips.append(LabelledClip(
                path=root / row["path"], label=(row["label"] or "").strip() or None, start_s=start, end_s=end,
                group=row.get("group") or "", background=(row.get("background") or "").lower() in ("1", "yes", "true"),
            ))
    return clips


EXCLUDED = {
    "audio/birdclef_train_audio/1.ogg": "species unknown; a BirdCLEF 2025 train clip may be one of our labels",
}
"""Shared recordings that are neither a positive nor a safe negative."""
BACKGROUNDS = ("audio/elsilencio_soundscape/", "audio/birdclef_unlabeled/")
"""Unlabelled soundscapes: the forest (and a BirdCLEF-format recording) that calls are mixed into."""


def clips_from_recordings(data_dir: Path) -> list[LabelledClip]:
    """The shared data's `recordings.csv` as a labelled list.

    In-space recordings are positives; `EXCLUDED` is left out; every other recording is a
    negative, and the soundscapes are backgrounds as well. (The trainer leaves out the labels
    BirdNET names, such as the Little Tinamou: a head trained on one recording of them would
    only add false alarms.)
    """
    data_dir = Path(data_dir)
    with open(data_dir / "recordings.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    clips = []
    for row in rows:
        label = row["primary_label"].strip() if row["in_label_space"] == "yes" else None
        if row["path"] in EXCLUDED:
            continue
        clips.append(LabelledClip(
            path=data_dir / row["path"], label=label or None, group=row["path"],
            background=row["path"].startswith(BACKGROUNDS), license=row["license"],
        ))
    return clips


def clip_duration(clip: LabelledClip) -> float:
    end = clip.end_s if clip.end_s is not None else sf.info(str(clip.path)).duration
    return max(0.0, end - clip.start_s)


def split_single_recordings(clips: list[LabelledClip], parts: int = SINGLE_RECORDING_PARTS) -> list[LabelledClip]:
    """Split each positive whose label has only one group into `parts` time-disjoint groups."""
    groups: dict[str, set[str]] = {}
    for clip in clips:
        if clip.label:
            groups.setdefault(clip.label, set()).add(clip.group_id)
    out = []
    for clip in clips:
        if not clip.label or len(groups[clip.label]) > 1:
            out.append(clip)
            continue
        length = clip_duration(clip) / parts
        for k in range(parts):
            out.append(replace(clip, start_s=clip.start_s + k * length, end_s=clip.start_s + (k + 1) * length,
                               group=f"{clip.group_id}#part{k + 1}of{parts}"))
    return out


def chunk_negatives(clips: list[LabelledClip], chunk_s: float = NEGATIVE_CHUNK_S) -> list[LabelledClip]:
    """Cut negatives longer than 1.5 chunks into `chunk_s` groups (the last one takes the rest)."""
    out = []
    for clip in clips:
        duration = clip_duration(clip)
        if clip.label or duration < 1.5 * chunk_s:
            out.append(clip)
            continue
        count = int(duration // chunk_s)
        for k in range(count):
            end = clip.start_s + (k + 1) * chunk_s if k < count - 1 else clip.end_s
            out.append(replace(clip, start_s=clip.start_s + k * chunk_s, end_s=end, group=f"{clip.group_id}#{k}"))
    return out


def assign_folds(clips: list[LabelledClip], folds: int) -> dict[str, int]:
    """Group -> fold. A label's groups go to different folds (so each fold holds out one of them);
    negative groups are dealt round-robin in a fixed pseudo-random order."""
    by_label: dict[str, list[str]] = {}
    negatives: list[str] = []
    for clip in clips:
        target = by_label.setdefault(clip.label, []) if clip.label else negatives
        if clip.group_id not in target:
            target.append(clip.group_id)
    fold_of: dict[str, int] = {}
    for label in sorted(by_label):
        for k, group in enumerate(sorted(by_label[label])):
            fold_of[group] = k % folds
    negatives.sort(key=lambda g: hashlib.sha256(g.encode()).hexdigest())
    for k, group in enumerate(negatives):
        fold_of.setdefault(group, k % folds)
    return fold_of

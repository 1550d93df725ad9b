"""Labelled lists: what the head trains on, and how it is held out.

The input is a generic labelled list - path, label, optional start/end - so the same routine
trains on the shared recordings today and on the guides' confirmed clips later. A clip with
no label is a negative (audio outside the label space); a clip flagged as background may
also be mixed under calls.

Validation is by group: every clip belongs to a group that is held out as a whole. A
recording is its own group unless it shares its source with others (three raccoon clips cut
from one video are one group: `source_group`), so a species with several recordings is validated
leave-one-recording-out; a species with one recording has it split in time into disjoint
parts (`split_single_recordings`), and long negatives are cut into chunks, so that every
fold holds out audio that trained nothing in that fold.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path

import soundfile as sf

NEGATIVE_CHUNK_S = 30.0
"""Long negatives are held out in chunks of this length (the 382 s BirdCLEF recording would
otherwise land in one fold whole)."""
SINGLE_RECORDING_PARTS = 2
"""A species with one recording is split at its midpoint: two time-disjoint halves."""
EXCLUDED = {
    "audio/birdclef_train_audio/1.ogg": "species unknown; a BirdCLEF 2025 train clip may be one of our labels",
}
"""Shared recordings that are neither a positive nor a safe negative."""
BACKGROUNDS = ("audio/elsilencio_soundscape/", "audio/birdclef_unlabeled/")
"""Unlabelled soundscapes: the forest (and a BirdCLEF-format recording) that calls are mixed into."""
NOT_SAFE_NEGATIVES = {
    "audio/other/orni.wav": (("Insecta",), "Cicada orni is a cicada: Cicadidae (50186)"),
    "audio/other/pellucens.wav": (("Insecta",), "Oecanthus pellucens, a tree cricket (Oecanthinae, in Gryllidae "
                                                "52884 as iNaturalist classes it)"),
}
"""Rows whose species belongs to a family label although the row gives no label. The row's label
is kept (no label: they train no family as a positive), but they are no negatives for the insects
either: taken as negatives, orni.wav's score set the Cicadidae threshold (0.41).

The unlabelled soundscapes stay negatives for every label although the El Silencio one holds
steady bands at 3.7, 8.5 and 12 kHz (likely an insect chorus): made unknown for the insects,
every mixed insect positive had a soundscape under it and no insect negative had one, and the
head learned the forest itself (held-out Tettigoniidae: 18/18 mixed windows, 0/4 clean ones;
exporter/artefacts/README.md)."""


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
    unsure: tuple[str, ...] = ()
    """Classes this audio is no safe negative for (its targets there are unknown, not 0)."""
    source: str = ""
    """Where the recording came from (a repository or collection), for the manifest's
    per-label training support."""

    @property
    def group_id(self) -> str:
        return self.group or str(self.path)

    @property
    def key(self) -> str:
        """Identity of the audio this clip covers (for cache keys and reports)."""
        end = "end" if self.end_s is None else f"{self.end_s:.3f}"
        return f"{self.path}#{self.start_s:.3f}-{end}"


def read_labelled_list(csv_path: Path, root: Path | None = None) -> list[LabelledClip]:
    """Clips from a CSV with columns path, label and optionally start_s, end_s, group, background,
    license, source.

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
                license=row.get("license") or "", source=row.get("source") or "",
            ))
    return clips


RECORDING_LISTS = ("recordings.csv", "recordings_more.csv")
"""The shared data's recording lists (same columns): the first, and the insects, mammals and
negatives added in December 2026, kept apart until they were merged on purpose (issue 10)."""
SOURCE_URL = re.compile(r"\bsource ((?:https?://)?[\w-]+(?:\.[\w-]+)+/[^\s);,]+)")
"""The source a licence column names as a web address ("source youtube.com/watch?v=...",
"source freesound.org/s/342105"): a domain and a path, so "source xeno-canto XC154190" (a
catalogue number that names one recording) does not match."""


def source_group(row: dict[str, str]) -> str:
    """The group of a recordings.csv row: the source address its licence names, else its path.

    Clips edited out of one video or one freesound upload are one animal, one microphone and one
    place: held out apart, one would predict the other (the three raccoon chatters share one
    YouTube video; the two leopard calls, and the two squirrel calls, one source each).
    """
    found = SOURCE_URL.search(row.get("license") or "")
    return f"source:{found.group(1)}" if found else row["path"]


def read_recording_rows(data_dir: Path, lists: tuple[str, ...] = RECORDING_LISTS) -> list[dict[str, str]]:
    """Every row of the shared data's recording lists, in list order.

    Raises:
        FileNotFoundError: a list is missing (named): training on fewer recordings than the
            committed head would silently change the model.
    """
    rows = []
    for name in lists:
        path = Path(data_dir) / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: recording list missing (the head trains on {', '.join(lists)})")
        with open(path, newline="", encoding="utf-8") as handle:
            rows += list(csv.DictReader(handle))
    return rows


def clips_from_recordings(data_dir: Path, lists: tuple[str, ...] = RECORDING_LISTS) -> list[LabelledClip]:
    """The shared data's recording lists as a labelled list.

    In-space recordings are positives with the label their row gives (a row with no label trains
    no label, even where its species belongs to a family label: `NOT_SAFE_NEGATIVES`);
    `EXCLUDED` is left out; every other recording is a negative, and the soundscapes are
    backgrounds as well. Groups follow `source_group`. (The trainer leaves out the labels BirdNET
    names, such as the Little Tinamou: a head trained on one recording of them would only add
    false alarms.)
    """
    data_dir = Path(data_dir)
    clips = []
    for row in read_recording_rows(data_dir, lists):
        label = row["primary_label"].strip() if row["in_label_space"] == "yes" else None
        if row["path"] in EXCLUDED:
            continue
        clips.append(LabelledClip(
            path=data_dir / row["path"], label=label or None, group=source_group(row),
            background=row["path"].startswith(BACKGROUNDS), license=row["license"],
            unsure=NOT_SAFE_NEGATIVES.get(row["path"], ((), ""))[0], source=row["source_repo"],
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


@dataclass(frozen=True)
class Example:
    """One training example, whatever list it came from: BirdCLEF's train.csv, the shared
    recordings, or the guides' confirmed clips.

    The heads, the splits and the audio cache read only this, so a new source of training audio
    needs a reader that produces it and nothing else.
    """

    clip_id: str
    """Unique within one training set: the audio cache's key (train.csv's filename; a labelled
    list's `LabelledClip.key`)."""
    path: Path
    primary: str | None
    """None: a negative (audio outside the label space)."""
    secondary: tuple[str, ...] = ()
    """Other labels heard in the recording: partial positives (`trainer.splits.targets`)."""
    group: str = ""
    """The recording (or source) it is cut from: a split never puts one group on both sides."""
    start_s: float = 0.0
    end_s: float | None = None
    """None: to the end of the recording."""
    rating: float | None = None
    """The recordist's quality rating, 0.5..5; None when unrated (BirdCLEF writes 0.0 for that)."""
    collection: str = ""
    """Where the recording came from (XC, iNat, CSA; a repository for the shared recordings)."""
    license: str = ""
    background: bool = False
    """Unlabelled ambience that may be mixed under calls (it is a negative as well)."""
    unsure: tuple[str, ...] = ()
    """Classes this audio is no safe negative for (`LabelledClip.unsure`)."""
    latitude: float | None = None
    longitude: float | None = None

    @property
    def group_id(self) -> str:
        return self.group or self.clip_id

    @property
    def labels(self) -> tuple[str, ...]:
        """Primary first, then the secondary labels."""
        return ((self.primary,) if self.primary else ()) + self.secondary


def example_from_clip(clip: LabelledClip) -> Example:
    """The `Example` for a labelled-list clip: its label is the primary, it has no secondary
    labels and no rating (a plain list carries neither)."""
    return Example(
        clip_id=clip.key, path=clip.path, primary=clip.label, group=clip.group_id, start_s=clip.start_s,
        end_s=clip.end_s, collection=clip.source, license=clip.license, background=clip.background,
        unsure=clip.unsure,
    )


def read_examples(csv_path: Path, root: Path | None = None) -> list[Example]:
    """Examples from a plain labelled list (`read_labelled_list`'s columns: path, label, optional
    start_s, end_s, group, background, license, source).

    This is how the guides' confirmed clips come in: a CSV of path and label (the clips the
    device kept, confirmed by a guide), read by the same routine as every other list.
    """
    return [example_from_clip(clip) for clip in read_labelled_list(csv_path, root)]


def examples_from_recordings(data_dir: Path, lists: tuple[str, ...] = RECORDING_LISTS) -> list[Example]:
    """The shared data's recording lists as examples (`clips_from_recordings`, unchanged)."""
    return [example_from_clip(clip) for clip in clips_from_recordings(data_dir, lists)]

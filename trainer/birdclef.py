"""The BirdCLEF 2025 layout a user brings, read into training examples.

    <root>/train.csv            filename, primary_label, secondary_labels, rating, collection,
                                latitude, longitude (Kaggle's file has more columns: ignored)
    <root>/taxonomy.csv         primary_label, inat_taxon_id, scientific_name, common_name, class_name
    <root>/train_audio/<label>/<file>.ogg
    <root>/train_soundscapes/   optional: unlabelled site recordings (backgrounds, pseudo-labels)

Every row is checked before anything trains, and every problem is reported at once with its
file, line and reason: a 28,594-row file that fails on its first bad row and then on its second
costs a user one run per typo.

Duplicates. The real train.csv has 30 rows whose filename repeats (28,594 rows, 28,564 files):
the same iNaturalist observation filed under several species' folders (`blcant4/iNat1020465.ogg`
four times, once with each of the four labels). The row whose primary label is its folder is the
file's row; the others are reported as duplicates and dropped, so each file is counted once. The
copies under the other folders are the same recording (one basename, e.g. `iNat1020465`): they
form one split group, and each copy takes the others' primary labels as secondary labels (the
observation holds all of them; a target of 0 there would teach the head that a species heard in
the audio is absent).
"""

from __future__ import annotations

import ast
import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from trainer.labelled import Example

TRAIN_COLUMNS = ("filename", "primary_label", "secondary_labels", "rating")
"""The train.csv columns this reader needs (collection, latitude and longitude are read when present)."""
TAXONOMY_COLUMNS = ("primary_label", "class_name")
"""The taxonomy.csv columns this reader needs (the names are kept when present)."""
RATING_RANGE = (0.0, 5.0)
"""xeno-canto's quality scale, 0.5 steps; BirdCLEF writes 0.0 for "unrated" (all iNat and CSA rows)."""
NO_SECONDARY = frozenset(("", "[]", "['']", '[""]'))
"""Cells meaning "no secondary label" (25,915 of the real 28,594 rows are `['']`): no parse needed."""
MAX_LISTED = 20
"""Problems listed in one error; the rest are counted (a wrong taxonomy file fails every row)."""


class BirdclefError(ValueError):
    """The layout or one of its files is unusable; the message lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        shown = "\n  ".join(self.problems[:MAX_LISTED])
        more = len(self.problems) - MAX_LISTED
        super().__init__(f"{len(self.problems)} problem(s):\n  {shown}" + (f"\n  ... and {more} more" if more > 0 else ""))


@dataclass(frozen=True)
class Taxon:
    """One row of taxonomy.csv."""

    label: str
    class_name: str
    """Aves, Amphibia, Insecta or Mammalia: the per-taxon metric slices."""
    scientific_name: str = ""
    common_name: str = ""
    inat_taxon_id: str = ""


@dataclass(frozen=True)
class Duplicate:
    """A train.csv row dropped because its filename already has a row."""

    line: int
    filename: str
    primary_label: str
    kept_line: int
    """The line of the row kept for this filename (the one whose primary label is its folder)."""


@dataclass
class BirdclefData:
    """A checked BirdCLEF layout: the taxonomy, one example per audio file, and what was dropped."""

    root: Path
    taxonomy: tuple[Taxon, ...]
    examples: list[Example]
    duplicates: list[Duplicate] = field(default_factory=list)
    soundscapes: list[Path] = field(default_factory=list)
    """train_soundscapes/*, sorted; empty when the folder is absent."""

    @property
    def labels(self) -> list[str]:
        """The label space: taxonomy order (the order of the model's outputs)."""
        return [taxon.label for taxon in self.taxonomy]

    def summary(self) -> str:
        """One line for the log: what was read and what was dropped."""
        groups = len({e.group_id for e in self.examples})
        return (f"{self.root}: {len(self.examples)} recordings ({groups} distinct) of {len(self.taxonomy)} labels, "
                f"{len(self.duplicates)} duplicate rows dropped, {len(self.soundscapes)} soundscapes")


def _dict_reader(handle, path: Path, required: Sequence[str]) -> csv.DictReader:
    """A CSV reader over `handle` whose header has every `required` column, or the error naming them."""
    reader = csv.DictReader(handle)
    missing = [c for c in required if c not in (reader.fieldnames or ())]
    if missing:
        raise BirdclefError([f"{path}: missing columns {missing} (need {', '.join(required)})"])
    return reader


def read_taxonomy(path: Path) -> tuple[Taxon, ...]:
    """taxonomy.csv as `Taxon`s, in file order.

    Raises:
        FileNotFoundError: the file is missing.
        BirdclefError: a required column is missing, or a label is empty or repeated (by line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: taxonomy missing (the BirdCLEF layout needs taxonomy.csv beside train.csv)")
    problems, taxa, seen = [], [], {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = _dict_reader(handle, path, TAXONOMY_COLUMNS)
        for line, row in enumerate(reader, start=2):
            label = (row["primary_label"] or "").strip()
            if not label:
                problems.append(f"{path}:{line}: empty primary_label")
            elif label in seen:
                problems.append(f"{path}:{line}: label {label!r} repeats line {seen[label]}")
            else:
                seen[label] = line
                taxa.append(Taxon(label=label, class_name=(row["class_name"] or "").strip(),
                                  scientific_name=row.get("scientific_name") or "",
                                  common_name=row.get("common_name") or "", inat_taxon_id=row.get("inat_taxon_id") or ""))
    if problems:
        raise BirdclefError(problems)
    return tuple(taxa)


def parse_secondary(text: str) -> tuple[str, ...]:
    """train.csv's secondary_labels cell (a Python list literal) as a tuple; `['']` and `[]` are none.

    Raises:
        ValueError: the cell is not a list of strings.
    """
    text = (text or "").strip()
    if text in NO_SECONDARY:
        return ()
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"secondary_labels {text!r} is not a list literal such as ['grekis', 'yercac1']") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"secondary_labels {text!r} is not a list of label strings")
    return tuple(dict.fromkeys(v.strip() for v in value if v.strip()))


def parse_rating(text: str) -> float | None:
    """The rating cell: None for unrated (0 or empty), else the rating.

    Raises:
        ValueError: not a number, or outside `RATING_RANGE`.
    """
    text = (text or "").strip()
    if not text:
        return None
    try:
        rating = float(text)
    except ValueError:
        raise ValueError(f"rating {text!r} is not a number") from None
    if not (RATING_RANGE[0] <= rating <= RATING_RANGE[1]):  # also rejects NaN
        raise ValueError(f"rating {text!r} is outside {RATING_RANGE[0]:g}..{RATING_RANGE[1]:g}")
    return rating or None


def _coordinate(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def recording_group(filename: str) -> str:
    """The recording a train.csv filename holds: its basename without extension (`iNat1020465`),
    so copies of one recording under several labels' folders are one group."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def read_train_csv(csv_path: Path, labels: set[str], audio_dir: Path) -> tuple[list[Example], list[Duplicate]]:
    """train.csv's rows as examples, one per filename, with the duplicates that were dropped.

    Args:
        csv_path: train.csv.
        labels: The taxonomy's labels: a primary or secondary label outside them is an error.
        audio_dir: train_audio/, the folder the filenames are relative to (not opened here).

    Raises:
        FileNotFoundError: the file is missing.
        BirdclefError: missing columns, or rows with a label outside the taxonomy, a malformed
            secondary list, or a rating outside 0..5 (every one listed by line).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: train.csv missing")
    problems: list[str] = []
    rows: dict[str, list[tuple[int, Example]]] = {}
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = _dict_reader(handle, csv_path, TRAIN_COLUMNS)
        for line, row in enumerate(reader, start=2):
            where = f"{csv_path}:{line}"
            filename = (row["filename"] or "").strip()
            primary = (row["primary_label"] or "").strip()
            if not filename:
                problems.append(f"{where}: empty filename")
                continue
            if primary not in labels:
                problems.append(f"{where}: primary_label {primary!r} is not in the taxonomy")
            try:
                secondary = parse_secondary(row["secondary_labels"])
                outside = [s for s in secondary if s not in labels]
                if outside:
                    problems.append(f"{where}: secondary label(s) {outside} not in the taxonomy")
                rating = parse_rating(row["rating"])
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
                continue
            rows.setdefault(filename, []).append((line, Example(
                clip_id=filename, path=audio_dir / filename, primary=primary,
                secondary=tuple(s for s in secondary if s != primary), group=recording_group(filename),
                rating=rating, collection=(row.get("collection") or "").strip(),
                latitude=_coordinate(row.get("latitude")), longitude=_coordinate(row.get("longitude")),
            )))
    if problems:
        raise BirdclefError(problems)
    examples, duplicates = [], []
    for filename, found in rows.items():
        folder = filename.split("/", 1)[0] if "/" in filename else None
        kept_line, kept = next(((ln, e) for ln, e in found if e.primary == folder), found[0])
        examples.append(kept)
        duplicates += [Duplicate(ln, filename, e.primary or "", kept_line) for ln, e in found if ln != kept_line]
    duplicates.sort(key=lambda d: d.line)
    return co_filed_labels(examples), duplicates


def co_filed_labels(examples: list[Example]) -> list[Example]:
    """Each copy of a recording filed under several labels gains the others' primaries as
    secondary labels (see the module docstring)."""
    primaries: dict[str, list[str]] = {}
    for example in examples:
        primaries.setdefault(example.group_id, []).append(example.primary or "")
    out = []
    for example in examples:
        others = [p for p in primaries[example.group_id] if p and p != example.primary and p not in example.secondary]
        out.append(replace(example, secondary=example.secondary + tuple(dict.fromkeys(others))) if others else example)
    return out


def missing_audio(examples: list[Example], audio_dir: Path, csv_path: Path) -> list[str]:
    """A problem line for each example whose audio file is absent (one listing per label folder,
    not one stat per file: 28,564 stats on a network share take minutes)."""
    present: dict[Path, set[str]] = {}
    problems = []
    for example in examples:
        folder = example.path.parent
        if folder not in present:
            present[folder] = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        if example.path.name not in present[folder]:
            problems.append(f"{csv_path}: {example.clip_id}: audio file missing ({example.path})")
    return problems


def empty_classes(taxonomy: tuple[Taxon, ...], examples: list[Example]) -> list[str]:
    """Taxonomy labels no example has as its primary label, in taxonomy order."""
    have = {e.primary for e in examples}
    return [t.label for t in taxonomy if t.label not in have]


def load_birdclef(root: Path, *, check_audio: bool = True, all_classes: bool = False,
                  train_csv: str = "train.csv", taxonomy_csv: str = "taxonomy.csv") -> BirdclefData:
    """Read and check a BirdCLEF layout.

    Args:
        root: The folder holding train.csv, taxonomy.csv and train_audio/.
        check_audio: Require every row's audio file to exist (off only for metadata-only work,
            such as planning splits from train.csv alone).
        all_classes: Train every taxonomy label: a label with no recording is an error (a head
            would have an output that nothing ever trained).
        train_csv: The train list's name under `root` (Kaggle's is train.csv).
        taxonomy_csv: The taxonomy's name under `root`.

    Raises:
        FileNotFoundError: root, a CSV or train_audio/ is missing.
        BirdclefError: every bad row, missing audio file or empty class, listed.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: BirdCLEF folder missing")
    taxonomy = read_taxonomy(root / taxonomy_csv)
    audio_dir = root / "train_audio"
    if check_audio and not audio_dir.is_dir():
        raise FileNotFoundError(f"{audio_dir}: train_audio folder missing (train.csv's filenames are relative to it)")
    examples, duplicates = read_train_csv(root / train_csv, {t.label for t in taxonomy}, audio_dir)
    problems = missing_audio(examples, audio_dir, root / train_csv) if check_audio else []
    if all_classes:
        problems += [f"{root / taxonomy_csv}: label {label!r} has no recording in {train_csv} (empty class)"
                     for label in empty_classes(taxonomy, examples)]
    if problems:
        raise BirdclefError(problems)
    soundscape_dir = root / "train_soundscapes"
    soundscapes = sorted(p for p in soundscape_dir.iterdir() if p.is_file()) if soundscape_dir.is_dir() else []
    return BirdclefData(root=root, taxonomy=taxonomy, examples=examples, duplicates=duplicates, soundscapes=soundscapes)


def soundscape_examples(data: BirdclefData) -> list[Example]:
    """The unlabelled soundscapes as background examples (no label; each its own group)."""
    return [Example(clip_id=f"train_soundscapes/{p.name}", path=p, primary=None, group=f"soundscape:{p.stem}",
                    background=True, collection="soundscape") for p in data.soundscapes]

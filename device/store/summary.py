"""Tour summaries: which species a group heard, and the Species Spotting Rate.

What counts: every detection of the tours given, open or closed, primary or secondary,
EXCEPT those whose latest feedback verdict is 'reject'. A guide rejects a detection
because the species was not there; counting it would report a species the group never
heard. Rejected detections are still reported, as `rejected_count`, so the number left
out is visible. Confirmed and unreviewed detections count alike (most are never reviewed).

Species Spotting Rate (SSR): the mean, over the tours given, of the number of unique
species each tour heard. For one tour it is that tour's unique species. The total of
unique species across the tours is reported beside it (`unique_species`), since a species
heard on two tours counts once there and once per tour in the rate.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

import sqlite_utils

from device.domain import iso_utc, parse_iso_utc, utc_now
from device.naming import display_name
from device.store.bundles import load_label_catalog
from device.store.tours import Tour, get_tour


@dataclass(frozen=True)
class SpeciesTally:
    label: str
    scientific_name: str | None
    common_name: str | None
    class_name: str | None
    detection_count: int
    """Detection events (not windows) of this species over the tours."""
    tour_count: int
    """How many of the tours heard it."""
    first_heard_on: datetime
    last_heard_on: datetime


@dataclass(frozen=True)
class TourStats:
    tour: Tour
    unique_species: int
    detection_count: int
    duration_s: float
    """Time on the trail (an active tour counts up to when the summary was made)."""


@dataclass(frozen=True)
class TourSummary:
    tours: tuple[TourStats, ...]
    species: tuple[SpeciesTally, ...]
    """Most detected first, then by label."""
    unique_species: int
    """Distinct species across all the tours given."""
    species_spotting_rate: float
    """Mean unique species per tour over the tours given."""
    detection_count: int
    rejected_count: int
    """Detections left out because their latest verdict is 'reject'."""
    duration_s: float
    """Total time on the trail over the tours."""
    first_heard_on: datetime | None
    last_heard_on: datetime | None

    def to_dict(self) -> dict:
        """A JSON-ready form (times as ISO-8601 UTC text), for `explorer tour summary --json`."""

        def stamp(moment: datetime | None) -> str | None:
            return iso_utc(moment) if moment else None

        return {
            "tour_count": len(self.tours),
            "unique_species": self.unique_species,
            "species_spotting_rate": self.species_spotting_rate,
            "detection_count": self.detection_count,
            "rejected_count": self.rejected_count,
            "duration_s": self.duration_s,
            "first_heard_on": stamp(self.first_heard_on),
            "last_heard_on": stamp(self.last_heard_on),
            "tours": [
                {
                    "tour_id": s.tour.tour_id,
                    "name": s.tour.name,
                    "guide": s.tour.guide,
                    "started_on": stamp(s.tour.started_on),
                    "ended_on": stamp(s.tour.ended_on),
                    "active": s.tour.active,
                    "unique_species": s.unique_species,
                    "detection_count": s.detection_count,
                    "duration_s": s.duration_s,
                }
                for s in self.tours
            ],
            "species": [
                {
                    "label": t.label,
                    "scientific_name": t.scientific_name,
                    "common_name": t.common_name,
                    "class_name": t.class_name,
                    "detection_count": t.detection_count,
                    "tour_count": t.tour_count,
                    "first_heard_on": stamp(t.first_heard_on),
                    "last_heard_on": stamp(t.last_heard_on),
                }
                for t in self.species
            ],
        }


def tour_summary(db: sqlite_utils.Database, tour_ids: list[str] | tuple[str, ...]) -> TourSummary:
    """Summarise one or more tours (see the module docstring for what counts).

    Raises:
        ValueError: no tour ids given (the rate is a mean over tours).
        NotFoundError: an id names no tour.
    """
    ids = list(dict.fromkeys(tour_ids))  # de-duplicated, order kept
    if not ids:
        raise ValueError("tour summary: give at least one tour (the spotting rate is a mean over tours)")
    tours = [get_tour(db, tour_id) for tour_id in ids]
    now = utc_now()
    marks = ", ".join("?" for _ in ids)
    rows = list(
        db.query(
            f"""SELECT d.tour_id, d.label, d.bundle_sha256, d.started_on, d.ended_on,
                    (SELECT f.verdict FROM feedback f WHERE f.detection_id = d.detection_id
                     ORDER BY f.created_on DESC, f.rowid DESC LIMIT 1) AS verdict
                FROM detection d WHERE d.tour_id IN ({marks})""",
            ids,
        )
    )
    kept = [row for row in rows if row["verdict"] != "reject"]
    per_tour: dict[str, set[str]] = defaultdict(set)
    per_tour_count: dict[str, int] = defaultdict(int)
    per_label: dict[str, list[dict]] = defaultdict(list)
    for row in kept:
        per_tour[row["tour_id"]].add(row["label"])
        per_tour_count[row["tour_id"]] += 1
        per_label[row["label"]].append(row)
    catalog = load_label_catalog(db)
    species = []
    for label, label_rows in per_label.items():
        newest = max(label_rows, key=lambda r: r["started_on"])
        info = catalog.get(label, newest["bundle_sha256"])
        species.append(
            SpeciesTally(
                label=label,
                scientific_name=info.scientific_name if info else None,
                common_name=info.common_name if info else None,
                class_name=info.class_name if info else None,
                detection_count=len(label_rows),
                tour_count=len({r["tour_id"] for r in label_rows}),
                first_heard_on=parse_iso_utc(min(r["started_on"] for r in label_rows)),
                last_heard_on=parse_iso_utc(max(r["ended_on"] for r in label_rows)),
            )
        )
    species.sort(key=lambda t: (-t.detection_count, t.label))
    stats = tuple(
        TourStats(
            tour=tour,
            unique_species=len(per_tour[tour.tour_id]),
            detection_count=per_tour_count[tour.tour_id],
            duration_s=tour.duration_s(now),
        )
        for tour in tours
    )
    return TourSummary(
        tours=stats,
        species=tuple(species),
        unique_species=len(per_label),
        species_spotting_rate=sum(s.unique_species for s in stats) / len(stats),
        detection_count=len(kept),
        rejected_count=len(rows) - len(kept),
        duration_s=sum(s.duration_s for s in stats),
        first_heard_on=min((t.first_heard_on for t in species), default=None),
        last_heard_on=max((t.last_heard_on for t in species), default=None),
    )


def format_duration(seconds: float) -> str:
    """'1 h 05 min' / '12 min': how long a walk was, to the minute."""
    minutes = int(round(seconds / 60))
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def format_moment(moment: datetime | None) -> str:
    """'2026-04-20 07:40:00' (UTC, to the second), or '-' for none."""
    return iso_utc(moment)[:19].replace("T", " ") if moment else "-"


def species_name(tally: SpeciesTally) -> str:
    """'Little Tinamou (Crypturellus soui)', a family as a family ('a cicada (Cicadidae)', see
    device/naming.py), falling back to the bare label when unnamed."""
    return display_name(tally.scientific_name, tally.common_name, tally.class_name, tally.label)


def format_summary(result: TourSummary) -> str:
    """The summary as the plain text `explorer tour summary` and `explorer run` print (times UTC)."""
    names = ", ".join(f"{s.tour.name} ({s.tour.tour_id[:8]})" for s in result.tours)
    lines = [
        f"Tours: {len(result.tours)}: {names}",
        f"Time on trail: {format_duration(result.duration_s)}",
        f"Species Spotting Rate: {result.species_spotting_rate:.1f} species per tour "
        f"({result.unique_species} unique species in all)",
    ]
    rejected = f" ({result.rejected_count} rejected by a guide, not counted)" if result.rejected_count else ""
    lines.append(f"Detections: {result.detection_count}{rejected}")
    if not result.species:
        lines.append("Nothing heard yet.")
        return "\n".join(lines)
    lines.append(
        f"First heard {format_moment(result.first_heard_on)} UTC, last heard {format_moment(result.last_heard_on)} UTC"
    )
    lines.append("")
    lines.append(f"{'HEARD':>5}  {'FIRST HEARD':<19}  {'LAST HEARD':<19}  SPECIES")
    for tally in result.species:
        lines.append(
            f"{tally.detection_count:>5}  {format_moment(tally.first_heard_on):<19}  "
            f"{format_moment(tally.last_heard_on):<19}  {species_name(tally)}"
        )
    return "\n".join(lines)

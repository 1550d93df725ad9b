"""Tours: a guided walk on the trail, the unit a guide's species count is reported over.

Only one tour is active at a time. The rule is enforced twice: `start_tour` names the
active tour in its error, and a partial unique index (`tour_single_active`) makes the
database itself refuse a second one, even when two processes start tours at once.
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlite_utils

from device.domain import iso_utc, parse_iso_utc, utc_now
from device.store.database import NotFoundError, StoreError, TourActiveError

MAX_NAME_CHARS = 200
"""Tour and guide names are typed by people on a small screen; anything longer is a mistake."""


@dataclass(frozen=True)
class Tour:
    tour_id: str
    name: str
    guide: str | None
    started_on: datetime
    ended_on: datetime | None
    """None while the tour is active."""

    @property
    def active(self) -> bool:
        return self.ended_on is None

    def duration_s(self, now: datetime | None = None) -> float:
        """Time on the trail; an active tour counts up to `now`."""
        end = self.ended_on or now or utc_now()
        return max(0.0, (end - self.started_on).total_seconds())


def row_to_tour(row: dict) -> Tour:
    return Tour(
        tour_id=row["tour_id"],
        name=row["name"],
        guide=row["guide"],
        started_on=parse_iso_utc(row["started_on"]),
        ended_on=parse_iso_utc(row["ended_on"]) if row["ended_on"] else None,
    )


def _clean_name(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"tour {what}: expected text, got {type(value).__name__}")
    value = value.strip()
    if len(value) > MAX_NAME_CHARS:
        raise ValueError(f"tour {what}: {len(value)} characters is over the {MAX_NAME_CHARS}-character limit")
    return value or None


def active_tour(db: sqlite_utils.Database) -> Tour | None:
    rows = list(db.query("SELECT * FROM tour WHERE ended_on IS NULL"))
    return row_to_tour(rows[0]) if rows else None


def get_tour(db: sqlite_utils.Database, tour_id: str) -> Tour:
    rows = list(db.query("SELECT * FROM tour WHERE tour_id = ?", [tour_id]))
    if not rows:
        raise NotFoundError(f"no tour with id {tour_id!r}")
    return row_to_tour(rows[0])


def resolve_tour_id(db: sqlite_utils.Database, prefix: str) -> str:
    """The full id of the one tour whose id starts with `prefix` (the CLI shows 8 characters)."""
    if not prefix:
        raise NotFoundError("no tour id given")
    # substr, not LIKE: a typed '%' or '_' must not act as a wildcard.
    sql = "SELECT tour_id FROM tour WHERE substr(tour_id, 1, ?) = ?"
    rows = [r["tour_id"] for r in db.query(sql, [len(prefix), prefix])]
    if len(rows) == 1:
        return rows[0]
    if not rows:
        raise NotFoundError(f"no tour with id {prefix!r}")
    raise StoreError(f"tour id {prefix!r} is ambiguous: it starts {len(rows)} tours; give more characters")


def list_tours(db: sqlite_utils.Database) -> list[Tour]:
    """Every tour, newest first."""
    return [row_to_tour(r) for r in db.query("SELECT * FROM tour ORDER BY started_on DESC, rowid DESC")]


def start_tour(db: sqlite_utils.Database, name: str | None = None, guide: str | None = None) -> Tour:
    """Insert a new active tour (call inside a write transaction).

    Raises:
        TourActiveError: another tour is active; the message names it.
    """
    name = _clean_name(name, "name")
    guide = _clean_name(guide, "guide")
    current = active_tour(db)
    if current is not None:
        raise _active_error(current)
    now = parse_iso_utc(iso_utc(utc_now()))  # what the row will hold (millisecond precision)
    tour = Tour(
        tour_id=str(uuid.uuid4()),
        name=name or f"Tour {now:%Y-%m-%d %H:%M} UTC",
        guide=guide,
        started_on=now,
        ended_on=None,
    )
    try:
        db.execute(
            "INSERT INTO tour (tour_id, name, guide, started_on, ended_on) VALUES (?, ?, ?, ?, NULL)",
            [tour.tour_id, tour.name, tour.guide, iso_utc(tour.started_on)],
        )
    except sqlite3.IntegrityError as exc:
        if "tour_single_active" in str(exc):
            other = active_tour(db)
            if other is not None:
                raise _active_error(other) from None
        raise
    return tour


def _active_error(current: Tour) -> TourActiveError:
    return TourActiveError(
        f"tour {current.name!r} ({current.tour_id[:8]}) is still active since "
        f"{iso_utc(current.started_on)}; stop it first (explorer tour stop)",
        current.tour_id,
    )


def stop_tour(db: sqlite_utils.Database, tour_id: str | None = None) -> Tour:
    """End a tour (the active one when `tour_id` is None); call inside a write transaction.

    Raises:
        StoreError: no tour is active, or the tour named has already ended.
        NotFoundError: `tour_id` is unknown.
    """
    if tour_id is None:
        tour = active_tour(db)
        if tour is None:
            raise StoreError("no tour is active, so there is none to stop")
    else:
        tour = get_tour(db, tour_id)
        if not tour.active:
            raise StoreError(f"tour {tour.name!r} ({tour.tour_id[:8]}) already ended at {iso_utc(tour.ended_on)}")
    ended_on = max(utc_now(), tour.started_on)
    db.execute("UPDATE tour SET ended_on = ? WHERE tour_id = ?", [iso_utc(ended_on), tour.tour_id])
    return Tour(tour.tour_id, tour.name, tour.guide, tour.started_on, parse_iso_utc(iso_utc(ended_on)))

"""Tours: a guided walk on the trail, the unit a guide's species count is reported over.

Only one tour is active at a time. The rule is enforced twice: `start_tour` names the
active tour in its error, and a partial unique index (`tour_single_active`) makes the
database itself refuse a second one, even when two processes start tours at once.

Each start and each stop queues the tour's message (device/contracts/tour.py) in the same
transaction, so the server hears of every tour a device walks: its name, guide, start, end
and place. The device's identity and place come from its `[device]` settings, recorded on the
row at the start (the stop's message says what the start's said). A tour started without them
(`device` None: a store opened without settings, or a release before tours were reported) is
reported at its stop, when that store knows its device.
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import replace

import sqlite_utils

from device.contracts.tour import delivery_id, tour_to_json, tour_to_payload, tour_topic
from device.domain import Tour, iso_utc, parse_iso_utc, utc_now
from device.store.database import NotFoundError, StoreError, TourActiveError
from device.store.outbox import enqueue

__all__ = ["MAX_NAME_CHARS", "Tour", "active_tour", "get_tour", "list_tours", "resolve_tour_id", "row_to_tour",
           "start_tour", "stop_tour"]

MAX_NAME_CHARS = 200
"""Tour and guide names are typed by people on a small screen; anything longer is a mistake."""


def row_to_tour(row: dict) -> Tour:
    return Tour(
        tour_id=row["tour_id"],
        name=row["name"],
        guide=row["guide"],
        started_on=parse_iso_utc(row["started_on"]),
        ended_on=parse_iso_utc(row["ended_on"]) if row["ended_on"] else None,
        device_id=row.get("device_id"),
        site=row.get("site"),
        latitude=row.get("latitude"),
        longitude=row.get("longitude"),
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


def start_tour(db: sqlite_utils.Database, name: str | None = None, guide: str | None = None, device=None) -> Tour:
    """Insert a new active tour and queue its message (call inside a write transaction).

    Args:
        device: the device's `[device]` settings (`device.config.DeviceSettings`): its id and
            place, recorded on the tour and sent with it. None: the tour is recorded, and
            reported at its stop if that store knows its device.

    Raises:
        TourActiveError: another tour is active; the message names it.
        ValueError: a name or guide too long, or a device the tour message cannot carry
            (nothing is stored or queued).
    """
    name = _clean_name(name, "name")
    guide = _clean_name(guide, "guide")
    current = active_tour(db)
    if current is not None:
        raise _active_error(current)
    now = parse_iso_utc(iso_utc(utc_now()))  # what the row will hold (millisecond precision)
    tour = _placed(Tour(
        tour_id=str(uuid.uuid4()),
        name=name or f"Tour {now:%Y-%m-%d %H:%M} UTC",
        guide=guide,
        started_on=now,
        ended_on=None,
    ), device)
    message = tour_to_json(tour_to_payload(tour)) if tour.device_id is not None else None  # checked before writing
    try:
        db.execute(
            """INSERT INTO tour (tour_id, name, guide, started_on, ended_on, device_id, site, latitude, longitude)
               VALUES (?, ?, ?, ?, NULL, ?, ?, ?, ?)""",
            [tour.tour_id, tour.name, tour.guide, iso_utc(tour.started_on), tour.device_id, tour.site,
             tour.latitude, tour.longitude],
        )
    except sqlite3.IntegrityError as exc:
        if "tour_single_active" in str(exc):
            other = active_tour(db)
            if other is not None:
                raise _active_error(other) from None
        raise
    if message is not None:
        _queue(db, tour, message)
    return tour


def _placed(tour: Tour, device) -> Tour:
    """The tour with the device's id and place (`[device]` settings), or unchanged without them."""
    if device is None:
        return tour
    placed = device.latitude is not None and device.longitude is not None
    return replace(tour, device_id=device.id, site=(device.site or "").strip() or None,
                   latitude=device.latitude if placed else None, longitude=device.longitude if placed else None)


def _queue(db: sqlite_utils.Database, tour: Tour, message: str) -> None:
    enqueue(db, tour_topic(tour.device_id), message, kind="tour",
            record_id=delivery_id(tour.tour_id, iso_utc(tour.ended_on) if tour.ended_on is not None else None))


def _active_error(current: Tour) -> TourActiveError:
    return TourActiveError(
        f"tour {current.name!r} ({current.tour_id[:8]}) is still active since "
        f"{iso_utc(current.started_on)}; stop it first (explorer tour stop)",
        current.tour_id,
    )


def stop_tour(db: sqlite_utils.Database, tour_id: str | None = None, device=None) -> Tour:
    """End a tour (the active one when `tour_id` is None) and queue its message; call inside a
    write transaction.

    Args:
        device: the device's `[device]` settings, used only for a tour started without them
            (it is recorded on the tour and reported now); a tour that has them keeps its own.

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
    ended_on = parse_iso_utc(iso_utc(max(utc_now(), tour.started_on)))
    stopped = replace(tour if tour.device_id is not None else _placed(tour, device), ended_on=ended_on)
    message = tour_to_json(tour_to_payload(stopped)) if stopped.device_id is not None else None
    db.execute(
        "UPDATE tour SET ended_on = ?, device_id = ?, site = ?, latitude = ?, longitude = ? WHERE tour_id = ?",
        [iso_utc(ended_on), stopped.device_id, stopped.site, stopped.latitude, stopped.longitude, tour.tour_id],
    )
    if message is not None:
        _queue(db, stopped, message)
    return stopped

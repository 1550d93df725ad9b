"""What the researchers read at a glance: tours and their summaries, the Species Spotting Rate,
each device's state and lag, species per day, species accumulation curves.

The definitions are the device's (device/store/summary.py), so a tour summarised on the trail
and on the server agree:

- what counts: every detection, primary or secondary, EXCEPT those whose latest verdict is
  'reject' (the guide said the species was not there). Those are reported as `rejected_count`,
  never counted as heard;
- Species Spotting Rate (SSR) over a set of tours: the mean of each tour's unique species;
  `unique_species` beside it counts a species once across all of them;
- a tour's duration: from its start to its end, or to now while it is under way.

Detections are selected with the API's filter (sync_server/db/queries.py `selection`), so a
filter means the same in a list, a chart and an export. Days are UTC days unless an offset is
given (the reserve is at UTC-5: a night's frogs fall on one local day, two UTC ones).
Everything is SQLAlchemy Core, both engines; aggregation is in Python over the few columns
needed (one pass, no per-engine date functions).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, select

from device.domain import iso_utc, parse_iso_utc, utc_now
from sync_server.db.queries import DetectionFilter, selection
from sync_server.db.schema import detection, tour

ACCUMULATION_BY = ("site", "tour")
NO_SITE = "(no site)"
"""How a curve of detections from devices that sent no site is named (detection schema 1)."""


class NotFound(LookupError):
    """An id names nothing the server holds; the message says which."""


def _rows(store, filter: DetectionFilter) -> list[dict[str, Any]]:
    """The filter's detections as the few fields a summary needs, in seq order."""
    query = selection(filter)
    picked = query.selected_columns
    query = query.with_only_columns(
        picked.detection_id, picked.device_id, picked.tour_id, picked.tour_name, picked.site, picked.label,
        picked.scientific_name, picked.common_name, picked.class_name, picked.started_on, picked.ended_on,
        picked.verdict, maintain_column_froms=False)
    with store._reading("could not read the detections to summarise") as connection:
        return [dict(row) for row in connection.execute(query).mappings()]


def _kept(rows: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The rows a summary counts, and how many it leaves out as rejected."""
    rows = list(rows)
    kept = [row for row in rows if row["verdict"] != "reject"]
    return kept, len(rows) - len(kept)


def _names(row: dict[str, Any]) -> dict[str, Any]:
    return {"label": row["label"], "scientific_name": row["scientific_name"], "common_name": row["common_name"],
            "class_name": row["class_name"]}


def _species(rows: Sequence[dict[str, Any]], group: str | None = None) -> list[dict[str, Any]]:
    """Per label: names (of its newest detection), detections, first and last heard; most detected
    first. With `group` (a row field), also in how many groups it was heard."""
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    tallies = []
    for label, heard in by_label.items():
        newest = max(heard, key=lambda r: r["started_on"])
        tally = dict(_names(newest), detection_count=len(heard), first_heard_on=min(r["started_on"] for r in heard),
                     last_heard_on=max(r["ended_on"] for r in heard))
        if group is not None:
            tally[f"{group}_count"] = len({r[group] for r in heard})
        tallies.append(tally)
    return sorted(tallies, key=lambda t: (-t["detection_count"], t["label"]))


def _tour_rows(store, tour_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    query = select(tour).order_by(tour.c.started_on, tour.c.tour_id)
    if tour_ids is not None:
        query = query.where(tour.c.tour_id.in_(list(tour_ids)))
    with store._reading("could not read the tours") as connection:
        return [dict(row) for row in connection.execute(query).mappings()]


def _duration_s(started_on: str | None, ended_on: str | None, now: datetime) -> float:
    if started_on is None:
        return 0.0
    end = parse_iso_utc(ended_on) if ended_on else now
    return max(0.0, (end - parse_iso_utc(started_on)).total_seconds())


def _tour_stats(info: dict[str, Any], rows: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    """One tour as the API lists it: what the device reported, and what its detections add up to."""
    kept, rejected = _kept(rows)
    return {
        "tour_id": info["tour_id"], "device_id": info["device_id"], "name": info.get("name"),
        "guide": info.get("guide"), "started_on": info.get("started_on"), "ended_on": info.get("ended_on"),
        "active": info.get("started_on") is not None and info.get("ended_on") is None,
        "site": info.get("site"), "latitude": info.get("latitude"), "longitude": info.get("longitude"),
        "reported": info.get("reported", True),
        "unique_species": len({row["label"] for row in kept}), "detection_count": len(kept),
        "rejected_count": rejected,
        "first_heard_on": min((r["started_on"] for r in kept), default=None),
        "last_heard_on": max((r["ended_on"] for r in kept), default=None),
        "duration_s": _duration_s(info.get("started_on"), info.get("ended_on"), now),
    }


def _unreported(tour_id: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A tour known only from its detections (its tour message not arrived yet: no order
    between the two): its device and site from them, no name, no start."""
    return {"tour_id": tour_id, "device_id": rows[0]["device_id"], "name": None, "site": rows[0]["site"],
            "reported": False}


def tours(store, device_id: str | None = None, site: str | None = None, start: datetime | None = None,
          end: datetime | None = None, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every tour (those that started in [start, end), of a device, at a site), oldest first,
    each with its summary; tours named by detections but not yet reported come last."""
    now = now or utc_now()
    by_tour: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in _rows(store, DetectionFilter(device_id=device_id)):
        if row["tour_id"] is not None:
            by_tour[row["tour_id"]].append(row)
    listed = []
    reported = _tour_rows(store)
    known = {info["tour_id"] for info in reported}
    infos = reported + [_unreported(tour_id, rows) for tour_id, rows in by_tour.items() if tour_id not in known]
    for info in infos:
        first = info.get("started_on") or min((r["started_on"] for r in by_tour[info["tour_id"]]), default=None)
        if device_id is not None and info["device_id"] != device_id:
            continue
        if site is not None and info.get("site") != site:
            continue
        if start is not None and (first is None or first < iso_utc(start)):
            continue
        if end is not None and (first is None or first >= iso_utc(end)):
            continue
        listed.append(_tour_stats(info, by_tour[info["tour_id"]], now))
    return listed


def tour_summary(store, tour_ids: Sequence[str], now: datetime | None = None) -> dict[str, Any]:
    """The summary of a set of tours, with its Species Spotting Rate (see the module docstring):
    the same fields as the device's `explorer tour summary --json`.

    Raises:
        ValueError: no tour given (the rate is a mean over tours).
        NotFound: an id names no tour the server knows (reported or named by a detection).
    """
    ids = list(dict.fromkeys(tour_ids))
    if not ids:
        raise ValueError("tour_id: give at least one tour (the spotting rate is a mean over tours)")
    now = now or utc_now()
    infos = {info["tour_id"]: info for info in _tour_rows(store, ids)}
    by_tour: dict[str, list[dict[str, Any]]] = {tour_id: [] for tour_id in ids}
    for tour_id in ids:
        by_tour[tour_id] = _rows(store, DetectionFilter(tour_id=tour_id))
    missing = [tour_id for tour_id in ids if tour_id not in infos and not by_tour[tour_id]]
    if missing:
        raise NotFound(f"tour_id: {', '.join(missing)}: no such tour on this server")
    stats = [_tour_stats(infos.get(tour_id) or _unreported(tour_id, by_tour[tour_id]), by_tour[tour_id], now)
             for tour_id in ids]
    kept, rejected = _kept(row for tour_id in ids for row in by_tour[tour_id])
    species = _species(kept, group="tour_id")
    for tally in species:
        tally["tour_count"] = tally.pop("tour_id_count")
    return {
        "tour_count": len(ids),
        "unique_species": len(species),
        "species_spotting_rate": sum(s["unique_species"] for s in stats) / len(stats),
        "detection_count": len(kept),
        "rejected_count": rejected,
        "duration_s": sum(s["duration_s"] for s in stats),
        "first_heard_on": min((t["first_heard_on"] for t in species), default=None),
        "last_heard_on": max((t["last_heard_on"] for t in species), default=None),
        "tours": stats,
        "species": species,
    }


def devices(store, now: datetime | None = None) -> list[dict[str, Any]]:
    """Each device the server has heard of (by a status or a detection), by id: its latest
    status, how many detections it sent, its newest one, and its lag: now minus that newest
    detection's start (what the server is behind that device by; None before any)."""
    now = now or utc_now()
    query = (select(detection.c.device_id, func.count(), func.max(detection.c.started_on))
             .group_by(detection.c.device_id))
    with store._reading("could not read the devices' detections") as connection:
        counted = {device_id: (count, newest) for device_id, count, newest in connection.execute(query).all()}
    statuses = store.statuses()
    listed = []
    for device_id in sorted(set(counted) | set(statuses)):
        count, newest = counted.get(device_id, (0, None))
        entry: dict[str, Any] = {
            "device_id": device_id, "detection_count": count, "newest_detection_on": newest,
            "lag_s": None if newest is None else (now - parse_iso_utc(newest)).total_seconds(),
            "online": None, "published_on": None, "status_received_on": None, "release": None,
            "bundle_name": None, "bundle_version": None, "outbox_pending": None, "outbox_unconfirmed": None,
            "rtf": None, "windows_dropped": None, "battery_percent": None, "clip_disk_free_bytes": None,
        }
        if device_id in statuses:
            status, received = statuses[device_id]
            entry.update(online=status.online, published_on=iso_utc(status.published_on),
                         status_received_on=iso_utc(received), release=status.release,
                         bundle_name=status.bundle_name, bundle_version=status.bundle_version,
                         outbox_pending=status.outbox_pending, outbox_unconfirmed=status.outbox_unconfirmed,
                         rtf=status.rtf, windows_dropped=status.windows_dropped,
                         battery_percent=status.battery_percent, clip_disk_free_bytes=status.clip_disk_free_bytes)
        listed.append(entry)
    return listed


def _day(started_on: str, offset: timedelta) -> str:
    return (parse_iso_utc(started_on) + offset).strftime("%Y-%m-%d")


def species_per_day(store, filter: DetectionFilter = DetectionFilter(),
                    utc_offset_minutes: int = 0) -> list[dict[str, Any]]:
    """Per day (UTC, or shifted by `utc_offset_minutes`), oldest first: the species heard, how
    many, and the detections counted and left out as rejected. Days with nothing are absent."""
    offset = timedelta(minutes=utc_offset_minutes)
    by_day: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in _rows(store, filter):
        by_day[_day(row["started_on"], offset)].append(row)
    days = []
    for day in sorted(by_day):
        kept, rejected = _kept(by_day[day])
        species = [{k: t[k] for k in ("label", "scientific_name", "common_name", "class_name", "detection_count")}
                   for t in _species(kept)]
        days.append({"day": day, "species_count": len(species), "detection_count": len(kept),
                     "rejected_count": rejected, "species": species})
    return days


def species_accumulation(store, by: str, filter: DetectionFilter = DetectionFilter(),
                         utc_offset_minutes: int = 0) -> list[dict[str, Any]]:
    """Species accumulation curves: cumulative unique species per site by day, or per tour by
    detection time (a point at each detection that adds a species).

    Each curve: {by, key (the site or tour id), name, species (its final count), detection_count,
    points: [{on (ISO instant: the day's start for sites), species (so far), new (labels)}]}.
    Sites first by name (no site last); tours by their first detection.

    Raises:
        ValueError: `by` is neither 'site' nor 'tour'.
    """
    if by not in ACCUMULATION_BY:
        raise ValueError(f"by: {by!r} is not one of {', '.join(ACCUMULATION_BY)}")
    kept, _ = _kept(_rows(store, filter))
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for row in kept:
        if by == "site":
            groups[row["site"]].append(row)
        elif row["tour_id"] is not None:
            groups[row["tour_id"]].append(row)
    offset = timedelta(minutes=utc_offset_minutes)
    curves = []
    for key, rows in groups.items():
        rows.sort(key=lambda r: (r["started_on"], r["detection_id"]))
        seen: set[str] = set()
        points: list[dict[str, Any]] = []
        for row in rows:
            if row["label"] in seen:
                continue
            seen.add(row["label"])
            if by == "site":
                day = _day(row["started_on"], offset)
                on = iso_utc(datetime.fromisoformat(day).replace(tzinfo=timezone.utc) - offset)
            else:
                on = row["started_on"]
            if points and points[-1]["on"] == on:
                points[-1]["species"] += 1
                points[-1]["new"].append(row["label"])
            else:
                points.append({"on": on, "species": len(seen), "new": [row["label"]]})
        name = (key or NO_SITE) if by == "site" else (rows[0]["tour_name"] or key)
        curves.append({"by": by, "key": key, "name": name, "species": len(seen), "detection_count": len(rows),
                       "points": points})
    if by == "site":
        curves.sort(key=lambda c: (c["key"] is None, c["key"] or ""))
    else:
        curves.sort(key=lambda c: (c["points"][0]["on"], c["key"]))
    return curves

"""Reading detections for researchers: one filter, one row shape, one pagination key.

The API's detection list, every export and the dashboard read through here, so a filter means
the same everywhere and a row has the same fields in JSON, CSV, Parquet, Raven and Darwin Core.

The row (`detection_rows`) joins a detection with what researchers need beside it: its tour's
name, the guide's latest verdict (by `given_on`; a later verdict replaces an earlier one, as on
the device) and the clip the server holds for it, if any. `verification_status` names the
verdict as researchers filter on it: unreviewed, confirmed, rejected.

Pagination is by `detection.seq`, a number the ingest gives each detection at its first commit
and never changes (sync_server/db/store.py): new detections always get a larger one, whatever
their recording time (a device back from a week off the network sends old detections). A client
that pages with `after_seq` while the ingest runs therefore sees every row that existed when it
started exactly once, and the new ones after them; paging by recording time would miss a late
backlog that lands behind its cursor.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Select, and_, func, or_, select

from device.domain import iso_utc
from sync_server.db.schema import clip, detection, feedback, tour

STATUSES = {"unreviewed": None, "confirmed": "confirm", "rejected": "reject"}
"""verification_status -> the latest verdict it stands for (None: no verdict)."""
CLIP_URL = "/api/v1/clips/{clip_id}"
EXPORT_BATCH = 5_000
"""Rows read per query while exporting: bounded memory, few round trips."""


@dataclass(frozen=True)
class DetectionFilter:
    """What a researcher selects; every field None/empty means 'any'. Conditions combine with AND;
    several species combine with OR."""

    start: datetime | None = None
    """Detections that started at or after this instant."""
    end: datetime | None = None
    """...and before this one."""
    species: tuple[str, ...] = ()
    """Labels (exact) or scientific names (case-insensitive)."""
    class_name: str | None = None
    device_id: str | None = None
    tour_id: str | None = None
    site: str | None = None
    min_confidence: float | None = None
    bundle_name: str | None = None
    bundle_version: str | None = None
    status: str | None = None
    """unreviewed, confirmed or rejected (the guide's latest verdict)."""

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise ValueError(f"status: {self.status!r} is not one of {', '.join(STATUSES)}")
        if self.min_confidence is not None and not 0 <= self.min_confidence <= 1:
            raise ValueError(f"min_confidence: {self.min_confidence} is not between 0 and 1")
        if self.start and self.end and self.end <= self.start:
            raise ValueError(f"end: {iso_utc(self.end)} is not after start {iso_utc(self.start)}")
        object.__setattr__(self, "species", tuple(self.species))

    def as_params(self) -> dict[str, Any]:
        """The filter as query parameters (what a next-page link or an export link carries)."""
        params: dict[str, Any] = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value in (None, ()):
                continue
            params[spec.name] = iso_utc(value) if isinstance(value, datetime) else value
        return params


def _latest_verdicts():
    """detection_id -> its latest verdict and when it was given, as a subquery."""
    ranked = select(
        feedback.c.detection_id, feedback.c.verdict, feedback.c.given_on,
        func.row_number().over(partition_by=feedback.c.detection_id,
                               order_by=(feedback.c.given_on.desc(), feedback.c.feedback_id.desc())).label("rank"),
    ).subquery("ranked_verdicts")
    return (select(ranked.c.detection_id, ranked.c.verdict, ranked.c.given_on)
            .where(ranked.c.rank == 1).subquery("latest_verdict"))


def _one_clip():
    """detection_id -> the first clip the server received for it, as a subquery."""
    ranked = select(
        *clip.c,
        func.row_number().over(partition_by=clip.c.detection_id,
                               order_by=(clip.c.received_on, clip.c.clip_id)).label("rank"),
    ).subquery("ranked_clips")
    return select(*[ranked.c[c.name] for c in clip.c]).where(ranked.c.rank == 1).subquery("one_clip")


def selection(filter: DetectionFilter) -> Select:
    """The SELECT of every row the filter matches, in seq order (no limit)."""
    verdict, held, tours = _latest_verdicts(), _one_clip(), tour
    query = (
        select(
            detection,
            tours.c.name.label("tour_name"),
            verdict.c.verdict.label("verdict"), verdict.c.given_on.label("verdict_on"),
            held.c.clip_id.label("clip_id"), held.c.sha256.label("clip_sha256"),
            held.c.size_bytes.label("clip_size_bytes"), held.c.sample_rate_hz.label("clip_sample_rate_hz"),
            held.c.duration_s.label("clip_duration_s"), held.c.start_s.label("clip_start_s"),
            held.c.path.label("clip_path"),
        )
        .select_from(detection
                     .outerjoin(tours, tours.c.tour_id == detection.c.tour_id)
                     .outerjoin(verdict, verdict.c.detection_id == detection.c.detection_id)
                     .outerjoin(held, held.c.detection_id == detection.c.detection_id))
        .order_by(detection.c.seq)
    )
    conditions = []
    if filter.start is not None:
        conditions.append(detection.c.started_on >= iso_utc(filter.start))
    if filter.end is not None:
        conditions.append(detection.c.started_on < iso_utc(filter.end))
    if filter.species:
        names = [name.lower() for name in filter.species]
        conditions.append(or_(detection.c.label.in_(filter.species), func.lower(detection.c.scientific_name).in_(names)))
    for column in ("class_name", "device_id", "tour_id", "site", "bundle_name", "bundle_version"):
        value = getattr(filter, column)
        if value is not None:
            conditions.append(detection.c[column] == value)
    if filter.min_confidence is not None:
        conditions.append(detection.c.confidence >= filter.min_confidence)
    if filter.status is not None:
        wanted = STATUSES[filter.status]
        conditions.append(verdict.c.verdict.is_(None) if wanted is None else verdict.c.verdict == wanted)
    return query.where(and_(*conditions)) if conditions else query


def detection_rows(store, filter: DetectionFilter = DetectionFilter(), after_seq: int | None = None,
                   limit: int | None = None) -> list[dict[str, Any]]:
    """The rows the filter matches with seq above `after_seq`, in seq order, at most `limit`."""
    query = selection(filter)
    if after_seq is not None:
        query = query.where(detection.c.seq > after_seq)
    if limit is not None:
        query = query.limit(limit)
    with store._reading("could not read the detections") as connection:
        return [to_row(row) for row in connection.execute(query).mappings()]


def iter_detection_rows(store, filter: DetectionFilter = DetectionFilter(),
                        batch: int = EXPORT_BATCH) -> Iterator[dict[str, Any]]:
    """Every row the filter matches, in seq order, read `batch` at a time (an export of a
    million rows holds one batch in memory, and never a transaction open between batches)."""
    after = None
    while True:
        rows = detection_rows(store, filter, after, batch)
        yield from rows
        if len(rows) < batch:
            return
        after = rows[-1]["seq"]


def detection_row(store, detection_id: str) -> dict[str, Any] | None:
    """One detection's row, or None when the server does not hold it."""
    query = selection(DetectionFilter()).where(detection.c.detection_id == detection_id)
    with store._reading("could not read the detection") as connection:
        found = connection.execute(query).mappings().first()
    return None if found is None else to_row(found)


def clip_file(store, clip_id: str) -> tuple[Path, dict[str, Any]] | None:
    """Where the server keeps a clip, and its row; None when it holds no such clip."""
    with store._reading("could not read the clip") as connection:
        found = connection.execute(select(clip).where(clip.c.clip_id == clip_id)).mappings().first()
    return None if found is None else (Path(found["path"]), dict(found))


def to_row(found) -> dict[str, Any]:
    """A result mapping as the documented row (see notes in the module docstring)."""
    verdict = found["verdict"]
    status = next(name for name, value in STATUSES.items() if value == verdict)
    held = None
    if found["clip_id"] is not None:
        held = {"clip_id": found["clip_id"], "url": CLIP_URL.format(clip_id=found["clip_id"]),
                "sha256": found["clip_sha256"], "size_bytes": found["clip_size_bytes"],
                "sample_rate_hz": found["clip_sample_rate_hz"], "duration_s": found["clip_duration_s"],
                "start_s": found["clip_start_s"], "path": found["clip_path"]}
    return {
        "detection_id": found["detection_id"], "seq": found["seq"], "device_id": found["device_id"],
        "tour_id": found["tour_id"], "tour_name": found["tour_name"], "site": found["site"],
        "latitude": found["latitude"], "longitude": found["longitude"],
        "coordinate_uncertainty_m": found["coordinate_uncertainty_m"],
        "label": found["label"], "scientific_name": found["scientific_name"], "common_name": found["common_name"],
        "class_name": found["class_name"], "started_on": found["started_on"], "ended_on": found["ended_on"],
        "start_s": found["start_s"], "end_s": found["end_s"], "source": found["source"],
        "confidence": found["confidence"], "branch_scores": json.loads(found["branch_scores"]),
        "bundle_name": found["bundle_name"], "bundle_version": found["bundle_version"],
        "bundle_sha256": found["bundle_sha256"], "window_count": found["window_count"],
        "secondary": bool(found["secondary"]), "verdict": verdict, "verdict_on": found["verdict_on"],
        "verification_status": status, "clip": held, "received_on": found["first_received_on"],
    }

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

from sqlalchemy import Select, and_, exists, func, or_, select

from device.domain import iso_utc
from sync_server.db.schema import clip, detection, feedback, tour

STATUSES = {"unreviewed": None, "confirmed": "confirm", "rejected": "reject"}
"""verification_status -> the latest verdict it stands for (None: no verdict)."""
CLIP_URL = "/api/v1/clips/{clip_id}"
EXPORT_BATCH = 5_000
"""Rows read per query while exporting: bounded memory, few round trips."""
ROW_COLUMNS = (
    "detection_id", "seq", "device_id", "tour_id", "tour_name", "site", "latitude", "longitude",
    "coordinate_uncertainty_m", "label", "scientific_name", "common_name", "class_name", "started_on", "ended_on",
    "start_s", "end_s", "source", "confidence", "branch_scores", "context_scores", "clip_withheld", "bundle_name",
    "bundle_version", "bundle_sha256", "window_count", "secondary", "verdict", "verdict_on",
)
"""The row's fields read straight from a column (all but verification_status, clip and
received_on), in the row's order: `selection` selects them first, in this order."""
CLIP_COLUMNS = ("clip_id", "sha256", "size_bytes", "sample_rate_hz", "duration_s", "start_s", "path")
"""The clip's columns `selection` selects after `first_received_on`, in the row's clip order."""
_RECEIVED_AT = len(ROW_COLUMNS)
_CLIP_AT = _RECEIVED_AT + 1
_STATUS_OF = {verdict: status for status, verdict in STATUSES.items()}


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


def _latest_verdict(of, column=feedback.c.feedback_id):
    """A column (the id by default) of the guide's latest verdict on the detection row `of` (a
    table or subquery with a detection_id column): by given_on, then feedback_id, as the device orders them (a later
    verdict replaces an earlier one). A correlated `ORDER BY .. LIMIT 1`: one search of the
    `feedback_detection` index per detection read.

    Not a window function: `row_number()` over the feedback table ranks every verdict the
    server holds for every page read, so an export in pages paid (rows / page) x all of
    feedback (and PostgreSQL, planning it as a hash join, sorted every remaining row per page)."""
    return (select(column)
            .where(feedback.c.detection_id == of.c.detection_id)
            .order_by(feedback.c.given_on.desc(), feedback.c.feedback_id.desc())
            .limit(1).correlate(of).scalar_subquery())


def _first_clip_id(of):
    """The id of the first clip the server received for the detection row `of` (by received_on,
    then clip_id); correlated for the reason `_latest_verdict` gives."""
    return (select(clip.c.clip_id)
            .where(clip.c.detection_id == of.c.detection_id)
            .order_by(clip.c.received_on, clip.c.clip_id)
            .limit(1).correlate(of).scalar_subquery())


def _conditions(filter: DetectionFilter) -> list:
    """The filter as conditions on the detection table alone (the status one through the latest
    verdict's correlated subquery), so a page can be cut before anything is joined to it."""
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
        if wanted is None:  # no verdict at all (a stored verdict is never NULL)
            conditions.append(~exists().where(feedback.c.detection_id == detection.c.detection_id))
        else:
            latest = _latest_verdict(detection, feedback.c.verdict)
            # one index search per detection scanned: linear in the detections, page after page
            # (a semi-join on `feedback` first would re-read every such verdict for each page)
            conditions.append(latest == wanted)
    return conditions


def selection(filter: DetectionFilter, *, after_seq: int | None = None, limit: int | None = None,
              detection_id: str | None = None) -> Select:
    """The SELECT of the rows the filter matches, in seq order: those with seq above
    `after_seq`, at most `limit` (None: all), only `detection_id` if given.

    The page is cut from the detection table first (filter, seq, limit, on its `detection_seq`
    index) and only its rows are joined to their tour, latest verdict and clip: the cost of a
    page is the page's, however many rows come after it (PostgreSQL otherwise joins every
    remaining row and sorts them to keep `limit`). Its columns are the row's, in the row's
    order (`ROW_COLUMNS`, then `first_received_on` and the clip's, `CLIP_COLUMNS`), so `to_row`
    reads them by position."""
    conditions = _conditions(filter)
    if after_seq is not None:
        conditions.append(detection.c.seq > after_seq)
    if detection_id is not None:
        conditions.append(detection.c.detection_id == detection_id)
    own = [detection.c[name] for name in ROW_COLUMNS if name in detection.c] + [detection.c.first_received_on]
    page = select(*own).where(*conditions).order_by(detection.c.seq)
    page = (page if limit is None else page.limit(limit)).subquery("page")
    verdict, held = feedback.alias("latest_verdict"), clip.alias("one_clip")
    named = {"tour_name": tour.c.name, "verdict": verdict.c.verdict, "verdict_on": verdict.c.given_on}
    return (
        select(
            *[named[name].label(name) if name in named else page.c[name] for name in ROW_COLUMNS],
            page.c.first_received_on,
            *[held.c[name].label(name if name == "clip_id" else f"clip_{name}") for name in CLIP_COLUMNS],
        )
        .select_from(page
                     .outerjoin(tour, tour.c.tour_id == page.c.tour_id)
                     .outerjoin(verdict, and_(verdict.c.detection_id == page.c.detection_id,
                                              verdict.c.feedback_id == _latest_verdict(page)))
                     .outerjoin(held, and_(held.c.detection_id == page.c.detection_id,
                                           held.c.clip_id == _first_clip_id(page))))
        .order_by(page.c.seq)
    )


def detection_rows(store, filter: DetectionFilter = DetectionFilter(), after_seq: int | None = None,
                   limit: int | None = None) -> list[dict[str, Any]]:
    """The rows the filter matches with seq above `after_seq`, in seq order, at most `limit`."""
    query = selection(filter, after_seq=after_seq, limit=limit)
    with store._reading("could not read the detections") as connection:
        return [to_row(row) for row in connection.execute(query)]


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
    query = selection(DetectionFilter(), detection_id=detection_id)
    with store._reading("could not read the detection") as connection:
        found = connection.execute(query).first()
    return None if found is None else to_row(found)


def clip_file(store, clip_id: str) -> tuple[Path, dict[str, Any]] | None:
    """Where the server keeps a clip, and its row; None when it holds no such clip."""
    with store._reading("could not read the clip") as connection:
        found = connection.execute(select(clip).where(clip.c.clip_id == clip_id)).mappings().first()
    return None if found is None else (Path(found["path"]), dict(found))


def to_row(found) -> dict[str, Any]:
    """A result row of `selection` (a tuple, its columns in `selection`'s order) as the
    documented row (the module docstring). Exports read every row through here: it builds the
    dict by position, with no per-field lookups by name."""
    row = dict(zip(ROW_COLUMNS, found))
    row["branch_scores"] = json.loads(row["branch_scores"])
    if row["context_scores"] is not None:
        row["context_scores"] = json.loads(row["context_scores"])
    row["secondary"] = bool(row["secondary"])
    row["verification_status"] = _STATUS_OF[row["verdict"]]
    clip_id = found[_CLIP_AT]
    if clip_id is None:
        row["clip"] = None
    else:
        sha256, size_bytes, sample_rate_hz, duration_s, start_s, path = found[_CLIP_AT + 1:_CLIP_AT + 7]
        row["clip"] = {"clip_id": clip_id, "url": CLIP_URL.format(clip_id=clip_id), "sha256": sha256,
                       "size_bytes": size_bytes, "sample_rate_hz": sample_rate_hz, "duration_s": duration_s,
                       "start_s": start_s, "path": path}
    row["received_on"] = found[_RECEIVED_AT]
    return row

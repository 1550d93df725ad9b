"""`/api/v1/detections` and `/api/v1/clips`: every detection, filtered and paged, and its clip.

Paging is by cursor, never by offset: the cursor is the last `seq` a page held, encoded so
clients treat it as opaque (sync_server/db/queries.py says why seq and not time: a client that
pages while the ingest runs sees every row once, new ones after). Filters are those of
`DetectionFilter`, with its names; a malformed value, or a combination it refuses (end not
after start), is a 422 whose `loc` names the parameter.

The row is queries.py's, less the clip's server path (`clip.url` is where to fetch it).
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel

from sync_server.api.spectrogram import SpectrogramError, spectrogram_png
from sync_server.db.queries import DetectionFilter, clip_file, detection_row, detection_rows

PAGE_DEFAULT = 100
PAGE_MAX = 1000
"""Rows per page at most: one page is one query, and a 1000-row JSON page is ~1 MB."""
SPECTROGRAM_CACHE = 128
"""Spectrograms kept in memory (by clip file and sha256): the dashboard's list shows a page of them."""
Status = Literal["unreviewed", "confirmed", "rejected"]


def _utc(moment: datetime | None) -> datetime | None:
    """A time without a zone is UTC, as every time the server stores."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=timezone.utc)


def query_error(name: str, message: str, kind: str = "value_error") -> HTTPException:
    """A 422 shaped as FastAPI's own validation errors, naming the query parameter."""
    return HTTPException(422, [{"loc": ["query", name], "msg": message, "type": kind}])


def detection_filter(
    start: Annotated[datetime | None, Query(description="Detections that started at or after this time "
                                                        "(ISO-8601; UTC when no zone is given).")] = None,
    end: Annotated[datetime | None, Query(description="...and before this time.")] = None,
    species: Annotated[list[str], Query(description="A label or scientific name; repeat for several "
                                                    "(any of them matches).")] = [],  # noqa: B006 (FastAPI copies it)
    class_name: Annotated[str | None, Query(description="Aves, Amphibia, Insecta, Mammalia.")] = None,
    device_id: Annotated[str | None, Query()] = None,
    tour_id: Annotated[str | None, Query()] = None,
    site: Annotated[str | None, Query()] = None,
    min_confidence: Annotated[float | None, Query(ge=0, le=1)] = None,
    bundle_name: Annotated[str | None, Query()] = None,
    bundle_version: Annotated[str | None, Query()] = None,
    status: Annotated[Status | None, Query(description="The guide's latest verdict.")] = None,
) -> DetectionFilter:
    """The request's DetectionFilter (a FastAPI dependency: every route that selects detections
    takes the same parameters)."""
    try:
        return DetectionFilter(start=_utc(start), end=_utc(end), species=tuple(species), class_name=class_name,
                               device_id=device_id, tour_id=tour_id, site=site, min_confidence=min_confidence,
                               bundle_name=bundle_name, bundle_version=bundle_version, status=status)
    except ValueError as exc:
        raise query_error(str(exc).split(":", 1)[0], str(exc)) from None


def encode_cursor(seq: int) -> str:
    """The cursor after `seq`: urlsafe base64 of its digits (the dashboard's links use the same)."""
    return base64.urlsafe_b64encode(str(seq).encode()).decode()


def decode_cursor(cursor: str) -> int:
    """The seq a cursor stands for. Raises a 422 naming `cursor` for anything this API did not give."""
    try:
        text = base64.urlsafe_b64decode(cursor.encode("ascii") + b"=" * (-len(cursor) % 4)).decode("ascii")
        if not text.isdigit():
            raise ValueError(text)
        return int(text)
    except (ValueError, UnicodeError, binascii.Error):
        raise query_error("cursor", f"cursor {cursor!r} is not one this API gave (pass next_cursor back as it is)") \
            from None


def public_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row as the API shows it: the clip without its server path."""
    if row.get("clip"):
        row = dict(row, clip={k: v for k, v in row["clip"].items() if k != "path"})
    return row


class Clip(BaseModel):
    clip_id: str
    url: str
    sha256: str
    size_bytes: int
    sample_rate_hz: int
    duration_s: float
    start_s: float


class Detection(BaseModel):
    """One detection as a researcher reads it (the same fields as every export)."""

    detection_id: str
    seq: int
    device_id: str
    tour_id: str | None
    tour_name: str | None
    site: str | None
    latitude: float | None
    longitude: float | None
    coordinate_uncertainty_m: float | None
    label: str
    scientific_name: str | None
    common_name: str | None
    class_name: str | None
    started_on: str
    ended_on: str
    start_s: float
    end_s: float
    source: str
    confidence: float
    branch_scores: dict[str, float | None]
    context_scores: dict[str, float] | None
    """BirdNET's non-species scores over the event ("Human vocal", "Engine", ...); null from a
    device older than payload schema 3."""
    clip_withheld: Literal["privacy"] | None
    """'privacy': the device kept no clip (a person was heard in or next to the event)."""
    bundle_name: str
    bundle_version: str
    bundle_sha256: str
    window_count: int
    secondary: bool
    verdict: Literal["confirm", "reject"] | None
    verdict_on: str | None
    verification_status: Status
    clip: Clip | None
    received_on: str


class DetectionPage(BaseModel):
    detections: list[Detection]
    next_cursor: str | None
    """Pass back as `cursor` for the next page; null when this page reached the newest row."""
    resume_cursor: str | None
    """Where to ask again later for rows committed after this page (the ingest runs on): the
    page's last row, or the cursor given when the page is empty; null only for an empty first page."""


@lru_cache(maxsize=SPECTROGRAM_CACHE)
def _spectrogram(path: Path, sha256: str) -> bytes:  # sha256: a clip replaced on disk is drawn anew
    return spectrogram_png(path)


def make_detections_router(store, dependencies: list | None = None) -> APIRouter:
    """The detection and clip routes over `store`, behind `dependencies` (the token check)."""
    router = APIRouter(prefix="/api/v1", dependencies=dependencies or [], tags=["detections"])

    @router.get("/detections", response_model=DetectionPage, summary="List detections")
    def list_detections(
        selection: Annotated[DetectionFilter, Depends(detection_filter)],
        limit: Annotated[int, Query(ge=1, le=PAGE_MAX, description="Rows per page.")] = PAGE_DEFAULT,
        cursor: Annotated[str | None, Query(description="next_cursor of the page before.")] = None,
    ) -> Response:
        """The detections the filters select, in the order the server first committed them, a
        page at a time. Paging on while the ingest runs gives every row once: rows committed
        later come after the cursor (follow `resume_cursor` once `next_cursor` is null)."""
        after = decode_cursor(cursor) if cursor is not None else None
        rows = detection_rows(store, selection, after_seq=after, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        last = encode_cursor(rows[-1]["seq"]) if rows else cursor
        return JSONResponse({"detections": [public_row(row) for row in rows],
                             "next_cursor": last if more else None, "resume_cursor": last})

    @router.get("/detections/{detection_id}", response_model=Detection, summary="One detection",
                responses={404: {"description": "No such detection"}})
    def one_detection(detection_id: str) -> Response:
        row = detection_row(store, detection_id)
        if row is None:
            raise HTTPException(404, f"detection {detection_id}: not held by this server")
        return JSONResponse(public_row(row))

    def held_clip(clip_id: str) -> tuple[Path, dict[str, Any]]:
        found = clip_file(store, clip_id)
        if found is None:
            raise HTTPException(404, f"clip {clip_id}: not held by this server")
        path, row = found
        if not path.is_file():
            raise HTTPException(404, f"clip {clip_id}: its file is missing on the server")
        return path, row

    @router.get("/clips/{clip_id}", response_class=FileResponse, summary="A clip's audio (FLAC)",
                responses={200: {"content": {"audio/flac": {}}}, 404: {"description": "No such clip"}})
    def clip_audio(clip_id: str) -> FileResponse:
        path, _ = held_clip(clip_id)
        return FileResponse(path, media_type="audio/flac", filename=f"{clip_id}.flac",
                            headers={"Cache-Control": "private, max-age=86400"})

    @router.get("/clips/{clip_id}/spectrogram.png", summary="A clip's spectrogram (PNG)",
                responses={200: {"content": {"image/png": {}}}, 404: {"description": "No such clip"}},
                response_class=Response)
    def clip_spectrogram(clip_id: str) -> Response:
        path, row = held_clip(clip_id)
        try:
            png = _spectrogram(path, row["sha256"])
        except SpectrogramError as exc:
            raise HTTPException(500, str(exc)) from None  # the server holds a clip it cannot read
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})

    return router

"""`/api/v1/tours`, `/api/v1/devices`, `/api/v1/species/...`: the summaries researchers chart.

Thin routes over sync_server/db/summaries.py (the definitions live there: what counts, the
Species Spotting Rate, lag); the species routes take the detection list's filters.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query

from sync_server.api.detections import _utc, detection_filter, query_error
from sync_server.db import summaries
from sync_server.db.queries import DetectionFilter

UTC_OFFSET_LIMIT_MIN = 14 * 60
"""The widest offset any time zone uses (UTC+14, Kiribati)."""
Offset = Annotated[int, Query(ge=-UTC_OFFSET_LIMIT_MIN, le=UTC_OFFSET_LIMIT_MIN,
                              description="Count days in this offset from UTC, in minutes (El Silencio: -300).")]


def make_summaries_router(store, dependencies: list | None = None,
                          now: Callable[[], datetime] | None = None) -> APIRouter:
    """The summary routes over `store`, behind `dependencies` (the token check); `now` is the
    clock for durations and lags (None: the current time)."""
    router = APIRouter(prefix="/api/v1", dependencies=dependencies or [], tags=["summaries"])

    def clock() -> datetime | None:
        return now() if now is not None else None

    @router.get("/tours", summary="Tours, each with its summary")
    def list_tours(
        device_id: Annotated[str | None, Query()] = None,
        site: Annotated[str | None, Query()] = None,
        start: Annotated[datetime | None, Query(description="Tours that started at or after this time.")] = None,
        end: Annotated[datetime | None, Query(description="...and before this time.")] = None,
    ) -> dict:
        start, end = _utc(start), _utc(end)
        if start is not None and end is not None and end <= start:
            raise query_error("end", f"end: {end.isoformat()} is not after start {start.isoformat()}")
        return {"tours": summaries.tours(store, device_id=device_id, site=site, start=start, end=end, now=clock())}

    @router.get("/tours/summary", summary="The summary and Species Spotting Rate of a set of tours",
                responses={404: {"description": "A tour id the server does not know"}})
    def summarise_tours(
        tour_id: Annotated[list[str], Query(min_length=1, description="A tour; repeat for several.")],
    ) -> dict:
        try:
            return summaries.tour_summary(store, tour_id, now=clock())
        except summaries.NotFound as exc:
            raise HTTPException(404, str(exc)) from None

    @router.get("/devices", summary="Each device's latest status, detections and lag")
    def list_devices() -> dict:
        return {"devices": summaries.devices(store, now=clock())}

    @router.get("/species/daily", summary="Species detected per day")
    def species_daily(selection: Annotated[DetectionFilter, Depends(detection_filter)],
                      utc_offset_minutes: Offset = 0) -> dict:
        return {"days": summaries.species_per_day(store, selection, utc_offset_minutes)}

    @router.get("/species/accumulation", summary="Species accumulation curves per site or per tour")
    def species_accumulation(selection: Annotated[DetectionFilter, Depends(detection_filter)],
                             by: Annotated[Literal["site", "tour"], Query(description="One curve per site (by "
                                           "day) or per tour (by detection time).")] = "site",
                             utc_offset_minutes: Offset = 0) -> dict:
        return {"by": by, "curves": summaries.species_accumulation(store, by, selection, utc_offset_minutes)}

    return router

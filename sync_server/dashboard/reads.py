"""What the dashboard reads, through the API's own functions, shaped for the pages.

No SQL here: detections come from sync_server/db/queries.py and everything aggregated from
sync_server/db/summaries.py, exactly as the API's routes call them. This module only turns a
page's query parameters into the same DetectionFilter and cursor the API builds, and the
summaries' results into the few fields a page draws.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from fastapi import HTTPException
from pydantic import TypeAdapter, ValidationError

from sync_server.api.detections import PAGE_MAX, decode_cursor, detection_filter, encode_cursor
from sync_server.db import queries, summaries

DEFAULT_LIMIT = 50
"""Rows per page: enough to scan a morning's detections, few enough that 50 <audio> and
spectrogram elements (preload none, lazy images) keep the page quick."""
PARSERS = {"start": TypeAdapter(datetime | None), "end": TypeAdapter(datetime | None),
           "min_confidence": TypeAdapter(float | None), "limit": TypeAdapter(int)}
"""Pydantic's parsers, the ones FastAPI applies to the API's query parameters: a value the API
takes, a page takes, and the other way round."""
TEXT_PARAMETERS = ("class_name", "device_id", "tour_id", "site", "bundle_name", "bundle_version", "status")


class FilterError(ValueError):
    """A query parameter the page cannot use; the message names it and says why."""


def _detail(exc: HTTPException) -> str:
    """The API's 422 ({loc: [query, name], msg}) as one line that names the parameter."""
    detail = exc.detail
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        name, message = detail[0].get("loc", ["", "?"])[-1], detail[0].get("msg", "")
        return message if message.startswith(f"{name}") else f"{name}: {message}"
    return str(detail)


def _parsed(name: str, text: str | None) -> Any:
    try:
        return PARSERS[name].validate_python(text)
    except ValidationError as exc:
        raise FilterError(f"{name}: {text!r}: {exc.errors()[0]['msg']}") from None


def parse_filter(params: Mapping[str, Any]) -> tuple[queries.DetectionFilter, int | None, int]:
    """A page's parameters (the API's names) as (filter, after_seq, limit), built by the API's
    own dependency (`sync_server.api.detections.detection_filter`) and cursor codec.

    Raises:
        FilterError: a value is malformed or out of range; the message names the parameter.
    """
    species = params.get("species") or ()
    values = {name: _parsed(name, params.get(name)) for name in ("start", "end", "min_confidence")}
    limit = _parsed("limit", params.get("limit") or DEFAULT_LIMIT)
    if not 1 <= limit <= PAGE_MAX:
        raise FilterError(f"limit: {limit} is not between 1 and {PAGE_MAX}")
    try:  # DetectionFilter checks ranges and names (status, min_confidence, end after start)
        selected = detection_filter(species=[species] if isinstance(species, str) else list(species),
                                    **values, **{name: params.get(name) for name in TEXT_PARAMETERS})
        after = decode_cursor(params["cursor"]) if params.get("cursor") else None
    except HTTPException as exc:
        raise FilterError(_detail(exc)) from None
    return selected, after, limit


class DashboardReads:
    """The reads behind each page, on one store."""

    def __init__(self, store, now: Callable[[], datetime] | None = None):
        self.store = store
        self.now = now

    def detections(self, params: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
        """One page of rows and the cursor of the next (None on the last page). One row more
        than the page is read, so a full last page shows no dead 'next' link."""
        selected, after, limit = parse_filter(params)
        rows = queries.detection_rows(self.store, selected, after_seq=after, limit=limit + 1)
        if len(rows) > limit:
            return rows[:limit], encode_cursor(rows[limit - 1]["seq"])
        return rows, None

    def species_per_day(self) -> list[dict[str, Any]]:
        return summaries.species_per_day(self.store, queries.DetectionFilter())

    def accumulation(self, by: str) -> list[dict[str, Any]]:
        return summaries.species_accumulation(self.store, by, queries.DetectionFilter())

    def devices(self) -> list[dict[str, Any]]:
        return summaries.devices(self.store) if self.now is None else summaries.devices(self.store, now=self.now())

    def tours(self) -> list[dict[str, Any]]:
        return summaries.tours(self.store)

"""`GET /api/v1/exports/{format}`: the detections a filter selects, as a file to download.

The filters are those of `GET /api/v1/detections`: the same dependency
(`sync_server.api.detections.detection_filter`), so the same names and validation (a bad value is
a 422 naming the parameter). The export is written to a temporary file by the same code as
`explorer-server export` (bounded memory), sent, then deleted; a client waits for the whole
file to be written before the first byte, which keeps a half-written file from ever looking
like a whole one. The response says how many detections it holds (`X-Explorer-Rows`) and what
was left out and why (`X-Explorer-Left-Out`, JSON).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from sync_server.api.detections import detection_filter
from sync_server.db.queries import DetectionFilter
from sync_server.export.eml import DatasetInfo
from sync_server.export.formats import FORMATS, ExportOptions, export

FormatName = Literal["csv", "parquet", "raven", "dwca", "labelled"]


def make_exports_router(store, dependencies: list | None = None, dataset: DatasetInfo | None = None) -> APIRouter:
    """The exports route over `store`, behind `dependencies` (the app's token check).

    Args:
        store: the ServerStore to read.
        dependencies: FastAPI dependencies every request must pass (e.g. the token check).
        dataset: what the Darwin Core Archive's EML says (title, licence, contact, models' terms).
    """
    router = APIRouter(dependencies=dependencies or [])
    info = dataset or DatasetInfo()

    @router.get("/api/v1/exports/{format}", summary="Export the selected detections as a file",
                response_class=FileResponse,
                responses={200: {"content": {fmt.media_type.split(";")[0]: {} for fmt in FORMATS.values()}}})
    def export_detections(
        format: FormatName,
        request: Request,
        selection: Annotated[DetectionFilter, Depends(detection_filter)],
        clips: Annotated[Literal["copy", "url", "none"], Query(
            description="dwca: the clips in the archive, linked on this server, or none.")] = "copy",
        include_rejected: Annotated[bool, Query(description="dwca: keep detections a guide rejected.")] = False,
    ) -> FileResponse:
        """The detections the filters select as CSV, Parquet, Raven selection tables (zip), a Darwin
        Core Archive (zip) or the guides' labelled clips (zip)."""
        spec = FORMATS[format]
        scratch = Path(tempfile.mkdtemp(prefix="explorer-export-"))
        out = scratch / f"detections{spec.suffix}"
        options = ExportOptions(base_url=str(request.base_url).rstrip("/"), dataset=info, clips=clips,
                                include_rejected=include_rejected)
        try:
            summary = export(store, format, selection, out, options)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return FileResponse(
            out, media_type=spec.media_type, filename=f"explorer-{stamp}{spec.suffix}",
            headers={"X-Explorer-Rows": str(summary.rows),
                     "X-Explorer-Left-Out": json.dumps({k: v for k, v in summary.left_out.items() if v})},
            background=BackgroundTask(shutil.rmtree, scratch, ignore_errors=True))

    return router

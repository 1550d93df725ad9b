"""`POST /api/v1/analyze`: a recording in, the BirdCLEF submission CSV or JSON detections out.

The body is read as a stream, not through FastAPI's form parsing, so the size limit holds
while the upload arrives: Starlette would spool a 10 GB body to disk before the route ran.
The part named `file` is written under a private temp folder, named as the client named it
(its stem makes the row ids, as `explorer analyze`'s do), analysed in a worker thread with
the device's own code (sync_server/analysis.py), and the folder is removed whatever happens.

Status codes: 404 an unknown `bundle`, 413 too large, 415 not a multipart upload, 422 no
`file` field or audio the device cannot use (the detail names the upload and the problem),
503 no bundle held or too many analyses in flight. Auth is the app's: pass its dependency.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal, Sequence

import anyio
from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from sync_server.analysis import Analyser, BadAudio, NoBundle, UnknownBundle, UploadTooLarge

FIELD = "file"
"""The multipart field that carries the recording."""

MULTIPART_OVERHEAD_BYTES = 64 * 1024
"""Room for the boundaries, part headers and small fields around the file in a body."""

MAX_NAME_CHARS = 200
"""File names are kept (they make the row ids) but bounded, below any file system's limit."""

_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")

ANALYZE_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": [FIELD],
        "properties": {FIELD: {"type": "string", "format": "binary",
                               "description": "The recording: WAV, FLAC, OGG or MP3 (any rate, any channels)."}},
    }}},
}
"""The request body as OpenAPI shows it (the route parses the stream itself, so FastAPI cannot infer it)."""

ANALYZE_RESPONSES = {
    200: {"content": {"text/csv": {}, "application/json": {}},
          "description": "format=csv: the BirdCLEF submission (row_id, one column per label). format=json: per "
                         "window the labels at or over their thresholds, and the bundle's name, version and sha256."},
    404: {"description": "No bundle of that name on this server."},
    413: {"description": "The upload is over the server's size limit."},
    415: {"description": "Not a multipart/form-data body."},
    422: {"description": "No `file` field, or audio the device cannot use (the detail says why)."},
    503: {"description": "No bundle installed, or too many analyses in flight (retry later)."},
}


def upload_name(raw: str | None) -> str:
    """The client's file name, reduced to a safe base name (no folders, no control characters)."""
    name = PureWindowsPath(PurePosixPath(raw or "").name).name
    name = _UNSAFE_NAME.sub("_", name).strip()
    if name in ("", ".", ".."):
        name = "upload"
    if len(name) > MAX_NAME_CHARS:
        suffix = Path(name).suffix[:16]
        name = name[: MAX_NAME_CHARS - len(suffix)] + suffix
    return name.lstrip(".") or "upload"


@dataclass
class Upload:
    path: Path
    name: str
    size: int


class _Receiver:
    """Feeds a multipart stream to python-multipart; the `file` part goes to disk, counted."""

    def __init__(self, folder: Path, limit: int):
        self.folder, self.limit = folder, limit
        self.upload: Upload | None = None
        self._handle = None
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._in_file = False

    def callbacks(self) -> dict:
        return {"on_part_begin": self._part_begin, "on_part_data": self._part_data, "on_part_end": self._part_end,
                "on_header_field": self._header_field, "on_header_value": self._header_value_cb,
                "on_header_end": self._header_end, "on_headers_finished": self._headers_finished}

    def _part_begin(self) -> None:
        self._disposition = b""
        self._in_file = False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name") == FIELD.encode() and self.upload is None:
            name = upload_name(options.get(b"filename", b"").decode("utf-8", "replace"))
            self.upload = Upload(self.folder / name, name, 0)
            self._handle = open(self.upload.path, "wb")
            self._in_file = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_file:
            return  # other fields are read past, never kept
        self.upload.size += end - start
        if self.upload.size > self.limit:
            raise UploadTooLarge(f"upload {self.upload.name!r} is over this server's limit of {self.limit} bytes")
        self._handle.write(data[start:end])

    def _part_end(self) -> None:
        if self._in_file:
            self._handle.close()
            self._handle = None
            self._in_file = False

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


async def receive_upload(request: Request, folder: Path, limit: int) -> Upload:
    """Stream the body into `folder`; returns the `file` part.

    Raises:
        HTTPException: 413 over `limit`, 415 not multipart, 422 no `file` part, 400 malformed.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise HTTPException(415, f"send the recording as multipart/form-data in the field {FIELD!r} "
                                 f"(got Content-Type {request.headers.get('content-type') or 'none'!r})")
    body_limit = limit + MULTIPART_OVERHEAD_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > body_limit:
        raise HTTPException(413, f"upload of {int(declared)} bytes is over this server's limit of {limit} bytes")
    receiver = _Receiver(folder, limit)
    parser = MultipartParser(params[b"boundary"], receiver.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:
                raise UploadTooLarge(f"upload is over this server's limit of {limit} bytes")
            parser.write(chunk)
        parser.finalize()
    except UploadTooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except FormParserError as exc:
        raise HTTPException(400, f"malformed multipart body: {exc}") from None
    finally:
        receiver.close()
    if receiver.upload is None:
        raise HTTPException(422, f"no field {FIELD!r} in the upload: send the recording as multipart field {FIELD!r}")
    return receiver.upload


class _Gate:
    """At most `size` analyses in flight; the next is turned away at once (503), never queued."""

    def __init__(self, size: int):
        self.size, self.in_flight = size, 0
        self._lock = threading.Lock()

    def enter(self) -> bool:
        with self._lock:
            if self.in_flight >= self.size:
                return False
            self.in_flight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


def make_analyze_router(analyser: Analyser, dependencies: Sequence | None = None) -> APIRouter:
    """The /analyze routes (full paths, `/api/v1/...`), guarded by `dependencies` (the app's auth)."""
    router = APIRouter(dependencies=list(dependencies or ()), tags=["analyze"])
    settings = analyser.settings
    gate = _Gate(settings.max_in_flight)
    limiter: list[anyio.CapacityLimiter] = []  # made in the event loop, on first use

    def worker_limiter() -> anyio.CapacityLimiter:
        # Its own thread budget: analyses waiting for an engine never hold the threads other routes run on.
        if not limiter:
            limiter.append(anyio.CapacityLimiter(settings.max_in_flight))
        return limiter[0]

    @router.post("/api/v1/analyze", openapi_extra={"requestBody": ANALYZE_BODY}, responses=ANALYZE_RESPONSES,
                 response_class=Response)
    async def analyze(
        request: Request,
        format: Literal["csv", "json"] = Query("csv", description="csv: the BirdCLEF submission; json: detections."),
        bundle: str | None = Query(None, description="A bundle's name or name-version; default: the active one."),
    ) -> Response:
        """Analyse an uploaded recording with a bundle the server holds, with the device's own engine.

        The CSV is byte for byte what `explorer analyze` writes for the same file and bundle.
        """
        try:
            served = analyser.bundle(bundle)
        except UnknownBundle as exc:
            raise HTTPException(404, str(exc)) from None
        except NoBundle as exc:
            raise HTTPException(503, str(exc)) from None
        if not gate.enter():
            raise HTTPException(503, f"{gate.size} analyses are in flight, this server's limit: retry later",
                                headers={"Retry-After": "5"})
        folder = Path(tempfile.mkdtemp(prefix="explorer-analyze-", dir=settings.spool_dir))
        try:
            upload = await receive_upload(request, folder, settings.max_upload_bytes)
            try:
                analysis = await anyio.to_thread.run_sync(analyser.analyze, upload.path, served, upload.name,
                                                          limiter=worker_limiter())
            except BadAudio as exc:
                raise HTTPException(422, str(exc)) from None
            if format == "json":
                return JSONResponse(analysis.detections())
            body = await anyio.to_thread.run_sync(analysis.submission_csv, limiter=worker_limiter())
            stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(upload.name).stem) or "submission"
            return Response(body, media_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{stem}.csv"'})
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is listening; just clean up
        finally:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(folder, ignore_errors=True))
            gate.leave()

    @router.get("/api/v1/analyze/bundles")
    def analyze_bundles() -> dict:
        """The bundles /analyze can use (name, version, sha256, directory) and which one is the default."""
        analyser.refresh()
        default = analyser.default_bundle
        return {"bundles": [b.describe() for b in analyser.bundles],
                "default": default.dir_name if default else None}

    return router

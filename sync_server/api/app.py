"""The researchers' HTTP API as one FastAPI app: detections, clips, summaries, exports,
analysis of uploaded recordings, the dashboard, and its own OpenAPI docs.

Every route but `/health` needs a read-only token (sync_server/api/auth.py), the docs too: the
schema names every filter and route, and a server on a field station's network should not
describe itself to whoever asks. FastAPI's own /docs and /openapi.json are therefore switched
off and served here behind the same dependency; Swagger UI's JavaScript and CSS come from the
`swagger-ui-bundle-v2` wheel (no CDN is reachable from the reserve), and /docs says so in
plain words when that wheel is absent.

The other helpers' routers are included when their modules are installed (`_optional`), so the
app serves what exists: exports (sync_server/api/exports.py), `POST /api/v1/analyze`
(sync_server/api/analyze.py, only with an analyser) and the dashboard (sync_server/dashboard).
No route writes the database; the only write a request causes is a token's `last_used_on`,
at most once a minute (sync_server/db/tokens.py).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from sync_server.api.auth import make_token_dependency
from sync_server.api.detections import make_detections_router
from sync_server.api.summaries import make_summaries_router
from sync_server.db.tokens import TokenChecker

log = logging.getLogger(__name__)

TITLE = "El Silencio Acoustic Explorer: researchers' API"
VERSION = "1"
DOCS_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
"""The Swagger UI files /docs loads (from the swagger-ui-bundle wheel)."""
DESCRIPTION = """Every detection of every guide's device, with the model that made it and the guide's verdict.

Authenticate with a read-only token (`explorer-server token create --name NAME`):
`Authorization: Bearer <token>`, or sign in on the dashboard (`/login`), which sets a cookie.
Lists page by cursor: pass `next_cursor` back as `cursor` until it is null.
"""


@dataclass(frozen=True)
class ApiSettings:
    """What the app serves beyond the database's reads."""

    analyser: Any = None
    """sync_server.analysis's analyser for `POST /api/v1/analyze`; None leaves the route out."""
    dataset: Any = None
    """The Darwin Core Archive's dataset description (sync_server.export.eml.DatasetInfo); None: its default."""
    dashboard: bool = True
    now: Callable[[], datetime] | None = None
    """The clock for lags (tests pin it); None: the current time."""


def swagger_files() -> Path | None:
    """The folder of Swagger UI's files, when the swagger-ui-bundle wheel is installed."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    folder = Path(swagger_ui_path)
    return folder if (folder / DOCS_ASSETS[0]).is_file() else None


def _optional(module: str, factory: str) -> Callable | None:
    """`module.factory`, or None when that module is not installed (yet); a module that is
    there but fails to import is a bug and raises."""
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            return None
        raise
    return getattr(loaded, factory)


def create_app(store, settings: ApiSettings | None = None) -> FastAPI:
    """The API over `store` (a ServerStore), every route but /health behind a token.

    Args:
        store: the aggregate database, opened by the caller (who closes it).
        settings: the analyser, the export's dataset, the dashboard switch.
    """
    settings = settings or ApiSettings()
    checker = TokenChecker(store)
    require_token = make_token_dependency(checker)
    guarded = [Depends(require_token)]
    app = FastAPI(title=TITLE, version=VERSION, description=DESCRIPTION, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.store = store
    app.state.included = []

    @app.get("/health", tags=["server"], summary="Whether the server is up (no token needed)")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(make_detections_router(store, guarded))
    app.include_router(make_summaries_router(store, guarded, now=settings.now))
    exports = _optional("sync_server.api.exports", "make_exports_router")
    if exports is not None:
        kwargs = {} if settings.dataset is None else {"dataset": settings.dataset}
        app.include_router(exports(store, dependencies=guarded, **kwargs))
        app.state.included.append("exports")
    analyze = _optional("sync_server.api.analyze", "make_analyze_router")
    if analyze is not None and settings.analyser is not None:
        app.include_router(analyze(settings.analyser, dependencies=guarded))
        app.state.included.append("analyze")
    _add_docs(app, guarded)
    dashboard = _optional("sync_server.dashboard", "make_dashboard_router") if settings.dashboard else None
    if dashboard is not None:
        app.include_router(dashboard(store, check_token=lambda token: checker.check(token) is not None,
                                     now=settings.now))
        app.state.included.append("dashboard")
    return app


def _add_docs(app: FastAPI, guarded: list) -> None:
    """/openapi.json and /docs behind the token (see the module docstring)."""
    assets = swagger_files()

    @app.get("/openapi.json", include_in_schema=False, dependencies=guarded)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=guarded)
    def docs() -> HTMLResponse:
        if assets is None:
            return HTMLResponse("<!doctype html><title>API docs</title><p>Swagger UI is not installed on this "
                                "server (pip install swagger-ui-bundle-v2); the schema is at "
                                '<a href="/openapi.json">/openapi.json</a>.</p>')
        return get_swagger_ui_html(openapi_url="/openapi.json", title=TITLE, swagger_js_url="/docs/static/"
                                   + DOCS_ASSETS[0], swagger_css_url="/docs/static/" + DOCS_ASSETS[1],
                                   swagger_favicon_url="/docs/static/" + DOCS_ASSETS[2])

    @app.get("/docs/static/{name}", include_in_schema=False, dependencies=guarded)
    def docs_asset(name: str) -> FileResponse:
        if assets is None or name not in DOCS_ASSETS:
            raise HTTPException(404, f"{name}: not a docs file")
        return FileResponse(assets / name, headers={"Cache-Control": "private, max-age=86400"})

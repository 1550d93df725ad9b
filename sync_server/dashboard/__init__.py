"""The researchers' dashboard: server-rendered pages over the API's own reads (issue 9).

`make_dashboard_router(store, ...)` gives the FastAPI router that `sync_server.api.app`
includes; pages are plain HTML with inline SVG charts, no script and nothing from a CDN.
"""

from sync_server.dashboard.routes import make_dashboard_router

__all__ = ["make_dashboard_router"]

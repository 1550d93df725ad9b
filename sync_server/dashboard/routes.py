"""The dashboard's routes: sign-in, and the pages, each read through the API's own functions.

Every page reads what the API's routes read (sync_server/db/queries.py for detections,
sync_server/db/summaries.py for days, curves, tours and devices), with the same filter
parameters and the same cursor, so a page and the JSON a researcher fetches can never disagree.

Sign-in: the API takes a token as `Authorization: Bearer` or as the `explorer_token` cookie.
A browser cannot send the header on a plain link, so `/login` takes the token in a form and
sets the cookie: HttpOnly (no page script can read it), SameSite=Strict (another site's page
cannot make the browser send it: the only defence a cookie-authenticated GET needs here, as no
route writes), Secure when the server is reached over HTTPS. A page asked for without a valid
token redirects to `/login?next=...` (a browser, not an API client: a redirect, not a 401).
`POST /login` and `POST /logout` set and clear that cookie and write nothing to the database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from sync_server.dashboard import pages
from sync_server.dashboard.html import page, url
from sync_server.dashboard.reads import DashboardReads, FilterError

log = logging.getLogger(__name__)

COOKIE = "explorer_token"
COOKIE_MAX_AGE_S = 12 * 3600
"""A sign-in lasts a working day: a shared laptop left at the field station signs itself out
by the next morning. The token itself stays valid until revoked."""
MAX_FORM_BYTES = 4096
"""A login form is a token and a path; anything larger is not one."""


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.cookies.get(COOKIE) or None


def _local_path(candidate: str | None) -> str:
    """Where to go after signing in: a path on this server only (never '//host' or a URL),
    so a crafted login link cannot send a researcher elsewhere."""
    if not candidate or not candidate.startswith("/") or candidate.startswith("//") or "\\" in candidate:
        return "/"
    return candidate


def _html(body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status_code, headers={
        "Cache-Control": "no-store",  # pages hold detections: not for shared caches
        "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; img-src 'self'; "
                                   "media-src 'self'; script-src 'none'; frame-ancestors 'none'; form-action 'self'",
        "X-Content-Type-Options": "nosniff",
    })


def make_dashboard_router(store, check_token: Callable[[str], bool] | None = None,
                          now: Callable[[], Any] | None = None) -> APIRouter:
    """The dashboard's pages (`/`, `/species`, `/detections`, `/devices`) and sign-in
    (`/login`, `/logout`), left out of the OpenAPI schema (they are pages, not API).

    Args:
        store: the ServerStore the API reads.
        check_token: token -> whether it is valid (the API's own check); by default
            sync_server.db.tokens' check on `store`.
        now: the clock for lags (default: the summaries' own, the current UTC time).
    """
    reads = DashboardReads(store, now)
    if check_token is None:
        from sync_server.db import tokens

        def check_token(token: str) -> bool:
            return tokens.check_token(store, token) is not None

    router = APIRouter(include_in_schema=False)

    def signed_in(request: Request) -> bool:
        token = _token(request)
        return token is not None and bool(check_token(token))

    def guarded(request: Request, title: str, render: Callable[[], tuple[str, int] | str]) -> Response:
        if not signed_in(request):
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(url("/login", {"next": here}), status_code=303)
        result = render()
        body, status = result if isinstance(result, tuple) else (result, 200)
        return _html(page(title, body, request.url.path), status)

    @router.get("/login")
    def login_form(request: Request, next: str = "/") -> Response:  # noqa: A002 (the parameter's name)
        return _html(page("Sign in", pages.login(_local_path(next)), "/login", signed_in=False))

    @router.post("/login")
    async def login(request: Request) -> Response:
        raw = await request.body()
        if len(raw) > MAX_FORM_BYTES:
            return _html(page("Sign in", pages.login("/", "That is not a sign-in form."), "/login", False), 413)
        form = {key: values[0] for key, values in parse_qs(raw.decode("utf-8", "replace")).items()}
        token, target = form.get("token", "").strip(), _local_path(form.get("next"))
        if not token or not check_token(token):
            return _html(page("Sign in", pages.login(target, "That token is not valid (unknown or revoked)."),
                              "/login", signed_in=False), 401)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, token, max_age=COOKIE_MAX_AGE_S, path="/", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    @router.post("/logout")
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @router.get("/")
    def overview(request: Request) -> Response:
        return guarded(request, "Overview", lambda: pages.overview(reads.species_per_day(), reads.devices()))

    @router.get("/species")
    def species(request: Request) -> Response:
        return guarded(request, "Species accumulation",
                       lambda: pages.species(reads.accumulation("site"), reads.accumulation("tour"), reads.tours()))

    @router.get("/devices")
    def devices(request: Request) -> Response:
        return guarded(request, "Devices", lambda: pages.devices(reads.devices()))

    @router.get("/detections")
    def detections(request: Request) -> Response:
        def render():
            params = _params(request)
            device_ids = [d["device_id"] for d in reads.devices()]
            tours = reads.tours()
            try:
                rows, next_cursor = reads.detections(params)
            except FilterError as exc:
                return pages.detections([], params, None, device_ids, tours, error=str(exc)), 422
            return pages.detections(rows, params, next_cursor, device_ids, tours)

        return guarded(request, "Detections", render)

    return router


def _params(request: Request) -> dict[str, Any]:
    """The query parameters as the form sent them: empty fields dropped (an 'any' select),
    `species` kept as a list (it repeats)."""
    params: dict[str, Any] = {}
    for key, value in request.query_params.multi_items():
        if value.strip() == "":
            continue
        if key == "species":
            params.setdefault("species", []).append(value.strip())
        else:
            params[key] = value.strip()
    return params

"""The API's one gate: a read-only token, from the Authorization header or the dashboard's cookie.

Scripts send `Authorization: Bearer <token>`; a browser that logged in through the dashboard
sends the `explorer_token` cookie (HttpOnly, set by the dashboard's login). Either way the
token is checked by `sync_server.db.tokens.TokenChecker`; an absent, unknown or revoked one is a
401 with `WWW-Authenticate: Bearer` (RFC 6750), which says nothing about which of the three it was.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from sync_server.db.tokens import ApiToken, TokenChecker

COOKIE = "explorer_token"
"""The cookie the dashboard's login sets (sync_server/dashboard)."""
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="explorer"'}
BEARER = HTTPBearer(auto_error=False, description="A token from `explorer-server token create`.")
SESSION = APIKeyCookie(name=COOKIE, auto_error=False, description="Set by the dashboard's /login.")
"""Declared as security schemes (so /docs offers 'Authorize'); the check itself is ours."""


def make_token_dependency(checker: TokenChecker):
    """A FastAPI dependency that lets a request through only with an active token; it puts the
    token on `request.state.api_token` for logs."""

    def require_token(request: Request,
                      bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None,
                      cookie: Annotated[str | None, Depends(SESSION)] = None) -> ApiToken:
        token = checker.check(bearer.credentials if bearer is not None else cookie)
        if token is None:
            raise HTTPException(status_code=401, detail="a valid API token is needed "
                                "(Authorization: Bearer <token>; see explorer-server token create)",
                                headers=CHALLENGE)
        request.state.api_token = token
        return token

    return require_token

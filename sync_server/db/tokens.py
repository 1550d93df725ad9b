"""Read-only API tokens: created by the operator, shown once, stored only as their sha256.

A researcher's script holds a token; the server holds its hash. A copy of the database (a
backup, a PostgreSQL replica) therefore gives no one a way in, and a lost token is revoked by
name without touching the others. Every token reads; none writes (no API route writes).

Checking a token is one lookup by hash: the sha256 of what the client sent is looked up in a
UNIQUE index, so the comparison never runs byte by byte over a stored secret (the usual timing
leak of `==` on strings); `hmac.compare_digest` then confirms the found hash, constant-time.
`last_used_on` is written at most once a minute per token (a script paging through a million
detections makes thousands of requests a minute; one write each would make the API a writer).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
import uuid
import weakref
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from device.domain import iso_utc, utc_now
from sync_server.db.errors import failures_named
from sync_server.db.schema import api_token

TOKEN_PREFIX = "exp_"
"""Marks a string as an Explorer API token (secret scanners and people recognise it)."""
TOKEN_BYTES = 32
"""256 random bits: no guessing, however many requests a minute."""
TOUCH_EVERY_S = 60.0
"""How stale `last_used_on` may be: 'used in the last minute' is what an operator reads from it."""
NAME_MAX = 100
SECRET_MAX = 512
"""Longer than any token made here: not worth hashing."""


class TokenError(ValueError):
    """A token operation that cannot be done (a name taken, no such token); says which name and why."""


@dataclass(frozen=True)
class ApiToken:
    """A token as the server knows it (never the secret itself)."""

    token_id: str
    name: str
    created_on: str
    revoked_on: str | None
    last_used_on: str | None

    @property
    def active(self) -> bool:
        return self.revoked_on is None


def token_hash(secret: str) -> str:
    """The sha256 (hex) of a token: what is stored and looked up."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _as_token(row) -> ApiToken:
    return ApiToken(row["token_id"], row["name"], row["created_on"], row["revoked_on"], row["last_used_on"])


def create_token(store, name: str) -> tuple[ApiToken, str]:
    """Make a new token named `name`; return it and its secret (shown once, never stored).

    Raises:
        TokenError: the name is empty, too long, or already names a token (revoked ones too:
            a name stays bound to one token, so logs that name it stay unambiguous).
        ServerStoreError: the database failed.
    """
    name = name.strip()
    if not name or len(name) > NAME_MAX:
        raise TokenError(f"token name {name!r}: give 1 to {NAME_MAX} characters")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    row = {"token_id": str(uuid.uuid4()), "name": name, "token_sha256": token_hash(secret),
           "created_on": iso_utc(utc_now()), "revoked_on": None, "last_used_on": None}
    try:
        with failures_named(store.label, f"could not create token {name!r}"), store.engine.begin() as connection:
            connection.execute(insert(api_token).values(row))
    except Exception as exc:  # IntegrityError arrives wrapped or bare, depending on where it surfaced
        if isinstance(exc, IntegrityError) or isinstance(exc.__cause__, IntegrityError):
            raise TokenError(f"token name {name!r}: already used (choose another, or revoke and rename)") from None
        raise
    return _as_token(row), secret


def list_tokens(store) -> list[ApiToken]:
    """Every token, oldest first, revoked ones included."""
    query = select(api_token).order_by(api_token.c.created_on, api_token.c.name)
    with store._reading("could not read the API tokens") as connection:
        return [_as_token(row) for row in connection.execute(query).mappings()]


def revoke_token(store, name: str) -> ApiToken:
    """Revoke the token named `name` (from now on it gets 401); revoking twice keeps the first time.

    Raises:
        TokenError: no token has that name.
    """
    with failures_named(store.label, f"could not revoke token {name!r}"), store.engine.begin() as connection:
        found = connection.execute(select(api_token).where(api_token.c.name == name)).mappings().first()
        if found is None:
            raise TokenError(f"token name {name!r}: no such token")
        if found["revoked_on"] is None:
            connection.execute(update(api_token).where(api_token.c.token_id == found["token_id"])
                               .values(revoked_on=iso_utc(utc_now())))
        found = connection.execute(select(api_token).where(api_token.c.name == name)).mappings().first()
    return _as_token(found)


class TokenChecker:
    """Answers 'may this request read?' for the API (thread-safe; one per app).

    Every check reads the database (one indexed lookup), so a token revoked from another
    process (`explorer-server token revoke`) is refused from its next request on.
    """

    def __init__(self, store, touch_every_s: float = TOUCH_EVERY_S):
        self._store = store
        self._touch_every_s = touch_every_s
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()

    def check(self, secret: str | None) -> ApiToken | None:
        """The active token `secret` is, or None (absent, unknown, revoked)."""
        if not secret or len(secret) > SECRET_MAX:
            return None
        wanted = token_hash(secret)
        query = select(api_token).where(api_token.c.token_sha256 == wanted)
        with self._store._reading("could not check an API token") as connection:
            found = connection.execute(query).mappings().first()
        if found is None or not hmac.compare_digest(found["token_sha256"], wanted) or found["revoked_on"]:
            return None
        self._touch(found["token_id"])
        return _as_token(found)

    def _touch(self, token_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._touched.get(token_id)
            if last is not None and now - last < self._touch_every_s:
                return
            self._touched[token_id] = now
        with failures_named(self._store.label, "could not note an API token's use"), \
                self._store.engine.begin() as connection:
            connection.execute(update(api_token).where(api_token.c.token_id == token_id)
                               .values(last_used_on=iso_utc(utc_now())))


_CHECKERS: "weakref.WeakKeyDictionary[object, TokenChecker]" = weakref.WeakKeyDictionary()
_CHECKERS_LOCK = threading.Lock()


def check_token(store, secret: str | None) -> ApiToken | None:
    """`TokenChecker.check` with one checker per store (so `last_used_on` stays throttled)."""
    with _CHECKERS_LOCK:
        checker = _CHECKERS.get(store)
        if checker is None:
            checker = _CHECKERS[store] = TokenChecker(store)
    return checker.check(secret)

"""Read-only API tokens: none, a wrong one and a revoked one get 401 on every route but /health;
a valid one reads; no route writes the database; only the token's sha256 is stored.

Every route is taken from the app itself (`app.routes`, built as `explorer-server run` builds
it), so a route added later is checked without editing this test.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess

import pytest
from fastapi.routing import APIRoute, iter_route_contexts

from sync_server.api.app import ApiSettings, create_app
from sync_server.db import ServerStore
from tests.helpers import REPO
from tests.sync_server.api.conftest import CLIP_OF, server_command

ALLOWED_POSTS = {"/api/v1/analyze", "/login", "/logout"}
"""The only POSTs: an analysis (reads an upload, writes nothing stored) and the dashboard's
sign-in and sign-out (set and clear a cookie)."""
PUBLIC = {"/health", "/login", "/logout"}
"""Routes that answer without a token: the health check, and the sign-in form and its post."""
DASHBOARD_PAGES = {"/", "/species", "/devices", "/detections"}
"""Pages for browsers: without a token they redirect to /login instead of answering 401."""


@pytest.fixture(scope="module")
def app_routes(field, tmp_path_factory):
    """(path, method) of every route of the app `run` serves (with /analyze: an analyser over an
    empty data home)."""
    from sync_server.analysis import Analyser

    store = ServerStore.open(field.server.db_target)
    try:
        app = create_app(store, ApiSettings(analyser=Analyser(tmp_path_factory.mktemp("analysis-home"))))
        contexts = list(iter_route_contexts(app.routes))  # FastAPI's own walk (included routers flattened)
        assert all(isinstance(c.original_route, APIRoute) for c in contexts)  # no mounts, no websockets
        routes = [(c.path, method) for c in contexts for method in sorted(c.methods - {"HEAD"})]
    finally:
        store.close()
    assert ("/api/v1/analyze", "POST") in routes and ("/api/v1/exports/{format}", "GET") in routes
    return routes


def concrete(path: str, field) -> str:
    """A route's path with real ids in its parameters."""
    det = field.made[CLIP_OF[0]][CLIP_OF[1]][0]
    clip_id = field.clip_id
    return (path.replace("{detection_id}", det.detection_id).replace("{clip_id}", clip_id)
            .replace("{format}", "csv").replace("{name}", "swagger-ui.css"))


def params_for(path: str, field) -> dict:
    if path == "/api/v1/tours/summary":
        return {"tour_id": list(field.tours.values())}
    return {}


def test_no_route_writes(app_routes):
    for path, method in app_routes:
        assert method == "GET" or (method == "POST" and path in ALLOWED_POSTS), (path, method)


def test_every_route_but_health_refuses_no_token_a_wrong_one_and_a_revoked_one(field, app_routes):
    revoked = subprocess.run(server_command("token", "create", "--name", "leaving-student", "--db",
                                            field.server.db_target), cwd=REPO, capture_output=True, text=True)
    assert revoked.returncode == 0, revoked.stderr
    secret = revoked.stdout.strip()
    assert field.server.get("/api/v1/devices", token=secret).status_code == 200
    gone = subprocess.run(server_command("token", "revoke", "leaving-student", "--db", field.server.db_target),
                          cwd=REPO, capture_output=True, text=True)
    assert gone.returncode == 0, gone.stderr
    guarded = [(path, method) for path, method in app_routes if path not in PUBLIC]
    for path, method in guarded:
        url = concrete(path, field)
        for header in (None, "Bearer exp_" + "x" * 43, f"Bearer {secret}", "Bearer", f"Basic {field.server.token}"):
            headers = {} if header is None else {"Authorization": header}
            answer = field.server.request(method, url, token=None, params=params_for(path, field), headers=headers,
                                          follow_redirects=False)
            if path in DASHBOARD_PAGES:
                assert answer.status_code == 303 and answer.headers["location"].startswith("/login"), (path, method)
            else:
                assert answer.status_code == 401, (path, method, header, answer.text)
                assert answer.headers["www-authenticate"].startswith("Bearer")
    cookie = field.server.request("GET", "/api/v1/devices", token=None, cookies={"explorer_token": secret})
    assert cookie.status_code == 401
    assert field.server.get("/health", token=None).json() == {"status": "ok"}


def table_contents(db_path: str) -> dict[str, list]:
    """Every table but api_token, read through a read-only connection of its own."""
    connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        names = [n for (n,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {name: sorted(connection.execute(f'SELECT * FROM "{name}"').fetchall(), key=repr)
                for name in names if name != "api_token"}
    finally:
        connection.close()


def test_a_valid_token_reads_every_route_and_nothing_stored_changes(field, app_routes, shared_data):
    before = table_contents(field.server.db_target)
    for path, method in app_routes:
        if path in PUBLIC:
            continue
        url = concrete(path, field)
        if method == "POST":
            upload = {"file": ("notes.txt", b"not audio at all", "text/plain")}
            answer = field.server.request(method, url, params=params_for(path, field), files=upload)
            assert answer.status_code in (404, 422, 503), (path, answer.status_code)  # refused, not 401
            continue
        for auth in ("header", "cookie"):
            if auth == "header":
                answer = field.server.get(url, params=params_for(path, field))
            else:
                answer = field.server.request("GET", url, token=None, params=params_for(path, field),
                                              cookies={"explorer_token": field.server.token})
            assert answer.status_code == 200, (path, auth, answer.status_code, answer.text[:300])
    assert table_contents(field.server.db_target) == before


def test_docs_and_schema_are_served_locally_behind_the_token(field):
    docs = field.server.get("/docs")
    assert docs.status_code == 200 and "/docs/static/swagger-ui-bundle.js" in docs.text
    script = field.server.get("/docs/static/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000
    schema = field.server.get("/openapi.json").json()
    assert {"/api/v1/detections", "/api/v1/tours/summary", "/api/v1/species/accumulation"} <= set(schema["paths"])
    listed = {p["name"] for p in schema["paths"]["/api/v1/detections"]["get"]["parameters"]}
    assert {"start", "end", "species", "class_name", "device_id", "tour_id", "site", "min_confidence",
            "bundle_name", "bundle_version", "status", "limit", "cursor"} <= listed
    assert field.server.get("/docs/static/../../etc/passwd").status_code == 404


def test_only_the_tokens_hash_is_stored_and_its_use_is_noted(field):
    from click.testing import CliRunner

    from sync_server.cli import cli

    runner = CliRunner()
    listed = runner.invoke(cli, ["token", "list", "--db", field.server.db_target])
    assert listed.exit_code == 0 and field.server.token not in listed.output
    line = next(line for line in listed.output.splitlines() if line.startswith("api-tests:"))
    assert "active" in line and "last used never" not in line  # the tests above used it
    connection = sqlite3.connect(f"file:{field.server.db_target}?mode=ro", uri=True)
    try:
        stored = connection.execute("SELECT * FROM api_token WHERE name = 'api-tests'").fetchone()
    finally:
        connection.close()
    assert hashlib.sha256(field.server.token.encode()).hexdigest() in stored
    assert not any(field.server.token in str(value) for value in stored)
    taken = runner.invoke(cli, ["token", "create", "--name", "api-tests", "--db", field.server.db_target])
    assert taken.exit_code == 1 and "already used" in taken.output
    unknown = runner.invoke(cli, ["token", "revoke", "nobody", "--db", field.server.db_target])
    assert unknown.exit_code == 1 and "no such token" in unknown.output

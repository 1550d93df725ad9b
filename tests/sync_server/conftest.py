"""The server tests' fixtures: a real broker and a device store with queued detections (the sync
tests'), and the aggregate database on both engines: SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import pytest

from sync_server.db import ServerStore
from tests.device.sync.conftest import broker, store  # noqa: F401  (pytest fixtures, used by name)
from tests.postgres import Postgres

ENGINES = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server for the session (started on first use); each test gets its own
    database in it. Fails, never skips, when PostgreSQL is not installed."""
    server = Postgres().start()
    yield server
    server.remove()


@pytest.fixture(params=ENGINES)
def server_target(request, tmp_path):
    """What `--db` would be given: a fresh SQLite file's path, or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        yield str(tmp_path / "server" / "aggregate.db")
        return
    postgres = request.getfixturevalue("postgres_server")
    name = postgres.create_database()
    yield postgres.url(name)
    if postgres.running:
        postgres.drop_database(name)


@pytest.fixture
def server_db(server_target):
    """An open ServerStore on a fresh database, on each engine in turn."""
    opened = ServerStore.open(server_target)
    yield opened
    opened.close()

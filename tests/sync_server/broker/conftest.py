"""Fixtures of the broker tests: a broker of our own per test, and no client left behind."""

from __future__ import annotations

import pytest

from sync_server.broker import OwnBroker
from tests.sync_server.broker.peers import close_all


@pytest.fixture
def own():
    """Our broker on a free loopback port; a silent socket is dropped after 1 s (the hostile-client
    tests wait on that), not the production 10 s."""
    broker = OwnBroker(connect_timeout_s=1.0).start()
    yield broker
    broker.stop()


@pytest.fixture(autouse=True)
def no_client_left():
    """Every client a test made is closed after it, whatever broker it used."""
    yield
    close_all()

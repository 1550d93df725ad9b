"""Fixtures for the store tests: a fresh database per test, closed afterwards, and detections."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from device.domain import Detection
from device.store import Store

SHA_A = "a" * 64
SHA_B = "b" * 64
T0 = datetime(2026, 4, 20, 7, 40, 0, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def close_every_store(monkeypatch):
    """Autouse hygiene: every Store a test opens is closed when it ends, even on failure."""
    opened: list[Store] = []
    original = Store.open.__func__

    def tracking_open(cls, path, **options):
        store = original(cls, path, **options)
        opened.append(store)
        return store

    monkeypatch.setattr(Store, "open", classmethod(tracking_open))
    yield opened
    for store in opened:
        store.close()  # a no-op for those the test closed itself


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "explorer.db"


@pytest.fixture
def store(db_path) -> Store:
    return Store.open(db_path)


_counter = itertools.count()


@pytest.fixture
def make_detection():
    """A Detection factory: label, offset (s after T0) and any field can be set."""

    def make(label: str = "littin1", at_s: float = 0.0, length_s: float = 5.0, **fields) -> Detection:
        started = T0 + timedelta(seconds=at_s)
        values = dict(
            label=label,
            started_on=started,
            ended_on=started + timedelta(seconds=length_s),
            confidence=0.81,
            branch_scores={"perch": 0.81, "birdnet": float("nan")},
            bundle_name="elsilencio-default",
            bundle_version="1.0.0",
            bundle_sha256=SHA_A,
            device_id="pi-h02",
            source="/recordings/H02_20230420_074000.ogg",
            start_s=at_s,
            end_s=at_s + length_s,
            peak_start_s=at_s,
        )
        values.update(fields)
        return Detection(**values)

    return make

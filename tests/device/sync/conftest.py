"""Fixtures for the sync tests: a real Mosquitto broker per test, a store with queued detections,
and a fake ingest (a real MQTT client playing the server: it takes detections and feedback and
publishes receipts with the contract's own functions)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from device.config import SyncSettings
from device.domain import Detection
from device.store import Store
from tests.mqtt import Broker, FakeIngest

T0 = datetime(2026, 4, 20, 7, 40, 0, tzinfo=timezone.utc)
DEVICE = "pi-h02"
LABELS = ["21211", "littin1", "65448", "555086"]  # Allobates femoralis, Little Tinamou, two frogs


@pytest.fixture
def broker(tmp_path):
    running = Broker(tmp_path / "broker").start()
    yield running
    running.stop()


@pytest.fixture
def ingest(broker):
    """The server's side: every detection and verdict receipted as stored, as it arrives."""
    running = FakeIngest(broker)
    yield running
    running.close()


@pytest.fixture
def store(tmp_path):
    opened = Store.open(tmp_path / "explorer.db")
    yield opened
    opened.close()


def settings_for(broker: Broker, **fields) -> SyncSettings:
    return SyncSettings(enabled=True, host=broker.host, port=broker.port, **fields)


def outbox_states(store: Store) -> dict[str, int]:
    """How many messages are in each state: the four of device/store/outbox.py, read directly."""
    counts = store.outbox_counts()
    return {"pending": counts.pending, "unconfirmed": counts.unconfirmed, "confirmed": counts.confirmed,
            "refused": counts.refused}


def queue_detections(store: Store, count: int, device_id: str = DEVICE, start: int = 0) -> list[str]:
    """Close `count` detections (each queues its outbox message, as the pipeline's writer does),
    the n-th of a morning's from `start` on (5 s apart)."""
    ids = []
    for n in range(start, start + count):
        started = T0 + timedelta(seconds=5 * n)
        detection = Detection(
            label=LABELS[n % len(LABELS)],
            started_on=started,
            ended_on=started + timedelta(seconds=5),
            confidence=0.9,
            branch_scores={"birdnet": 0.9, "frog_head": None},
            bundle_name="elsilencio-default",
            bundle_version="1.0.0",
            bundle_sha256="a" * 64,
            device_id=device_id,
            source="/recordings/H02_20230420_074000.ogg",
            start_s=5.0 * n,
            end_s=5.0 * n + 5,
        )
        store.save_detection(detection, final=True)
        ids.append(detection.detection_id)
    return ids

"""Fixtures for the sync tests: a real Mosquitto broker per test, and a store with queued detections."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from device.config import SyncSettings
from device.domain import Detection
from device.store import Store
from tests.mqtt import Broker

T0 = datetime(2026, 4, 20, 7, 40, 0, tzinfo=timezone.utc)
DEVICE = "pi-h02"
LABELS = ["21211", "littin1", "65448", "555086"]  # Allobates femoralis, Little Tinamou, two frogs


@pytest.fixture
def broker(tmp_path):
    running = Broker(tmp_path / "broker").start()
    yield running
    running.stop()


@pytest.fixture
def store(tmp_path):
    opened = Store.open(tmp_path / "explorer.db")
    yield opened
    opened.close()


def settings_for(broker: Broker, **fields) -> SyncSettings:
    return SyncSettings(enabled=True, host=broker.host, port=broker.port, **fields)


def queue_detections(store: Store, count: int, device_id: str = DEVICE) -> list[str]:
    """Close `count` detections (each queues its outbox message, as the pipeline's writer does)."""
    ids = []
    for n in range(count):
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

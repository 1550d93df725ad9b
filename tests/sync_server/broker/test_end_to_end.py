"""The device's own sync code and the server's own ingest through the in-process broker, as
`explorer-server run` will use it without Mosquitto: detections, a guide's verdict and a real
clip committed and receipted; a device's backlog held for an ingest that is down; a vanished
device's will stored as its status."""

from __future__ import annotations

import socket

import pytest

from device.config import SyncSettings
from device.sync.by_hand import sync_by_hand
from device.sync.publisher import OutboxPublisher
from sync_server.broker import OwnBroker
from sync_server.db import ServerStore
from sync_server.ingest import BrokerSettings, Ingestor
from tests.device.sync.conftest import queue_detections
from tests.helpers import wait_until
from tests.sync_server.api.conftest import Planned, device_store, make_detections

DEVICE = "pi-h02"
CLIP_SOURCE = "audio/birds/Cryp.soui.wav"
"""A real Little Tinamou recording (../shared/data): the judged detection's clip is cut from it."""


@pytest.fixture
def own(tmp_path):
    broker = OwnBroker(folder=tmp_path / "broker").start()  # where `run` would keep its state
    yield broker
    broker.stop()


@pytest.fixture
def server(tmp_path):
    (tmp_path / "server").mkdir()
    opened = ServerStore.open(str(tmp_path / "server" / "aggregate.db"))
    yield opened
    opened.close()


@pytest.fixture
def device(tmp_path):
    store = device_store(tmp_path, DEVICE, "H02")
    yield store
    store.close()


def start_ingest(server: ServerStore, own: OwnBroker, clips_dir=None) -> Ingestor:
    """The ingest as `run` starts it against its own broker (anonymous, no TLS)."""
    ingest = Ingestor(server, BrokerSettings(host=own.host, port=own.port, username="", tls=False),
                      clips_dir=clips_dir, retry_first_s=0.5).start()
    assert ingest.subscribed.wait(20), "the ingest never subscribed"
    return ingest


def sync_settings(own: OwnBroker, **fields) -> SyncSettings:
    return SyncSettings(enabled=True, host=own.host, port=own.port, **fields)


def test_explorer_sync_is_committed_and_receipted_through_it_clip_included(tmp_path, own, server, device,
                                                                           shared_data):
    import soundfile as sf

    ingest = start_ingest(server, own, tmp_path / "server" / "clips")
    try:
        sent = set(queue_detections(device, 40))
        judged = make_detections(device, DEVICE, [Planned(900, "littin1", 0.91, verdict="confirm")])[0][0]
        audio, rate = sf.read(shared_data / CLIP_SOURCE, dtype="float32", always_2d=True)
        device.save_clip(tmp_path / "device-clips", judged, audio[: 3 * rate, 0], rate)
        report = sync_by_hand(device, sync_settings(own, clip_chunk_kb=32), DEVICE, wait_s=30)
    finally:
        ingest.stop()
    assert (report.pending, report.unconfirmed, report.refused, report.confirmed) == (0, 0, 0, 42), report
    assert report.clip_error is None and report.clips_complete == 1 and report.clip_chunks > 1, report
    counts = device.outbox_counts()
    assert (counts.pending, counts.unconfirmed, counts.confirmed) == (0, 0, 42)
    assert server.detection_ids(DEVICE) == sent | {judged.detection_id}
    assert len(server.feedback_ids(DEVICE)) == 1 and len(server.clips_held(DEVICE)) == 1
    assert server.statuses()[DEVICE][0].online is False  # its goodbye, published before DISCONNECT
    assert ingest.stats.rejected_total == 0 and own.snapshot().stats.dropped == 0


def test_what_a_device_sends_while_the_ingest_is_down_waits_for_it_in_the_broker(own, server, device):
    start_ingest(server, own).stop()  # its persistent session exists, as after any earlier run
    sent = set(queue_detections(device, 25))
    first = sync_by_hand(device, sync_settings(own), DEVICE, wait_s=0.5)
    assert first.unconfirmed == 25 and first.confirmed == 0, first
    assert own.snapshot().sessions["explorer-ingest"].queued >= 25  # with the device's statuses
    ingest = start_ingest(server, own)
    try:
        assert wait_until(lambda: server.detection_ids(DEVICE) == sent, 30)
        second = sync_by_hand(device, sync_settings(own), DEVICE, wait_s=30)  # the receipts waited for it too
    finally:
        ingest.stop()
    assert second.confirmed == 25 and second.pending == second.unconfirmed == 0, second
    assert server.counts().detections == 25  # the resends were upserts


def test_a_device_that_vanishes_is_marked_offline_by_its_will(own, server, device):
    ingest = start_ingest(server, own)
    publisher = OutboxPublisher(device, sync_settings(own), DEVICE).connect()  # the run's worker
    try:
        assert wait_until(lambda: DEVICE in server.statuses() and server.statuses()[DEVICE][0].online, 30)
        publisher.session._client.socket().shutdown(socket.SHUT_RDWR)  # a power cut: no DISCONNECT
        assert wait_until(lambda: server.statuses()[DEVICE][0].online is False, 30)
    finally:
        publisher.close()
        ingest.stop()
    assert own.snapshot().retained == (f"explorer/{DEVICE}/status",)

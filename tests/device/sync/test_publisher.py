"""The outbox publisher against a real Mosquitto: QoS 1, a PUBACK makes a message unconfirmed
(never sent again within the receipt timeout), nothing lost."""

from __future__ import annotations

import threading
import time

import pytest

from device.contracts.detection import parse_payload
from device.sync.publisher import OutboxPublisher, SyncError, destination_of, drain_once
from tests.device.sync.conftest import DEVICE, outbox_states, queue_detections, settings_for
from tests.mqtt import Broker, Subscriber, free_port


def attempts(store, result: str) -> list[tuple[str, str]]:
    return [tuple(row) for row in store.db.execute(
        "SELECT message_id, destination FROM outbox_attempt WHERE result = ?", [result]).fetchall()]


def test_every_pending_detection_is_published_and_unconfirmed_on_its_puback(broker, store):
    ids = queue_detections(store, 30)
    subscriber = Subscriber(broker, "explorer/+/detection")
    try:
        report = drain_once(store, settings_for(broker), DEVICE)
        received = subscriber.wait_for(30)
    finally:
        subscriber.close()

    assert (report.selected, report.attempted, report.ok, report.failed, report.pending_after) == (30, 30, 30, 0, 0)
    assert report.error is None and report.unconfirmed_after == 30  # the broker has them; the server has not said so
    assert {topic for topic, _ in received} == {f"explorer/{DEVICE}/detection"}
    assert sorted(parse_payload(body)["detection_id"] for _, body in received) == sorted(ids)
    destination = f"mqtt://127.0.0.1:{broker.port}"
    assert {d for _, d in attempts(store, "SUCCESS")} == {destination}
    assert len(attempts(store, "SUCCESS")) == 30 and attempts(store, "FAILURE") == []
    assert outbox_states(store) == {"pending": 0, "unconfirmed": 30, "confirmed": 0, "refused": 0}
    again = drain_once(store, settings_for(broker), DEVICE)  # not sent twice within the receipt timeout
    assert (again.selected, again.ok) == (0, 0)


def test_an_unreachable_broker_is_named_and_nothing_is_marked(tmp_path, store):
    queue_detections(store, 3)
    port = free_port()  # nobody listens there
    down = Broker(tmp_path / "down", port=port)
    with pytest.raises(SyncError, match=rf"127\.0\.0\.1:{port}: cannot connect"):
        drain_once(store, settings_for(down), DEVICE)
    assert store.pending_count() == 3
    assert attempts(store, "SUCCESS") == [] and attempts(store, "FAILURE") == []


def test_wrong_credentials_are_refused_by_name_and_right_ones_deliver(tmp_path, store):
    broker = Broker(tmp_path / "locked").with_password("pi-h02", "frog-song").start()
    try:
        queue_detections(store, 2)
        with pytest.raises(SyncError, match=r"refused the connection: (Not authorized|Bad user name or password)"):
            drain_once(store, settings_for(broker, username="pi-h02", password="wrong"), DEVICE)
        with pytest.raises(SyncError, match="refused the connection"):
            drain_once(store, settings_for(broker), DEVICE)  # anonymous
        assert store.pending_count() == 2
        report = drain_once(store, settings_for(broker, username="pi-h02", password="frog-song"), DEVICE)
        assert report.ok == 2 and store.pending_count() == 0
    finally:
        broker.stop()


def test_a_broker_killed_mid_drain_leaves_every_unacknowledged_message_pending(broker, store):
    total = 3000
    queue_detections(store, total)
    settings = settings_for(broker)
    destination = destination_of(settings)
    reports = []

    def drain():
        with OutboxPublisher(store_for_thread(store), settings, DEVICE) as publisher:
            reports.append(publisher.drain())

    worker = threading.Thread(target=drain)
    worker.start()
    # Kill -9 once some acknowledgements are on disk, well before the end.
    deadline = time.monotonic() + 30
    while not store.db.execute("SELECT count(*) FROM outbox_attempt").fetchone()[0] and time.monotonic() < deadline:
        time.sleep(0.002)
    broker.kill()
    worker.join(30)
    assert not worker.is_alive()

    report = reports[0]
    assert report.error is not None and "connection lost" in report.error
    assert 0 < report.ok < total
    pending = {m.message_id for m in store.pending_messages(total, destination)}
    acknowledged = {message_id for message_id, _ in attempts(store, "SUCCESS")}
    assert len(pending) == total - report.ok == report.pending_after
    assert not pending & acknowledged  # a message is either acknowledged or still pending, never both

    broker.start()  # back, on the same port: the rest goes, and only the rest
    subscriber = Subscriber(broker, "explorer/+/detection")
    try:
        after = drain_once(store, settings, DEVICE)
        received = subscriber.wait_for(len(pending))
    finally:
        subscriber.close()
    assert after.ok == len(pending) and after.pending_after == 0
    queued = dict(store.db.execute("SELECT detection_id, message_id FROM outbox_message").fetchall())
    assert sorted(queued[parse_payload(body)["detection_id"]] for _, body in received) == sorted(pending)


def store_for_thread(store):
    """SQLite connections stay on their thread: the draining thread opens its own."""
    from device.store import Store

    return Store.open(store.path)


def test_a_publish_the_broker_acl_refuses_stays_pending_with_the_reason(tmp_path, store):
    # Each device may write only under its own id; a Pi whose config names another device's
    # id would otherwise have its detections acknowledged and dropped (MQTT 3.1.1 PUBACKs can't refuse).
    broker = (Broker(tmp_path / "acl").with_password("pi-h02", "frog-song")
              .with_acl("pattern read explorer/#\npattern write explorer/%u/#").start())
    credentials = dict(username="pi-h02", password="frog-song")
    try:
        own = queue_detections(store, 2)
        foreign = queue_detections(store, 3, device_id="pi-h03")
        subscriber = Subscriber(broker, "explorer/+/detection", **credentials)
        try:
            report = drain_once(store, settings_for(broker, **credentials), DEVICE)
            received = subscriber.wait_for(2)
        finally:
            subscriber.close()
    finally:
        broker.stop()

    assert (report.attempted, report.ok, report.failed, report.pending_after) == (5, 2, 3, 3)
    assert sorted(parse_payload(body)["detection_id"] for _, body in received) == sorted(own)
    refused = store.db.execute(
        """SELECT m.detection_id, a.detail FROM outbox_attempt a JOIN outbox_message m USING (message_id)
           WHERE a.result = 'FAILURE'""").fetchall()
    assert sorted(d for d, _ in refused) == sorted(foreign)
    assert all(detail == "the broker refused it: Not authorized" for _, detail in refused)


def test_when_the_broker_refuses_every_message_the_drain_stops_after_one_batch(tmp_path, store):
    broker = (Broker(tmp_path / "acl").with_password("pi-h02", "frog-song")
              .with_acl("pattern write explorer/%u/#").start())
    try:
        queue_detections(store, 7, device_id="pi-h03")  # the config names another device's id
        with OutboxPublisher(store, settings_for(broker, username="pi-h02", password="frog-song"), DEVICE,
                             batch=3) as publisher:
            report = publisher.drain()
    finally:
        broker.stop()
    assert (report.attempted, report.ok, report.failed, report.pending_after) == (3, 0, 3, 7)
    assert report.error == "the broker refuses our messages (Not authorized)"


def test_tls_delivers_with_the_right_ca_and_names_the_failure_with_a_wrong_one(tmp_path, store):
    from tests.mqtt import make_test_ca

    ca, cert, key = make_test_ca(tmp_path / "pki")
    stranger_ca, _, _ = make_test_ca(tmp_path / "other-pki", name="stranger")
    broker = Broker(tmp_path / "tls").with_tls(ca, cert, key).start()
    try:
        queue_detections(store, 4)
        with pytest.raises(SyncError, match=rf"127\.0\.0\.1:{broker.port}: TLS handshake failed: .*CERTIFICATE_VERIFY_FAILED"):
            drain_once(store, settings_for(broker, tls=True, ca_file=str(stranger_ca)), DEVICE)
        with pytest.raises(SyncError, match=r"cannot set up TLS with CA file '/nonexistent/ca.crt'"):
            drain_once(store, settings_for(broker, tls=True, ca_file="/nonexistent/ca.crt"), DEVICE)
        assert store.pending_count() == 4
        report = drain_once(store, settings_for(broker, tls=True, ca_file=str(ca)), DEVICE)
    finally:
        broker.stop()
    assert report.ok == 4 and report.pending_after == 0
    assert {d for _, d in attempts(store, "SUCCESS")} == {f"mqtts://127.0.0.1:{broker.port}"}

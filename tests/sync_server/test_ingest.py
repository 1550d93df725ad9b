"""The server's MQTT ingest against a real Mosquitto, on SQLite and on a real PostgreSQL:
what devices send is committed, then acknowledged, then receipted; hostile input is refused;
a failing database, a lost broker and a restart lose nothing."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import paho.mqtt.client as mqtt
import pytest

from device.contracts.feedback import feedback_to_json, feedback_to_payload, feedback_topic
from device.contracts.receipt import parse_receipt
from device.contracts.status import status_to_json, status_topic
from device.domain import Feedback, Status
from sync_server.db import ServerStore
from sync_server.ingest import BrokerSettings, Ingestor
from tests.device.sync.conftest import T0, queue_detections
from tests.helpers import wait_until
from tests.mqtt import Broker, Subscriber

DEVICE = "pi-h02"


@pytest.fixture
def server(server_target):
    opened = ServerStore.open(server_target)
    yield opened
    opened.close()


def start_ingest(server, broker, client_id="explorer-ingest", share_group=None, **options) -> Ingestor:
    """A running ingest worker on `broker` (options: the Ingestor's, e.g. retry_first_s)."""
    ingest = Ingestor(server, BrokerSettings(host=broker.host, port=broker.port, username="", tls=False,
                                             client_id=client_id, share_group=share_group), **options).start()
    assert ingest.subscribed.wait(20), "the ingest never subscribed"
    return ingest


def publish_raw(broker, items, client_id=None) -> None:
    """Publish (topic, bytes) pairs with QoS 1 and wait for each PUBACK, as a device would."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"raw-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        infos = [client.publish(topic, body, qos=1) for topic, body in items]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()


def outbox_items(store) -> list[tuple[str, bytes]]:
    """A device's queued messages as it would publish them."""
    return [(topic, body.encode()) for topic, body in store.db.execute("SELECT topic, payload FROM outbox_message")]


def verdict_item(n: int, detection_id: str, device_id: str = DEVICE) -> tuple[str, bytes, str]:
    given = Feedback(str(uuid.UUID(int=5000 + n, version=4)), detection_id, "confirm" if n % 2 else "reject",
                     None, T0 + timedelta(minutes=40 + n))
    body = feedback_to_json(feedback_to_payload(given, device_id)).encode()
    return feedback_topic(device_id), body, given.feedback_id


def status_item(minute: int, device_id: str = DEVICE) -> tuple[str, bytes]:
    status = Status(device_id, True, T0 + timedelta(minutes=minute), "0.1.0", "elsilencio-default", "1.0.0", 4, 0)
    return status_topic(device_id), status_to_json(status).encode()


def receipted(subscriber: Subscriber) -> dict[str, set[str]]:
    """Every id the receipts seen so far confirmed, by kind."""
    kinds: dict[str, set[str]] = {"detection": set(), "feedback": set()}
    for topic, body in list(subscriber.messages):
        receipt = parse_receipt(body)
        assert topic == f"explorer/{receipt.device_id}/receipt"
        for kind, ids in receipt.stored.items():
            kinds[kind].update(ids)
    return kinds


def test_what_a_device_sends_is_committed_then_receipted(broker, server, store):
    ids = queue_detections(store, 20)
    verdicts = [verdict_item(n, ids[n]) for n in range(2)]
    receipts = Subscriber(broker, f"explorer/{DEVICE}/receipt")
    ingest = start_ingest(server, broker)
    try:
        publish_raw(broker, outbox_items(store) + [(t, b) for t, b, _ in verdicts] + [status_item(3)])
        assert wait_until(lambda: receipted(receipts)["detection"] == set(ids), 30)
        assert wait_until(lambda: receipted(receipts)["feedback"] == {f for _, _, f in verdicts}, 30)
    finally:
        ingest.stop()
        receipts.close()
    assert server.detection_ids(DEVICE) == set(ids)  # receipted only once committed
    assert server.feedback_ids(DEVICE) == {f for _, _, f in verdicts}
    assert server.statuses()[DEVICE][0].outbox_pending == 4
    assert ingest.stats.stored == 22 and ingest.stats.statuses == 1 and ingest.stats.rejected_total == 0
    for _, body in outbox_items(store):  # the row is the payload, field for field
        sent = json.loads(body)
        with server.engine.connect() as connection:
            row = connection.exec_driver_sql(
                "SELECT device_id, label, confidence, started_on, branch_scores, deliveries FROM detection "
                f"WHERE detection_id = '{sent['detection_id']}'").one()
        assert row[:4] == (sent["device_id"], sent["label"], sent["confidence"], sent["started_on"])
        assert json.loads(row[4]) == sent["branch_scores"] and row[5] == 1


def test_resends_are_counted_never_duplicated_and_receipted_again(broker, server, store):
    ids = queue_detections(store, 3)
    receipts = Subscriber(broker, f"explorer/{DEVICE}/receipt")
    ingest = start_ingest(server, broker)
    try:
        publish_raw(broker, outbox_items(store))
        assert wait_until(lambda: ingest.stats.stored == 3, 30)
        before = len(receipts.messages)
        publish_raw(broker, outbox_items(store))  # the device sends again: its receipt was lost
        assert wait_until(lambda: ingest.stats.unchanged == 3, 30)
        assert wait_until(lambda: len(receipts.messages) > before, 30)
    finally:
        ingest.stop()
        receipts.close()
    assert server.counts().detections == 3
    last = parse_receipt(receipts.messages[-1][1])
    assert set(last.stored["detection"]) <= set(ids) and set().union(
        *(parse_receipt(b).stored.get("detection", ()) for _, b in receipts.messages[before:])) == set(ids)


def test_hostile_messages_are_refused_with_reasons_and_the_ingest_goes_on(broker, server, store):
    queue_detections(store, 2)
    (topic, good), (_, other_good) = outbox_items(store)
    owned = json.loads(good)
    hijack = dict(json.loads(other_good), device_id="pi-h03", detection_id=owned["detection_id"])
    feedback_topic_, verdict_body, _ = verdict_item(0, owned["detection_id"])
    hostile = [
        (topic, b"\xff\xfe not utf-8"),
        (topic, b"{not json"),
        (topic, b"x" * 20_000),
        (topic, good.replace(b'"confidence":0.9', b'"confidence":NaN')),
        (topic, json.dumps({k: v for k, v in owned.items() if k != "label"}).encode()),
        ("explorer/pi-h03/detection", good),  # pi-h02's detection under pi-h03's topic
        ("explorer/pi-h03/detection", json.dumps(hijack).encode()),  # pi-h03 claiming pi-h02's id
        ("explorer/pi-h03/feedback", verdict_body),  # pi-h02's verdict under pi-h03's topic
        (feedback_topic_, verdict_body.replace(b'"reject"', b'"maybe"')),
        ("explorer/pi-h02/status", b'{"schema": 1}'),
        ("explorer/pi-h02/extra/detection", good),  # matches no subscription at all
    ]
    receipts = Subscriber(broker, "explorer/+/receipt")
    ingest = start_ingest(server, broker)
    try:
        publish_raw(broker, [(topic, good)])
        assert wait_until(lambda: server.counts().detections == 1, 30)
        publish_raw(broker, hostile + [(topic, other_good)])
        assert wait_until(lambda: server.counts().detections == 2 and ingest.stats.rejected_total >= 10, 30)
    finally:
        ingest.stop()
        receipts.close()
    rejected = [r.reason for r in server.recent_rejections(50)]
    assert len(rejected) == 10
    for expected in ("not UTF-8", "not valid JSON", "over the 16384-byte limit", "NaN", "payload.label: missing",
                     "does not match the topic's 'pi-h03'", "belongs to device 'pi-h02', not 'pi-h03'",
                     "feedback.verdict: 'maybe'", "status.device_id: missing"):
        assert any(expected in reason for reason in rejected), (expected, rejected)
    assert server.detection_ids("pi-h03") == set() and server.feedback_ids() == set()
    # Nothing was receipted to pi-h03; its hijack attempt is refused by name instead.
    to_h03 = [parse_receipt(b) for t, b in receipts.messages if t == "explorer/pi-h03/receipt"]
    assert all(not r.stored for r in to_h03)
    assert any(refusal.record_id == owned["detection_id"] for r in to_h03 for refusal in r.refused)


def test_messages_sent_while_the_ingest_is_down_arrive_when_it_returns(broker, server, store):
    start_ingest(server, broker, client_id="ingest-persistent").stop()  # its session stays with the broker
    ids = queue_detections(store, 10)
    publish_raw(broker, outbox_items(store))
    back = start_ingest(server, broker, client_id="ingest-persistent")
    try:
        assert wait_until(lambda: server.counts().detections == 10, 30)
    finally:
        back.stop()
    assert server.detection_ids() == set(ids)


def test_a_committed_message_is_acknowledged_for_good(broker, server, store):
    """A restarted worker (same session) is sent nothing it had committed and acknowledged."""
    ids = queue_detections(store, 4)
    first = start_ingest(server, broker, client_id="ingest-acks")
    publish_raw(broker, outbox_items(store)[:2])
    assert wait_until(lambda: first.stats.stored == 2, 30)
    first.stop()
    publish_raw(broker, outbox_items(store)[2:])  # while it is down: queued in its session
    back = start_ingest(server, broker, client_id="ingest-acks")
    try:
        assert wait_until(lambda: server.detection_ids() == set(ids), 30)
    finally:
        back.stop()
    assert back.stats.stored == 2 and back.stats.unchanged == 0


def test_a_stopped_postgresql_leaves_messages_unacknowledged_and_they_are_stored_when_it_is_back(
        broker, store, postgres_server):
    target = postgres_server.url(postgres_server.create_database())
    server = ServerStore.open(target)
    ids = queue_detections(store, 5)
    receipts = Subscriber(broker, f"explorer/{DEVICE}/receipt")
    ingest = start_ingest(server, broker, retry_first_s=0.2, retry_max_s=1.0)
    try:
        publish_raw(broker, outbox_items(store)[:2])
        assert wait_until(lambda: ingest.stats.stored == 2, 30)
        postgres_server.stop()
        try:
            publish_raw(broker, outbox_items(store)[2:])
            assert wait_until(lambda: ingest.stats.store_errors >= 2, 60)
            assert receipted(receipts)["detection"] == set(ids[:2])  # nothing receipted it could not commit
        finally:
            postgres_server.start()
        assert wait_until(lambda: receipted(receipts)["detection"] == set(ids), 60)
        assert server.detection_ids() == set(ids)
        assert ingest.wait(0) is None  # it kept its session and went on
    finally:
        ingest.stop()
        receipts.close()
        server.close()


def test_a_lost_broker_is_reconnected_with_back_off(tmp_path, server, store):
    broker = Broker(tmp_path / "broker").start()
    ids = queue_detections(store, 6)
    ingest = start_ingest(server, broker, client_id="ingest-reconnects")
    try:
        publish_raw(broker, outbox_items(store)[:3])
        assert wait_until(lambda: ingest.stats.stored == 3, 30)
        broker.kill()  # kill -9: no persistence, the session is gone too
        broker.start()
        assert wait_until(lambda: ingest.stats.reconnects >= 1 and ingest.subscribed.is_set(), 90)
        publish_raw(broker, outbox_items(store)[3:])
        assert wait_until(lambda: server.detection_ids() == set(ids), 30)
    finally:
        ingest.stop()
        broker.stop()
    assert ingest.wait(0) is None


def test_several_workers_share_the_load_and_store_each_message_once(broker, server, store):
    ids = queue_detections(store, 400)
    workers = [start_ingest(server, broker, client_id=f"ingest-{n}", share_group="explorer-ingest") for n in range(2)]
    try:
        publish_raw(broker, outbox_items(store))
        assert wait_until(lambda: server.counts().detections == 400, 60)
    finally:
        for worker in workers:
            worker.stop()
    assert server.detection_ids() == set(ids)
    assert all(worker.stats.stored > 0 for worker in workers)  # both took a share
    assert sum(worker.stats.stored for worker in workers) == 400


def test_a_batch_names_each_id_once_in_arrival_order_and_refuses_the_foreign_ones():
    from device.contracts.detection import payload_to_json
    from device.contracts.receipt import MAX_IDS, receipt_to_json
    from device.domain import utc_now
    from sync_server.routing import Incoming, receipts_for, route_batch
    from tests.sync_server.rows import OTHER, OWNER, payload

    # One device's backlog drained in one batch (resends among it), and a claim from another device.
    numbers = list(range(700)) + list(range(0, 700, 7)) + [900]
    messages = [Incoming(f"explorer/{OWNER}/detection", payload_to_json(payload(n)).encode()) for n in numbers]
    messages.append(Incoming(f"explorer/{OTHER}/detection", payload_to_json(payload(3, device_id=OTHER)).encode()))
    routed = route_batch(messages)
    outcomes = ["inserted"] * 700 + ["unchanged"] * 100 + ["inserted", "foreign"]
    receipts = receipts_for(routed, outcomes, [], utc_now())
    for receipt in receipts:
        receipt_to_json(receipt)  # each one is a valid receipt
    own = [r for r in receipts if r.device_id == OWNER]
    named = [i for r in own for i in r.stored["detection"]]
    assert named == [payload(n)["detection_id"] for n in list(range(700)) + [900]]  # once each, first arrival order
    assert [len(r.stored["detection"]) for r in own] == [MAX_IDS, 701 - MAX_IDS]
    [claim] = [r for r in receipts if r.device_id == OTHER]
    assert (claim.stored, [f.record_id for f in claim.refused]) == ({}, [payload(3)["detection_id"]])

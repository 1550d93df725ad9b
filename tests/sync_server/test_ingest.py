"""The server's MQTT ingest against a real Mosquitto: devices' outboxes in, hostile input refused."""

from __future__ import annotations

import json

import paho.mqtt.client as mqtt
import pytest

from device.contracts.detection import parse_payload
from device.sync.publisher import drain_once
from sync_server.database import ServerStore
from sync_server.ingest import BrokerSettings, Ingestor
from tests.device.sync.conftest import queue_detections, settings_for
from tests.helpers import wait_until


@pytest.fixture
def server(tmp_path):
    opened = ServerStore(tmp_path / "server" / "aggregate.db")
    yield opened
    opened.close()


def start_ingest(server, broker, client_id="explorer-ingest") -> Ingestor:
    ingest = Ingestor(server, BrokerSettings(host=broker.host, port=broker.port, username="", tls=False),
                      client_id=client_id).start()
    assert ingest.subscribed.wait(10), "the ingest never subscribed"
    return ingest


def publish_raw(broker, items):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    for topic, body in items:
        client.publish(topic, body, qos=1).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def test_a_devices_outbox_lands_in_the_aggregate_database_exactly(broker, server, store):
    ids = queue_detections(store, 20)
    ingest = start_ingest(server, broker)
    try:
        assert drain_once(store, settings_for(broker), "pi-h02").ok == 20
        assert wait_until(lambda: server.counts().detections == 20)
    finally:
        ingest.stop()
    rows = {r["detection_id"]: r for r in server.db.query("SELECT * FROM detection")}
    assert sorted(rows) == sorted(ids)
    for message in store.db.execute("SELECT payload FROM outbox_message").fetchall():
        sent = parse_payload(message[0])
        row = rows[sent["detection_id"]]
        assert (row["device_id"], row["label"], row["confidence"], row["started_on"]) == (
            sent["device_id"], sent["label"], sent["confidence"], sent["started_on"])
        assert json.loads(row["branch_scores"]) == sent["branch_scores"]
        assert row["deliveries"] == 1
    assert server.counts().devices == 1 and ingest.stats.rejected == 0


def test_resends_are_counted_never_duplicated(broker, server, store):
    queue_detections(store, 3)
    payloads = [(topic, body.encode()) for topic, body in store.db.execute("SELECT topic, payload FROM outbox_message")]
    ingest = start_ingest(server, broker)
    try:
        publish_raw(broker, payloads + payloads)  # the outbox sends again when a PUBACK was lost
        assert wait_until(lambda: ingest.stats.unchanged == 3)
    finally:
        ingest.stop()
    assert server.counts().detections == 3 and ingest.stats.stored == 3
    assert {r["deliveries"] for r in server.db.query("SELECT deliveries FROM detection")} == {2}


def test_hostile_messages_are_refused_with_reasons_and_the_ingest_goes_on(broker, server, store):
    queue_detections(store, 2)
    (topic, good), (_, other_good) = store.db.execute("SELECT topic, payload FROM outbox_message").fetchall()
    owned = json.loads(good)
    hijack = dict(json.loads(other_good), device_id="pi-h03", detection_id=owned["detection_id"])
    hostile = [
        (topic, b"\xff\xfe not utf-8"),
        (topic, b"{not json"),
        (topic, b"x" * 20_000),
        (topic, good.replace('"confidence":0.9', '"confidence":NaN').encode()),
        (topic, json.dumps({k: v for k, v in owned.items() if k != "label"}).encode()),
        ("explorer/pi-h03/detection", good.encode()),  # pi-h02's detection under pi-h03's topic
        ("explorer/pi-h03/detection", json.dumps(hijack).encode()),  # pi-h03 claiming pi-h02's id
        ("explorer/pi-h02/extra/detection", good.encode()),
    ]
    ingest = start_ingest(server, broker)
    try:
        publish_raw(broker, [(topic, good.encode())])
        assert wait_until(lambda: server.counts().detections == 1)
        publish_raw(broker, hostile + [(topic, other_good.encode())])
        assert wait_until(lambda: server.counts().detections == 2 and ingest.stats.rejected >= 7)
    finally:
        ingest.stop()
    rejected = [r["reason"] for r in server.db.query("SELECT reason FROM rejected_message ORDER BY rejected_id")]
    assert len(rejected) == 7  # the extra-level topic does not match the subscription at all
    for expected in ("not UTF-8", "not valid JSON", "over the 16384-byte limit", "NaN", "label",
                     "does not match the topic's 'pi-h03'", "belongs to device 'pi-h02'"):
        assert any(expected in reason for reason in rejected), (expected, rejected)
    row = next(server.db.query("SELECT device_id, label FROM detection WHERE detection_id = ?", [owned["detection_id"]]))
    assert row == {"device_id": "pi-h02", "label": owned["label"]}  # the hijack changed nothing


def test_detections_sent_while_the_ingest_is_down_arrive_when_it_returns(broker, server, store):
    ingest = start_ingest(server, broker, client_id="ingest-persistent")
    ingest.stop()  # its session, and its subscription, stay with the broker
    ids = queue_detections(store, 10)
    assert drain_once(store, settings_for(broker), "pi-h02").ok == 10
    back = start_ingest(server, broker, client_id="ingest-persistent")
    try:
        assert wait_until(lambda: server.counts().detections == 10)
    finally:
        back.stop()
    assert sorted(r["detection_id"] for r in server.db.query("SELECT detection_id FROM detection")) == sorted(ids)

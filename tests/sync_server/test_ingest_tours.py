"""Tours and places through a real Mosquitto into the aggregate database, on SQLite and on a real
PostgreSQL: a device's tour messages (started, ended) become one tour row whose end is never
undone, its detections arrive with their site and coordinates (schema 2) beside an old device's
schema-1 ones, each tour state is receipted apart, and a tour id claimed by another device or a
malformed tour is refused with its reason."""

from __future__ import annotations

import json
from datetime import timedelta

from device.config import DeviceSettings
from device.contracts.receipt import parse_receipt
from device.contracts.tour import delivery_id, tour_to_json, tour_to_payload
from device.domain import Detection, Tour
from device.store import Store
from tests.device.sync.conftest import T0, outbox_states
from tests.helpers import wait_until
from tests.mqtt import Subscriber
from tests.sync_server.test_ingest import DEVICE, outbox_items, publish_raw, start_ingest

H02 = DeviceSettings(id=DEVICE, site="El Silencio Natural Reserve", latitude=6.23, longitude=-74.71)
PLACE = dict(site=H02.site, latitude=6.23, longitude=-74.71, coordinate_uncertainty_m=1000.0)


def detection(n: int, tour_id: str | None, **place) -> Detection:
    started = T0 + timedelta(seconds=5 * n)
    return Detection(label="21211", started_on=started, ended_on=started + timedelta(seconds=5), confidence=0.9,
                     branch_scores={"birdnet": 0.9}, bundle_name="elsilencio-default", bundle_version="1.0.0",
                     bundle_sha256="a" * 64, device_id=DEVICE, tour_id=tour_id, source="H02_20230420_074000.ogg",
                     start_s=5.0 * n, end_s=5.0 * n + 5, **place)


def receipted(subscriber: Subscriber, kind: str) -> set[str]:
    return {i for _, body in list(subscriber.messages) for i in parse_receipt(body).stored.get(kind, ())}


def stored_detection(server, detection_id: str) -> dict:
    with server.engine.connect() as connection:
        return dict(connection.exec_driver_sql(
            "SELECT schema, site, latitude, longitude, coordinate_uncertainty_m, tour_id FROM detection "
            f"WHERE detection_id = '{detection_id}'").mappings().one())


def test_a_walked_tour_and_its_placed_detections_are_committed_then_receipted(broker, server_target, tmp_path):
    from sync_server.db import ServerStore

    device = Store.open(tmp_path / "explorer.db", device=H02)
    server = ServerStore.open(server_target)
    receipts = Subscriber(broker, f"explorer/{DEVICE}/receipt")
    ingest = start_ingest(server, broker)
    try:
        tour = device.start_tour(name="Dawn chorus", guide="Ana")
        placed = detection(0, tour.tour_id, **PLACE)
        device.save_detection(placed, final=True)
        stopped = device.stop_tour()
        old = json.loads(outbox_items(device)[1][1])  # the detection, as a device not yet upgraded sends it
        old.update(schema=1, detection_id="6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f")
        for name in ("site", "latitude", "longitude", "coordinate_uncertainty_m", "context_scores", "clip_withheld"):
            del old[name]
        publish_raw(broker, outbox_items(device) + [(f"explorer/{DEVICE}/detection", json.dumps(old).encode())])
        states = {delivery_id(tour.tour_id, None), delivery_id(tour.tour_id, json.loads(
            outbox_items(device)[2][1])["ended_on"])}
        assert wait_until(lambda: receipted(receipts, "tour") == states, 30)
        assert wait_until(lambda: receipted(receipts, "detection") == {placed.detection_id, old["detection_id"]}, 30)
        device.apply_receipts([parse_receipt(body) for _, body in list(receipts.messages)])
    finally:
        ingest.stop()
        receipts.close()
    [row] = server.tours_held(DEVICE).values()
    assert {k: row[k] for k in ("tour_id", "device_id", "name", "guide", "site", "latitude", "longitude")} == {
        "tour_id": tour.tour_id, "device_id": DEVICE, "name": "Dawn chorus", "guide": "Ana", "site": H02.site,
        "latitude": 6.23, "longitude": -74.71}
    assert (row["started_on"], row["ended_on"]) == (
        tour.started_on.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        stopped.ended_on.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
    assert stored_detection(server, placed.detection_id) == {"schema": 3, "tour_id": tour.tour_id, **PLACE}
    assert stored_detection(server, old["detection_id"]) == {
        "schema": 1, "tour_id": tour.tour_id, "site": None, "latitude": None, "longitude": None,
        "coordinate_uncertainty_m": None}
    assert ingest.stats.stored == 4 and ingest.stats.rejected_total == 0  # two detections, two tour states
    # Every message the device sent is confirmed: the start and the end of the tour apart.
    assert outbox_states(device) == {"pending": 0, "unconfirmed": 0, "confirmed": 3, "refused": 0}
    device.close()
    server.close()


def test_a_start_arriving_after_the_end_never_makes_the_tour_under_way_again(broker, server_target, tmp_path):
    from sync_server.db import ServerStore

    device = Store.open(tmp_path / "explorer.db", device=H02)
    server = ServerStore.open(server_target)
    receipts = Subscriber(broker, f"explorer/{DEVICE}/receipt")
    ingest = start_ingest(server, broker)
    try:
        tour = device.start_tour(name="Night frogs")
        device.stop_tour()
        start, end = outbox_items(device)
        publish_raw(broker, [end])
        assert wait_until(lambda: tour.tour_id in server.tours_held(), 30)
        publish_raw(broker, [start, start])  # the start, resent past its receipt timeout, twice
        assert wait_until(lambda: delivery_id(tour.tour_id, None) in receipted(receipts, "tour"), 30)
        assert wait_until(lambda: ingest.stats.unchanged == 2, 30)
    finally:
        ingest.stop()
        receipts.close()
    [row] = server.tours_held().values()
    assert row["ended_on"] == json.loads(end[1])["ended_on"] and row["deliveries"] == 3
    device.close()
    server.close()


def test_a_tour_id_another_device_holds_and_a_malformed_tour_are_refused_with_reasons(broker, server_target, tmp_path):
    from sync_server.db import ServerStore

    device = Store.open(tmp_path / "explorer.db", device=H02)
    server = ServerStore.open(server_target)
    receipts = Subscriber(broker, "explorer/pi-h03/receipt")
    ingest = start_ingest(server, broker)
    try:
        tour = device.start_tour(name="Dawn chorus")
        publish_raw(broker, outbox_items(device))
        assert wait_until(lambda: tour.tour_id in server.tours_held(), 30)
        hijack = tour_to_json(tour_to_payload(Tour(tour.tour_id, "Mine now", None, tour.started_on, None, "pi-h03")))
        publish_raw(broker, [("explorer/pi-h03/tour", hijack.encode()),
                             ("explorer/pi-h03/tour", b'{"schema":1,"tour_id":"nope"}'),
                             (f"explorer/{DEVICE}/tour", hijack.encode())])  # pi-h03's payload on pi-h02's topic
        assert wait_until(lambda: ingest.stats.rejected_total == 3, 30)
        assert wait_until(lambda: any(parse_receipt(b).refused for _, b in list(receipts.messages)), 30)
    finally:
        ingest.stop()
        receipts.close()
    assert server.tours_held()[tour.tour_id]["name"] == "Dawn chorus"  # untouched
    reasons = sorted(r.reason for r in server.recent_rejections(10))
    assert any(f"tour {tour.tour_id} belongs to device '{DEVICE}', not 'pi-h03'" == r for r in reasons), reasons
    assert "tour.device_id: missing" in reasons, reasons
    assert any("does not match the topic's 'pi-h02'" in r for r in reasons), reasons
    [refusal] = [r for _, b in list(receipts.messages) for r in parse_receipt(b).refused]
    assert (refusal.kind, refusal.record_id) == ("tour", delivery_id(tour.tour_id, None))
    device.close()
    server.close()

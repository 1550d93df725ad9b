"""Tours reach the server: each start and each stop queues the tour's message in its own
transaction (device/store/tours.py), as the device its store was opened for, and receipts
confirm each state of a tour apart. Detections keep the device's place through the log."""

from __future__ import annotations

import json

import pytest

from device.config import DeviceSettings
from device.contracts.detection import parse_payload
from device.contracts.tour import delivery_id, parse_tour
from device.domain import Receipt, iso_utc, utc_now
from device.store import Store

H02 = DeviceSettings(id="pi-h02", site="El Silencio Natural Reserve", latitude=6.23, longitude=-74.71)


def tour_messages(store: Store) -> list:
    return [m for m in store.open_messages(1000) if m.kind == "tour"]


def test_a_tour_queues_its_start_and_its_end_as_this_device_with_its_place(db_path):
    store = Store.open(db_path, device=H02)
    started = store.start_tour(name="Dawn chorus", guide="Ana")
    [first] = tour_messages(store)
    sent = parse_tour(first.payload)
    assert first.topic == "explorer/pi-h02/tour" and first.detection_id is None
    assert sent == {"schema": 1, "tour_id": started.tour_id, "device_id": "pi-h02", "name": "Dawn chorus",
                    "guide": "Ana", "started_on": iso_utc(started.started_on), "ended_on": None,
                    "site": "El Silencio Natural Reserve", "latitude": 6.23, "longitude": -74.71}
    assert first.record_id == delivery_id(started.tour_id, None)
    assert (started.device_id, started.site, started.latitude, started.longitude) == ("pi-h02", H02.site, 6.23, -74.71)
    assert store.tour(started.tour_id) == started  # the row holds what was sent

    stopped = store.stop_tour()
    start_message, end_message = tour_messages(store)
    ended = parse_tour(end_message.payload)
    assert start_message == first and ended == dict(sent, ended_on=iso_utc(stopped.ended_on))
    assert end_message.record_id == delivery_id(started.tour_id, ended["ended_on"]) != first.record_id


def test_the_place_recorded_at_the_start_is_the_one_the_end_reports(db_path):
    Store.open(db_path, device=H02).start_tour(name="Moved")
    # The config changed meanwhile (another site): the tour still ends where it began.
    elsewhere = DeviceSettings(id="pi-h02", site="Quebrada H07", latitude=6.3, longitude=-74.6)
    stopped = Store.open(db_path, device=elsewhere).stop_tour()
    assert (stopped.site, stopped.latitude) == (H02.site, 6.23)
    assert parse_tour(tour_messages(Store.open(db_path))[-1].payload)["site"] == H02.site


def test_a_late_receipt_for_the_start_does_not_confirm_the_end(db_path):
    store = Store.open(db_path, device=H02)
    tour = store.start_tour(name="Offline walk")
    store.stop_tour()
    start, end = tour_messages(store)
    # The start's receipt, held by the broker while the device was out of coverage, arrives now.
    outcome = store.apply_receipts([Receipt("pi-h02", utc_now(), {"tour": (delivery_id(tour.tour_id, None),)})])
    assert outcome.confirmed == 1
    assert store.message_states([start.message_id, end.message_id]) == {start.message_id: "confirmed",
                                                                         end.message_id: "open"}
    assert [m.message_id for m in tour_messages(store)] == [end.message_id]  # still to send


def test_a_tour_started_without_the_devices_settings_is_reported_when_a_store_that_has_them_stops_it(db_path):
    plain = Store.open(db_path)
    tour = plain.start_tour(name="From an old release")
    assert tour.device_id is None and tour_messages(plain) == []
    stopped = Store.open(db_path, device=H02).stop_tour()
    [only] = tour_messages(plain)
    assert parse_tour(only.payload) == {
        "schema": 1, "tour_id": tour.tour_id, "device_id": "pi-h02", "name": "From an old release", "guide": None,
        "started_on": iso_utc(tour.started_on), "ended_on": iso_utc(stopped.ended_on),
        "site": H02.site, "latitude": 6.23, "longitude": -74.71}
    assert plain.tour(tour.tour_id).device_id == "pi-h02"


def test_a_device_the_message_cannot_carry_stores_and_queues_nothing(db_path):
    store = Store.open(db_path, device=DeviceSettings(id="pi h02"))  # bypassing the config's own check
    with pytest.raises(ValueError, match="tour.device_id"):
        store.start_tour(name="Never")
    assert store.list_tours() == [] and store.open_messages() == []


def test_a_device_without_coordinates_reports_its_site_and_no_coordinates(db_path):
    store = Store.open(db_path, device=DeviceSettings(id="pi-h02", site="  "))
    store.start_tour()
    sent = parse_tour(tour_messages(store)[0].payload)
    assert (sent["site"], sent["latitude"], sent["longitude"]) == (None, None, None)


def test_a_detections_place_is_logged_and_sent_and_survives_recovery(store, make_detection):
    det = make_detection(site="El Silencio Natural Reserve", latitude=6.23, longitude=-74.71,
                         coordinate_uncertainty_m=1000.0)
    store.save_detection(det)  # open: logged, not yet sent
    logged = store.detection(det.detection_id)
    assert (logged.site, logged.latitude, logged.longitude, logged.coordinate_uncertainty_m) == (
        "El Silencio Natural Reserve", 6.23, -74.71, 1000.0)
    assert store.recover_open_detections() == 1  # a power cut: closed from the row alone
    [message] = store.open_messages()
    sent = parse_payload(message.payload)
    assert sent["schema"] >= 2  # places are sent since schema 2
    assert [sent[k] for k in ("site", "latitude", "longitude", "coordinate_uncertainty_m")] == [
        "El Silencio Natural Reserve", 6.23, -74.71, 1000.0]
    unplaced = make_detection(at_s=60)
    store.save_detection(unplaced, final=True)
    assert json.loads(store.open_messages()[-1].payload)["latitude"] is None

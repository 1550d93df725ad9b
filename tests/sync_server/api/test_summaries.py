"""Tours and their summaries, the Species Spotting Rate, devices and lag, species per day and
accumulation curves, from a running server fed by two devices' real sync code.

The expected numbers are worked out here from what the devices made, by the definitions of
device/store/summary.py (rejected detections never count; SSR is the mean of each tour's unique
species), never read back from the API.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone

import pytest

from device.domain import iso_utc, parse_iso_utc
from tests.sync_server.api.conftest import T0


def counted(field, keep=lambda device, det, plan: True):
    return [(device, det, plan) for device, det, plan in field.detections()
            if plan.verdict != "reject" and keep(device, det, plan)]


def test_tours_list_each_tour_with_its_summary(field):
    answer = field.server.get("/api/v1/tours")
    assert answer.status_code == 200, answer.text
    tours = {t["name"]: t for t in answer.json()["tours"]}
    assert set(tours) == set(field.tours)
    for name, tour in tours.items():
        mine = [(d, det, p) for d, det, p in field.detections() if p.tour == name]
        kept = [(d, det, p) for d, det, p in mine if p.verdict != "reject"]
        assert tour["tour_id"] == field.tours[name] and tour["device_id"] == "pi-h02" and tour["site"] == "H02"
        assert tour["guide"] == "Ana Restrepo" and tour["reported"] is True
        assert tour["active"] is False and tour["ended_on"] >= tour["started_on"]
        assert tour["unique_species"] == len({det.label for _, det, _ in kept})
        assert tour["detection_count"] == len(kept) and tour["rejected_count"] == len(mine) - len(kept)
        assert tour["first_heard_on"] == iso_utc(min(det.started_on for _, det, _ in kept))
        assert tour["last_heard_on"] == iso_utc(max(det.ended_on for _, det, _ in kept))
        assert tour["duration_s"] == pytest.approx(
            (parse_iso_utc(tour["ended_on"]) - parse_iso_utc(tour["started_on"])).total_seconds())
    assert field.server.get("/api/v1/tours", params={"device_id": "pi-h07"}).json()["tours"] == []
    assert len(field.server.get("/api/v1/tours", params={"site": "H02"}).json()["tours"]) == 2
    later = field.server.get("/api/v1/tours", params={"start": iso_utc(datetime.now(timezone.utc) + timedelta(1))})
    assert later.status_code == 200 and later.json()["tours"] == []


def test_the_species_spotting_rate_over_any_set_of_tours(field):
    for names in (["Dawn chorus"], ["Night frogs"], ["Dawn chorus", "Night frogs"]):
        answer = field.server.get("/api/v1/tours/summary", params={"tour_id": [field.tours[n] for n in names]})
        assert answer.status_code == 200, answer.text
        summary = answer.json()
        kept = counted(field, lambda d, det, p: p.tour in names)
        per_tour = {n: {det.label for _, det, p in kept if p.tour == n} for n in names}
        assert summary["tour_count"] == len(names)
        assert summary["species_spotting_rate"] == pytest.approx(sum(map(len, per_tour.values())) / len(names))
        assert summary["unique_species"] == len(set().union(*per_tour.values()))
        assert summary["detection_count"] == len(kept)
        assert summary["rejected_count"] == sum(1 for _, _, p in field.detections()
                                                if p.tour in names and p.verdict == "reject")
        tallies = {t["label"]: t for t in summary["species"]}
        for label in set().union(*per_tour.values()):
            heard = [det for _, det, _ in kept if det.label == label]
            assert tallies[label]["detection_count"] == len(heard)
            assert tallies[label]["tour_count"] == sum(label in s for s in per_tour.values())
            assert tallies[label]["first_heard_on"] == iso_utc(min(d.started_on for d in heard))
        counts = [t["detection_count"] for t in summary["species"]]
        assert counts == sorted(counts, reverse=True)
    # Both tours: 3 and 3 unique species, 4 in all (a rejected Katydid left out).
    both = field.server.get("/api/v1/tours/summary", params={"tour_id": list(field.tours.values())}).json()
    assert (both["species_spotting_rate"], both["unique_species"], both["rejected_count"]) == (3.0, 4, 1)


def test_a_summary_of_no_tour_or_an_unknown_one_is_refused(field):
    none = field.server.get("/api/v1/tours/summary")
    assert none.status_code == 422 and ["query", "tour_id"] in [e["loc"] for e in none.json()["detail"]]
    unknown = field.server.get("/api/v1/tours/summary", params={"tour_id": [field.tours["Dawn chorus"], "nope"]})
    assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]


def test_devices_show_their_status_detections_and_lag(field):
    before = datetime.now(timezone.utc)
    devices = {d["device_id"]: d for d in field.server.get("/api/v1/devices").json()["devices"]}
    after = datetime.now(timezone.utc)
    assert set(devices) == {"pi-h02", "pi-h07"}
    for device_id, device in devices.items():
        mine = [det for d, det, _ in field.detections() if d == device_id]
        newest = max(det.started_on for det in mine)
        assert device["detection_count"] == len(mine)
        assert device["newest_detection_on"] == iso_utc(newest)
        assert (before - newest).total_seconds() - 1 <= device["lag_s"] <= (after - newest).total_seconds() + 1
        assert device["online"] is False  # `explorer sync` by hand says goodbye as it disconnects
        assert device["release"] and device["status_received_on"]


def expected_days(field, offset: timedelta) -> dict[str, tuple[set, int, int]]:
    days = defaultdict(lambda: [set(), 0, 0])
    for _, det, plan in field.detections():
        day = days[(det.started_on + offset).strftime("%Y-%m-%d")]
        if plan.verdict == "reject":
            day[2] += 1
        else:
            day[0].add(det.label)
            day[1] += 1
    return {day: tuple(v) for day, v in days.items()}


@pytest.mark.parametrize("offset_min", [0, -300])
def test_species_per_day_in_utc_or_the_reserves_time(field, offset_min):
    answer = field.server.get("/api/v1/species/daily", params={"utc_offset_minutes": offset_min})
    assert answer.status_code == 200, answer.text
    days = answer.json()["days"]
    expected = expected_days(field, timedelta(minutes=offset_min))
    assert [d["day"] for d in days] == sorted(expected)
    for day in days:
        labels, count, rejected = expected[day["day"]]
        assert {s["label"] for s in day["species"]} == labels and day["species_count"] == len(labels)
        assert (day["detection_count"], day["rejected_count"]) == (count, rejected)
    if offset_min == -300:  # the night's frogs belong to the evening they were heard
        assert len(days) == 2 and len(expected_days(field, timedelta(0))) == 2
        assert days[0]["species_count"] == 5


def test_species_per_day_takes_the_detection_filters(field):
    days = field.server.get("/api/v1/species/daily", params={"class_name": "Amphibia", "site": "H07"}).json()["days"]
    assert [(d["day"], [s["label"] for s in d["species"]]) for d in days] == [("2026-04-21", ["21211"])]


def expected_curve(rows, by_day: bool):
    seen, points = set(), []
    for det in sorted(rows, key=lambda det: det.started_on):
        if det.label in seen:
            continue
        seen.add(det.label)
        on = iso_utc(det.started_on.replace(hour=0, minute=0, second=0)) if by_day else iso_utc(det.started_on)
        if points and points[-1][0] == on:
            points[-1] = (on, len(seen))
        else:
            points.append((on, len(seen)))
    return points


def test_accumulation_curves_per_site_by_day_and_per_tour_by_detection(field):
    sites = field.server.get("/api/v1/species/accumulation", params={"by": "site"}).json()
    assert sites["by"] == "site"
    curves = {c["key"]: c for c in sites["curves"]}
    assert set(curves) == {"H02", "H07"}
    for site, device in (("H02", "pi-h02"), ("H07", "pi-h07")):
        rows = [det for d, det, _ in counted(field) if d == device]
        assert [(p["on"], p["species"]) for p in curves[site]["points"]] == expected_curve(rows, by_day=True)
    tours = field.server.get("/api/v1/species/accumulation", params={"by": "tour"}).json()
    curves = {c["name"]: c for c in tours["curves"]}
    assert set(curves) == set(field.tours)
    for name in field.tours:
        rows = [det for _, det, p in counted(field) if p.tour == name]
        assert [(p["on"], p["species"]) for p in curves[name]["points"]] == expected_curve(rows, by_day=False)
        assert curves[name]["key"] == field.tours[name]
    assert curves["Dawn chorus"]["points"][0]["on"] == iso_utc(T0)
    bad = field.server.get("/api/v1/species/accumulation", params={"by": "guide"})
    assert bad.status_code == 422 and ["query", "by"] in [e["loc"] for e in bad.json()["detail"]]
    wide = field.server.get("/api/v1/species/daily", params={"utc_offset_minutes": 15 * 60})
    assert wide.status_code == 422 and ["query", "utc_offset_minutes"] in [e["loc"] for e in wide.json()["detail"]]

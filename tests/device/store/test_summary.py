"""Tour summaries: species counts, first/last heard, rejected detections, the spotting rate."""

from __future__ import annotations

import pytest

from device.store import NotFoundError

LABELS = [
    {"primary_label": "littin1", "scientific_name": "Crypturellus soui", "common_name": "Little Tinamou", "class_name": "Aves"},
    {"primary_label": "21211", "scientific_name": "Allobates femoralis", "common_name": "Brilliant-thighed Poison Frog", "class_name": "Amphibia"},
    {"primary_label": "65448", "scientific_name": "Engystomops pustulosus", "common_name": "Tungara Frog", "class_name": "Amphibia"},
]  # fmt: skip


def _walk(store, make_detection, name, heard):
    """A finished tour in which `heard` = [(label, at_s)] were detected."""
    tour = store.start_tour(name=name)
    dets = []
    for label, at_s in heard:
        det = make_detection(label, at_s=at_s, tour_id=tour.tour_id)
        store.save_detection(det, final=True)
        dets.append(det)
    store.stop_tour()
    return store.tour(tour.tour_id), dets


def test_one_tour_counts_species_events_and_first_and_last_heard(store, make_detection):
    store.record_bundle("elsilencio-default", "1.0.0", "a" * 64, LABELS)
    tour, dets = _walk(store, make_detection, "Dawn", [("littin1", 0), ("21211", 10), ("littin1", 60)])
    result = store.tour_summary([tour.tour_id])
    assert result.unique_species == 2
    assert result.species_spotting_rate == 2.0
    assert result.detection_count == 3 and result.rejected_count == 0
    tinamou, frog = result.species
    assert (tinamou.label, tinamou.detection_count, tinamou.tour_count) == ("littin1", 2, 1)
    assert tinamou.common_name == "Little Tinamou" and tinamou.scientific_name == "Crypturellus soui"
    assert tinamou.first_heard_on == dets[0].started_on
    assert tinamou.last_heard_on == dets[2].ended_on
    assert frog.class_name == "Amphibia"
    assert result.first_heard_on == dets[0].started_on and result.last_heard_on == dets[2].ended_on
    assert result.duration_s == pytest.approx(tour.duration_s())


def test_the_spotting_rate_is_the_mean_of_unique_species_per_tour(store, make_detection):
    one, _ = _walk(store, make_detection, "one", [("littin1", 0), ("21211", 5), ("21211", 9)])  # 2 species
    two, _ = _walk(store, make_detection, "two", [("littin1", 0), ("65448", 5), ("21211", 9)])  # 3 species
    three, _ = _walk(store, make_detection, "three", [])  # 0 species
    result = store.tour_summary([one.tour_id, two.tour_id, three.tour_id])
    assert result.species_spotting_rate == pytest.approx((2 + 3 + 0) / 3)
    assert result.unique_species == 3
    assert [s.unique_species for s in result.tours] == [2, 3, 0]
    assert {t.label: t.tour_count for t in result.species} == {"littin1": 2, "21211": 2, "65448": 1}
    assert result.species[0].label == "21211"  # most detections first (3)
    assert result.duration_s == pytest.approx(sum(s.duration_s for s in result.tours))


def test_rejected_detections_do_not_count_but_a_change_of_mind_does(store, make_detection):
    tour, dets = _walk(store, make_detection, "Dawn", [("littin1", 0), ("21211", 10), ("65448", 20)])
    store.add_feedback(dets[0].detection_id, "reject", "it was a person whistling")
    store.add_feedback(dets[1].detection_id, "confirm")
    store.add_feedback(dets[2].detection_id, "reject")
    store.add_feedback(dets[2].detection_id, "confirm", "heard it again: it was there")
    result = store.tour_summary([tour.tour_id])
    assert {t.label for t in result.species} == {"21211", "65448"}
    assert result.detection_count == 2 and result.rejected_count == 1
    assert result.species_spotting_rate == 2.0


def test_open_and_secondary_detections_count(store, make_detection):
    tour = store.start_tour()
    store.save_detection(make_detection("littin1", tour_id=tour.tour_id))  # still open
    store.save_detection(make_detection("21211", tour_id=tour.tour_id, secondary=True), final=True)
    assert store.tour_summary([tour.tour_id]).unique_species == 2


def test_an_active_tour_counts_time_up_to_now(store):
    tour = store.start_tour()
    assert store.tour_summary([tour.tour_id]).tours[0].tour.active
    assert store.tour_summary([tour.tour_id]).duration_s >= 0


def test_detections_outside_the_tours_are_not_counted(store, make_detection):
    tour, _ = _walk(store, make_detection, "Dawn", [("littin1", 0)])
    store.save_detection(make_detection("65448", at_s=100), final=True)  # no tour
    assert [t.label for t in store.tour_summary([tour.tour_id]).species] == ["littin1"]


def test_no_tours_or_an_unknown_tour_is_a_clear_error(store):
    with pytest.raises(ValueError, match="at least one tour"):
        store.tour_summary([])
    with pytest.raises(NotFoundError, match="no tour with id 'missing'"):
        store.tour_summary(["missing"])


def test_summary_to_dict_is_json_ready(store, make_detection):
    import json

    tour, _ = _walk(store, make_detection, "Dawn", [("littin1", 0)])
    data = json.loads(json.dumps(store.tour_summary([tour.tour_id]).to_dict()))
    assert data["species_spotting_rate"] == 1.0
    assert data["species"][0]["label"] == "littin1"
    assert data["tours"][0]["ended_on"].endswith("Z")
    assert data["first_heard_on"] == "2026-04-20T07:40:00.000Z"
    assert data["last_heard_on"] == "2026-04-20T07:40:05.000Z"

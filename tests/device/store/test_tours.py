"""Tours: one active at a time, stopping, listing, and id prefixes."""

from __future__ import annotations

import pytest

from device.store import NotFoundError, Store, StoreError, TourActiveError


def test_start_makes_the_active_tour_and_stop_ends_it(store):
    tour = store.start_tour(name="Dawn chorus", guide="Ana")
    assert tour.active and tour.name == "Dawn chorus" and tour.guide == "Ana"
    assert store.active_tour() == tour
    stopped = store.stop_tour()
    assert stopped.tour_id == tour.tour_id and not stopped.active
    assert stopped.ended_on >= stopped.started_on
    assert store.active_tour() is None
    assert store.tour(tour.tour_id) == stopped


def test_a_tour_without_a_name_gets_a_dated_one(store):
    assert store.start_tour().name.startswith("Tour 20")


def test_starting_a_second_tour_names_the_active_one(store):
    first = store.start_tour(name="Morning")
    with pytest.raises(TourActiveError, match=r"'Morning'.*still active") as caught:
        store.start_tour(name="Afternoon")
    assert caught.value.active_tour_id == first.tour_id
    assert [t.name for t in store.list_tours()] == ["Morning"]


def test_the_database_itself_refuses_a_second_active_tour(store, db_path):
    """Two processes racing to start a tour: the partial unique index is the backstop."""
    store.start_tour(name="Morning")
    with pytest.raises(Exception, match="UNIQUE constraint failed: index 'tour_single_active'"):
        store.db.execute(
            "INSERT INTO tour (tour_id, name, started_on) VALUES ('x', 'sneaky', '2026-01-01T00:00:00.000Z')"
        )
    other = Store.open(db_path)
    with pytest.raises(TourActiveError, match="Morning"):
        other.start_tour(name="From another connection")


def test_stopping_when_no_tour_is_active_is_a_clear_error(store):
    with pytest.raises(StoreError, match="no tour is active"):
        store.stop_tour()


def test_stopping_an_unknown_or_ended_tour_is_a_clear_error(store):
    with pytest.raises(NotFoundError, match="no tour with id 'nope'"):
        store.stop_tour("nope")
    tour = store.start_tour()
    store.stop_tour(tour.tour_id)
    with pytest.raises(StoreError, match="already ended"):
        store.stop_tour(tour.tour_id)


def test_list_is_newest_first_and_ids_resolve_from_a_unique_prefix(store):
    for name in ("one", "two", "three"):
        store.start_tour(name=name)
        store.stop_tour()
    listed = store.list_tours()
    assert [t.name for t in listed] == ["three", "two", "one"]
    assert store.tour(listed[0].tour_id[:8]).name == "three"
    with pytest.raises(NotFoundError):
        store.tour("zzzzzzzz")


def test_an_overlong_name_is_refused(store):
    with pytest.raises(ValueError, match="tour name"):
        store.start_tour(name="x" * 500)
    assert store.list_tours() == []


def test_a_typed_wildcard_is_not_a_prefix(store):
    store.start_tour(name="only")
    with pytest.raises(NotFoundError):
        store.tour("%")
    with pytest.raises(NotFoundError):
        store.tour("________")

"""The outbox's four states (device/store/outbox.py): pending, unconfirmed, confirmed, refused.

A PUBACK (a SUCCESS attempt) makes a message unconfirmed for the receipt timeout, after which it
is pending again; only a receipt confirms or refuses it, and then it is never sent again.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from device.domain import Receipt, Refusal, iso_utc, utc_now
from device.store import outbox


@pytest.fixture
def queued(store, make_detection):
    """Four closed detections: four messages, oldest first."""
    dets = [make_detection(label, at_s=i * 10) for i, label in enumerate(("littin1", "21211", "65448", "555086"))]
    for det in dets:
        store.save_detection(det, final=True)
    return store.pending_messages()


def receipt(stored=None, refused=()):
    return Receipt("pi-h02", utc_now(), {k: tuple(v) for k, v in (stored or {}).items()}, tuple(refused))


def counts(store, **kwargs) -> tuple[int, int, int, int]:
    found = store.outbox_counts(**kwargs)
    return found.pending, found.unconfirmed, found.confirmed, found.refused


def age_attempts(store, message_id: str, seconds: float) -> None:
    """Make a message's attempts look `seconds` old (the clock the timeout reads)."""
    store.db.execute("UPDATE outbox_attempt SET attempted_on = ? WHERE message_id = ?",
                     [iso_utc(utc_now() - timedelta(seconds=seconds)), message_id])
    store.db.conn.commit()


def test_each_message_names_its_kind_and_the_id_receipts_will_name(queued):
    assert [(m.kind, m.record_id) for m in queued] == [("detection", m.detection_id) for m in queued]


def test_a_puback_makes_a_message_unconfirmed_until_the_receipt_timeout_passes(store, queued):
    first, second = queued[0].message_id, queued[1].message_id
    store.record_attempts([(first, "mqtt://b:1883", True, None), (second, "mqtt://b:1883", False, "timeout")])
    assert counts(store) == (3, 1, 0, 0)  # a FAILURE leaves it pending
    assert [m.message_id for m in store.pending_messages()] == [m.message_id for m in queued if m.message_id != first]

    age_attempts(store, first, 601)  # no receipt within the default 600 s: sent again
    assert counts(store) == (4, 0, 0, 0)
    assert store.pending_messages()[0].message_id == first
    assert counts(store, receipt_timeout_s=3600) == (3, 1, 0, 0)  # a longer timeout still waits


def test_unconfirmed_is_per_destination_when_one_is_named(store, queued):
    store.record_attempt(queued[0].message_id, "mqtt://old-broker:1883", ok=True)
    assert counts(store, destination="mqtt://old-broker:1883")[:2] == (3, 1)
    assert counts(store, destination="mqtts://new-broker:8883")[:2] == (4, 0)


def test_a_receipt_confirms_what_it_names_and_a_confirmed_message_is_never_pending_again(store, queued):
    store.record_attempts([(m.message_id, "mqtt://b:1883", True, None) for m in queued])
    outcome = store.apply_receipts([receipt({"detection": [queued[0].record_id, queued[1].record_id]})])
    assert (outcome.confirmed, outcome.refused, outcome.unchanged) == (2, 0, 0)
    for message in queued:
        age_attempts(store, message.message_id, 10_000)
    assert counts(store) == (2, 0, 2, 0)
    assert {m.message_id for m in store.pending_messages()} == {queued[2].message_id, queued[3].message_id}
    assert {m.message_id for m in store.open_messages()} == {queued[2].message_id, queued[3].message_id}
    assert store.last_confirmed_on() is not None

    again = store.apply_receipts([receipt({"detection": [queued[0].record_id]})])  # the server receipts resends
    assert (again.confirmed, again.unchanged) == (0, 1)


def test_a_refusal_is_final_and_keeps_its_reason(store, queued):
    reason = f"detection {queued[2].record_id} is already stored for another device"
    outcome = store.apply_receipts([receipt(refused=[Refusal("detection", queued[2].record_id, reason)])])
    assert outcome.refused == 1
    assert counts(store) == (3, 0, 0, 1)
    assert queued[2].message_id not in {m.message_id for m in store.open_messages()}
    [(kind, record_id, _, kept)] = store.refusals()
    assert (kind, record_id, kept) == ("detection", queued[2].record_id, reason)
    assert store.message_states([queued[2].message_id, queued[0].message_id]) == {
        queued[2].message_id: "refused", queued[0].message_id: "open"}


def test_a_receipt_names_records_by_kind(store, queued):
    # A feedback id that happens to equal a detection id confirms no detection message.
    outcome = store.apply_receipts([receipt({"feedback": [queued[0].record_id]})])
    assert (outcome.confirmed, outcome.unchanged) == (0, 1)
    assert counts(store) == (4, 0, 0, 0)


def test_reading_on_after_a_position_skips_what_was_read(store, queued):
    first_two = store.pending_messages(limit=2)
    rest = store.pending_messages(limit=10, after=first_two[-1].position)
    assert [m.message_id for m in first_two + rest] == [m.message_id for m in queued]
    assert store.open_messages(limit=10, after=queued[-1].position) == []


def test_bad_arguments_are_refused(store, queued):
    with pytest.raises(ValueError, match="limit"):
        store.open_messages(limit=0)
    with pytest.raises(ValueError, match="receipt_timeout_s"):
        store.pending_count(receipt_timeout_s=-1)
    with pytest.raises(ValueError, match="kind 'clip' is not one of"):
        outbox.enqueue(store.db, "explorer/pi-h02/clip", "{}", kind="clip", record_id="x")
    with pytest.raises(ValueError, match="no record id"):
        outbox.enqueue(store.db, "explorer/pi-h02/feedback", "{}", kind="feedback")


def test_each_unanswered_puback_doubles_the_wait_before_the_next_resend(store):
    """A server down for a day: a backlog is not resent every timeout, but after 1, 2, 4... of them."""
    from datetime import timedelta

    from device.domain import utc_now
    from device.store import outbox

    from tests.device.sync.conftest import queue_detections

    queue_detections(store, 1)
    (message,) = store.pending_messages(10)
    destination = "mqtt://broker:1883"
    now = utc_now()

    def pending_at(seconds_later: float) -> bool:
        return bool(outbox.pending_messages(store.db, 10, destination, receipt_timeout_s=100,
                                            now=now + timedelta(seconds=seconds_later)))

    store.record_attempts([(message.message_id, destination, True, None)])  # first PUBACK, no receipt
    assert not pending_at(99) and pending_at(101)  # x1
    store.record_attempts([(message.message_id, destination, True, None)])  # resent, PUBACKed, no receipt
    assert not pending_at(199) and pending_at(201)  # x2
    for _ in range(10):  # many more: the wait stops growing at x64
        store.record_attempts([(message.message_id, destination, True, None)])
    assert not pending_at(6_399) and pending_at(6_401)
    counts = outbox.open_counts(store.db, destination, 100, now + timedelta(seconds=6_399))
    assert (counts.pending, counts.unconfirmed) == (0, 1)

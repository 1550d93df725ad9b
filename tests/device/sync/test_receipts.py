"""Receipts over a real Mosquitto: the server's word (a fake ingest publishing with the receipt
contract) confirms or refuses messages; the persistent session keeps receipts while the device is
away; a receipt is acknowledged only after its confirmations are committed, on its own connection."""

from __future__ import annotations

import logging
import threading

from device.domain import Refusal
from device.sync.publisher import OutboxPublisher
from device.sync.session import worker_client_id
from device.sync.worker import SyncWorker
from tests.device.sync.conftest import DEVICE, outbox_states, queue_detections, settings_for
from tests.helpers import wait_until
from tests.mqtt import FakeIngest


def acknowledged_before(store, seconds: float) -> bool:
    """Every PUBACK on record is more than `seconds` old."""
    from datetime import timedelta

    from device.domain import iso_utc, utc_now

    newest = store.db.execute("SELECT max(attempted_on) FROM outbox_attempt WHERE result = 'SUCCESS'").fetchone()[0]
    return newest is not None and newest < iso_utc(utc_now() - timedelta(seconds=seconds))


def apply_until(publisher: OutboxPublisher, condition, timeout_s: float = 20.0) -> list:
    """Apply receipts as they arrive until `condition()` holds; return the reports."""
    reports = []
    wait_until(lambda: (reports.append(publisher.apply_receipts(wait_s=0.05)) or condition()), timeout_s, every_s=0)
    return [r for r in reports if r.received]


def test_the_worker_wakes_on_receipts_and_never_sends_a_confirmed_message_again(broker, ingest, store):
    ids = queue_detections(store, 6)
    # An hour between drains: only the receipts themselves can wake it to apply them.
    worker = SyncWorker(store.path, settings_for(broker, interval_s=3600.0, receipt_timeout_s=1.0), DEVICE).start()
    try:
        assert wait_until(lambda: outbox_states(store)["confirmed"] == 6, 30)
        state = worker.state
        assert (state.sent, state.confirmed) == (6, 6) and state.receipts >= 1
        # Past the 1 s receipt timeout a confirmed message is still not resent, drain after drain.
        assert wait_until(lambda: store.pending_count(receipt_timeout_s=1.0) == 0 and acknowledged_before(store, 1.0), 20)
        for _ in range(2):
            drains = worker.state.drains
            worker.wake()
            assert wait_until(lambda: worker.state.drains > drains, 20)
    finally:
        worker.stop()
    assert sorted(ingest.taken("detection")) == sorted(ids)  # each sent once
    assert outbox_states(store) == {"pending": 0, "unconfirmed": 0, "confirmed": 6, "refused": 0}


def test_a_refused_message_keeps_its_reason_and_is_never_sent_again(broker, store):
    ids = queue_detections(store, 4)
    server = FakeIngest(broker, auto=False)
    try:
        with OutboxPublisher(store, settings_for(broker), DEVICE) as publisher:
            assert publisher.drain().ok == 4
            reason = f"detection {ids[2]} is already stored for another device"
            assert server.receipt(DEVICE, {"detection": ids[:2]}, [Refusal("detection", ids[2], reason)]) == "Success"
            apply_until(publisher, lambda: outbox_states(store)["refused"] == 1)
            assert outbox_states(store) == {"pending": 0, "unconfirmed": 1, "confirmed": 2, "refused": 1}
            again = publisher.drain(resend_unconfirmed=True)  # everything open, as `explorer sync` sends it
            assert again.ok == 1 and [m.record_id for m, _ in publisher.last_tried] == [ids[3]]
    finally:
        server.close()
    [(kind, record_id, _, kept)] = store.refusals()
    assert (kind, record_id, kept) == ("detection", ids[2], reason)


def test_receipts_for_another_device_or_malformed_are_acknowledged_and_never_applied(broker, store, caplog):
    ids = queue_detections(store, 2)
    server = FakeIngest(broker, auto=False)
    settings = settings_for(broker)
    try:
        with caplog.at_level(logging.WARNING, logger="device.sync.receipts"):
            with OutboxPublisher(store, settings, DEVICE) as publisher:
                assert publisher.drain().ok == 2
                topic, _ = server.receipt_message(DEVICE, {})
                # Another device's receipt on our topic, then bytes that are no receipt at all,
                # then a good one: by the time the good one is applied, the others were handled.
                assert server.client.publish(topic, server.receipt_message("pi-h03", {"detection": ids})[1]) == "Success"
                assert server.client.publish(topic, b"\xff not json") == "Success"
                assert server.receipt(DEVICE, {"detection": ids[:1]}) == "Success"
                reports = apply_until(publisher, lambda: outbox_states(store)["confirmed"] == 1)
                assert sum(r.ignored for r in reports) == 2 and sum(r.acknowledged for r in reports) == 3
        assert outbox_states(store)["confirmed"] == 1  # pi-h03's receipt confirmed nothing here
        assert "ignored a receipt for device 'pi-h03'" in caplog.text and "ignored a malformed receipt" in caplog.text

        # Reconnect the same session: acknowledged receipts are not delivered again.
        with OutboxPublisher(store, settings, DEVICE) as publisher:
            assert server.receipt(DEVICE, {"detection": ids[1:]}) == "Success"
            reports = apply_until(publisher, lambda: outbox_states(store)["confirmed"] == 2)
        assert sum(r.received for r in reports) == 1 and sum(r.ignored for r in reports) == 0
    finally:
        server.close()


def test_receipts_published_while_the_device_was_offline_arrive_when_it_reconnects(broker, store):
    ids = queue_detections(store, 3)
    server = FakeIngest(broker, auto=False)
    settings = settings_for(broker, interval_s=3600.0)
    try:
        first = SyncWorker(store.path, settings, DEVICE, final_receipt_wait_s=0.5).start()
        assert wait_until(lambda: sorted(server.taken()) == sorted(ids), 20)
        first.stop()  # out of coverage: the server commits and receipts while the device is away
        assert outbox_states(store) == {"pending": 0, "unconfirmed": 3, "confirmed": 0, "refused": 0}
        assert server.receipt(DEVICE, {"detection": ids[:2]}) == "Success"
        assert server.receipt(DEVICE, {"detection": ids[2:]}) == "Success"

        second = SyncWorker(store.path, settings, DEVICE).start()  # back in coverage, same session
        try:
            assert wait_until(lambda: outbox_states(store)["confirmed"] == 3, 20)
            assert second.state.receipts == 2
        finally:
            second.stop()
    finally:
        server.close()
    assert sorted(server.taken()) == sorted(ids)  # nothing was sent twice


def test_a_receipt_applied_after_its_connection_dropped_is_delivered_again_and_changes_nothing(broker, store):
    ids = queue_detections(store, 2)
    server = FakeIngest(broker, auto=False)
    settings = settings_for(broker)
    arrived = threading.Event()
    old = OutboxPublisher(store, settings, DEVICE, on_receipt=arrived.set).connect()
    new = None
    try:
        assert old.drain().ok == 2
        assert server.receipt(DEVICE, {"detection": ids}) == "Success"
        assert arrived.wait(20)  # queued on the old connection, not yet applied nor acknowledged
        # The same client id connects again (a restart while the old link hangs): the broker drops
        # the old connection and hands the session, unacknowledged receipt included, to the new one.
        new = OutboxPublisher(store, settings, DEVICE, client_id=worker_client_id(DEVICE)).connect()
        assert wait_until(lambda: old.session.lost is not None, 20)
        late = old.apply_receipts()
        assert (late.confirmed, late.acknowledged, late.unacknowledged) == (2, 0, 1)  # applied, not acknowledged
        reports: list = []
        assert wait_until(lambda: reports.append(new.apply_receipts(wait_s=0.05)) or any(r.received for r in reports), 20)
        reports = [r for r in reports if r.received]
        assert sum(r.received for r in reports) == 1  # delivered again on the new connection
        assert sum(r.confirmed for r in reports) == 0 and sum(r.unchanged for r in reports) == 2
        assert sum(r.acknowledged for r in reports) == 1
    finally:
        old.close()
        if new is not None:
            new.close()
        server.close()
    assert outbox_states(store) == {"pending": 0, "unconfirmed": 0, "confirmed": 2, "refused": 0}


def test_a_message_whose_receipt_never_comes_is_sent_again_after_the_timeout(broker, store):
    ids = queue_detections(store, 2)
    server = FakeIngest(broker, auto=False)  # takes the messages, says nothing (a broker crash lost them)
    worker = SyncWorker(store.path, settings_for(broker, interval_s=1.0, receipt_timeout_s=1.0), DEVICE).start()
    try:
        assert wait_until(lambda: len(server.taken()) >= 4, 30)  # each sent, then sent again after 1 s
        assert set(server.taken()) == set(ids)
        server.auto = True  # the server is back: the next resend is receipted
        assert wait_until(lambda: outbox_states(store)["confirmed"] == 2, 30)
        sends = len(server.taken())
        drains = worker.state.drains
        assert wait_until(lambda: worker.state.drains >= drains + 3, 30)  # three more drains, well past the timeout
        assert len(server.taken()) == sends  # confirmed: never sent again
    finally:
        worker.stop()
        server.close()

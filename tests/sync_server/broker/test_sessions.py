"""Persistent sessions in the in-process broker, with real paho-mqtt 2 clients set up as the
devices and the ingest set theirs up: queueing while offline, redelivery with DUP, Receive
Maximum flow control under manual acknowledgements, expiry, clean start, bounded queues, and
the state kept across a clean restart."""

from __future__ import annotations

from sync_server.broker import OwnBroker
from sync_server.broker.persist import STATE_FILE
from tests.helpers import wait_until
from tests.sync_server.broker.peers import Peer

WEEK_S = 7 * 86_400


def test_an_offline_session_keeps_its_subscriptions_and_queues_qos_1_for_its_return(own):
    device = Peer(own, "explorer-pi-1", clean_start=False, expiry_s=WEEK_S)
    assert not device.session_present
    device.subscribe("explorer/pi-1/receipt")
    device.close()
    server = Peer(own)
    server.publish("explorer/pi-1/receipt", b"qos 0: not kept for an offline client", qos=0)
    # handled before these (the broker takes a connection's packets in order): done once they are acked
    server.publish_many("explorer/pi-1/receipt", [f"r{n}".encode() for n in range(10)])
    view = own.snapshot().sessions["explorer-pi-1"]
    assert (view.connected, view.queued, view.expiry_s) == (False, 10, WEEK_S)
    assert view.subscriptions == ("settle/explorer-pi-1", "explorer/pi-1/receipt")
    back = Peer(own, "explorer-pi-1", clean_start=False, expiry_s=WEEK_S)
    assert back.session_present
    back.wait_for(10)
    back.settle(server)
    assert [(h.payload, h.qos, h.dup) for h in back.received()] == [(f"r{n}".encode(), 1, False) for n in range(10)]
    back.close()
    fresh = Peer(own, "explorer-pi-1", clean_start=True)  # a clean start forgets the session
    assert not fresh.session_present
    server.publish("explorer/pi-1/receipt", b"nobody")
    fresh.settle(server)
    assert fresh.received() == []


def test_what_was_in_flight_when_the_link_dropped_is_sent_again_first_with_dup_and_its_packet_id(own):
    ingest = Peer(own, "explorer-ingest", clean_start=False, expiry_s=WEEK_S, manual_ack=True)
    ingest.subscribe("explorer/+/detection")
    device = Peer(own)
    device.publish_many("explorer/pi-1/detection", [f"d{n}".encode() for n in range(5)])
    first = ingest.wait_for(5)
    ingest.ack(first[0])
    ingest.settle(device)
    ingest.drop()  # committed nothing else: four are unacknowledged
    device.publish("explorer/pi-1/detection", b"d5")
    back = Peer(own, "explorer-ingest", clean_start=False, expiry_s=WEEK_S, manual_ack=True)
    again = back.wait_for(5)
    assert [(h.payload, h.dup) for h in again] == [(b"d1", True), (b"d2", True), (b"d3", True), (b"d4", True),
                                                   (b"d5", False)]
    assert [h.mid for h in again[:4]] == [h.mid for h in first[1:]]  # spec 4.4: their original ids
    for heard in again:
        back.ack(heard)
    assert wait_until(lambda: own.snapshot().sessions["explorer-ingest"].inflight == 0, 10)
    back.settle(device)
    assert len(back.received()) == 5


def test_receive_maximum_holds_the_flow_until_the_client_acknowledges(own):
    """The ingest acknowledges after its commit: the broker may have at most its Receive
    Maximum unacknowledged, and sends the next as each acknowledgement comes."""
    ingest = Peer(own, "explorer-ingest", clean_start=False, expiry_s=WEEK_S, receive_maximum=5, manual_ack=True)
    ingest.subscribe("explorer/+/detection")
    device = Peer(own)
    assert device.publish_many("explorer/pi-1/detection", [f"{n}".encode() for n in range(20)]) == ["Success"] * 20
    ingest.settle(device)  # a QoS 0 marker is not held by the window: it overtakes
    assert len(ingest.received()) == 5
    view = own.snapshot().sessions["explorer-ingest"]
    assert (view.inflight, view.queued) == (5, 15)
    ingest.ack(ingest.received()[0])
    assert len(ingest.wait_for(6)) == 6
    ingest.settle(device)
    assert len(ingest.received()) == 6
    acked = 1
    while acked < 20:
        for heard in ingest.received()[acked:]:
            ingest.ack(heard)
            acked += 1
        ingest.wait_for(min(acked + 5, 20))
    assert [h.payload for h in ingest.received()] == [f"{n}".encode() for n in range(20)]
    assert not any(h.dup for h in ingest.received())


def test_a_client_stating_no_receive_maximum_gets_the_deployed_brokers_1000(own):
    reader = Peer(own, manual_ack=True)
    reader.subscribe("bulk")
    writer = Peer(own)
    writer.publish_many("bulk", [b"x"] * 1010)
    reader.settle(writer)
    assert len(reader.received()) == 1000


def test_an_expired_session_is_gone_with_its_queue(own):
    short = Peer(own, "short", clean_start=False, expiry_s=1)
    short.subscribe("t")
    short.close()
    Peer(own).publish("t", b"queued")
    assert wait_until(lambda: "short" not in own.snapshot().sessions, 10)
    back = Peer(own, "short", clean_start=False, expiry_s=1)
    assert not back.session_present
    back.settle(Peer(own))
    assert back.received() == []


def test_a_session_without_expiry_ends_with_its_connection(own):
    once = Peer(own, "once", clean_start=False, expiry_s=0)
    once.subscribe("t")
    once.drop()
    assert wait_until(lambda: "once" not in own.snapshot().sessions, 10)


def test_a_full_queue_drops_its_oldest_counts_and_keeps_the_newest():
    with OwnBroker(max_queued=3) as small:
        device = Peer(small, "explorer-pi-1", clean_start=False, expiry_s=WEEK_S)
        device.subscribe("r")
        device.close()
        Peer(small).publish_many("r", [f"{n}".encode() for n in range(8)])
        snapshot = small.snapshot()
        assert snapshot.sessions["explorer-pi-1"].dropped == 5 and snapshot.stats.dropped == 5
        back = Peer(small, "explorer-pi-1", clean_start=False, expiry_s=WEEK_S)
        assert [h.payload for h in back.wait_for(3)] == [b"5", b"6", b"7"]
        back.close()


def test_sessions_and_retained_messages_survive_a_clean_restart(tmp_path):
    folder = tmp_path / "broker"
    first = OwnBroker(folder=folder).start()
    port = first.port
    device = Peer(first, "explorer-pi-1", clean_start=False, expiry_s=WEEK_S, manual_ack=True)
    device.subscribe("explorer/pi-1/receipt")
    server = Peer(first)
    server.publish("explorer/pi-1/clip-request", b"wanted", retain=True)
    server.publish("explorer/pi-1/receipt", b"r0")
    assert len(device.wait_for(1)) == 1  # in flight, never acknowledged
    device.close()
    server.publish_many("explorer/pi-1/receipt", [b"r1", b"r2"])
    server.close()
    first.stop()
    assert (folder / STATE_FILE).is_file()
    second = OwnBroker(port=port, folder=folder).start()
    try:
        assert not (folder / STATE_FILE).exists()  # read back once: a crash now loses it, never replays it
        back = Peer(second, "explorer-pi-1", clean_start=False, expiry_s=WEEK_S)
        assert back.session_present
        assert [(h.payload, h.dup) for h in back.wait_for(3)] == [(b"r0", True), (b"r1", False), (b"r2", False)]
        reader = Peer(second)
        reader.subscribe("explorer/+/clip-request")
        assert [(h.payload, h.retain) for h in reader.wait_for(1)] == [(b"wanted", True)]
    finally:
        second.stop()


def test_an_unreadable_saved_state_is_set_aside_and_the_broker_starts_empty(tmp_path):
    folder = tmp_path / "broker"
    folder.mkdir()
    (folder / STATE_FILE).write_bytes(b"not a database")
    with OwnBroker(folder=folder) as broker:
        assert broker.snapshot().sessions == {}
    assert (folder / (STATE_FILE + ".unreadable")).read_bytes() == b"not a database"

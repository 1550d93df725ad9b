"""The in-process MQTT 5 broker with real paho-mqtt 2 clients: publish and subscribe, wildcards,
retained messages, wills, take-overs, shared subscriptions, the refusals (MQTT 3, QoS 2, sizes)
and hostile bytes that must cost their own connection only. Sessions and flow control are
test_sessions.py; the device's sync and the server's ingest through it, test_end_to_end.py."""

from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes

from sync_server.broker import OwnBroker
from sync_server.broker.packets import Connect, Disconnect, Publish, SubAck, SubOptions, Subscribe, Will, encode
from tests.helpers import wait_until
from tests.sync_server.broker.peers import Peer, Raw


def test_it_listens_where_asked_and_names_a_port_it_cannot_take(own):
    assert own.kind == "in-process" and own.host == "127.0.0.1" and own.port > 0
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{own.port}"):
        OwnBroker(port=own.port).start()
    with pytest.raises(OSError, match="cannot listen on 192.0.2.1"):  # TEST-NET-1: no machine has it
        OwnBroker(host="192.0.2.1").start()


def test_messages_reach_the_subscriptions_their_topics_match(own):
    sub, other, dollar, pub = Peer(own), Peer(own), Peer(own), Peer(own)
    assert sub.subscribe("explorer/+/detection", 1) == ["Granted QoS 1"]
    assert sub.subscribe("explorer/pi-1/#", 0) == ["Granted QoS 0"]
    assert other.subscribe("#", 1) == ["Granted QoS 1"] and other.subscribe("+/x", 1) == ["Granted QoS 1"]
    assert dollar.subscribe("$internal/#", 1) == ["Granted QoS 1"]
    topics = ["explorer/pi-1/detection", "explorer/pi-2/detection", "explorer/pi-1/status", "explorer/pi-2/status",
              "explorer/pi-1", "explorer//detection", "$internal/x"]
    for n, topic in enumerate(topics):
        assert pub.publish(topic, f"m{n}") == "Success"
    for peer in (sub, other, dollar):
        peer.settle(pub)
    got = [(h.topic, h.qos) for h in sub.received()]
    # overlapping subscriptions give one copy at the highest QoS; '#' matches its parent level
    assert got == [("explorer/pi-1/detection", 1), ("explorer/pi-2/detection", 1), ("explorer/pi-1/status", 0),
                   ("explorer/pi-1", 0), ("explorer//detection", 1)]
    assert [h.topic for h in other.received("explorer")] == topics[:-1]  # '#' and '+' never see '$...'
    assert [h.topic for h in other.received("$")] == []
    assert [h.payload for h in dollar.received()] == [b"m6"]


def test_bad_filters_are_refused_one_by_one_and_unsubscribe_stops_delivery(own):
    raw = Raw(own).send(encode(Connect("filters")))
    raw.read()
    bad = ["a/#/b", "a+/b", "", "$share/g", "$share//a", "$share/g+/a", "ok/#"]  # paho refuses to send the rest
    raw.send(encode(Subscribe(1, [(text, SubOptions(1)) for text in bad])))
    assert raw.read() == SubAck(1, [0x8F] * 6 + [1])
    sub, pub = Peer(own), Peer(own)
    assert sub.subscribe("a/b", 2) == ["Granted QoS 1"]  # QoS 2 is granted as 1
    assert sub.unsubscribe("a/b") == ["Success"] and sub.unsubscribe("a/b") == ["No subscription found"]
    pub.publish("a/b", b"late")
    sub.settle(pub)
    assert sub.received() == []


def test_no_local_subscriptions_skip_their_own_messages(own):
    me, pub = Peer(own), Peer(own)
    me.subscribe("chat/#", no_local=True)
    me.publish("chat/1", b"mine")
    pub.publish("chat/1", b"theirs")
    me.settle(pub)
    assert [h.payload for h in me.received()] == [b"theirs"]


def test_retained_messages_are_kept_replaced_deleted_and_flagged_as_mqtt_5_says(own):
    pub = Peer(own)
    pub.publish("r/a", b"1", retain=True)
    pub.publish("r/b", b"2", retain=True)
    pub.publish("r/a", b"", retain=True)  # an empty payload deletes
    pub.publish("r/c", b"3", qos=0, retain=True)
    pub.publish("r/b", b"2b", retain=True)  # replaces
    assert wait_until(lambda: own.snapshot().retained == ("r/b", "r/c"), 10)
    plain, published, never, low = Peer(own), Peer(own), Peer(own), Peer(own)
    plain.subscribe("r/#")
    published.subscribe("r/#", retain_as_published=True)
    never.subscribe("r/#", retain_handling=2)
    low.subscribe("r/b", qos=0)
    for peer in (plain, published, never, low):
        peer.settle(pub)
    assert {(h.topic, h.payload, h.retain, h.qos) for h in plain.received()} == {("r/b", b"2b", True, 1),
                                                                                 ("r/c", b"3", True, 0)}
    assert never.received() == [] and [(h.qos, h.retain) for h in low.received()] == [(0, True)]
    pub.publish("r/b", b"live", retain=True)
    plain.settle(pub)
    published.settle(pub)
    assert plain.received()[-1].payload == b"live" and plain.received()[-1].retain is False
    assert published.received()[-1].payload == b"live" and published.received()[-1].retain is True
    again = plain.subscribe("r/#", retain_handling=1)  # already subscribed: handling 1 sends nothing
    assert again == ["Granted QoS 1"]
    plain.settle(pub)
    assert len(plain.received()) == 3


def test_a_will_is_published_when_a_link_drops_or_asks_for_it_never_on_a_normal_disconnect(own):
    watcher = Peer(own)
    watcher.subscribe("explorer/+/status")
    cut = Peer(own, "explorer-pi-1", will=("explorer/pi-1/status", b'{"online": false}', True))
    polite = Peer(own, "explorer-pi-2", will=("explorer/pi-2/status", b"offline"))
    asks = Peer(own, "explorer-pi-3", will=("explorer/pi-3/status", b"offline, said so"))
    cut.drop()
    assert wait_until(lambda: watcher.received(), 10)
    polite.close()
    asks.client.disconnect(reasoncode=mqtt.ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
    assert wait_until(lambda: len(watcher.received()) == 2, 10)
    asks.client.loop_stop()
    watcher.settle(Peer(own))
    assert [(h.topic, h.payload) for h in watcher.received()] == [
        ("explorer/pi-1/status", b'{"online": false}'), ("explorer/pi-3/status", b"offline, said so")]
    late = Peer(own)  # the retained will is what a newcomer reads
    late.subscribe("explorer/+/status")
    assert [(h.payload, h.retain) for h in late.wait_for(1)] == [(b'{"online": false}', True)]


def test_a_silent_client_is_closed_after_one_and_a_half_keepalives_and_its_will_goes_out(own):
    watcher = Peer(own)
    watcher.subscribe("wills/#")
    raw = Raw(own).send(encode(Connect("sleepy", keepalive=1, will=Will("wills/sleepy", b"gone", 1))))
    assert raw.read().reason == 0  # CONNACK
    assert raw.read() == Disconnect(0x8D, {"ReasonString": "nothing heard for 1.5 x the keepalive"})
    assert raw.read() is None
    assert [h.payload for h in watcher.wait_for(1)] == [b"gone"]


def test_a_second_connection_takes_over_and_the_old_will_goes_out_only_when_the_session_ends(own):
    watcher = Peer(own)
    watcher.subscribe("wills/#")
    first = Peer(own, "explorer-pi-1", clean_start=False, expiry_s=3600, will=("wills/pi-1", b"first gone"))
    second = Peer(own, "explorer-pi-1", clean_start=False, expiry_s=3600, will=("wills/pi-1", b"second gone"))
    assert second.session_present and first.wait_disconnected() == "Session taken over"
    watcher.settle(second)
    assert watcher.received() == []  # the session continues: no will (as Mosquitto)
    third = Peer(own, "explorer-pi-1", clean_start=True)
    assert not third.session_present and second.wait_disconnected() == "Session taken over"
    assert [h.payload for h in watcher.wait_for(1)] == [b"second gone"]
    first.client.loop_stop()
    second.client.loop_stop()


def test_a_shared_subscription_hands_each_message_to_one_member_in_turn_offline_ones_included(own):
    members = [Peer(own, f"ingest-{n}", clean_start=False, expiry_s=3600) for n in range(3)]
    for member in members:
        assert member.subscribe("$share/ingest/jobs/+") == ["Granted QoS 1"]
    pub = Peer(own)
    pub.publish_many("jobs/a", [f"{n}".encode() for n in range(30)])
    assert wait_until(lambda: sum(len(m.received()) for m in members) == 30, 10)
    assert [len(m.received()) for m in members] == [10, 10, 10]
    members[2].close()  # its session stays: its share is queued for it (as Mosquitto)
    pub.publish_many("jobs/b", [f"{n}".encode() for n in range(30, 60)])
    assert wait_until(lambda: own.snapshot().sessions["ingest-2"].queued == 10, 10)
    back = Peer(own, "ingest-2", clean_start=False, expiry_s=3600)
    assert back.session_present
    assert wait_until(lambda: len(back.received()) == 10 and sum(len(m.received()) for m in members[:2]) == 40, 10)
    every = [h.payload for m in (*members, back) for h in m.received()]
    assert sorted(every) == sorted(f"{n}".encode() for n in range(60))  # each exactly once


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv31])
def test_mqtt_3_clients_are_refused_in_their_own_protocol(own, protocol):
    v3 = Peer(own, protocol=protocol, reconnect_on_failure=protocol == mqtt.MQTTv311)  # 3.1.1 retries as 3.1
    assert wait_until(lambda: v3.connacks, 10) and v3.connacks[0] == (False, "Unsupported protocol version")
    v3.client.loop_stop()
    v3.client.disconnect()


def test_a_raw_3_1_1_connect_reads_return_code_1_and_another_level_reads_0x84(own):
    v311 = b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01c"
    assert Raw(own).send(v311).read_bytes() == b"\x20\x02\x00\x01"
    assert Raw(own).send(v311.replace(b"\x04\x02", b"\x06\x02")).read_bytes() == b"\x20\x03\x00\x84\x00"
    assert own.snapshot().stats.refused == 2


def test_qos_2_is_refused_as_the_connack_announced(own):
    peer = Peer(own)
    peer.client.publish("a", b"x", qos=2)
    assert peer.wait_disconnected() == "QoS not supported"
    peer.client.loop_stop()
    raw = Raw(own).send(encode(Connect("w2", will=Will("w", b"x", 2))))
    assert raw.read().reason == 0x9B and raw.read() is None


def test_sizes_a_large_payload_is_refused_in_its_puback_an_oversized_packet_closes_the_link(own):
    peer = Peer(own)
    assert peer.publish("clips/x", b"\x00" * 131_072) == "Success"  # the limit itself is taken
    assert peer.publish("clips/x", b"\x00" * 200_000) == "Quota exceeded"
    assert peer.publish("clips/x", b"small") == "Success"  # the connection was kept
    peer.client.publish("clips/x", b"\x00" * 300_000, qos=1)
    assert peer.wait_disconnected() == "Packet too large"
    peer.client.loop_stop()
    raw = Raw(own).send(encode(Connect("huge")))
    raw.read()
    raw.send(b"\x30\xff\xff\xff\x7f")  # 256 MiB announced: refused before a byte of it is read
    assert raw.read().reason == 0x95 and raw.read() is None
    assert own.snapshot().stats.too_large == 1


def test_hostile_bytes_cost_their_own_connection_only(own):
    sub = Peer(own)
    sub.subscribe("still/#")
    assert Raw(own).send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").read_bytes() == b""  # not even a CONNECT
    assert Raw(own).send(b"\x10\x04\x00\x04MQ").read_bytes()[:1] == b"\x20"  # a broken CONNECT: a CONNACK
    garbage = Raw(own).send(encode(Connect("garbage")))
    garbage.read()
    garbage.send(b"\x30\x03\x00\x05a")  # a topic longer than its packet
    assert garbage.read().reason == 0x81 and garbage.read() is None
    noisy = Raw(own).send(encode(Connect("noisy")))
    noisy.read()
    noisy.send(encode(Publish("a/+/b", b"x")))
    assert noisy.read().reason == 0x90 and noisy.read() is None  # a wildcard in a topic name
    assert Raw(own).read() is None  # silent: closed after the CONNECT timeout
    second = Raw(own).send(encode(Connect("twice")))
    second.read()
    assert second.send(encode(Connect("twice"))).read().reason == 0x82 and second.read() is None
    pub = Peer(own)
    assert pub.publish("still/here", b"ok") == "Success"
    assert [h.payload for h in sub.wait_for(1)] == [b"ok"]
    assert own.snapshot().stats.refused >= 5

"""The broker configuration we ship (deploy/broker/), run by a real Mosquitto as written: only
its paths and port are rewritten for a test folder. The ACL is checked for the whole topic tree
(device/contracts/topics.py) with MQTT 5 clients, which see a refused publish in its PUBACK."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from device.contracts.detection import parse_payload
from device.contracts.status import parse_status
from device.contracts.topics import DOWNSTREAM, UPSTREAM
from device.sync.by_hand import sync_by_hand
from device.sync.publisher import SyncError, drain_once
from tests.device.sync.conftest import outbox_states, queue_detections, settings_for
from tests.mqtt import Broker, Client5, FakeIngest, Subscriber, free_port, make_test_ca

PASSWORDS = {"sync-server": "ingest-secret", "pi-h02": "frog-song", "pi-h03": "bird-song"}

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "broker"


@pytest.fixture
def deployed(tmp_path):
    """Mosquitto running deploy/broker/mosquitto.conf and acl, with test certificates and users."""
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copy(DEPLOY / "acl", etc / "acl")
    ca, cert, key = make_test_ca(tmp_path / "pki")
    for made, name in ((ca, "ca.crt"), (cert, "server.crt"), (key, "server.key")):
        shutil.copy(made, etc / name)
    (etc / "passwords").write_text("")
    for user, password in PASSWORDS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(etc / "passwords"), user, password], check=True)
    port = free_port()
    shipped = (DEPLOY / "mosquitto.conf").read_text()
    assert "listener 8883\n" in shipped and "/etc/mosquitto/explorer/" in shipped
    text = (shipped.replace("/etc/mosquitto/explorer/", f"{etc}/")
            .replace("/var/lib/mosquitto/", f"{tmp_path}/")
            .replace("listener 8883\n", f"listener {port} 127.0.0.1\n"))
    text = f"user {pwd.getpwuid(os.getuid()).pw_name}\nlog_dest file {tmp_path / 'mosquitto.log'}\n" + text
    broker = Broker(tmp_path / "broker", port=port).with_config(text).start()
    broker.ca = ca
    yield broker
    broker.stop()


def test_a_device_delivers_over_tls_and_the_ingest_user_receives_it(deployed, store):
    ids = queue_detections(store, 5)  # device pi-h02
    ingest = Subscriber(deployed, "explorer/+/detection", username="sync-server", password="ingest-secret",
                        ca=deployed.ca)
    try:
        report = drain_once(store, settings_for(deployed, tls=True, ca_file=str(deployed.ca),
                                                username="pi-h02", password="frog-song"), "pi-h02")
        received = ingest.wait_for(5)
    finally:
        ingest.close()
    assert report.ok == 5 and report.pending_after == 0
    assert sorted(parse_payload(body)["detection_id"] for _, body in received) == sorted(ids)


def test_a_device_cannot_write_under_another_devices_id(deployed, store):
    queue_detections(store, 3, device_id="pi-h03")  # pi-h02's credentials, pi-h03's id in its config
    report = drain_once(store, settings_for(deployed, tls=True, ca_file=str(deployed.ca),
                                            username="pi-h02", password="frog-song"), "pi-h03")
    assert report.ok == 0 and report.pending_after == 3
    assert report.error == "the broker refuses our messages (Not authorized)"


ACCEPTED = ("Success", "No matching subscribers")
"""MQTT 5 PUBACKs that mean the broker took the message (the second: nobody subscribed yet)."""


def client(deployed, user: str) -> Client5:
    return Client5(deployed, user, PASSWORDS[user], ca=deployed.ca)


def test_a_device_writes_only_its_own_uplink_and_never_a_downlink(deployed):
    device = client(deployed, "pi-h02")
    try:
        for kind in UPSTREAM:  # the whole tree, as device/contracts/topics.py lists it
            assert device.publish(f"explorer/pi-h02/{kind}", b"{}") in ACCEPTED, kind
            assert device.publish(f"explorer/pi-h03/{kind}", b"{}") == "Not authorized", kind
        for kind in DOWNSTREAM:
            # Not another device's receipts, and not its own either: a forged receipt would stop
            # its messages being sent before the server has them.
            assert device.publish(f"explorer/pi-h03/{kind}", b"{}") == "Not authorized", kind
            assert device.publish(f"explorer/pi-h02/{kind}", b"{}") == "Not authorized", kind
    finally:
        device.close()


def test_the_ingest_writes_every_downlink_and_no_uplink(deployed):
    ingest = client(deployed, "sync-server")
    try:
        for kind in DOWNSTREAM:
            assert ingest.publish(f"explorer/pi-h02/{kind}", b"{}") in ACCEPTED, kind
        for kind in UPSTREAM:
            assert ingest.publish(f"explorer/pi-h02/{kind}", b"{}") == "Not authorized", kind
    finally:
        ingest.close()


def test_a_device_reads_only_its_own_receipts_and_the_ingest_writes_them(deployed):
    h02, h03, ingest = client(deployed, "pi-h02"), client(deployed, "pi-h03"), client(deployed, "sync-server")
    try:
        # Mosquitto 2.0 grants the wildcard SUBSCRIBE and filters each message on delivery.
        assert h02.subscribe("explorer/+/receipt") == ["Granted QoS 1"]
        assert h02.subscribe("explorer/pi-h03/#") == ["Granted QoS 1"]
        assert h03.subscribe("explorer/pi-h03/receipt") == ["Granted QoS 1"]
        assert ingest.publish("explorer/pi-h03/receipt", b"for h03") in ACCEPTED
        assert ingest.publish("explorer/pi-h02/receipt", b"for h02") in ACCEPTED
        assert h02.wait_for(lambda c: c.received(), 10) and h03.wait_for(lambda c: c.received(), 10)
        # pi-h02's own receipt arrived after pi-h03's was published: had pi-h03's been handed to
        # pi-h02, it would be here first.
        assert [(t, p) for t, p, _ in h02.received()] == [("explorer/pi-h02/receipt", b"for h02")]
        assert [(t, p) for t, p, _ in h03.received()] == [("explorer/pi-h03/receipt", b"for h03")]
    finally:
        for each in (h02, h03, ingest):
            each.close()


def test_the_ingest_reads_every_device_through_a_shared_subscription_and_no_device_reads_another(deployed):
    group = "$share/ingest/explorer/+/"
    ingest, nosy, h02, h03 = (client(deployed, u) for u in ("sync-server", "pi-h03", "pi-h02", "pi-h03"))
    try:
        for kind in UPSTREAM:
            assert ingest.subscribe(group + kind) == ["Granted QoS 1"]
        assert nosy.subscribe("$share/nosy/explorer/+/detection") == ["Granted QoS 1"]
        assert nosy.subscribe("explorer/+/status") == ["Granted QoS 1"]
        for kind in UPSTREAM:
            assert h02.publish(f"explorer/pi-h02/{kind}", kind.encode()) in ACCEPTED
        assert h03.publish("explorer/pi-h03/status", b"own") in ACCEPTED
        assert ingest.wait_for(lambda c: len(c.received()) == len(UPSTREAM) + 1, 10)
        assert sorted(t for t, _, _ in ingest.received()) == sorted(
            [f"explorer/pi-h02/{kind}" for kind in UPSTREAM] + ["explorer/pi-h03/status"])
        # A sentinel pi-h03 may read, published last: once it is in, anything else would be too.
        assert nosy.subscribe("explorer/pi-h03/receipt") == ["Granted QoS 1"]
        assert ingest.publish("explorer/pi-h03/receipt", b"sentinel") in ACCEPTED
        assert nosy.wait_for(lambda c: c.received(), 10)
        # pi-h03 read nothing of pi-h02's, shared subscription or not (its own status is no
        # read grant either: a device never reads statuses).
        assert [(t, p) for t, p, _ in nosy.received()] == [("explorer/pi-h03/receipt", b"sentinel")]
    finally:
        for each in (ingest, nosy, h02, h03):
            each.close()


def test_receipts_from_the_ingest_user_confirm_a_devices_outbox_over_the_shipped_broker(deployed, store):
    ids = queue_detections(store, 4)  # device pi-h02
    ingest = FakeIngest(deployed, "sync-server", PASSWORDS["sync-server"], ca=deployed.ca, share_group="ingest")
    watcher = client(deployed, "sync-server")
    try:
        assert watcher.subscribe("explorer/+/status") == ["Granted QoS 1"]
        report = sync_by_hand(store, settings_for(deployed, tls=True, ca_file=str(deployed.ca),
                                                  username="pi-h02", password="frog-song"), "pi-h02", wait_s=30)
        assert watcher.wait_for(lambda c: any(not parse_status(p).online for _, p, _ in c.received()), 10)
    finally:
        ingest.close()
        watcher.close()
    assert (report.confirmed, report.unconfirmed, report.pending, report.refused) == (4, 0, 0, 0)
    assert report.waited_s < 30  # it stopped waiting once every message it sent was answered
    assert sorted(ingest.taken("detection")) == sorted(ids)
    assert outbox_states(store) == {"pending": 0, "unconfirmed": 0, "confirmed": 4, "refused": 0}
    online, offline = (parse_status(p) for _, p, _ in watcher.received()[-2:])
    assert online.online and online.outbox_pending == 4 and not offline.online


def test_anonymous_and_plaintext_clients_are_refused(deployed, store):
    queue_detections(store, 1)
    with pytest.raises(SyncError, match="refused the connection: Not authorized"):  # no user: CONNACK refuses
        drain_once(store, settings_for(deployed, tls=True, ca_file=str(deployed.ca)), "pi-h02")
    # No TLS: the listener speaks only TLS, so it drops the plaintext CONNECT without a CONNACK.
    with pytest.raises(SyncError, match="refused the connection: connection lost"):
        drain_once(store, settings_for(deployed, username="pi-h02", password="frog-song"), "pi-h02")
    assert store.pending_count() == 1


def test_the_largest_clip_chunk_fits_the_message_size_limit(deployed):
    from device.contracts.clip import MAX_CHUNK_BYTES, MAX_HEADER_BYTES

    device = client(deployed, "pi-h02")
    try:
        largest = b"{" + b" " * (MAX_HEADER_BYTES - 2) + b"}\n" + b"\x00" * MAX_CHUNK_BYTES
        assert device.publish("explorer/pi-h02/clip", largest) in ACCEPTED
    finally:
        device.close()

"""The broker configuration we ship (deploy/broker/), run by a real Mosquitto as written: only
its paths and port are rewritten for a test folder."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from device.contracts.detection import parse_payload
from device.sync.publisher import SyncError, drain_once
from tests.device.sync.conftest import queue_detections, settings_for
from tests.mqtt import Broker, Subscriber, free_port, make_test_ca

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
    for user, password in (("sync-server", "ingest-secret"), ("pi-h02", "frog-song"), ("pi-h03", "bird-song")):
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


def test_anonymous_and_plaintext_clients_are_refused(deployed, store):
    queue_detections(store, 1)
    with pytest.raises(SyncError, match="refused the connection: Not authorized"):  # no user: CONNACK refuses
        drain_once(store, settings_for(deployed, tls=True, ca_file=str(deployed.ca)), "pi-h02")
    # No TLS: the listener speaks only TLS, so it drops the plaintext CONNECT without a CONNACK.
    with pytest.raises(SyncError, match="refused the connection: connection lost"):
        drain_once(store, settings_for(deployed, username="pi-h02", password="frog-song"), "pi-h02")
    assert store.pending_count() == 1

"""`explorer-server run` as an operator runs it: with a broker of its own (Mosquitto as a child
process; the amqtt fallback), and on PostgreSQL with a broker it is given. Each time a device's
real `explorer sync` reaches the API through it, and SIGTERM stops everything it started.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.device.sync.conftest import queue_detections
from tests.helpers import REPO, wait_until
from tests.sync_server.api.conftest import device_store, server_command, start_server


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


def command_of(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_run_starts_mosquitto_of_its_own_takes_a_devices_detections_and_stops_it(tmp_path):
    server = start_server(tmp_path / "server")
    try:
        assert "(mosquitto, started by run)" in server.log()
        brokers = [pid for pid in child_pids(server.process.pid) if "mosquitto" in command_of(pid)]
        assert len(brokers) == 1
        conf = tmp_path / "server" / "broker" / "mosquitto.conf"
        assert conf.is_file() and f"listener {server.broker_port} 127.0.0.1" in conf.read_text()
        with device_store(tmp_path, "pi-h02", "H02") as store:
            sent = set(queue_detections(store, 12))
            server.sync(store, "pi-h02")
        assert {row["detection_id"] for row in server.all_detections()} == sent
    finally:
        code = server.stop()
    assert code == 0, server.log()
    assert "ingest stopped: 12 stored" in server.log()
    assert not Path(f"/proc/{brokers[0]}").exists() or "mosquitto" not in command_of(brokers[0])


def test_run_falls_back_to_amqtt_without_mosquitto_and_says_it_cannot_serve_mqtt_5(tmp_path):
    """amqtt (the in-process broker) speaks MQTT 3.1.1 only; the ingest and the devices speak
    MQTT 5. Without Mosquitto, `run` starts amqtt, finds the ingest refused, and stops, saying
    what to do instead, rather than serve an API no device can feed."""
    bare_path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                                if not (Path(p) / "mosquitto").exists())
    env = {**os.environ, "PATH": bare_path}
    forced = subprocess.run(server_command("run", "--db", str(tmp_path / "a.db"), "--http-port", "0",
                                           "--own-broker", "amqtt"), cwd=REPO, capture_output=True, text=True,
                            timeout=120, env=env)
    assert forced.returncode == 1, forced.stderr
    assert "(amqtt, started by run)" in forced.stderr
    last = forced.stderr.strip().splitlines()[-1]  # amqtt logs its own refusal of the probe above it
    assert last.startswith("Error: the in-process broker (amqtt) speaks MQTT 3.1.1 only") and "install Mosquitto" in last


def test_the_in_process_broker_serves_mqtt_3_clients(tmp_path):
    """What the fallback does serve: an MQTT 3.1.1 client publishes and another receives, QoS 1."""
    import paho.mqtt.client as mqtt

    from sync_server.run import start_own_broker

    broker = start_own_broker(tmp_path, kind="amqtt")
    got: list[bytes] = []
    try:
        receiver = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        receiver.on_message = lambda c, u, message: got.append(message.payload)
        receiver.connect(broker.host, broker.port)
        receiver.subscribe("explorer/test", qos=1)
        receiver.loop_start()
        sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        sender.connect(broker.host, broker.port)
        sender.loop_start()
        assert wait_until(lambda: receiver.is_connected() and sender.is_connected(), 10)
        wait_until(lambda: False, 0.3)  # the SUBSCRIBE's round trip
        sender.publish("explorer/test", b"hello", qos=1).wait_for_publish(10)
        assert wait_until(lambda: got == [b"hello"], 10)
        v5 = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        refused: list[str] = []
        v5.on_connect = lambda c, u, f, reason, p: refused.append(str(reason))
        v5.connect(broker.host, broker.port)
        v5.loop_start()
        assert wait_until(lambda: refused, 10) and refused[0] == "Unsupported protocol version"
        for client in (receiver, sender, v5):
            client.loop_stop()
            client.disconnect()
    finally:
        broker.stop()


def test_run_on_postgresql_with_a_broker_it_is_given(tmp_path, postgres_server, mosquitto):
    name = postgres_server.create_database()
    server = start_server(tmp_path / "server", postgres_server.url(name), mosquitto)
    try:
        assert "started by run" not in server.log()
        with device_store(tmp_path, "pi-h02", "H02") as store:
            sent = set(queue_detections(store, 8))
            server.sync(store, "pi-h02")
        rows = server.all_detections()
        assert {row["detection_id"] for row in rows} == sent
        assert all(row["device_id"] == "pi-h02" and row["bundle_version"] == "1.0.0" for row in rows)
        assert server.get("/api/v1/devices").json()["devices"][0]["detection_count"] == 8
        assert server.get("/api/v1/detections", token="exp_wrong").status_code == 401
    finally:
        code = server.stop()
        postgres_server.drop_database(name)
    assert code == 0, server.log()


def test_run_names_a_port_it_cannot_take(tmp_path, running_server):
    taken = running_server.url.rsplit(":", 1)[1]
    answer = subprocess.run([sys.executable, "-m", "sync_server.cli", "run", "--db", str(tmp_path / "a.db"),
                             "--http-port", taken], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert answer.returncode == 1 and f"cannot serve the API on 127.0.0.1:{taken}" in answer.stderr
    assert "Traceback" not in answer.stderr
